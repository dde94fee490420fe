"""insightface verification benchmarks (.bin): read safely, write compatibly.

A .bin file is a pickle of `(bins, issame_list)`: 2N encoded images (bytes, or uint8 arrays) and N
booleans; pair k is (bins[2k], bins[2k+1]). The canonical files (lfw, cfp_fp, agedb_30, ...) are
Python-2 pickles. Pickles can run arbitrary code when loaded, so reading goes through an unpickler
that only admits the globals needed to rebuild bytes and numpy arrays; any other global (os.system,
builtins.eval, ...) is refused before anything is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.atomic import write_bytes_atomic
from face_pipelines.io.images import decode_image, encode_jpeg, resize_short_side_center_crop

__all__ = ["read_verification_bin", "write_verification_bin", "load_pickle_restricted"]


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle asked for a global that the restricted unpickler does not admit."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


def _bytes_from_latin1(text: str = "", encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol < 3 as _codecs.encode(text, 'latin1'); only that use is
    # admitted, so the codec machinery cannot be driven to do anything else.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is only admitted for latin1 text -> bytes")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    # protocol < 3 pickles b"" as builtins.bytes(); refuse bytes(n), which would allocate n bytes.
    if args:
        raise pickle.UnpicklingError("builtins.bytes is only admitted without arguments")
    return b""


# The numpy reconstruction entry point, taken from numpy itself rather than from a module path that
# moved between numpy 1 (numpy.core) and numpy 2 (numpy._core).
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _bytes_from_latin1,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only bytes, bool, list, tuple and numpy ndarray/dtype reconstruction."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobalError(module, name) from None


def load_pickle_restricted(data: bytes, source: str) -> object:
    """Unpickle `data` admitting only bytes/bool/list/tuple/numpy-array content.

    Python-2 pickles are retried with encoding='bytes'. Raises DataError naming `source` if the data
    is not a pickle or asks for any other global (the global is named, nothing is executed).
    """
    last_exc: Exception | None = None
    for encoding in ("ASCII", "bytes"):
        try:
            return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
        except RefusedGlobalError as exc:
            raise DataError(
                f"{source}: refused to unpickle global '{exc.module}.{exc.name}'; a verification "
                ".bin may only contain bytes, bools, lists, tuples and numpy arrays "
                "(the file may be hostile or not a verification benchmark)"
            ) from None
        except UnicodeDecodeError as exc:
            # Python-2 str objects (the JPEG bytes) cannot be decoded as ASCII text: retry as bytes.
            last_exc = exc
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{source}: not a valid pickle of (bins, issame_list) ({exc})") from exc
        except (IndexError, KeyError, RecursionError, MemoryError) as exc:
            raise DataError(
                f"{source}: not a valid pickle of (bins, issame_list) ({exc!r})"
            ) from exc
    raise DataError(f"{source}: could not unpickle even with encoding='bytes' ({last_exc})")


def _image_from_bin_item(item: object, source: str, index: int) -> np.ndarray:
    where = f"{source} [image {index}]"
    if isinstance(item, bytes | bytearray):
        return decode_image(bytes(item), where)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise DataError(f"{where}: expected a uint8 array, got dtype {item.dtype}")
        if item.ndim >= 1 and item.size == max(item.shape):
            # Encoded bytes stored as an array: 1-D, or 1xL as some released .bin files have.
            return decode_image(item.tobytes(), where)
        # Raw pixel arrays are taken as RGB, like decoded JPEGs.
        if item.ndim == 2:
            return np.repeat(item[:, :, None], 3, axis=2)
        if item.ndim == 3 and item.shape[2] == 3:
            return np.ascontiguousarray(item)
        if item.ndim == 3 and item.shape[2] == 1:
            return np.repeat(item, 3, axis=2)
        raise DataError(f"{where}: raw image array must be HxWx3 or HxW, got shape {item.shape}")
    raise DataError(
        f"{where}: expected encoded image bytes or a uint8 array, got {type(item).__name__}"
    )


def _as_bool(value: object, source: str, index: int) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and value in (0, 1):
        return bool(value)
    raise DataError(f"{source}: issame_list[{index}] must be a bool, got {value!r}")


def read_verification_bin(
    path: str | os.PathLike, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an insightface verification .bin.

    Args:
        path: the .bin file.
        image_size: if given, every image is resized (short side) and centre-cropped to
            image_size x image_size. If None, images must all have the same size.

    Returns:
        images: uint8 [2N, H, W, 3] RGB; pair k is images[2k], images[2k+1].
        issame: bool [N].
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"verification benchmark file not found: {path}")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ParameterError(f"image_size must be a positive integer or None, got {image_size!r}")
    source = str(path)
    obj = load_pickle_restricted(path.read_bytes(), source)
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise DataError(
            f"{source}: expected a pickled 2-tuple (bins, issame_list), got "
            f"{type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, tuple | list) else "")
        )
    bins, issame_list = obj
    if not isinstance(bins, list | tuple):
        raise DataError(f"{source}: bins must be a list of images, got {type(bins).__name__}")
    if isinstance(issame_list, np.ndarray):
        issame_list = issame_list.tolist()
    if not isinstance(issame_list, list | tuple):
        raise DataError(
            f"{source}: issame_list must be a list of bools, got {type(issame_list).__name__}"
        )
    if len(bins) != 2 * len(issame_list):
        raise DataError(
            f"{source}: pair count mismatch: {len(bins)} images but {len(issame_list)} issame "
            f"labels (expected {2 * len(issame_list)} images = 2 per pair)"
        )
    issame = np.array([_as_bool(v, source, i) for i, v in enumerate(issame_list)], dtype=bool)
    images: np.ndarray | None = None
    for k, item in enumerate(bins):
        img = _image_from_bin_item(item, source, k)
        if image_size is not None:
            img = resize_short_side_center_crop(img, image_size)
        if images is None:
            images = np.empty((len(bins), *img.shape), dtype=np.uint8)
        elif img.shape != images.shape[1:]:
            raise DataError(
                f"{source} [image {k}]: size {img.shape[:2]} differs from image 0 "
                f"{images.shape[1:3]}; pass image_size to resize all images"
            )
        images[k] = img
    if images is None:
        raise DataError(f"{source}: contains no image pairs")
    return images, issame


def write_verification_bin(
    path: str | os.PathLike, images: np.ndarray, issame: np.ndarray | list, quality: int = 95
) -> None:
    """Write images (uint8 [2N,H,W,3] RGB) and issame (bool [N]) as an insightface .bin.

    The file is a pickle of (list of JPEG bytes, list of bool), which insightface's loader reads;
    it is written atomically.
    """
    issame_list = [bool(v) for v in np.asarray(issame).reshape(-1)]
    if len(images) != 2 * len(issame_list):
        raise ParameterError(
            f"write_verification_bin({path}): {len(images)} images for {len(issame_list)} pairs; "
            f"expected {2 * len(issame_list)}"
        )
    bins = [encode_jpeg(np.asarray(img), quality=quality) for img in images]
    write_bytes_atomic(path, pickle.dumps((bins, issame_list), protocol=4))

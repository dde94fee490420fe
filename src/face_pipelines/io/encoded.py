"""Encoded face images read in place: random access to the JPEGs of an identity-folder set or an
insightface .rec, decoded one at a time (in the DataLoader worker that needs them).

Packing (face_pipelines.io.packed) stores H*W*3 bytes per image - 37,632 at 112 px, ~564 GB for
15M images - on top of the JPEGs. A set too large for that is trained from its JPEGs instead: this
module keeps only what random access needs (relative paths or record offsets, and labels) and
decodes with torchvision's libjpeg-turbo decoder, which returns the same pixels as the Pillow
decoder the packing step uses (both use libjpeg's default integer DCT and fancy upsampling), so a
set trains on the same images whichever way it is stored.

An encoded training-set folder (what `write_encoded_index` writes, in place of a packed folder)::

    index.json      {"format": "face_pipelines.encoded/1", "source": "folder" | "recordio",
                     "count": N, "height": H, "width": W, "num_classes": C, "complete": true,
                     "root": <dataset root> | "rec": <.rec>, "idx": <.idx>  (relative to this folder)}
    items.parquet   one row per image: `path` (relative to root) or `key` + `offset` (RecordIO),
                    and `label`

`open_image_set(folder)` opens either kind of training-set folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.atomic import atomic_dir
from face_pipelines.io.images import decode_image, resize_short_side_center_crop
from face_pipelines.io.packed import INDEX_FILE, PACKED_FORMAT, PackedImages

# One reader of .rec framing: the record parser of io.recordio, applied at a known offset.
from face_pipelines.io.recordio import (
    _class_label,
    _read_record_at,
    _unpack_ir,
    count_recordio,
    read_recordio_index,
    recordio_labels,
)

ENCODED_FORMAT = "face_pipelines.encoded/1"
ITEMS_FILE = "items.parquet"
_JPEG_MAGIC = b"\xff\xd8"


def decode_rgb(data: bytes, source: str, size: int | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB [H, W, 3], JPEG through torchvision, others through Pillow.

    Same pixels as `face_pipelines.io.images.decode_image` (the packing step's decoder), faster for
    JPEG. With `size`, an image of another size is resized and centre-cropped like the packing step
    does. Raises DataError naming `source` for corrupt, truncated or non-image data.
    """
    if bytes(data[:2]) != _JPEG_MAGIC:
        return decode_image(data, source, size)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 (pinned) deprecates its codecs for TorchCodec and warns on every
            # call; this is the one place to change when moving over.
            warnings.simplefilter("ignore", DeprecationWarning)
            chw = decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
            )
    except RuntimeError as exc:
        raise DataError(f"{source}: corrupt or truncated image ({exc})") from exc
    # A view, no copy: the training dataset transposes back to CHW (a no-op on this memory).
    image = chw.permute(1, 2, 0).numpy()
    if size is not None and image.shape[:2] != (size, size):
        image = resize_short_side_center_crop(np.ascontiguousarray(image), size)
    return image


class EncodedImages:
    """Random access to encoded images with labels, from an identity-folder set or a RecordIO file.

    `images[i] -> (uint8 [H, W, 3], label)` decodes image i (DataError if it cannot be decoded);
    `read(i)` gives its bytes and `source(i)` names it. Paths are kept as one fixed-width bytes
    array, not a list of str: at 15M images that is ~200 MB in one buffer, which forked DataLoader
    workers share instead of copying page by page as reference counts change.

    Build with `from_folder` / `from_recordio`, or open a folder written by `write_encoded_index`.
    """

    def __init__(
        self,
        *,
        labels: np.ndarray,
        image_size: int,
        num_classes: int | None = None,
        root: str | os.PathLike | None = None,
        paths: np.ndarray | None = None,
        rec: str | os.PathLike | None = None,
        idx: str | os.PathLike | None = None,
        keys: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.count = len(self.labels)
        self.height = self.width = int(image_size)
        max_label = int(self.labels.max()) if self.count else -1
        self.num_classes = max_label + 1 if num_classes is None else int(num_classes)
        if self.count and (int(self.labels.min()) < 0 or max_label >= self.num_classes):
            raise DataError(
                f"labels range over [{self.labels.min()}, {max_label}] but num_classes is "
                f"{self.num_classes}"
            )
        if (root is None) == (rec is None):
            raise ParameterError("EncodedImages needs either root + paths or rec + offsets")
        self.source_kind = "folder" if root is not None else "recordio"
        self.root = None if root is None else Path(root)
        self.paths = None if paths is None else np.asarray(paths, dtype=np.bytes_)
        self.rec = None if rec is None else Path(rec)
        self.idx = None if idx is None else Path(idx)
        self.keys = None if keys is None else np.asarray(keys, dtype=np.int64)
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        lengths = [len(a) for a in (self.paths, self.offsets) if a is not None]
        if lengths != [self.count]:
            raise DataError(f"{self.count} labels for {lengths} paths/offsets")
        self._rec_size = self.rec.stat().st_size if self.rec is not None else 0
        self._file = None  # the open .rec, per process (see __getstate__)
        self._file_pid = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        image_size: int,
        num_classes: int | None = None,
    ) -> EncodedImages:
        """Images `<root>/<path>` (a manifest's `path` column) with their labels."""
        root = Path(root)
        if not root.is_dir():
            raise MissingInputError(f"image folder dataset root {root} does not exist")
        encoded = np.char.encode(np.asarray(paths, dtype=str), "utf-8")
        return cls(
            labels=labels, image_size=image_size, num_classes=num_classes, root=root, paths=encoded
        )

    @classmethod
    def from_recordio(
        cls,
        rec: str | os.PathLike,
        idx: str | os.PathLike,
        image_size: int | None = None,
        records: Sequence[int] | np.ndarray | None = None,
    ) -> EncodedImages:
        """The image records of an insightface .rec/.idx, in `read_recordio` order (`records`:
        optional ordinals into that order, e.g. a manifest's `record` column).

        Labels come from one sequential pass over the .rec (io.recordio.recordio_labels); the image
        size from the `property` file beside it, else from the first image.
        """
        rec, idx = Path(rec), Path(idx)
        index = read_recordio_index(idx, rec.stat().st_size if rec.is_file() else None)
        n = count_recordio(rec, idx)
        # With a header record (insightface layout) images are records 1..n; without, every key.
        keys = np.arange(1, n + 1) if n < len(index) else np.fromiter(index, dtype=np.int64)
        labels = recordio_labels(rec, idx)
        if len(labels) != len(keys):
            raise DataError(f"{rec}: {len(labels)} image records but the .idx lists {len(keys)}")
        if records is not None:
            chosen = np.asarray(records, dtype=np.int64)
            keys, labels = keys[chosen], labels[chosen]
        offsets = np.array([index[int(k)] for k in keys], dtype=np.int64)
        num_classes, prop = None, rec.parent / "property"
        if prop.is_file():  # insightface's "num_classes,height,width"
            try:
                classes, height, _ = (int(v) for v in prop.read_text().strip().split(","))
            except ValueError:
                raise DataError(
                    f"{prop}: expected 'num_classes,height,width', got {prop.read_text()[:40]!r}"
                ) from None
            image_size = image_size or height
            num_classes = classes if records is None else None
        out = cls(
            labels=labels,
            image_size=image_size or 0,  # 0: measured from the first image below
            num_classes=num_classes,
            rec=rec,
            idx=idx,
            keys=keys,
            offsets=offsets,
        )
        if not image_size and len(out):
            out.height = out.width = int(decode_rgb(out.read(0), out.source(0)).shape[0])
        return out

    # -- access --------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the square training images in pixels."""
        return self.height

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        where = self.root if self.root is not None else self.rec
        return (
            f"EncodedImages({self.source_kind} {str(where)!r}, count={self.count}, "
            f"size={self.height}, num_classes={self.num_classes})"
        )

    def source(self, i: int) -> str:
        """Where image i lives (a file, or a record of the .rec), for error messages and reports."""
        if self.paths is not None:
            return str(self.root / self.paths[i].decode("utf-8"))
        return f"{self.rec} record {int(self.keys[i])}"

    def read(self, i: int) -> bytes:
        """The encoded bytes of image i. Raises DataError naming the file or record."""
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(f"index {i} out of range for {self!r}")
        if self.paths is not None:
            path = self.source(i)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc})") from exc
        if self._file is None or self._file_pid != os.getpid():
            self._file, self._file_pid = open(self.rec, "rb"), os.getpid()  # noqa: SIM115
        what = f"record {int(self.keys[i])}"
        payload = _read_record_at(
            self._file, str(self.rec), int(self.offsets[i]), self._rec_size, what
        )
        _, label, data = _unpack_ir(payload, str(self.rec), what)
        if _class_label(label, str(self.rec), what) != self.labels[i]:
            raise DataError(
                f"{self.rec} {what}: label {label} but the index says {self.labels[i]}; the .rec "
                "changed after the training set was built - rebuild it"
            )
        return data

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return decode_rgb(self.read(i), self.source(i), self.height), int(self.labels[i])

    def fingerprint(self, sample: int = 512) -> str:
        """Content hash of this set: size, classes, labels, names and the bytes of `sample` images
        spread evenly over it (training runs record it so they never resume on other data)."""
        h = hashlib.sha256()
        h.update(f"{self.count}/{self.height}/{self.num_classes}".encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        names = self.paths if self.paths is not None else self.keys
        h.update(np.ascontiguousarray(names).tobytes())
        if self.count:
            for i in np.unique(np.linspace(0, self.count - 1, min(sample, self.count)).astype(int)):
                h.update(self.read(int(i)))
        return h.hexdigest()[:20]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_file_pid"] = None  # each worker opens the .rec itself
        return state


def write_encoded_index(out_dir: str | os.PathLike, images: EncodedImages) -> Path:
    """Write `images` as an encoded training-set folder (module docstring); atomic, like a packed
    folder. Paths to the dataset are stored relative to `out_dir`, so the data tree can move."""
    out_dir = Path(out_dir)
    index = {
        "format": ENCODED_FORMAT,
        "source": images.source_kind,
        "count": images.count,
        "height": images.height,
        "width": images.width,
        "num_classes": images.num_classes,
    }
    if images.paths is not None:
        index["root"] = os.path.relpath(images.root.resolve(), out_dir.resolve())
        paths = np.char.decode(images.paths, "utf-8")
        items = pd.DataFrame({"path": paths, "label": images.labels})
    else:
        index["rec"] = os.path.relpath(images.rec.resolve(), out_dir.resolve())
        index["idx"] = os.path.relpath(images.idx.resolve(), out_dir.resolve())
        items = pd.DataFrame({"key": images.keys, "offset": images.offsets, "label": images.labels})
    with atomic_dir(out_dir) as tmp:
        items.to_parquet(tmp / ITEMS_FILE, index=False)
        # index.json is written last: it marks the folder complete.
        (tmp / INDEX_FILE).write_text(json.dumps({**index, "complete": True}, indent=1))
    return out_dir


def open_image_set(folder: str | os.PathLike) -> PackedImages | EncodedImages:
    """The training images of a training-set folder: packed (io.packed) or encoded (this module)."""
    folder = Path(folder)
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return PackedImages(folder)  # its error says what is missing
    except (OSError, ValueError) as exc:
        raise DataError(f"training-set index {path} is not readable JSON: {exc}") from exc
    fmt = index.get("format") if isinstance(index, dict) else None
    if fmt == PACKED_FORMAT:
        return PackedImages(folder)
    if fmt != ENCODED_FORMAT:
        raise DataError(
            f"{path} has format {fmt!r}; expected {PACKED_FORMAT!r} or {ENCODED_FORMAT!r}"
        )
    if index.get("complete") is not True:
        raise DataError(f"{path} is not marked complete; re-run the step that builds the set")
    try:
        items = pd.read_parquet(folder / ITEMS_FILE)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / ITEMS_FILE} is missing or unreadable: {exc}") from exc
    if len(items) != index["count"]:
        raise DataError(
            f"{folder / ITEMS_FILE} has {len(items)} rows; index.json says {index['count']}"
        )
    common = {
        "labels": items["label"].to_numpy(),
        "image_size": int(index["height"]),
        "num_classes": int(index["num_classes"]),
    }
    if index["source"] == "folder":
        root = (folder / index["root"]).resolve()
        if not root.is_dir():
            raise MissingInputError(
                f"{path}: the images' dataset root {root} does not exist (moved or "
                "deleted after the training set was built)"
            )
        paths = np.char.encode(items["path"].to_numpy(dtype=str), "utf-8")
        return EncodedImages(root=root, paths=paths, **common)
    rec, idx = (folder / index["rec"]).resolve(), (folder / index["idx"]).resolve()
    if not rec.is_file():
        raise MissingInputError(f"{path}: the RecordIO file {rec} does not exist")
    return EncodedImages(
        rec=rec, idx=idx, keys=items["key"].to_numpy(), offsets=items["offset"].to_numpy(), **common
    )

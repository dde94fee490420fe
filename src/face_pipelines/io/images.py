"""Decode and encode face images (JPEG/PNG bytes <-> uint8 RGB arrays).

Every decode failure becomes a DataError that names where the bytes came from (a file, a record, an
index inside a .bin), so a bad image in a large dataset can be found and removed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from face_pipelines.errors import DataError, ParameterError

__all__ = [
    "decode_image",
    "encode_jpeg",
    "resize_short_side_center_crop",
    "check_image_file",
    "check_image_files",
    "NotAnImageError",
]


# Formats a face dataset plausibly holds. Restricting Image.open to these keeps untrusted bytes away
# from plugins such as EPS (which shells out to Ghostscript) and skips probing dozens of formats.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "PPM")


class NotAnImageError(DataError):
    """The bytes are not in any image format the decoder knows (as opposed to a damaged image)."""


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode != "RGB":
        # Palette/alpha/greyscale/CMYK images all become plain RGB; alpha is dropped, not blended.
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def resize_short_side_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image so its short side is `size`, then centre-crop to size x size."""
    if not isinstance(size, int | np.integer) or size <= 0:
        raise ParameterError(f"size must be a positive integer, got {size!r}")
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    scale = size / min(h, w)
    new_w = max(size, round(w * scale))
    new_h = max(size, round(h * scale))
    pil = Image.fromarray(img)
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    return np.asarray(pil, dtype=np.uint8)


def decode_image(data: bytes, source: str, size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into a uint8 HxWx3 RGB array.

    Args:
        data: the encoded image (bytes, bytearray, memoryview or a 1-D uint8 array).
        source: where the bytes came from, used in error messages (path, record, index).
        size: if given, resize the short side to `size` and centre-crop to size x size.

    Raises:
        NotAnImageError (a DataError): the bytes are not a known image format.
        DataError: the image is truncated or corrupt.
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DataError(
                f"{source}: expected encoded image bytes (1-D uint8 array), got array of "
                f"dtype {data.dtype} and shape {data.shape}"
            )
        data = data.tobytes()
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise DataError(f"{source}: expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise NotAnImageError(f"{source}: empty data (0 bytes), expected an encoded image")
    try:
        with warnings.catch_warnings():
            # A huge declared size is a sign of a corrupt/hostile header; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                img.load()
                arr = _to_rgb_array(img)
    except UnidentifiedImageError as exc:
        raise NotAnImageError(
            f"{source}: not an image ({len(data)} bytes, starts with {data[:8]!r}); "
            f"expected one of {', '.join(IMAGE_FORMATS)}"
        ) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        # PIL reports truncated/corrupt streams as OSError, bad headers as SyntaxError/ValueError.
        raise DataError(f"{source}: corrupt or truncated image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{source}: image too large to decode safely ({exc})") from exc
    if size is not None:
        arr = resize_short_side_center_crop(arr, size)
    return arr


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """Encode a uint8 HxWx3 RGB (or HxW greyscale) array as JPEG bytes."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ParameterError(f"encode_jpeg expects a uint8 image, got dtype {img.dtype}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
        raise ParameterError(f"encode_jpeg expects HxWx3 or HxW, got shape {img.shape}")
    if not 1 <= int(quality) <= 100:
        raise ParameterError(f"quality must be in [1, 100], got {quality}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def check_image_file(path: str) -> tuple[str | None, str]:
    """Decode the image file at `path` fully; (None, "") if readable, else (reason, message).

    reason is "not_an_image" (no known image format) or "corrupt_image" (a damaged image). Used by
    dataset scans, which skip and report such files instead of failing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                img.load()
    except UnidentifiedImageError as exc:
        return "not_an_image", str(exc)
    except Exception as exc:  # noqa: BLE001 - any decode failure is a skip reason, not a crash
        return "corrupt_image", f"{type(exc).__name__}: {exc}"
    return None, ""


def check_image_files(paths: list[str]) -> list[tuple[str | None, str]]:
    """check_image_file over a chunk of paths (the unit of work sent to a scan's worker process)."""
    return [check_image_file(p) for p in paths]

"""insightface RecordIO (.rec + .idx) without mxnet.

Record framing (dmlc-core): uint32 magic 0xced7230a, uint32 lrec (continuation flag in the top 3
bits, length in the low 29), payload zero-padded to a multiple of 4 bytes. Where the magic word occurs
at a 4-byte-aligned position inside a payload, the writer splits the payload there (flags 1 = start,
2 = middle, 3 = end) and drops the magic word; the reader re-inserts it between the parts.

Payload: an IRHeader struct 'IfQQ' (flag, label, id, id2; 24 bytes, little-endian); if flag > 0,
`flag` float32 label values follow; then the image bytes.

insightface layout: record 0 has flag > 0 and label (first_identity_record, end). Records
1 .. first_identity_record-1 are images labelled with their class; records first_identity_record ..
end-1 are one per identity with label [start, end) (the image records of that identity). If record
0 has flag 0, every record is an image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.atomic import atomic_path

__all__ = [
    "RECORDIO_MAGIC",
    "read_recordio",
    "write_recordio",
    "count_recordio",
    "recordio_labels",
    "read_recordio_index",
]

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_FRAME = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1
# Record indices are stored as float32 labels in the header records; beyond 2**24 they stop being
# exact, so the layout cannot address more records than that.
_MAX_FLOAT32_INT = 1 << 24


def _pad4(n: int) -> int:
    return (n + 3) & ~3


# --------------------------------------------------------------------------------------------------
# Low-level framing


def _read_record_at(f: BinaryIO, rec: str, offset: int, file_size: int, what: str) -> bytes:
    """Read one logical record starting at `offset` (joining split parts); f is positioned after."""
    f.seek(offset)
    parts: list[bytes] = []
    pos = offset
    while True:
        frame = f.read(_FRAME.size)
        if len(frame) != _FRAME.size:
            raise DataError(
                f"{rec}: truncated file: {what} at offset {pos} has only {len(frame)} of the "
                f"{_FRAME.size} header bytes (file size {file_size})"
            )
        magic, lrec = _FRAME.unpack(frame)
        if magic != RECORDIO_MAGIC:
            raise DataError(
                f"{rec}: bad magic 0x{magic:08x} at offset {pos} ({what}); expected "
                f"0x{RECORDIO_MAGIC:08x} - not a RecordIO file, or the offset is wrong"
            )
        cflag = lrec >> 29
        length = lrec & _LEN_MASK
        padded = _pad4(length)
        payload = f.read(padded)
        if len(payload) != padded:
            raise DataError(
                f"{rec}: truncated file: {what} at offset {pos} declares {length} bytes but only "
                f"{max(0, len(payload))} remain (file size {file_size})"
            )
        pos += _FRAME.size + padded
        if cflag == 0:
            if parts:
                raise DataError(
                    f"{rec}: {what} at offset {pos}: unexpected whole record inside a split one"
                )
            return payload[:length]
        if cflag == 1:
            if parts:
                raise DataError(f"{rec}: {what}: split record restarted at offset {pos}")
            parts.append(payload[:length])
        elif cflag in (2, 3):
            if not parts:
                raise DataError(
                    f"{rec}: {what} at offset {pos}: continuation part (flag {cflag}) without a start"
                )
            parts.append(payload[:length])
            if cflag == 3:
                return _MAGIC_BYTES.join(parts)
        else:
            raise DataError(f"{rec}: {what} at offset {pos}: invalid continuation flag {cflag}")


def _encode_record(payload: bytes) -> bytes:
    """Frame one payload, splitting it wherever the magic word sits at an aligned position."""
    if len(payload) > _LEN_MASK:
        raise DataError(f"record of {len(payload)} bytes exceeds the RecordIO limit of {_LEN_MASK}")
    out = bytearray()
    start = 0
    search = 0
    while True:
        i = payload.find(_MAGIC_BYTES, search)
        while i != -1 and i % 4:
            i = payload.find(_MAGIC_BYTES, i + 1)
        if i == -1 or i + 4 > (len(payload) & ~3):
            break
        out += _FRAME.pack(RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
        out += payload[start:i]
        start = i + 4
        search = start
    tail = len(payload) - start
    out += _FRAME.pack(RECORDIO_MAGIC, ((3 if start else 0) << 29) | tail)
    out += payload[start:]
    out += b"\0" * (_pad4(tail) - tail)
    return bytes(out)


def _unpack_ir(payload: bytes, rec: str, what: str) -> tuple[int, np.ndarray | float, bytes]:
    """Split a payload into (flag, label, image bytes); label is a float or a float32 array."""
    if len(payload) < _IR_HEADER.size:
        raise DataError(
            f"{rec}: {what}: payload of {len(payload)} bytes is shorter than the "
            f"{_IR_HEADER.size}-byte IRHeader"
        )
    flag, label, _id, _id2 = _IR_HEADER.unpack_from(payload)
    body = payload[_IR_HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataError(
                f"{rec}: {what}: IRHeader declares {flag} labels but the record is too short"
            )
        labels = np.frombuffer(body, dtype="<f4", count=flag).astype(np.float32)
        return flag, labels, body[4 * flag :]
    return flag, label, body


def _pack_ir(label: float | tuple[float, ...], data: bytes = b"") -> bytes:
    if isinstance(label, tuple | list | np.ndarray):
        values = np.asarray(label, dtype="<f4")
        return _IR_HEADER.pack(values.size, 0.0, 0, 0) + values.tobytes() + data
    return _IR_HEADER.pack(0, float(label), 0, 0) + data


def _class_label(label: np.ndarray | float, rec: str, what: str) -> int:
    value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
    if not np.isfinite(value) or value < 0 or value != int(value):
        raise DataError(f"{rec}: {what}: label {value} is not a non-negative integer class id")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Index


def read_recordio_index(idx_path: str | os.PathLike, rec_size: int | None = None) -> dict[int, int]:
    """Read a .idx file ("key<TAB>offset" per line) into {key: offset}, checking offsets."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise MissingInputError(f"RecordIO index file not found: {idx_path}")
    index: dict[int, int] = {}
    with open(idx_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            fields = line.split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
                if len(fields) != 2:
                    raise ValueError
            except (ValueError, IndexError):
                raise DataError(
                    f"{idx_path} line {lineno}: expected 'key<TAB>offset', got {line[:80]!r}"
                ) from None
            if offset < 0 or (rec_size is not None and offset + _FRAME.size > rec_size):
                raise DataError(
                    f"{idx_path} line {lineno}: offset {offset} for key {key} is past the end of "
                    f"the .rec file ({rec_size} bytes) - the .idx does not belong to this .rec or "
                    "the .rec is truncated"
                )
            if key in index:
                raise DataError(f"{idx_path} line {lineno}: duplicate key {key}")
            index[key] = offset
    return index


class _RecordSource:
    """Record access by key: through the .idx offsets, or by a sequential scan of the .rec."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise MissingInputError(f"RecordIO file not found: {self.rec_path}")
        self.rec = str(self.rec_path)
        self.size = self.rec_path.stat().st_size
        self.index = read_recordio_index(idx_path, self.size) if idx_path is not None else None

    def open(self) -> BinaryIO:
        return open(self.rec_path, "rb")

    def read_key(self, f: BinaryIO, key: int) -> bytes:
        assert self.index is not None
        if key not in self.index:
            raise DataError(f"{self.rec}: record {key} is not listed in the .idx file")
        return _read_record_at(f, self.rec, self.index[key], self.size, f"record {key}")

    def scan(self, f: BinaryIO) -> Iterator[tuple[int, bytes]]:
        """Yield (ordinal, payload) for every record in file order."""
        offset = 0
        ordinal = 0
        while offset < self.size:
            payload = _read_record_at(f, self.rec, offset, self.size, f"record {ordinal}")
            yield ordinal, payload
            offset = f.tell()
            ordinal += 1

    def keys_in_order(self) -> list[int]:
        assert self.index is not None
        return list(self.index.keys())


def _header_range(payload: bytes, rec: str) -> tuple[int, int] | None:
    """(first_identity_record, end) from record 0, or None if record 0 is an ordinary image."""
    flag, label, _ = _unpack_ir(payload, rec, "record 0")
    if flag == 0:
        return None
    if label.size < 2:
        raise DataError(f"{rec}: record 0 has flag {flag} but needs 2 labels (first_identity, end)")
    first, end = float(label[0]), float(label[1])
    if first != int(first) or end != int(end) or not 1 <= first <= end:
        raise DataError(
            f"{rec}: record 0 header label ({first}, {end}) is not a valid "
            "(first_identity_record, end) pair"
        )
    return int(first), int(end)


# --------------------------------------------------------------------------------------------------
# Public API


def read_recordio(
    rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield (class label, encoded image bytes) for every image record of an insightface .rec.

    With `idx_path`, records are located through the index; without, the .rec is scanned in order
    (record key = position in the file). Errors name the file and the record/offset/line.
    """
    # Opened here, not in the generator, so a missing file or a bad .idx fails at the call.
    src = _RecordSource(rec_path, idx_path)
    return _iter_image_records(src, idx_path)


def _iter_image_records(
    src: _RecordSource, idx_path: str | os.PathLike | None
) -> Iterator[tuple[int, bytes]]:
    with src.open() as f:
        if src.index is not None:
            if 0 not in src.index:
                raise DataError(f"{idx_path}: no entry for record 0 (the header record)")
            header = _header_range(src.read_key(f, 0), src.rec)
            if header is None:
                keys: Iterable[int] = src.keys_in_order()
            else:
                keys = range(1, header[0])
            for key in keys:
                payload = src.read_key(f, key)
                _, label, img = _unpack_ir(payload, src.rec, f"record {key}")
                yield _class_label(label, src.rec, f"record {key}"), img
            return
        header: tuple[int, int] | None = None
        for ordinal, payload in src.scan(f):
            if ordinal == 0:
                header = _header_range(payload, src.rec)
                if header is not None:
                    continue
            elif header is not None and ordinal >= header[0]:
                return
            _, label, img = _unpack_ir(payload, src.rec, f"record {ordinal}")
            yield _class_label(label, src.rec, f"record {ordinal}"), img
        if header is not None and ordinal < header[0] - 1:
            raise DataError(
                f"{src.rec}: header says images are records 1..{header[0] - 1} but the file ends "
                f"after record {ordinal}"
            )


def count_recordio(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> int:
    """Number of image records (from the header record when present, else by counting)."""
    src = _RecordSource(rec_path, idx_path)
    with src.open() as f:
        first = src.read_key(f, 0) if src.index is not None else None
        if first is None:
            if src.size == 0:
                return 0
            first = _read_record_at(f, src.rec, 0, src.size, "record 0")
        header = _header_range(first, src.rec)
        if header is not None:
            return header[0] - 1
        if src.index is not None:
            return len(src.index)
        return sum(1 for _ in src.scan(f))


def recordio_labels(
    rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Class labels (int64) of all image records, in read_recordio order."""
    return np.fromiter((label for label, _ in read_recordio(rec_path, idx_path)), dtype=np.int64)


def write_recordio(
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike,
    items: Iterable[tuple[int, bytes]],
    image_size: tuple[int, int] = (112, 112),
) -> int:
    """Write (label, encoded image) items as an insightface .rec/.idx plus a `property` file.

    Images of one identity must be consecutive (any identity order); labels must cover 0..C-1.
    Layout: header record 0 with label (first_identity_record, end), image records 1..N, identity
    records N+1..N+C with label [start, end). The .rec, .idx and property file appear only once
    complete. Returns the number of images written.
    """
    rec_path, idx_path = Path(rec_path), Path(idx_path)
    h, w = (int(v) for v in image_size)
    prop_path = rec_path.parent / "property"
    header_len = len(_encode_record(_pack_ir((0.0, 0.0))))
    with (
        atomic_path(rec_path) as rec_tmp,
        atomic_path(idx_path) as idx_tmp,
        atomic_path(prop_path) as prop_tmp,
    ):
        offsets: list[tuple[int, int]] = []
        ranges: dict[int, list[int]] = {}
        current: int | None = None
        with open(rec_tmp, "wb") as f:
            f.write(b"\0" * header_len)  # record 0 is written last, when its label is known
            key = 1
            for item_no, item in enumerate(items):
                try:
                    label, data = item
                    label = int(label)
                except (TypeError, ValueError):
                    raise ParameterError(
                        f"write_recordio({rec_path}): item {item_no} must be (int label, bytes)"
                    ) from None
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise ParameterError(
                        f"write_recordio({rec_path}): item {item_no} image must be bytes, got "
                        f"{type(data).__name__}"
                    )
                if label < 0:
                    raise DataError(f"write_recordio({rec_path}): item {item_no} label {label} < 0")
                if label != current:
                    if label in ranges:
                        raise DataError(
                            f"write_recordio({rec_path}): item {item_no}: identity {label} appears "
                            "again after other identities; images of an identity must be consecutive"
                        )
                    ranges[label] = [key, key]
                    current = label
                offsets.append((key, f.tell()))
                f.write(_encode_record(_pack_ir(float(label), bytes(data))))
                ranges[label][1] = key + 1
                key += 1
            num_images = key - 1
            num_classes = len(ranges)
            if ranges and sorted(ranges) != list(range(num_classes)):
                missing = sorted(set(range(max(ranges) + 1)) - set(ranges))[:5]
                raise DataError(
                    f"write_recordio({rec_path}): labels must be contiguous from 0; missing "
                    f"identities {missing}"
                )
            first_identity = num_images + 1
            end = first_identity + num_classes
            if end > _MAX_FLOAT32_INT:
                raise DataError(
                    f"write_recordio({rec_path}): {end} records exceed the {_MAX_FLOAT32_INT} "
                    "that float32 header labels can index exactly"
                )
            for cls in range(num_classes):
                start, stop = ranges[cls]
                offsets.append((first_identity + cls, f.tell()))
                f.write(_encode_record(_pack_ir((float(start), float(stop)))))
            header = _encode_record(_pack_ir((float(first_identity), float(end))))
            if len(header) != header_len:  # cannot happen: header labels are small positive floats
                raise AssertionError("RecordIO header record changed size")
            f.seek(0)
            f.write(header)
        idx_lines = ["0\t0\n"] + [f"{k}\t{o}\n" for k, o in offsets]
        idx_tmp.write_text("".join(idx_lines), encoding="utf-8")
        prop_tmp.write_text(f"{num_classes},{h},{w}", encoding="utf-8")
    return num_images

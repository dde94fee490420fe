"""RecordIO: our reader against an independent writer, our writer against an independent reader."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.images import decode_image
from face_pipelines.io.recordio import (
    count_recordio,
    read_recordio,
    recordio_labels,
    write_recordio,
)

# ---------------------------------------------------------------------------------------------
# Independent reference implementation (plain struct code written from the dmlc-core/mxnet format
# description; shares nothing with face_pipelines.io.recordio).

MAGIC = 0xCED7230A
MAGIC_LE = struct.pack("<I", MAGIC)


def ref_frame(payload: bytes) -> bytes:
    """dmlc-core RecordIOWriter::WriteRecord: split at aligned magic words, pad to 4 bytes."""
    out = b""
    dptr = 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == MAGIC_LE:
            flag = 1 if dptr == 0 else 2
            out += struct.pack("<II", MAGIC, (flag << 29) | (i - dptr)) + payload[dptr:i]
            dptr = i + 4
    flag = 3 if dptr else 0
    out += struct.pack("<II", MAGIC, (flag << 29) | (len(payload) - dptr)) + payload[dptr:]
    out += b"\0" * ((4 - len(payload) % 4) % 4)
    return out


def ref_pack(label, img: bytes = b"") -> bytes:
    """mxnet.recordio.pack with IRHeader 'IfQQ'."""
    if isinstance(label, tuple):
        return (
            struct.pack("<IfQQ", len(label), 0.0, 0, 0)
            + struct.pack(f"<{len(label)}f", *label)
            + img
        )
    return struct.pack("<IfQQ", 0, float(label), 0, 0) + img


def ref_write_insightface(rec: Path, idx: Path, items: list[tuple[int, bytes]]) -> None:
    """insightface layout: header, images (grouped by identity), one record per identity."""
    n = len(items)
    classes = sorted({lab for lab, _ in items})
    records = [ref_pack((float(n + 1), float(n + 1 + len(classes))))]
    records += [ref_pack(lab, img) for lab, img in items]
    for c in classes:
        keys = [k + 1 for k, (lab, _) in enumerate(items) if lab == c]
        records.append(ref_pack((float(keys[0]), float(keys[-1] + 1))))
    ref_write_records(rec, idx, records)


def ref_write_records(rec: Path, idx: Path, records: list[bytes]) -> None:
    data = b""
    lines = []
    for key, payload in enumerate(records):
        lines.append(f"{key}\t{len(data)}\n")
        data += ref_frame(payload)
    rec.write_bytes(data)
    idx.write_text("".join(lines))


def ref_read_all(rec: Path) -> list[tuple[int, bytes, list[int]]]:
    """Sequential dmlc-core reader: (offset, joined payload, flags seen) per logical record."""
    data = rec.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        start = pos
        parts, flags = [], []
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == MAGIC
            flag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            flags.append(flag)
            pos += 8 + (length + 3) // 4 * 4
            if flag in (0, 3):
                break
        out.append((start, MAGIC_LE.join(parts), flags))
    return out


def ref_unpack(payload: bytes):
    flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
    body = payload[24:]
    if flag:
        return list(struct.unpack_from(f"<{flag}f", body)), body[4 * flag :]
    return label, body


# ---------------------------------------------------------------------------------------------


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def with_magic(img: bytes) -> bytes:
    """JPEG followed by trailing bytes holding the magic word at aligned positions of the payload.

    The payload is IRHeader (24 bytes) + image, so aligned image offsets are aligned payload
    offsets. Two consecutive magics force a zero-length middle part (flag 2); an unaligned magic
    must not split.
    """
    pad = b"\0" * ((4 - len(img) % 4) % 4)
    return img + pad + MAGIC_LE + b"abcd" + MAGIC_LE + MAGIC_LE + b"xy" + MAGIC_LE + b"z"


@pytest.fixture
def items() -> list[tuple[int, bytes]]:
    return [
        (0, jpeg(1)),
        (0, with_magic(jpeg(2))),
        (1, jpeg(3)),
        (2, jpeg(4)),
        (2, MAGIC_LE + jpeg(5)),  # magic right at the start of the image bytes
        (2, jpeg(6)),
    ]


def test_reads_independently_written_insightface_rec(tmp_path, items):
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    ref_write_insightface(rec, idx, items)
    all_flags = [f for _, _, flags in ref_read_all(rec) for f in flags]
    assert {1, 2, 3} <= set(all_flags), "fixture must exercise split records"

    assert list(read_recordio(rec, idx)) == items
    assert list(read_recordio(rec)) == items  # sequential scan, no index
    assert count_recordio(rec, idx) == len(items) == count_recordio(rec)
    assert recordio_labels(rec, idx).tolist() == [lab for lab, _ in items]
    # the split/joined image is still a decodable JPEG
    assert decode_image(list(read_recordio(rec))[1][1], "rec[2]").shape == (16, 16, 3)


def test_reads_flag0_header_all_records_images(tmp_path, items):
    rec, idx = tmp_path / "plain.rec", tmp_path / "plain.idx"
    ref_write_records(rec, idx, [ref_pack(lab, img) for lab, img in items])
    assert list(read_recordio(rec, idx)) == items
    assert list(read_recordio(rec)) == items
    assert count_recordio(rec, idx) == len(items) == count_recordio(rec)


def test_reads_array_labels(tmp_path):
    # Some released .rec files store the class as a label array (flag > 0) on image records.
    items = [(0, jpeg(1)), (1, jpeg(2))]
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    records = [ref_pack((3.0, 5.0))] + [ref_pack((float(lab), 7.0), img) for lab, img in items]
    records += [ref_pack((1.0, 2.0)), ref_pack((2.0, 3.0))]
    ref_write_records(rec, idx, records)
    assert list(read_recordio(rec, idx)) == items


def test_written_rec_reads_with_independent_reader(tmp_path, items):
    rec, idx = tmp_path / "out" / "train.rec", tmp_path / "out" / "train.idx"
    assert write_recordio(rec, idx, items, image_size=(64, 64)) == len(items)

    records = ref_read_all(rec)
    assert {1, 2, 3} <= {f for _, _, flags in records for f in flags}
    n, c = len(items), 3
    assert len(records) == 1 + n + c
    header_label, header_img = ref_unpack(records[0][1])
    assert header_label == [n + 1, n + 1 + c] and header_img == b""
    for k, (lab, img) in enumerate(items, start=1):
        assert ref_unpack(records[k][1]) == (lab, img)
    assert [ref_unpack(r[1])[0] for r in records[n + 1 :]] == [[1, 3], [3, 4], [4, 7]]

    idx_lines = idx.read_text().splitlines()
    assert idx_lines == [f"{k}\t{off}" for k, (off, _, _) in enumerate(records)]
    assert (rec.parent / "property").read_text().strip() == "3,64,64"

    # byte-identical to the independent writer: same layout, same framing
    ref_rec, ref_idx = tmp_path / "ref.rec", tmp_path / "ref.idx"
    ref_write_insightface(ref_rec, ref_idx, items)
    assert rec.read_bytes() == ref_rec.read_bytes()
    assert idx.read_text() == ref_idx.read_text()
    # and round-trips through our reader
    assert list(read_recordio(rec, idx)) == items
    assert not [p for p in rec.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_rejects_interleaved_identities_and_leaves_nothing(tmp_path):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    with pytest.raises(DataError, match="consecutive"):
        write_recordio(rec, idx, [(0, b"a"), (1, b"b"), (0, b"c")])
    with pytest.raises(DataError, match="contiguous from 0"):
        write_recordio(rec, idx, [(0, b"a"), (2, b"b")])
    assert list(tmp_path.iterdir()) == []


def test_truncated_rec(tmp_path, items):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    ref_write_insightface(rec, idx, items)
    offsets = [off for off, _, _ in ref_read_all(rec)]
    data = rec.read_bytes()
    rec.write_bytes(data[: offsets[4] + 20])  # cut inside record 4's payload
    with pytest.raises(DataError, match=r"t\.rec.*truncated.*record 4.*offset"):
        list(read_recordio(rec))
    # with the index, the .idx entries of later records now point past the end
    with pytest.raises(DataError, match=r"t\.idx line \d+: offset \d+ .*past the end"):
        list(read_recordio(rec, idx))


def test_idx_offset_past_end(tmp_path, items):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    ref_write_insightface(rec, idx, items)
    lines = idx.read_text().splitlines()
    lines[3] = f"3\t{rec.stat().st_size + 1000}"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t\.idx line 4: offset \d+ for key 3 is past the end"):
        list(read_recordio(rec, idx))


def test_bad_magic_and_misaligned_offset(tmp_path, items):
    rec, idx = tmp_path / "m.rec", tmp_path / "m.idx"
    ref_write_insightface(rec, idx, items)
    data = bytearray(rec.read_bytes())
    off2 = ref_read_all(rec)[2][0]
    data[off2 : off2 + 4] = b"\x00\x11\x22\x33"
    rec.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"m\.rec: bad magic 0x33221100 at offset {off2}"):
        list(read_recordio(rec))
    with pytest.raises(DataError, match="bad magic.*record 2"):
        list(read_recordio(rec, idx))


def test_not_a_recordio_and_missing(tmp_path):
    bogus = tmp_path / "bogus.rec"
    bogus.write_bytes(b"hello world, not a record file")
    with pytest.raises(DataError, match="bad magic"):
        list(read_recordio(bogus))
    with pytest.raises(MissingInputError, match="nope.rec"):
        list(read_recordio(tmp_path / "nope.rec"))

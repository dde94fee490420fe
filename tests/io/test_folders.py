"""Identity-folder scans with planted bad inputs; single-image decode errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.folders import scan_identity_folders, write_scan_report
from face_pipelines.io.images import NotAnImageError, decode_image, encode_jpeg
from face_pipelines.io.manifest import validate_manifest


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path):
    """Five identity folders with planted problems, plus a stray file at the root."""
    root = tmp_path / "webface"
    files = {
        "id_b/0.jpg": image_bytes(1),
        "id_b/1.jpg": image_bytes(2),
        "id_b/2.jpg": image_bytes(3)[:150],  # truncated JPEG
        "id_b/notes.txt": b"not an image",  # wrong extension
        "id_a/0.png": image_bytes(4, "PNG"),
        "id_a/1.JPG": image_bytes(5),
        "id_c/0.jpg": b"<html>this .jpg is a web page</html>",  # image extension, not an image
        "id_c/1.jpeg": image_bytes(6),
        "id_e/0.jpg": image_bytes(7)[:100],  # the identity's only image is corrupt
        "README.md": b"stray file at root",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "id_d_empty").mkdir()
    return root


def test_scan_skips_counts_and_reports(dataset):
    manifest, report = scan_identity_folders(dataset, progress=False)
    assert manifest["path"].tolist() == [
        "id_a/0.png",
        "id_a/1.JPG",
        "id_b/0.jpg",
        "id_b/1.jpg",
        "id_c/1.jpeg",
    ]
    assert manifest["identity"].tolist() == [0, 0, 1, 1, 2]
    assert manifest["identity"].dtype == np.int64
    assert manifest["identity_name"].tolist() == ["id_a", "id_a", "id_b", "id_b", "id_c"]
    validate_manifest(manifest, "scan")  # meets the manifest contract

    skipped = report["skipped"]
    assert skipped["corrupt_image"] == ["id_b/2.jpg", "id_e/0.jpg"]
    assert skipped["not_an_image"] == ["id_b/notes.txt", "id_c/0.jpg"]
    assert skipped["empty_identity_folder"] == ["id_d_empty"]
    assert skipped["identity_without_valid_images"] == ["id_e"]
    assert skipped["unexpected_entry"] == ["README.md"]
    assert report["scanned"] == 9 and report["kept"] == 5 and report["identities"] == 3
    assert report["skipped_counts"]["corrupt_image"] == 2
    assert "truncated" in report["errors"]["id_b/2.jpg"].lower()
    assert report["root"] == str(dataset)


def test_parallel_scan_matches_serial(dataset):
    serial = scan_identity_folders(dataset, progress=False)
    parallel = scan_identity_folders(dataset, num_workers=2, progress=False)
    assert serial[0].equals(parallel[0])
    assert serial[1] == parallel[1]
    with pytest.raises(ParameterError, match="start_method"):
        scan_identity_folders(dataset, num_workers=2, start_method="teleport", progress=False)


def test_scan_without_verify_only_checks_extensions(dataset):
    manifest, report = scan_identity_folders(dataset, verify=False, progress=False)
    assert "id_b/2.jpg" in manifest["path"].tolist()  # not decoded, so not caught
    assert report["skipped"]["not_an_image"] == ["id_b/notes.txt"]
    assert report["skipped"]["empty_identity_folder"] == ["id_d_empty"]
    assert manifest["identity"].max() == 3  # id_a, id_b, id_c, id_e


def test_write_scan_report(dataset, tmp_path):
    _, report = scan_identity_folders(dataset, progress=False)
    out = tmp_path / "reports" / "scan.json"
    write_scan_report(report, out)
    assert json.loads(out.read_text()) == report
    assert [p.name for p in out.parent.iterdir()] == ["scan.json"]


def test_bad_roots(tmp_path):
    with pytest.raises(MissingInputError, match="does_not_exist"):
        scan_identity_folders(tmp_path / "does_not_exist", progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "0.jpg").write_bytes(image_bytes(0))
    with pytest.raises(DataError, match=r"flat: no identity folders"):
        scan_identity_folders(flat, progress=False)
    only_bad = tmp_path / "only_bad"
    (only_bad / "x").mkdir(parents=True)
    (only_bad / "x" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"only_bad: no readable images"):
        scan_identity_folders(only_bad, progress=False)


def test_decode_image_errors_name_the_source(dataset):
    truncated = (dataset / "id_b/2.jpg").read_bytes()
    with pytest.raises(DataError, match=r"id_b/2\.jpg: corrupt or truncated"):
        decode_image(truncated, "id_b/2.jpg")
    with pytest.raises(NotAnImageError, match=r"notes\.txt: not an image"):
        decode_image(b"not an image", "notes.txt")
    with pytest.raises(NotAnImageError, match="empty"):
        decode_image(b"", "empty.jpg")


def test_decode_image_rgb_and_resize():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[..., 0] = 200  # red
    img[:, :10] = 0  # left band that the centre crop removes
    out = decode_image(encode_jpeg(img), "red.jpg")
    assert out.shape == (40, 60, 3) and out[20, 30, 0] > 180 and out[20, 30, 2] < 30
    sq = decode_image(encode_jpeg(img), "red.jpg", size=16)
    assert sq.shape == (16, 16, 3) and sq[..., 0].min() > 150
    grey = io.BytesIO()
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(grey, "PNG")
    assert decode_image(grey.getvalue(), "grey.png").shape == (8, 8, 3)

"""Encoded training sets: JPEGs read in place from identity folders or an insightface .rec decode to
exactly the pixels the packing step stores, labels aligned, and survive the index round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.encoded import (
    EncodedImages,
    decode_rgb,
    open_image_set,
    write_encoded_index,
)
from face_pipelines.io.images import encode_jpeg
from face_pipelines.io.packed import PackedImages
from face_pipelines.io.recordio import write_recordio
from face_pipelines.io.subset import pack_subset


def write_identity_folders(root, n_ids: int = 4, per_id: int = 5, size: int = 24, seed: int = 0):
    """<root>/<identity:06d>/<index:03d>.jpg (the synthetic dataset layout) + its manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for identity in range(n_ids):
        base = rng.integers(0, 256, (1, 1, 3))
        for index in range(per_id):
            noise = rng.integers(-60, 61, (size, size, 3))
            image = np.clip(base + noise, 0, 255).astype(np.uint8)
            rel = f"{identity:06d}/{index:03d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode_jpeg(image, quality=int(rng.integers(60, 96))))
            rows.append({"path": rel, "identity": identity})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(root / "manifest.parquet")
    return manifest


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoded") / "synthetic"
    return root, write_identity_folders(root)


def test_folder_jpegs_decode_to_the_packed_pixels_and_labels(jpeg_set, tmp_path):
    root, manifest = jpeg_set
    pack_subset(manifest, tmp_path / "packed", 24, shard_size=8, folder_root=root, progress=False)
    packed = PackedImages(tmp_path / "packed")
    encoded = EncodedImages.from_folder(root, manifest["path"], manifest["identity"], 24)
    assert len(encoded) == len(packed) == 20 and encoded.num_classes == packed.num_classes == 4
    np.testing.assert_array_equal(encoded.labels, packed.labels)
    for i in range(len(packed)):
        image, label = encoded[i]
        assert image.dtype == np.uint8 and image.shape == (24, 24, 3)
        np.testing.assert_array_equal(image, packed[i][0])  # identical, not close
        assert label == packed[i][1]


def test_recordio_records_decode_like_the_folder(jpeg_set, tmp_path):
    root, manifest = jpeg_set
    items = [
        (int(r.identity), (root / r.path).read_bytes()) for r in manifest.itertuples(index=False)
    ]
    write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", items, image_size=(24, 24))
    from_rec = EncodedImages.from_recordio(tmp_path / "train.rec", tmp_path / "train.idx")
    from_dir = EncodedImages.from_folder(root, manifest["path"], manifest["identity"], 24)
    assert from_rec.image_size == 24 and from_rec.num_classes == 4
    np.testing.assert_array_equal(from_rec.labels, from_dir.labels)
    for i in range(len(from_dir)):
        np.testing.assert_array_equal(from_rec[i][0], from_dir[i][0])
    chosen = EncodedImages.from_recordio(
        tmp_path / "train.rec", tmp_path / "train.idx", records=[3, 17]
    )
    assert list(chosen.labels) == [0, 3]
    np.testing.assert_array_equal(chosen[1][0], from_dir[17][0])
    assert "record 18" in chosen.source(1)  # record keys start after the header record


def test_index_round_trip_for_both_sources(jpeg_set, tmp_path):
    root, manifest = jpeg_set
    folder = EncodedImages.from_folder(root, manifest["path"], manifest["identity"], 24)
    write_encoded_index(tmp_path / "set_dir", folder)
    reopened = open_image_set(tmp_path / "set_dir")
    assert isinstance(reopened, EncodedImages) and reopened.source_kind == "folder"
    assert reopened.fingerprint() == folder.fingerprint()
    np.testing.assert_array_equal(reopened[7][0], folder[7][0])

    items = [(int(r.identity), (root / r.path).read_bytes()) for r in manifest.itertuples()]
    write_recordio(tmp_path / "r" / "t.rec", tmp_path / "r" / "t.idx", items, image_size=(24, 24))
    rec = EncodedImages.from_recordio(tmp_path / "r" / "t.rec", tmp_path / "r" / "t.idx")
    write_encoded_index(tmp_path / "set_rec", rec)
    reopened = open_image_set(tmp_path / "set_rec")
    assert reopened.source_kind == "recordio" and reopened.fingerprint() == rec.fingerprint()

    pack_subset(manifest, tmp_path / "packed", 24, shard_size=8, folder_root=root, progress=False)
    assert isinstance(open_image_set(tmp_path / "packed"), PackedImages)
    assert not (tmp_path / "set_dir.partial").exists()


def test_a_moved_dataset_root_is_named(jpeg_set, tmp_path):
    root, manifest = jpeg_set
    moved = tmp_path / "copy"
    sub = manifest.iloc[:2]
    for rel in sub["path"]:
        (moved / rel).parent.mkdir(parents=True, exist_ok=True)
        (moved / rel).write_bytes((root / rel).read_bytes())
    encoded = EncodedImages.from_folder(moved, sub["path"], sub["identity"], 24)
    write_encoded_index(tmp_path / "idx", encoded)
    moved.rename(tmp_path / "gone")
    with pytest.raises(MissingInputError, match="dataset root .*copy does not exist"):
        open_image_set(tmp_path / "idx")


def test_decode_errors_name_the_source():
    good = encode_jpeg(np.full((8, 8, 3), 128, np.uint8))
    with pytest.raises(DataError, match="some/file.jpg: corrupt or truncated"):
        decode_rgb(good[: len(good) // 2], "some/file.jpg")
    with pytest.raises(DataError, match="rec record 5"):
        decode_rgb(b"not an image", "rec record 5")
    # a JPEG of another size is resized and centre-cropped like the packing step does
    assert decode_rgb(encode_jpeg(np.zeros((10, 16, 3), np.uint8)), "x", 8).shape == (8, 8, 3)

"""Packed image format: round trip, batch gather, interrupted writes, corrupt shards."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.packed import PACKED_FORMAT, PackedImages, PackedWriter, array_fingerprint


def _images(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        rng.integers(0, 5, n).astype(np.int64),
    )


def _write(root, images, labels, shard_size=4):
    with PackedWriter(root, image_size=images.shape[1], shard_size=shard_size) as writer:
        writer.add(images[0], int(labels[0]))  # single adds and batches mix
        writer.add_batch(images[1:7], labels[1:7])
        for img, lab in zip(images[7:], labels[7:], strict=True):
            writer.add(img, int(lab))
    return root


def test_round_trip_single_and_batch(tmp_path):
    images, labels = _images(11)
    root = _write(tmp_path / "packed", images, labels, shard_size=4)
    index = json.loads((root / "index.json").read_text())
    assert index["format"] == PACKED_FORMAT and index["complete"] is True
    assert index["count"] == 11 and index["height"] == index["width"] == 8
    assert [s["count"] for s in index["shards"]] == [4, 4, 3]
    assert index["num_classes"] == int(labels.max()) + 1

    packed = PackedImages(root)
    assert len(packed) == 11 and packed.image_size == 8
    assert packed.num_classes == int(labels.max()) + 1
    np.testing.assert_array_equal(packed.labels, labels)
    for i in (0, 3, 4, 10, -1):
        img, lab = packed[i]
        np.testing.assert_array_equal(img, images[i])
        assert lab == labels[i]
    order = np.array([10, 0, 5, 5, 3, 8, 1])  # unsorted, repeated, across every shard
    batch, batch_labels = packed.get_batch(order)
    np.testing.assert_array_equal(batch, images[order])
    np.testing.assert_array_equal(batch_labels, labels[order])
    assert packed.get_batch([])[0].shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        packed.get_batch([11])
    # Pickles without the memory maps (DataLoader workers started by spawn) and still reads.
    clone = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(clone[7][0], images[7])
    assert len(pickle.dumps(packed)) < images.nbytes


def test_num_classes_and_replacing_an_existing_folder(tmp_path):
    images, labels = _images(5)
    root = tmp_path / "packed"
    _write(root, images, labels)
    with PackedWriter(root, image_size=8, shard_size=2, num_classes=9) as writer:
        writer.add_batch(images[:3], [0, 1, 2])
    packed = PackedImages(root)
    assert len(packed) == 3 and packed.num_classes == 9
    assert not (tmp_path / "packed.partial").exists()


def test_writer_rejects_wrong_images(tmp_path):
    with (
        PackedWriter(tmp_path / "p", image_size=8) as writer,
        pytest.raises(DataError, match="uint8"),
    ):
        writer.add(np.zeros((8, 8, 3), np.float32), 0)
    with (
        PackedWriter(tmp_path / "q", image_size=8) as writer,
        pytest.raises(DataError, match="8, 8, 3"),
    ):
        writer.add(np.zeros((9, 8, 3), np.uint8), 0)


def test_interrupted_writer_leaves_nothing_complete(tmp_path):
    images, labels = _images(9)
    root = tmp_path / "packed"
    with pytest.raises(KeyboardInterrupt), PackedWriter(root, image_size=8, shard_size=2) as w:
        w.add_batch(images, labels)  # several shards already flushed to disk
        raise KeyboardInterrupt
    assert not root.exists()
    with pytest.raises(MissingInputError, match="packed"):
        PackedImages(root)

    # A killed process leaves `<root>.partial` behind: the reader says so and never reads it.
    partial = tmp_path / "other.partial"
    partial.mkdir()
    np.save(partial / "shard_00000.npy", images)
    with pytest.raises(MissingInputError, match="interrupted"):
        PackedImages(tmp_path / "other")

    # An interrupted rewrite keeps the previous complete folder.
    _write(root, images, labels)
    with pytest.raises(RuntimeError), PackedWriter(root, image_size=8) as w:
        w.add(images[0], 0)
        raise RuntimeError("boom")
    assert len(PackedImages(root)) == 9


def test_missing_or_incomplete_index(tmp_path):
    images, labels = _images(6)
    root = _write(tmp_path / "packed", images, labels)
    index_path = root / "index.json"
    index = json.loads(index_path.read_text())
    index["complete"] = False
    index_path.write_text(json.dumps(index))
    with pytest.raises(DataError, match=str(root)):
        PackedImages(root)
    index_path.unlink()
    with pytest.raises(DataError, match="index.json"):
        PackedImages(root)


def test_missing_truncated_or_wrong_shard(tmp_path):
    images, labels = _images(10)
    root = _write(tmp_path / "packed", images, labels, shard_size=4)
    shard = root / "shard_00001.npy"
    good = shard.read_bytes()

    shard.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="shard_00001.npy"):
        PackedImages(root)

    np.save(shard, images[:3])  # valid .npy with the wrong number of images
    with pytest.raises(DataError, match="shard_00001.npy"):
        PackedImages(root)

    shard.unlink()
    with pytest.raises(DataError, match="shard_00001.npy.*missing"):
        PackedImages(root)

    shard.write_bytes(good)
    (root / "labels.npy").unlink()
    with pytest.raises(DataError, match="labels.npy"):
        PackedImages(root)


def _pack(root, images, labels):
    with PackedWriter(root, image_size=images.shape[1], shard_size=7) as w:
        w.add_batch(images, labels)
    return PackedImages(root)


def test_fingerprint_follows_content_not_location(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(20) % 5
    a = _pack(tmp_path / "a", images, labels).fingerprint()
    assert _pack(tmp_path / "b", images, labels).fingerprint() == a  # same content elsewhere
    changed = images.copy()
    changed[13, 0, 0, 0] ^= 1  # one bit of one image
    assert _pack(tmp_path / "c", changed, labels).fingerprint() != a
    relabelled = labels.copy()
    relabelled[[0, 1]] = relabelled[[1, 0]]
    assert _pack(tmp_path / "d", images, relabelled).fingerprint() != a
    # Large sets are sampled: an image between the sampled ones does not change it (documented).
    assert _pack(tmp_path / "e", changed, labels).fingerprint(sample=2) == _pack(
        tmp_path / "f", images, labels
    ).fingerprint(sample=2)


def test_array_fingerprint_sees_dtype_shape_and_values():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_fingerprint(x) == array_fingerprint(x.copy())
    assert array_fingerprint(x) != array_fingerprint(x.reshape(4, 3))
    assert array_fingerprint(x) != array_fingerprint(x.astype(np.float64))
    y = x.copy()
    y[2, 3] += 1e-3
    assert array_fingerprint(x) != array_fingerprint(y)
    assert array_fingerprint(x.T) == array_fingerprint(np.ascontiguousarray(x.T))

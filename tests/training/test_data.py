"""Training dataset, augmentations, sampler sharding and the loader factory."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from face_pipelines.errors import ParameterError
from face_pipelines.image_tensors import to_device_normalised
from face_pipelines.io.packed import PackedImages
from face_pipelines.training.data import (
    AugmentationConfig,
    PackedFaceDataset,
    augment_image,
    make_loader,
)
from face_pipelines.training.distributed import EpochSampler

from .helpers import make_packed


@pytest.fixture
def packed(tmp_path) -> PackedImages:
    return PackedImages(make_packed(tmp_path / "packed", n=20, size=16))


def test_dataset_returns_uint8_chw(packed):
    ds = PackedFaceDataset(packed)
    image, label = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), packed[3][0])
    assert label == packed.labels[3]
    batch = ds.__getitems__([5, (2, 7), 19])
    np.testing.assert_array_equal(batch[1][0].permute(1, 2, 0).numpy(), packed[2][0])
    sub = PackedFaceDataset(packed, indices=np.array([4, 9]))
    assert len(sub) == 2 and sub[1][1] == packed.labels[9]


def test_augmentations_are_a_function_of_the_sample_seed(packed):
    ds = PackedFaceDataset(packed, augmentation=AugmentationConfig.hsface())
    first = [ds[(i, 1000 + i)][0] for i in range(10)]
    again = ds.__getitems__([(i, 1000 + i) for i in range(10)])
    assert all(torch.equal(a, b) for a, (b, _) in zip(first, again, strict=True))
    other = [ds[(i, 7 + i)][0] for i in range(10)]
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_each_augmentation(packed):
    image = packed[0][0]
    rng = random.Random(0)
    flipped = augment_image(image, AugmentationConfig(flip_prob=1.0), rng)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    assert augment_image(image, AugmentationConfig.none(), rng) is image

    crop = AugmentationConfig(flip_prob=0, crop_prob=1, crop_scale=(0.2, 0.3))
    out = augment_image(image, crop, random.Random(1))
    kept = out.any(axis=2)
    assert out.shape == image.shape and 0 < kept.mean() < 0.6
    np.testing.assert_array_equal(out[kept], image[kept])  # kept pixels stay where they were

    low = AugmentationConfig(flip_prob=0, low_res_prob=1, low_res_scale=(0.25, 0.25))
    out = augment_image(image, low, random.Random(2))
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)

    jitter = AugmentationConfig(flip_prob=0, color_jitter_prob=1)
    out = augment_image(image, jitter, random.Random(3))
    assert out.shape == image.shape and not np.array_equal(out, image)

    erase = AugmentationConfig(flip_prob=0, erasing_prob=1, erasing_scale=(0.1, 0.1))
    out = augment_image(image, erase, random.Random(4))
    changed = (out != image).any(axis=2)
    assert 0 < changed.mean() <= 0.12 and (out[changed] == 0).all()

    with pytest.raises(ParameterError, match="crop_prob"):
        AugmentationConfig(crop_prob=1.5)


def test_normalisation_on_device():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    y = to_device_normalised(x, "cpu", channels_last=True)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([-1.0, 1.0, (51 / 255 - 0.5) / 0.5]))


def test_sampler_shards_partition_each_epoch_and_resume():
    full = EpochSampler(10, seed=3, rank=0, world_size=1)
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        full.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        shards = [list(s) for s in ranks]
        assert all(len(x) == 4 == len(s) for x, s in zip(shards, ranks, strict=True))
        union = [i for step in zip(*shards, strict=True) for i in step]
        assert union[:10] == list(full) and sorted(set(union)) == list(range(10))
    full.set_epoch(0)
    e0 = list(full)
    full.set_epoch(1)
    assert list(full) != e0  # a new order every epoch
    full.set_epoch(0)
    full.set_start(6)
    assert list(full) == e0[6:]
    state = full.state_dict()
    clone = EpochSampler(10, seed=99, rank=0, world_size=1)
    clone.load_state_dict(state)
    assert list(clone) == e0[6:]
    trimmed = EpochSampler(10, seed=3, rank=2, world_size=3, drop_last=True)
    assert len(list(trimmed)) == 3
    seeded = EpochSampler(10, seed=3, rank=0, world_size=1, with_sample_seeds=True)
    assert [i for i, _ in seeded] == e0


def test_loader_is_deterministic_across_worker_counts(packed):
    ds = PackedFaceDataset(packed, augmentation=AugmentationConfig.hsface())

    def epoch_batches(workers: int) -> list[torch.Tensor]:
        loader = make_loader(ds, batch_size=6, seed=11, num_workers=workers, drop_last=False)
        loader.sampler.set_epoch(1)
        return [images for images, _ in loader]

    in_process = epoch_batches(0)
    assert [b.shape[0] for b in in_process] == [6, 6, 6, 2]
    assert in_process[0].dtype == torch.uint8
    with_workers = epoch_batches(2)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))

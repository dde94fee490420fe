"""Blockwise separability measures and intra-class spread against brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import DataError
from face_pipelines.metrics.separability import (
    intra_class_cosines,
    intra_class_summary,
    max_cosine_to_earlier,
    max_cosine_to_others,
    max_cosine_to_reference,
    pixel_spread,
    separability,
    separability_curve,
    separability_sequential,
)

BLOCK_SIZES = [1, 5, 16, 4096]


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    """Correlated centres with an offset mean, so that cosines spread over [0.2, 0.95]."""
    rng = np.random.default_rng(0)
    d = 12
    mix = rng.normal(size=(d, d)) * np.linspace(1.0, 0.1, d)
    return (rng.normal(size=(57, d)) @ mix.T + 0.8).astype(np.float32)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return u @ u.T


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_max_cosine_to_others_matches_full_matrix(centres, block_size):
    sim = cosine_matrix(centres)
    np.fill_diagonal(sim, -np.inf)
    got = max_cosine_to_others(centres, block_size=block_size)
    assert got.shape == (57,) and got.dtype == np.float32
    np.testing.assert_allclose(got, sim.max(axis=1), atol=1e-5)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_max_cosine_to_earlier_matches_lower_triangle(centres, block_size):
    sim = cosine_matrix(centres)
    got = max_cosine_to_earlier(centres, block_size=block_size)
    assert got[0] == -np.inf
    np.testing.assert_allclose(got[1:], [sim[i, :i].max() for i in range(1, 57)], atol=1e-5)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_max_cosine_to_reference_values_and_indices(centres, block_size):
    queries, reference = centres[:20], centres[20:]
    sim = cosine_matrix(np.concatenate([queries, reference]))[:20, 20:]
    values, indices = max_cosine_to_reference(queries, reference, block_size=block_size)
    np.testing.assert_allclose(values, sim.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(indices, sim.argmax(axis=1))
    with pytest.raises(DataError, match="same"):
        max_cosine_to_reference(queries, reference[:, :5])


def test_separability_equals_brute_force_and_curve_is_monotone(centres):
    sim = cosine_matrix(centres)
    np.fill_diagonal(sim, -np.inf)
    ts = np.arange(0.3, 0.91, 0.05)
    curve = separability_curve(centres, ts, block_size=8)
    assert list(curve) == [round(t, 4) for t in ts]
    for t in ts:
        brute = np.mean([(sim[i] <= t).all() for i in range(len(centres))])
        assert separability(centres, t, block_size=8) == pytest.approx(brute)
        assert curve[round(t, 4)] == pytest.approx(brute)
    values = list(curve.values())
    assert values == sorted(values)
    assert 0.0 < values[len(values) // 2] < 1.0  # the fixture spans the interesting range
    assert separability(centres[:1], 0.1) == 1.0  # a lone identity is separable


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_separability_sequential_equals_brute_force_loop(centres, block_size):
    sim = cosine_matrix(centres)
    for t in (0.5, 0.7, 0.9):
        count = 0
        for i in range(len(centres)):
            if all(sim[i, j] <= t for j in range(i)):
                count += 1
        assert separability_sequential(centres, t, block_size=block_size) == count
    assert separability_sequential(centres, 0.7) >= separability(centres, 0.7) * len(centres)


def test_intra_class_cosines_and_summary():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 5)
    feats = (rng.normal(size=(6, 8)) * 3)[labels] + rng.normal(size=(30, 8))
    cos = intra_class_cosines(feats.astype(np.float32), labels)
    for i in range(30):
        c = feats[labels == labels[i]].mean(axis=0)
        expected = feats[i] @ c / np.linalg.norm(feats[i]) / np.linalg.norm(c)
        assert cos[i] == pytest.approx(expected, abs=1e-5)
    summary = intra_class_summary(cos)
    assert summary["n"] == 30
    assert summary["mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert summary["q05"] <= summary["q25"] <= summary["median"] <= summary["q75"] <= summary["q95"]
    with pytest.raises(DataError, match="one label per"):
        intra_class_cosines(feats, labels[:-1])


def test_pixel_spread_matches_per_identity_std():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(9, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])  # identity 3 has one image: left out
    expected = np.mean([(images[labels == i] / 255.0).std(axis=0, ddof=1).mean() for i in range(3)])
    assert pixel_spread(images, labels) == pytest.approx(expected, rel=1e-5)
    same = np.repeat(images[:1], 4, axis=0)
    assert pixel_spread(same, [0, 0, 1, 1]) == 0.0
    with pytest.raises(DataError, match="uint8"):
        pixel_spread(images.astype(np.float32), labels)
    with pytest.raises(DataError, match="two or more"):
        pixel_spread(images[:2], [0, 1])

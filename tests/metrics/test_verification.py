"""Verification metric against a straightforward re-implementation of insightface's protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.verification import (
    embed_with_flip,
    tar_at_far,
    verification_accuracy,
    verification_folds,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors run faster on one thread, and a shared CPU stalls two-thread OpenMP loops."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def reference_accuracy(emb_a, emb_b, issame, n_folds=10):
    """Loops over folds and thresholds exactly as the protocol reads (slow, obviously right)."""
    a = emb_a / np.linalg.norm(emb_a, axis=1, keepdims=True)
    b = emb_b / np.linalg.norm(emb_b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), axis=1)
    issame = np.asarray(issame, dtype=bool)
    n = len(dist)
    # KFold(n_folds, shuffle=False): the first n % n_folds folds hold one extra item.
    bounds, start = [], 0
    for f in range(n_folds):
        size = n // n_folds + (1 if f < n % n_folds else 0)
        bounds.append((start, start + size))
        start += size
    thresholds = np.arange(0, 4, 0.01)

    def acc(thr, idx):
        predict = dist[idx] < thr
        return np.sum(predict == issame[idx]) / len(idx)

    fold_acc, fold_thr = [], []
    for lo, hi in bounds:
        test = np.arange(lo, hi)
        train = np.concatenate([np.arange(0, lo), np.arange(hi, n)])
        best_t, best_acc = None, -1.0
        for t in thresholds:
            acc_t = acc(t, train)
            if acc_t > best_acc:  # strict: ties keep the smaller threshold
                best_t, best_acc = t, acc_t
        fold_acc.append(acc(best_t, test))
        fold_thr.append(best_t)
    return np.mean(fold_acc), np.std(fold_acc), np.array(fold_thr)


def noisy_pairs(n, dim, noise, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    issame = rng.random(n) < 0.5
    b = np.where(issame[:, None], a + noise * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    return a * rng.uniform(0.5, 3.0, size=(n, 1)), b, issame


@pytest.mark.parametrize("n,dim,noise,seed", [(600, 8, 0.8, 0), (203, 3, 1.5, 1), (57, 16, 0.3, 2)])
def test_matches_reference_on_random_data(n, dim, noise, seed):
    a, b, issame = noisy_pairs(n, dim, noise, seed)
    mean, std, thr = reference_accuracy(a, b, issame)
    got = verification_folds(a, b, issame)
    np.testing.assert_allclose(got["thresholds"], thr)
    m, s = verification_accuracy(a, b, issame)
    assert m == pytest.approx(mean, abs=1e-12) and s == pytest.approx(std, abs=1e-12)
    assert 0.5 < m < 1.0  # a non-trivial case


def test_matches_reference_with_ties_and_structured_distances():
    # Distances on a coarse set of values (many exact ties between pairs, and wide plateaus of
    # equally good thresholds, which must resolve to the smallest threshold).
    rng = np.random.default_rng(3)
    n = 95
    angles = rng.choice([0.0, 0.3, 0.6, 1.2, 2.0], size=n)
    issame = (angles < 0.7) ^ (rng.random(n) < 0.1)
    a = np.tile([[1.0, 0.0]], (n, 1))
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mean, std, thr = reference_accuracy(a, b, issame)
    got = verification_folds(a, b, issame)
    np.testing.assert_allclose(got["thresholds"], thr)
    assert verification_accuracy(a, b, issame) == pytest.approx((mean, std), abs=1e-12)
    # Perfectly separable: every fold is 100 % and the smallest separating threshold is chosen.
    sep = angles < 0.7
    got = verification_folds(a, b, sep)
    assert np.all(got["accuracies"] == 1.0)
    d_same_max = np.max(2 - 2 * np.cos(angles[sep]))
    first_ok = np.arange(0, 4, 0.01)[np.arange(0, 4, 0.01) > d_same_max][0]
    np.testing.assert_allclose(got["thresholds"], first_ok)
    assert verification_accuracy(a, b, sep) == (1.0, 0.0)


def test_fold_sizes_follow_kfold():
    # 13 pairs in 10 folds: sizes 2,2,2,1,...; fold 0 holds pairs 0-1. Make pair 0 and 1 wrong for
    # any sensible threshold so fold 0 scores 0 and the rest 1.
    n = 13
    a = np.tile([[1.0, 0.0]], (n, 1))
    b = np.tile([[1.0, 0.0]], (n, 1))
    issame = np.ones(n, dtype=bool)
    issame[:2] = False  # identical embeddings labelled "different"
    b[5] = [-1.0, 0.0]
    issame[5] = False
    acc = verification_folds(a, b, issame)["accuracies"]
    assert acc[0] == 0.0 and np.all(acc[1:] == 1.0)


def test_tar_at_far_sanity():
    a, b, issame = noisy_pairs(4000, 16, 0.6, seed=4)
    tar3 = tar_at_far(a, b, issame, far=1e-3)
    tar1 = tar_at_far(a, b, issame, far=1e-1)
    assert 0.0 <= tar3 <= tar1 <= 1.0
    # Separable -> 1; identical score distributions for same/diff -> TAR close to FAR.
    sep = np.zeros(len(issame), dtype=bool)
    sep[::2] = True
    b_sep = np.where(sep[:, None], a, -a)
    assert tar_at_far(a, b_sep, sep, far=1e-3) == 1.0
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    assert tar_at_far(x, y, rng.random(4000) < 0.5, far=0.1) == pytest.approx(0.1, abs=0.04)
    with pytest.raises(DataError, match="same and different"):
        tar_at_far(a, b, np.ones(len(a), dtype=bool))


def test_input_errors():
    a = np.ones((20, 4))
    with pytest.raises(DataError, match="equal shape"):
        verification_accuracy(a, np.ones((20, 5)), np.ones(20, dtype=bool))
    with pytest.raises(DataError, match="issame"):
        verification_accuracy(a, a, np.ones(19, dtype=bool))
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        verification_accuracy(bad, a, np.ones(20, dtype=bool))
    with pytest.raises(ParameterError, match="folds"):
        verification_accuracy(a[:5], a[:5], np.ones(5, dtype=bool))


class _LeftRight(torch.nn.Module):
    """Embedding = (mean of the left half, mean of the right half, 1); BN only to have a mode."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        w = x.shape[-1] // 2
        e = torch.stack(
            [x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3)), torch.ones(len(x))], 1
        )
        return self.bn(e)


def test_embed_with_flip_sums_image_and_mirror():
    model = _LeftRight().train()
    images = np.zeros((5, 4, 6, 3), dtype=np.uint8)
    images[:, :, :3] = 255  # left half white -> +1 after normalisation, right half black -> -1
    images[4] = 0
    emb = embed_with_flip(model, images, batch_size=2, device="cpu")
    assert emb.dtype == np.float32 and emb.shape == (5, 3)
    bn_scale = 1 / np.sqrt(1 + 1e-5)  # eval-mode BN with fresh running stats
    np.testing.assert_allclose(emb[0], np.array([0.0, 0.0, 2.0]) * bn_scale, atol=1e-5)
    np.testing.assert_allclose(emb[4], np.array([-2.0, -2.0, 2.0]) * bn_scale, atol=1e-5)
    assert model.training  # mode restored
    with pytest.raises(DataError, match="uint8"):
        embed_with_flip(model, images.astype(np.float32), batch_size=2, device="cpu")

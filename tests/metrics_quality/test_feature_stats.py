"""Frechet distance between feature sets and feature summaries."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipelines.errors import DataError
from face_pipelines.metrics.feature_stats import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
)


def with_exact_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """n samples whose empirical mean and (ddof=1) covariance equal `mean` and `cov` exactly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    white = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(white).T
    return z @ np.linalg.cholesky(cov).T + mean


def random_cov(d: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).normal(size=(d, d))
    return m @ m.T + 0.1 * np.eye(d)


def test_identical_sets_have_zero_distance():
    x = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-6)


def test_matches_closed_form_for_known_gaussians():
    d = 5
    mu_a, mu_b = np.zeros(d), np.arange(d, dtype=float) / 2
    var_a, var_b = np.array([1.0, 2.0, 0.5, 3.0, 1.0]), np.array([4.0, 1.0, 0.5, 0.25, 9.0])
    # Diagonal covariances: FD = |mu_a - mu_b|^2 + sum (sqrt(a) - sqrt(b))^2.
    closed = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(closed, rel=1e-10)
    # Same, through feature sets whose empirical moments are exactly those.
    a = with_exact_moments(400, mu_a, np.diag(var_a), seed=1)
    b = with_exact_moments(300, mu_b, np.diag(var_b), seed=2)
    assert frechet_distance(a, b, ridge=0.0) == pytest.approx(closed, rel=1e-9)
    # Commuting case with full covariances: cov_b = 4 cov_a -> trace term = tr(cov_a).
    cov = random_cov(d, 3)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov) * (1 + 4 - 2 * 2)
    assert frechet_distance_from_stats(mu_a, cov, mu_b, 4 * cov) == pytest.approx(expected)


def test_symmetric_and_nonnegative_with_small_n():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(70, 8)) + 1.0
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-8) and ab > 0
    # Fewer samples than dimensions: singular covariances, still finite and symmetric.
    small_a, small_b = rng.normal(size=(5, 32)), rng.normal(size=(6, 32)) * 2
    fd = frechet_distance(small_a, small_b)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(small_b, small_a) == pytest.approx(fd, rel=1e-6)
    with pytest.raises(DataError, match="at least 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(DataError, match="same dimension"):
        frechet_distance(a, b[:, :4])


def test_feature_statistics_values():
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 10)) * np.linspace(0.5, 2.0, 10) + 0.1).astype(np.float32)
    stats = feature_statistics(x)
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    assert stats["n"] == 300 and stats["dim"] == 10
    assert stats["norm_mean"] == pytest.approx(norms.mean(), rel=1e-6)
    assert stats["norm_std"] == pytest.approx(norms.std(), rel=1e-6)
    assert stats["dim_std_min"] == pytest.approx(x64.std(axis=0, ddof=1).min(), rel=1e-6)
    assert stats["dim_std_max"] == pytest.approx(x64.std(axis=0, ddof=1).max(), rel=1e-6)
    assert stats["mean_over_std_norm"] == pytest.approx(
        np.linalg.norm(x64.mean(axis=0)) / np.linalg.norm(x64.std(axis=0, ddof=1)), rel=1e-6
    )
    with pytest.raises(DataError, match="NaN"):
        feature_statistics(np.array([[1.0, np.nan]]))

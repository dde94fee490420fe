"""Feature-space statistics of a dataset: summaries and a Frechet distance between feature sets.

`frechet_distance` fits a Gaussian to each feature set and returns the Frechet (squared
2-Wasserstein) distance between them. It is reported as `feature_fd`, never as FID: FID is defined
on Inception-v3 pool features of images, and this works on whatever recognizer features it is given
(for example the teacher's features of real vs generated faces, or sampled vs real identity
centres).
"""

from __future__ import annotations

import numpy as np
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.separability import as_matrix

DEFAULT_RIDGE = 1e-6


def frechet_distance(feats_a, feats_b, ridge: float = DEFAULT_RIDGE) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ("feature_fd").

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed in float64 with
    symmetric eigen-decompositions (no complex sqrtm artefacts). With fewer samples than dimensions
    the covariances are singular; both get the same ridge, `ridge` x their mean per-dimension
    variance, on the diagonal, which keeps the square roots well-conditioned and leaves the distance
    of identical sets at 0.

    Args:
        feats_a, feats_b: [N_a, D] and [N_b, D] features (N >= 2 each, same D).
        ridge: relative diagonal ridge (>= 0).

    Returns:
        The distance (>= 0; tiny negative round-off is clipped to 0).

    Raises:
        DataError: fewer than 2 rows, different D, or non-finite values.
        ParameterError: negative ridge.
    """
    a = as_matrix(feats_a, "feats_a", torch.float64).numpy()
    b = as_matrix(feats_b, "feats_b", torch.float64).numpy()
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"feats_a has D={a.shape[1]} but feats_b has D={b.shape[1]}; expected features of the "
            "same dimension"
        )
    for name, x in (("feats_a", a), ("feats_b", b)):
        if x.shape[0] < 2:
            raise DataError(
                f"{name}: expected at least 2 feature rows to fit a Gaussian, got {len(x)}"
            )
    if ridge < 0:
        raise ParameterError(f"ridge: expected a non-negative value, got {ridge}")
    cov_a = np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])
    cov_b = np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1])
    if ridge > 0:
        scale = (np.trace(cov_a) + np.trace(cov_b)) / (2 * a.shape[1])
        eps = ridge * (scale if scale > 0 else 1.0)
        cov_a = cov_a + eps * np.eye(a.shape[1])
        cov_b = cov_b + eps * np.eye(b.shape[1])
    return frechet_distance_from_stats(a.mean(axis=0), cov_a, b.mean(axis=0), cov_b)


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b) (symmetric PSD covariances).

    Raises:
        DataError: shapes do not agree.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise DataError(
            f"expected mu [D] and cov [D, D] for both Gaussians, got mu_a {mu_a.shape}, "
            f"cov_a {cov_a.shape}, mu_b {mu_b.shape}, cov_b {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(fd, 0.0)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def feature_statistics(features) -> dict[str, float]:
    """Summary of a raw feature set: norms, per-dimension means and stds.

    Returns plain floats (JSON-ready):
        n, dim; norm_mean, norm_std, norm_min, norm_max (L2 norms of the rows);
        dim_mean_mean, dim_mean_abs_max (over the per-dimension means);
        dim_std_mean, dim_std_min, dim_std_max (over the per-dimension stds, ddof=1 where N >= 2);
        mean_vector_norm (|mean feature|) and mean_over_std_norm (|mean| / |per-dim std vector|:
        how far the set sits from the origin relative to its spread).

    Raises:
        DataError: no rows, not 2-D, or non-finite values.
    """
    x = as_matrix(features, "features", torch.float64).numpy()
    if x.shape[0] == 0:
        raise DataError("features: expected at least one row, got 0")
    norms = np.linalg.norm(x, axis=1)
    means = x.mean(axis=0)
    stds = x.std(axis=0, ddof=1 if x.shape[0] >= 2 else 0)
    std_norm = float(np.linalg.norm(stds))
    return {
        "n": float(x.shape[0]),
        "dim": float(x.shape[1]),
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "dim_mean_mean": float(means.mean()),
        "dim_mean_abs_max": float(np.abs(means).max()),
        "dim_std_mean": float(stds.mean()),
        "dim_std_min": float(stds.min()),
        "dim_std_max": float(stds.max()),
        "mean_vector_norm": float(np.linalg.norm(means)),
        "mean_over_std_norm": float(np.linalg.norm(means) / std_norm)
        if std_norm > 0
        else float("inf"),
    }

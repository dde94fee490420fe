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
_CHUNK_ROWS = 65536


def _feature_matrix(x, name: str) -> np.ndarray:
    """Validated [N, D] array: float64 if given so, else float32 (no float64 copy of a big set)."""
    is_double = (
        x.dtype == torch.float64
        if isinstance(x, torch.Tensor)
        else (np.asarray(x).dtype == np.float64)
    )
    dtype = torch.float64 if is_double else torch.float32
    return as_matrix(x, name, dtype).numpy()


def _moments(x: np.ndarray, full_cov: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1; only its diagonal unless `full_cov`) in float64, in row chunks.

    Two passes (mean, then centred sums) keep float64 accuracy without a float64 copy of `x`.
    """
    n, d = x.shape
    total = np.zeros(d)
    for a in range(0, n, _CHUNK_ROWS):
        total += x[a : a + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    second = np.zeros((d, d)) if full_cov else np.zeros(d)
    for a in range(0, n, _CHUNK_ROWS):
        centred = x[a : a + _CHUNK_ROWS].astype(np.float64) - mean
        second += centred.T @ centred if full_cov else (centred**2).sum(axis=0)
    return mean, second / max(n - 1, 1)


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
    a = _feature_matrix(feats_a, "feats_a")
    b = _feature_matrix(feats_b, "feats_b")
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
    mu_a, cov_a = _moments(a, full_cov=True)
    mu_b, cov_b = _moments(b, full_cov=True)
    if ridge > 0:
        scale = (np.trace(cov_a) + np.trace(cov_b)) / (2 * a.shape[1])
        eps = ridge * (scale if scale > 0 else 1.0)
        cov_a = cov_a + eps * np.eye(a.shape[1])
        cov_b = cov_b + eps * np.eye(b.shape[1])
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


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
        dim_std_mean, dim_std_min, dim_std_max (over the per-dimension stds, ddof=1; 0 for N = 1);
        mean_vector_norm (|mean feature|) and mean_over_std_norm (|mean| / |per-dim std vector|:
        how far the set sits from the origin relative to its spread).

    Raises:
        DataError: no rows, not 2-D, or non-finite values.
    """
    x = _feature_matrix(features, "features")
    if x.shape[0] == 0:
        raise DataError("features: expected at least one row, got 0")
    norms = np.concatenate(
        [
            np.linalg.norm(x[a : a + _CHUNK_ROWS].astype(np.float64), axis=1)
            for a in range(0, len(x), _CHUNK_ROWS)
        ]
    )
    means, variances = _moments(x, full_cov=False)
    stds = np.sqrt(variances)
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

"""New synthetic identities: sample identity-centre vectors, keep only well-separated ones, and make
per-image vectors around each centre.

All vectors live at the teacher's raw feature scale (un-normalised embeddings; for an ArcFace-R100
the norm is ~22), because that is what the vector -> face generator was trained on.

Steps, as the `sample` pipeline runs them:
1. `metrics.separability.identity_centres(features, labels)`: mean raw feature per real identity.
2. `fit_centre_distribution(centres)`: a Gaussian over identity centres. The default is PCA (a full
   covariance when there are enough centres): a diagonal Gaussian ignores the correlations between
   feature dimensions and draws vectors far off the manifold of real identities, which the
   generator renders as non-faces.
3. `calibrate_threshold(centres)`: the separation threshold read off the REAL identities'
   nearest-neighbour similarities. A fixed 0.4 belongs to ArcFace-R100 on real faces; a small
   teacher can put every real identity's nearest neighbour above 0.5, and then 0.4 asks for
   identities far more separated than real ones are.
4. `sample_identity_centres(dist, n, threshold, real_centres, leakage_threshold)`: greedy rejection
   sampling with blockwise cosine products (GPU when present), plus a leakage guard that rejects
   candidates too close to a real identity (the upstream released datasets leaked real identities).
5. `intra_class_vectors(centres, k)`: k noisy copies per centre with a mix of noise scales, each
   rescaled to its centre's norm.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.separability import (
    DEFAULT_BLOCK_SIZE,
    as_matrix,
    ieee_fp32_matmul,
    max_cosine_to_others,
    max_cosine_unit,
    unit_rows,
)

CentreKind = Literal["pca", "full", "diagonal"]
GeneratorLike = torch.Generator | np.random.Generator | int | None

DEFAULT_SHRINKAGE = 0.01
DEFAULT_CALIBRATION_QUANTILE = 0.95
DEFAULT_SIGMA_MIX: tuple[tuple[float, float], ...] = ((0.3, 0.4), (0.5, 0.4), (0.7, 0.2))
_GOLDEN_FRACTION = (math.sqrt(5.0) - 1.0) / 2.0
_NOISE_CHUNK_ROWS = 65536


def make_generator(generator: GeneratorLike) -> torch.Generator | None:
    """A CPU torch.Generator from a seed, a NumPy Generator (one draw seeds it) or a torch one.

    None stays None: torch's global RNG is used (seeded by `seed_everything`).

    Raises:
        ParameterError: an unsupported type, or a torch generator that is not on the CPU (noise is
            always drawn on the CPU so that results do not depend on the device).
    """
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ParameterError(
                f"generator: expected a CPU torch.Generator (random numbers are drawn on the CPU "
                f"for device-independent results), got one on {generator.device}"
            )
        return generator
    if isinstance(generator, np.random.Generator):
        return torch.Generator().manual_seed(int(generator.integers(0, 2**63 - 1)))
    if isinstance(generator, int | np.integer) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise ParameterError(
        f"generator: expected an int seed, a numpy Generator, a CPU torch.Generator or None, "
        f"got {type(generator).__name__}"
    )


# ----------------------------------------------------------------------------- identity centres


# ----------------------------------------------------------------------------- centre distribution


@dataclass(frozen=True)
class CentreDistribution:
    """A Gaussian over identity centres at the raw feature scale.

    cov = axes @ diag(scales^2) @ axes.T + residual_std^2 * (I - axes @ axes.T)

    Attributes:
        kind: "pca", "full" or "diagonal".
        mean: float64 [D] mean of the training centres.
        axes: float64 [D, k] orthonormal principal axes ("pca": top k; "full": all D);
            None for "diagonal" (the axes are the coordinate axes).
        scales: float64 standard deviation along each axis: [k] for "pca"/"full", [D] for
            "diagonal".
        residual_std: isotropic standard deviation in the directions orthogonal to `axes` ("pca"
            with k < D only; 0 otherwise).
        n_centres: how many centres the distribution was fitted on.
    """

    kind: str
    mean: np.ndarray
    axes: np.ndarray | None
    scales: np.ndarray
    residual_std: float = 0.0
    n_centres: int = 0

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mean.shape[0])

    @property
    def components(self) -> int:
        """Number of modelled axes (D for "diagonal")."""
        return int(self.scales.shape[0])

    def covariance(self) -> np.ndarray:
        """The model's covariance matrix, float64 [D, D]."""
        if self.axes is None:
            return np.diag(self.scales**2)
        cov = (self.axes * self.scales**2) @ self.axes.T
        if self.residual_std > 0:
            complement = np.eye(self.dim) - self.axes @ self.axes.T
            cov = cov + self.residual_std**2 * complement
        return cov

    def sample_tensor(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        """`n` centres as a float32 CPU tensor [n, D] (noise drawn on the CPU with `generator`)."""
        n = int(n)
        if n < 0:
            raise ParameterError(f"n: expected a non-negative number of samples, got {n}")
        gen = make_generator(generator)
        mean = torch.from_numpy(self.mean).to(torch.float32)
        scales = torch.from_numpy(self.scales).to(torch.float32)
        if self.axes is None:
            z = torch.randn((n, self.dim), generator=gen)
            return mean + z * scales
        axes = torch.from_numpy(self.axes).to(torch.float32)
        z = torch.randn((n, self.components), generator=gen)
        x = mean + (z * scales) @ axes.T
        if self.residual_std > 0:
            e = torch.randn((n, self.dim), generator=gen)
            e = e - (e @ axes) @ axes.T
            x = x + self.residual_std * e
        return x

    def sample(self, n: int, generator: GeneratorLike = None) -> np.ndarray:
        """`n` centres, float32 [n, D] at the raw feature scale.

        Args:
            n: number of samples.
            generator: int seed, numpy Generator, CPU torch.Generator, or None (torch global RNG).
        """
        return self.sample_tensor(n, generator).numpy()


def fit_centre_distribution(
    centres,
    kind: CentreKind = "pca",
    pca_components: int | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> CentreDistribution:
    """Fit a Gaussian to real identity centres.

    - "pca" (default): the top k principal axes with their exact variances, plus an isotropic
      residual in the orthogonal complement. k defaults to min(C - 1, D): with C <= D centres the
      sample covariance has rank C - 1 and is singular, so only C - 1 directions carry information.
      The residual variance is the mean of the discarded eigenvalues over the D - k complement
      dimensions (the probabilistic-PCA estimate), floored at `shrinkage` x the mean eigenvalue
      (tr(cov) / D), so that samples are not confined to the (C - 1)-dimensional span of the real
      centres. With C > D and k = D this is exactly the sample covariance.
    - "full": the sample covariance shrunk towards a scaled identity,
      (1 - shrinkage) * cov + shrinkage * tr(cov)/D * I. With C <= D the covariance is singular;
      a warning is issued and the "pca" model is fitted instead (the returned kind says "pca").
    - "diagonal": per-dimension mean and std only. Kept for comparison: it ignores correlations
      and draws vectors off the manifold of real identities.

    Args:
        centres: [C, D] raw identity centres (`identity_centres`), C >= 2.
        kind: "pca", "full" or "diagonal".
        pca_components: k for "pca", 1 <= k <= min(C - 1, D); None = min(C - 1, D).
        shrinkage: in [0, 1): residual-variance floor ("pca") or shrinkage weight ("full");
            ignored for "diagonal".

    Raises:
        DataError: fewer than 2 centres or non-finite values.
        ParameterError: unknown kind, shrinkage outside [0, 1), pca_components out of range.
    """
    x = as_matrix(centres, "centres", torch.float64).numpy()
    c, d = x.shape
    if c < 2:
        raise DataError(
            f"centres: expected at least 2 identity centres to fit a distribution, got {c}"
        )
    if kind not in ("pca", "full", "diagonal"):
        raise ParameterError(f"kind: expected 'pca', 'full' or 'diagonal', got {kind!r}")
    shrinkage = float(shrinkage)
    if not 0.0 <= shrinkage < 1.0:
        raise ParameterError(f"shrinkage: expected a value in [0, 1), got {shrinkage}")
    mean = x.mean(axis=0)
    xc = x - mean
    if kind == "diagonal":
        return CentreDistribution("diagonal", mean, None, xc.std(axis=0, ddof=1), 0.0, c)

    if kind == "full" and c <= d:
        warnings.warn(
            f"fit_centre_distribution: kind='full' needs more centres than dimensions "
            f"(got C={c}, D={d}: the covariance is singular); fitting 'pca' with "
            f"{c - 1} components plus an isotropic residual instead",
            stacklevel=2,
        )
        kind = "pca"
        pca_components = None

    eigvals, axes = _principal_axes(xc)
    eigvals = np.clip(eigvals, 0.0, None)
    mean_eig = float(eigvals.sum()) / d
    if kind == "full":
        shrunk = (1.0 - shrinkage) * eigvals + shrinkage * mean_eig
        return CentreDistribution("full", mean, axes, np.sqrt(shrunk), 0.0, c)

    k_max = min(c - 1, d)
    k = k_max if pca_components is None else int(pca_components)
    if not 1 <= k <= k_max:
        raise ParameterError(
            f"pca_components: expected 1 <= k <= min(C - 1, D) = {k_max} for C={c} centres of "
            f"D={d}, got {pca_components}"
        )
    residual_var = 0.0
    if k < d:
        discarded = float(eigvals[k:].sum())
        residual_var = max(discarded / (d - k), shrinkage * mean_eig)
    return CentreDistribution(
        "pca", mean, axes[:, :k].copy(), np.sqrt(eigvals[:k]), math.sqrt(residual_var), c
    )


def _principal_axes(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors [D, m] of the sample covariance of centred rows."""
    c, d = xc.shape
    if c > d:
        eigvals, vecs = np.linalg.eigh(xc.T @ xc / (c - 1))
        order = np.argsort(eigvals)[::-1]
        return eigvals[order], vecs[:, order]
    # C <= D: the SVD of the [C, D] data is cheaper and gives the same non-zero spectrum.
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return s**2 / (c - 1), vt.T


# ----------------------------------------------------------------------------- threshold


def calibrate_threshold(
    centres,
    quantile: float = DEFAULT_CALIBRATION_QUANTILE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
) -> float:
    """Separation threshold for this teacher: a quantile of the real nearest-identity similarities.

    For each real identity centre, its largest cosine to any other real centre is computed; the
    threshold is the `quantile` of these values. With the default 0.95, synthetic identities are
    required to be at least as well separated as 95% of the real identities are from their nearest
    neighbour, while the top 5% (near-duplicate identities and label noise in web-scraped sets) do
    not set the bar. This mirrors the paper's choice for its teacher: at 0.4 practically every real
    WebFace4M identity is separable under ArcFace-R100, i.e. 0.4 sits in the upper tail of that
    teacher's real nearest-neighbour distribution. The nearest-neighbour cosine grows with the
    number of identities, so sampling many more synthetic identities than real ones makes the same
    threshold harder to meet.

    Args:
        centres: [C, D] real identity centres, C >= 2.
        quantile: in (0, 1].

    Raises:
        DataError: fewer than 2 centres.
        ParameterError: quantile outside (0, 1].
    """
    quantile = float(quantile)
    if not 0.0 < quantile <= 1.0:
        raise ParameterError(f"quantile: expected a value in (0, 1], got {quantile}")
    best = max_cosine_to_others(centres, block_size=block_size, device=device)
    if len(best) < 2:
        raise DataError(
            "centres: expected at least 2 real identity centres to calibrate a threshold, "
            f"got {len(best)}"
        )
    return float(np.quantile(best.astype(np.float64), quantile))


# ----------------------------------------------------------------------------- sampling


def _checked_sampling_args(
    n, threshold, candidates_per_round, max_rounds, block_size
) -> tuple[int, float, int, int]:
    """(n, threshold, candidates per round, block size), or a ParameterError naming the argument."""
    n = int(n)
    if n < 1:
        raise ParameterError(f"n: expected at least 1 identity centre to sample, got {n}")
    threshold = float(threshold)
    if not -1.0 < threshold <= 1.0:
        raise ParameterError(f"threshold: a cosine threshold must lie in (-1, 1], got {threshold}")
    per_round = int(candidates_per_round or max(1024, min(n, 65536)))
    if per_round < 1:
        raise ParameterError(f"candidates_per_round: expected >= 1, got {candidates_per_round}")
    if int(max_rounds) < 1:
        raise ParameterError(f"max_rounds: expected >= 1, got {max_rounds}")
    if int(block_size) < 1:
        raise ParameterError(f"block_size: expected a positive integer, got {block_size!r}")
    return n, threshold, per_round, int(block_size)


def _checked_leakage_threshold(leakage_threshold, real_centres) -> float:
    leakage_threshold = float(leakage_threshold)
    if not -1.0 < leakage_threshold <= 1.0:
        raise ParameterError(
            f"leakage_threshold: a cosine threshold must lie in (-1, 1], got {leakage_threshold}"
        )
    if real_centres is None:
        raise ParameterError(
            "leakage_threshold is set but real_centres is None; pass the real identity centres "
            "(identity_centres of the teacher features) or set leakage_threshold to None"
        )
    return leakage_threshold


def _real_unit_centres(real_centres, dim: int, dev: torch.device) -> torch.Tensor | None:
    """The real centres as unit rows on `dev` (None without real centres)."""
    if real_centres is None:
        return None
    real_unit = unit_rows(as_matrix(real_centres, "real_centres").to(dev))
    if real_unit.shape[1] != dim or real_unit.shape[0] == 0:
        raise DataError(
            f"real_centres: expected a non-empty [C, {dim}] array (the distribution's "
            f"dimension), got shape {tuple(real_unit.shape)}"
        )
    return real_unit


def _screen_chunk(
    unit: torch.Tensor,
    real_unit: torch.Tensor | None,
    kept_unit: torch.Tensor,
    threshold: float,
    leakage_threshold: float | None,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(alive, leaked, cosine to the nearest real centre) of a chunk of unit candidates: alive
    ones pass the leakage guard and are below `threshold` to every kept centre."""
    alive = torch.ones(len(unit), dtype=torch.bool, device=unit.device)
    leaked = torch.zeros_like(alive)
    to_real = None
    if real_unit is not None:
        to_real, _ = max_cosine_unit(unit, real_unit, block, with_index=False)
        if leakage_threshold is not None:
            leaked = to_real >= leakage_threshold
            alive = ~leaked
    if len(kept_unit):
        to_kept, _ = max_cosine_unit(unit, kept_unit, block, with_index=False)
        alive &= to_kept < threshold
    return alive, leaked, to_real


def _too_few_centres(report: dict) -> ParameterError:
    r = report
    hint = "raise `threshold` (e.g. calibrate_threshold on the real centres, higher quantile)"
    if r["rejected_by_leakage"] > r["rejected_by_separation"]:
        hint = (
            "raise `leakage_threshold` (most candidates were rejected as too close to real "
            "identities)"
        )
    return ParameterError(
        f"sample_identity_centres: found only {r['kept']} of {r['requested']} identity centres "
        f"with pairwise cosine < threshold={r['threshold']:g} after max_rounds={r['rounds']} "
        f"rounds of {r['candidates_per_round']} candidates ({r['drawn']} examined: "
        f"{r['rejected_by_separation']} rejected by separation, {r['rejected_by_leakage']} by "
        f"the leakage guard); {hint}, lower n, or raise max_rounds"
    )


def sample_identity_centres(
    dist: CentreDistribution,
    n: int,
    threshold: float,
    real_centres=None,
    leakage_threshold: float | None = None,
    candidates_per_round: int | None = None,
    max_rounds: int = 50,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
    generator: GeneratorLike = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Draw `n` identity centres whose pairwise cosine similarities are all < `threshold`.

    Each round draws `candidates_per_round` candidates from `dist` and examines them in order, in
    chunks of `block_size`. A candidate is rejected by the leakage guard when its cosine to any real
    centre is >= `leakage_threshold`, and by separation when its cosine to any already-kept centre
    (earlier rounds, earlier chunks, or earlier candidates of its own chunk) is >= `threshold`. The
    result is exactly what a one-candidate-at-a-time greedy pass in draw order would keep, but it is
    computed with blockwise matrix products: a chunk is compared with the kept set tile by tile, and
    the greedy decision inside the chunk is a fixed-point iteration on its conflict matrix (accept a
    candidate once no undecided earlier candidate conflicts with it, reject it once an accepted one
    does). Memory beyond the n x D kept set is O(block_size^2) on `device`.

    Args:
        dist: the fitted centre distribution.
        n: number of centres to keep.
        threshold: separation threshold in (-1, 1] (see `calibrate_threshold`).
        real_centres: [C_real, D] real identity centres; needed for the leakage guard, and when
            given the report also states the largest cosine of any kept centre to a real one.
        leakage_threshold: reject candidates with cosine >= this to any real centre; None = no
            guard.
        candidates_per_round: candidates drawn per round; None = max(1024, min(n, 65536)).
        max_rounds: rounds before giving up with an error.
        block_size: chunk and tile size of the cosine products.
        device: where the products run ('cpu', 'cuda', 'auto', ...). Candidates are drawn on the
            CPU, so a seed gives the same candidates on every device.
        generator: int seed, numpy Generator, CPU torch.Generator, or None (torch global RNG).
        progress: show a tqdm bar of kept centres.

    Returns:
        (float32 [n, D] centres at the raw feature scale, report dict with "requested", "kept",
        "drawn" (candidates examined), "generated", "rejected_by_separation", "rejected_by_leakage",
        "rounds", "threshold", "leakage_threshold", "max_cosine_to_real", "candidates_per_round",
        "block_size", "device", "seconds").

    Raises:
        ParameterError: bad arguments, or `max_rounds` ran out before `n` centres were kept (the
            message says how many were found and what to change).
    """
    start = time.perf_counter()
    n, threshold, per_round, block = _checked_sampling_args(
        n, threshold, candidates_per_round, max_rounds, block_size
    )
    dev = resolve_device(device)
    gen = make_generator(generator)
    if leakage_threshold is not None:
        leakage_threshold = _checked_leakage_threshold(leakage_threshold, real_centres)
    real_unit = _real_unit_centres(real_centres, dist.dim, dev)

    kept_unit = torch.empty((n, dist.dim), device=dev)
    kept_raw = torch.empty((n, dist.dim))
    kept = drawn = generated = rejected_sep = rejected_leak = rounds = 0
    max_to_real = float("-inf")
    bar = tqdm(total=n, desc="sampling identity centres", unit="id", disable=not progress)
    with ieee_fp32_matmul(dev):
        while kept < n and rounds < int(max_rounds):
            rounds += 1
            candidates = dist.sample_tensor(per_round, gen)
            generated += per_round
            for s in range(0, per_round, block):
                raw = candidates[s : s + block]
                unit = unit_rows(raw.to(dev))
                alive, leaked, to_real = _screen_chunk(
                    unit, real_unit, kept_unit[:kept], threshold, leakage_threshold, block
                )
                accepted = _accept_greedily(unit, alive, threshold)
                take = min(len(accepted), n - kept)
                examined = len(raw)
                if take < len(accepted):
                    # The n-th centre was found inside this chunk: later ones were not examined.
                    accepted = accepted[:take]
                    examined = int(accepted[-1]) + 1
                n_leaked = int(leaked[:examined].sum())
                rejected_leak += n_leaked
                rejected_sep += examined - n_leaked - take
                drawn += examined
                if take:
                    kept_unit[kept : kept + take] = unit[accepted]
                    kept_raw[kept : kept + take] = raw[accepted.cpu()]
                    if to_real is not None:
                        max_to_real = max(max_to_real, float(to_real[accepted].max()))
                    kept += take
                    bar.update(take)
                if kept == n:
                    break
    bar.close()

    report = {
        "requested": n,
        "kept": kept,
        "drawn": drawn,
        "generated": generated,
        "rejected_by_separation": rejected_sep,
        "rejected_by_leakage": rejected_leak,
        "rounds": rounds,
        "threshold": threshold,
        "leakage_threshold": leakage_threshold,
        "max_cosine_to_real": max_to_real if real_unit is not None and kept else None,
        "candidates_per_round": per_round,
        "block_size": block,
        "device": str(dev),
        "seconds": time.perf_counter() - start,
    }
    if kept < n:
        raise _too_few_centres(report)
    return kept_raw.numpy(), report


def _accept_greedily(unit: torch.Tensor, alive: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (ascending) that an in-order greedy pass over the `alive` rows of `unit` keeps.

    Row i is kept iff its cosine to every kept earlier row is < threshold. Solved as a fixed point
    on the strictly-lower-triangular conflict matrix: a row is accepted once none of its earlier
    conflicts is undecided or accepted, rejected once an accepted earlier row conflicts with it.
    Every iteration decides at least the first undecided row; with sparse conflicts it takes a few.
    """
    idx = alive.nonzero().squeeze(1)
    if len(idx) <= 1:
        return idx
    sub = unit[idx]
    conflict = ((sub @ sub.T) >= threshold).tril(diagonal=-1).to(sub.dtype)
    accepted = torch.zeros(len(idx), dtype=torch.bool, device=unit.device)
    undecided = torch.ones_like(accepted)
    while bool(undecided.any()):
        hits_accepted = (conflict @ accepted.to(sub.dtype)) > 0
        hits_undecided = (conflict @ undecided.to(sub.dtype)) > 0
        accept = undecided & ~hits_accepted & ~hits_undecided
        reject = undecided & hits_accepted
        accepted |= accept
        undecided &= ~(accept | reject)
    return idx[accepted]


# ----------------------------------------------------------------------------- intra-class vectors


def within_identity_noise_factor(features, labels, ridge: float = 1e-6) -> np.ndarray:
    """A [D, D] factor L with L L^T = the real features' within-identity covariance.

    Noise z @ L.T (z ~ N(0, I)) then varies a vector the way real images of one person vary in
    feature space - along the directions pose, light and background move the feature, not along
    directions no real image moves it. `ridge` (times the mean variance) keeps L defined when the
    covariance is singular (fewer images than dimensions).
    """
    f = as_matrix(features, "features").double().numpy()
    labels = np.asarray(labels)
    if labels.shape != (len(f),):
        raise DataError(f"labels: expected shape ({len(f)},), got {labels.shape}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if (counts >= 2).sum() < 2:
        raise DataError("within-identity noise needs at least 2 identities with >= 2 images each")
    sums = np.zeros((len(counts), f.shape[1]))
    np.add.at(sums, inverse, f)
    residual = f - (sums / counts[:, None])[inverse]
    cov = residual.T @ residual / max(len(f) - len(counts), 1)
    cov += ridge * max(float(np.trace(cov)) / len(cov), 1e-12) * np.eye(len(cov))
    return np.linalg.cholesky(cov)


def intra_class_vectors(
    centres,
    images_per_identity: int,
    sigma_mix: Sequence[tuple[float, float]] = DEFAULT_SIGMA_MIX,
    feature_std=None,
    generator: GeneratorLike = None,
    noise_factor=None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-image vectors around each identity centre.

    Row r of identity c is centre_c + sigma_r * feature_std * z (z ~ N(0, I)), rescaled to the norm
    of centre_c. The noise scales come from `sigma_mix` = ((sigma, proportion), ...): each identity
    gets floor(k * p) rows of every sigma, and the remaining rows go to sigmas chosen by systematic
    sampling with a golden-ratio offset per identity, so per-identity counts are the exact share
    rounded down or up and the dataset-wide proportions match the mix closely. Within an identity
    the sigmas are interleaved (not grouped), so any prefix of its images has a similar mix.

    Args:
        centres: [C, D] identity centres (raw scale).
        images_per_identity: k >= 1.
        sigma_mix: (sigma >= 0, proportion > 0) pairs; proportions sum to 1. Default: the paper's
            0.3 / 0.5 / 0.7 for 40% / 40% / 20% of rows.
        feature_std: the real features' per-dimension std ([D] or a scalar), so that sigma is
            relative to the real spread; None = 1 (sigma in raw feature units, as upstream).
        generator: int seed, numpy Generator, CPU torch.Generator, or None (torch global RNG).
        noise_factor: instead of feature_std, a [D, D] factor L (within_identity_noise_factor):
            row r is centre_c + sigma_r * z @ L.T, so sigma is relative to the real
            within-identity spread and the noise follows its directions.

    Returns:
        (float32 [C * k, D] vectors, plan DataFrame with columns identity (int64), index
        (int64, 0..k-1 within the identity) and sigma (float64), one row per vector, same order).

    Raises:
        ParameterError: bad k, sigma_mix or feature_std.
    """
    c = as_matrix(centres, "centres")
    n_ids, d = c.shape
    k = int(images_per_identity)
    if k < 1:
        raise ParameterError(f"images_per_identity: expected >= 1, got {images_per_identity}")
    sigmas, proportions = _check_sigma_mix(sigma_mix)
    std = _check_feature_std(feature_std, d)
    factor = None
    if noise_factor is not None:
        if feature_std is not None:
            raise ParameterError("give feature_std or noise_factor, not both")
        factor = torch.as_tensor(np.asarray(noise_factor, dtype=np.float32))
        if factor.shape != (d, d) or not torch.isfinite(factor).all():
            raise ParameterError(
                f"noise_factor: expected a finite [{d}, {d}] matrix, got {tuple(factor.shape)}"
            )
    gen = make_generator(generator)

    counts = _sigma_counts(n_ids, k, proportions)
    sigma_index = _interleave_sigmas(counts)
    row_sigma = sigmas[sigma_index]
    out = np.empty((n_ids * k, d), dtype=np.float32)
    ids_per_chunk = max(1, _NOISE_CHUNK_ROWS // k)
    sigma_t = torch.from_numpy(row_sigma.astype(np.float32))
    for a in range(0, n_ids, ids_per_chunk):
        b = min(n_ids, a + ids_per_chunk)
        rep = c[a:b].repeat_interleave(k, dim=0)
        z = torch.randn(rep.shape, generator=gen)
        noise = z @ factor.T if factor is not None else std[None, :] * z
        v = rep + sigma_t[a * k : b * k, None] * noise
        v = v * (rep.norm(dim=1, keepdim=True) / v.norm(dim=1, keepdim=True).clamp_min(1e-12))
        out[a * k : b * k] = v.numpy()
    plan = pd.DataFrame(
        {
            "identity": np.repeat(np.arange(n_ids, dtype=np.int64), k),
            "index": np.tile(np.arange(k, dtype=np.int64), n_ids),
            "sigma": row_sigma.astype(np.float64),
        }
    )
    return out, plan


def _check_sigma_mix(sigma_mix) -> tuple[np.ndarray, np.ndarray]:
    try:
        pairs = np.asarray([(float(s), float(p)) for s, p in sigma_mix], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"sigma_mix: expected a sequence of (sigma, proportion) pairs, got {sigma_mix!r}"
        ) from exc
    if pairs.size == 0:
        raise ParameterError("sigma_mix: expected at least one (sigma, proportion) pair")
    sigmas, proportions = pairs[:, 0], pairs[:, 1]
    if not (np.isfinite(pairs).all() and (sigmas >= 0).all() and (proportions > 0).all()):
        raise ParameterError(
            f"sigma_mix: expected finite sigma >= 0 and proportion > 0, got {sigma_mix!r}"
        )
    if abs(proportions.sum() - 1.0) > 1e-6:
        raise ParameterError(
            f"sigma_mix: proportions must sum to 1, got {proportions.sum():.6g} in {sigma_mix!r}"
        )
    return sigmas, proportions / proportions.sum()


def _check_feature_std(feature_std, d: int) -> torch.Tensor:
    if feature_std is None:
        return torch.ones(d)
    std = np.asarray(feature_std, dtype=np.float64)
    if std.ndim == 0:
        std = np.full(d, float(std))
    if std.shape != (d,) or not np.isfinite(std).all() or (std < 0).any():
        raise ParameterError(
            f"feature_std: expected a finite non-negative scalar or [{d}] vector (the real "
            f"features' per-dimension std), got shape {std.shape}"
        )
    return torch.from_numpy(std.astype(np.float32))


def _sigma_counts(n_ids: int, k: int, proportions: np.ndarray) -> np.ndarray:
    """Rows per (identity, sigma), [C, J]: floor(k*p) each, remainders by systematic sampling."""
    quota = np.round(k * proportions, 9)
    base = np.floor(quota).astype(np.int64)
    fractions = quota - base
    extra = int(k - base.sum())
    counts = np.tile(base, (n_ids, 1))
    if extra > 0:
        edges = np.cumsum(fractions)
        offsets = (np.arange(n_ids) * _GOLDEN_FRACTION) % 1.0
        points = offsets[:, None] + np.arange(extra)[None, :]
        # Each fraction is < 1 and points are 1 apart: a sigma gets at most one extra row.
        chosen = np.minimum(np.searchsorted(edges, points, side="right"), len(base) - 1)
        np.add.at(counts, (np.repeat(np.arange(n_ids), extra), chosen.reshape(-1)), 1)
    return counts


def _interleave_sigmas(counts: np.ndarray) -> np.ndarray:
    """Sigma index per row, identity-major, spreading each sigma evenly over the identity's rows."""
    n_ids, n_sigmas = counts.shape
    ids, keys, which = [], [], []
    for j in range(n_sigmas):
        cj = counts[:, j]
        total = int(cj.sum())
        if total == 0:
            continue
        owner = np.repeat(np.arange(n_ids), cj)
        rank = np.arange(total) - np.repeat(np.cumsum(cj) - cj, cj)
        ids.append(owner)
        keys.append((rank + 0.5) / np.repeat(cj, cj))
        which.append(np.full(total, j))
    ids, keys, which = np.concatenate(ids), np.concatenate(keys), np.concatenate(which)
    order = np.lexsort((which, keys, ids))
    return which[order]

"""The identity plan: which synthetic identities, how many images each, and what every image asks
AttrOP for. Combines sampling (centres, intra-class vectors) with attribute targets."""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from face_pipelines.errors import DataError
from face_pipelines.metrics.separability import identity_centres
from face_pipelines.synthesis.sampling import (
    calibrate_threshold,
    fit_centre_distribution,
    intra_class_vectors,
    sample_identity_centres,
    within_identity_noise_factor,
)


class AttrOPTargets(BaseModel):
    """Which images get AttrOP and with which targets."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(
        0.15,
        ge=0,
        le=1,
        description="fraction of each identity's images "
        "that get a yaw target (the rest are rendered as sampled)",
    )
    yaw_range_deg: tuple[float, float] = Field(
        (30.0, 75.0), description="|yaw| targets are spread uniformly over this range"
    )
    quality_quantile: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="quality target of AttrOP images = this quantile of the real "
        "features' norms (MagFace quality); null = no quality target",
    )

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.yaw_range_deg
        if not 0 <= lo <= hi <= 90:
            raise ValueError("yaw_range_deg must satisfy 0 <= min <= max <= 90")
        return self


class CentreSamplingConfig(BaseModel):
    """How many new identities, and how they are kept apart from each other and from real ones.

    Shared by every generator's plan: Vec2Face samples in the teacher's feature space, DR-GAN in its
    encoder's identity space (synthesis.pose_code); the sampling code is the same.
    """

    model_config = ConfigDict(extra="forbid")
    n_ids: int | None = Field(
        None,
        gt=0,
        description="synthetic identities (null = as many as "
        "the real subset: the paper's same-size comparison)",
    )
    images_per_identity: int | None = Field(
        None,
        gt=0,
        description="images per identity (null = real images / real identities, so "
        "the synthetic set has the real subset's image count)",
    )
    distribution: str = Field(
        "pca",
        pattern="^(pca|full|diagonal)$",
        description="Gaussian fitted to real identity centres",
    )
    pca_components: int | None = Field(None, gt=0, description="PCA rank (null = C-1)")
    threshold: float | None = Field(
        None,
        gt=-1,
        le=1,
        description="a candidate is kept only if its cosine to every kept "
        "centre is below this; null = calibrated from the real centres (calibration_quantile). "
        "The paper's 0.4 belongs to ArcFace-R100 (conf/paper)",
    )
    calibration_quantile: float = Field(
        0.95, gt=0, le=1, description="quantile of real nearest-identity cosines used as threshold"
    )
    leakage_threshold: float | None = Field(
        None,
        gt=-1,
        le=1,
        description="candidates with cosine >= this to any REAL identity centre "
        "are rejected as leaked identities (null = the separation threshold)",
    )
    threshold_margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="sample centres this much below the separation threshold (the card still "
        "judges separability at the threshold itself): rendering scatters identity centres, so "
        "vectors kept just below the threshold render into centres just above it. 0 = sample at "
        "the threshold (the paper)",
    )
    max_rounds: int = Field(50, gt=0, description="candidate rounds before giving up")
    seed: int = Field(0, description="seed")


class SampleConfig(CentreSamplingConfig):
    """Identity sampling and intra-class variation."""

    sigma_mix: list[tuple[float, float]] = Field(
        [(0.3, 0.4), (0.5, 0.4), (0.7, 0.2)],
        description="(sigma, proportion) of intra-class noise; sigma relative to the real "
        "features' per-dimension std (noise: per_dim) or within-identity spread (within_identity)",
    )
    noise: Literal["per_dim", "within_identity"] = Field(
        "per_dim",
        description="shape of the intra-class noise. per_dim (the paper's): independent per "
        "dimension, scaled by the real features' std. within_identity: Gaussian with the real "
        "within-identity covariance, so a vector moves the way real images of one person move "
        "the feature. A teacher whose features span few directions (FaceWorld's: 32 of 256 hold "
        "99% of the variance) gets per_dim noise mostly in directions no real image uses, and "
        "a generator that reads them renders off-distribution faces (docs/study.md (h4))",
    )
    attrop: AttrOPTargets = Field(default_factory=AttrOPTargets)


class SampledCentres(NamedTuple):
    """What `sample_centres` returns: the kept centres and how they were chosen."""

    centres: np.ndarray  # float32 [n_ids, D]
    images_per_identity: int
    report: dict  # the plan report's sampling part (threshold, leakage, counts)
    rng: np.random.Generator  # the plan's generator, advanced past the centre draws


def sample_centres(
    features: np.ndarray,
    labels: np.ndarray,
    cfg: CentreSamplingConfig,
    fit_centres: np.ndarray | None = None,
    **run,
) -> SampledCentres:
    """Well-separated, non-leaking identity centres from a Gaussian fitted to the real centres of
    `features` (any identity space: the teacher's, a DR-GAN encoder's).

    `fit_centres`: identity centres [C, D] of ANOTHER set in the same space to fit the Gaussian on
    instead (the paper's guard against re-drawing the training identities); leakage is still
    checked against the centres of `features`. `run`: device and progress, as
    sample_identity_centres takes them.
    """
    features = np.asarray(features, dtype=np.float32)
    real_centres = identity_centres(features, labels)
    n_real = len(real_centres)
    n_ids = cfg.n_ids or n_real
    k = cfg.images_per_identity or max(1, int(round(len(features) / n_real)))
    # The calibrated value is reported beside a fixed threshold too: it says where the fixed one
    # sits in this teacher's real nearest-identity distribution.
    calibrated_threshold = calibrate_threshold(
        real_centres, cfg.calibration_quantile, device=run.get("device", "cpu")
    )
    calibrated = cfg.threshold is None
    threshold = calibrated_threshold if calibrated else cfg.threshold
    leak = cfg.leakage_threshold if cfg.leakage_threshold is not None else threshold
    fit_on = real_centres if fit_centres is None else _other_centres(fit_centres, features.shape[1])
    dist = fit_centre_distribution(fit_on, cfg.distribution, cfg.pca_components)
    gen = np.random.default_rng(cfg.seed)
    centres, sample_report = sample_identity_centres(
        dist,
        n_ids,
        threshold - cfg.threshold_margin,
        real_centres=real_centres,
        leakage_threshold=leak,
        max_rounds=cfg.max_rounds,
        generator=gen,
        **run,
    )
    report = {
        "real_identities": int(n_real),
        "real_images": int(len(features)),
        "synthetic_identities": int(n_ids),
        "images_per_identity": int(k),
        "threshold": float(threshold),
        "sampling_threshold": float(threshold - cfg.threshold_margin),
        "threshold_calibrated": calibrated,
        "calibrated_threshold": float(calibrated_threshold),
        "calibration_quantile": cfg.calibration_quantile,
        "leakage_threshold": float(leak),
        "distribution_fitted_on": "subset" if fit_centres is None else "other set",
        "distribution_identities": int(len(fit_on)),
        "sampling": sample_report,
    }
    return SampledCentres(centres.astype(np.float32), int(k), report, gen)


def _other_centres(centres: np.ndarray, dim: int) -> np.ndarray:
    centres = np.asarray(centres, dtype=np.float32)
    if centres.ndim != 2 or centres.shape[1] != dim or len(centres) < 2:
        raise DataError(
            f"identity centres of another set: expected float [C >= 2, {dim}] (per-identity mean "
            f"features in the same teacher's space), got shape {centres.shape}"
        )
    if not np.isfinite(centres).all():
        raise DataError("identity centres of another set: non-finite values")
    return centres


def make_identity_plan(
    features: np.ndarray,
    labels: np.ndarray,
    cfg: SampleConfig,
    device: str = "cpu",
    progress: bool = True,
    fit_centres: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """Sample identity centres and per-image vectors; returns (plan, vectors, centres, report).

    `fit_centres`: another set's identity centres to fit the centre distribution on (sample_centres).
    """
    features = np.asarray(features, dtype=np.float32)
    centres, k, report, gen = sample_centres(
        features, labels, cfg, fit_centres, device=device, progress=progress
    )
    shape = (
        {"noise_factor": within_identity_noise_factor(features, labels)}
        if cfg.noise == "within_identity"
        else {"feature_std": features.std(0)}
    )
    vectors, plan = intra_class_vectors(
        centres, k, [tuple(x) for x in cfg.sigma_mix], generator=gen, **shape
    )
    plan = _add_attrop_targets(plan, cfg.attrop, np.linalg.norm(features, axis=1), gen)
    report = {
        **{k_: v for k_, v in report.items() if k_ != "sampling"},
        "synthetic_images": int(len(plan)),
        "sampling": report["sampling"],
        "attrop_images": int(plan["attrop"].sum()),
    }
    return plan, vectors.astype(np.float32), centres, report


def _add_attrop_targets(
    plan: pd.DataFrame, t: AttrOPTargets, real_norms: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    plan = plan.copy()
    k = int(plan.groupby("identity").size().max())
    n_att = int(round(t.fraction * k))
    # The last n_att images of every identity get targets (sigmas are interleaved within an
    # identity, so this does not bias the sigma mix); yaw targets are spread evenly per identity.
    plan["attrop"] = plan["index"] >= (k - n_att) if n_att else False
    lo, hi = t.yaw_range_deg
    yaw = np.full(len(plan), np.nan)
    sel = plan["attrop"].to_numpy()
    if sel.any():
        ranks = (plan.loc[sel, "index"] - (k - n_att)).to_numpy()
        offsets = rng.random(int(plan.loc[sel, "identity"].max()) + 1)
        pos = (ranks + offsets[plan.loc[sel, "identity"].to_numpy()]) / max(1, n_att)
        yaw[sel] = lo + (hi - lo) * (pos % 1.0)
    plan["yaw_target"] = yaw
    q = np.nan if t.quality_quantile is None else float(np.quantile(real_norms, t.quality_quantile))
    plan["quality_target"] = np.where(sel, q, np.nan)
    return plan

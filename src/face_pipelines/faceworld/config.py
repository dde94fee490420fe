"""FaceWorld configuration: pool sizes, images per identity, nuisance distributions, eval protocols.

Every field has a description and unknown keys are errors (`extra='forbid'`), so a typo in
conf/base/parameters*.yml fails with a message naming the key instead of being silently ignored.
The defaults are the laptop-sized world (64 px, materialised in about a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from face_pipelines.errors import ParameterError

__all__ = [
    "FaceWorldConfig",
    "IdentityConfig",
    "ImagesPerIdentityConfig",
    "NuisanceConfig",
    "PoolConfig",
    "PretrainPoolConfig",
    "EvalConfig",
    "RandomPairsProtocol",
    "PoseProtocol",
    "AgeProtocol",
    "POOL_NAMES",
    "load_faceworld_config",
    "config_hash",
]

POOL_NAMES = ("pretrain", "train", "eval")

# Bumped whenever the renderer or the sampling code changes what a given config produces, so a
# cached world rendered by older code is regenerated instead of silently reused.
RENDERER_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(lo_hi: tuple[float, float], name: str) -> None:
    if lo_hi[0] > lo_hi[1]:
        raise ValueError(f"{name}: lower bound {lo_hi[0]} is above upper bound {lo_hi[1]}")


class IdentityConfig(_Strict):
    """How different identities are from each other (the population identities are drawn from)."""

    diversity: float = Field(
        1.0,
        gt=0.0,
        le=3.0,
        description="Scale of the spread of every shape/colour identity parameter around the "
        "population mean; lower makes identities look more alike (harder recognition).",
    )
    glasses_wearer_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Fraction of identities that wear glasses in some photos."
    )
    beard_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Fraction of identities that have a beard in some photos."
    )
    mole_fraction: float = Field(
        0.35, ge=0.0, le=1.0, description="Fraction of identities with one or two visible moles."
    )
    freckle_fraction: float = Field(
        0.15, ge=0.0, le=1.0, description="Fraction of identities with freckles."
    )


class NuisanceConfig(_Strict):
    """Per-image nuisance distributions of one pool (pose, expression, age, light, quality...)."""

    yaw_std_deg: float = Field(
        16.0, ge=0.0, description="Std of the near-frontal core of the yaw distribution (deg)."
    )
    yaw_tail_fraction: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Fraction of images whose yaw is drawn uniformly over +-yaw_max_deg (the "
        "thin tail of profile-ish photos).",
    )
    yaw_max_deg: float = Field(75.0, ge=0.0, le=90.0, description="Largest |yaw| (deg).")
    pitch_std_deg: float = Field(9.0, ge=0.0, description="Std of pitch (deg).")
    pitch_max_deg: float = Field(30.0, ge=0.0, le=60.0, description="Largest |pitch| (deg).")
    roll_std_deg: float = Field(7.0, ge=0.0, description="Std of roll before alignment (deg).")
    roll_max_deg: float = Field(30.0, ge=0.0, le=90.0, description="Largest |roll| (deg).")
    expression_weights: tuple[float, float, float, float, float] = Field(
        (0.42, 0.26, 0.12, 0.08, 0.12),
        description="Relative frequency of the expressions neutral, smile, laugh (open smile), "
        "surprise, frown.",
    )
    age_spread_years: float = Field(
        12.0, ge=0.0, description="Std of an image's age around its identity's base age (years)."
    )
    light_azimuth_max_deg: float = Field(
        80.0, ge=0.0, le=180.0, description="Key light azimuth drawn in +-this (0 = frontal)."
    )
    light_elevation_deg: tuple[float, float] = Field(
        (-15.0, 60.0), description="Range of key light elevation (deg, 0 = eye level)."
    )
    light_intensity: tuple[float, float] = Field(
        (0.45, 1.35), description="Range of key light intensity (1 = nominal exposure)."
    )
    ambient: tuple[float, float] = Field(
        (0.15, 0.6), description="Range of ambient (fill) light level."
    )
    light_color_jitter: float = Field(
        0.3,
        ge=0.0,
        le=0.8,
        description="Strength of light colour temperature / tint variation (0 = white light).",
    )
    white_balance_jitter: float = Field(
        0.15, ge=0.0, le=0.5, description="Std of camera white-balance gain errors (R and B)."
    )
    specular_max: float = Field(
        0.25, ge=0.0, le=1.0, description="Largest skin specular (shine) strength."
    )
    glasses_scale: float = Field(
        1.0,
        ge=0.0,
        le=3.0,
        description="Multiplies each identity's propensity to wear glasses in a photo.",
    )
    sunglasses_fraction: float = Field(
        0.12, ge=0.0, le=1.0, description="Fraction of glasses that are dark sunglasses."
    )
    beard_scale: float = Field(
        1.0,
        ge=0.0,
        le=3.0,
        description="Multiplies each identity's propensity to have a beard in a photo.",
    )
    hat_prob: float = Field(0.08, ge=0.0, le=1.0, description="Probability of a hat or cap.")
    blur_prob: float = Field(
        0.3, ge=0.0, le=1.0, description="Probability of a visibly blurred photo."
    )
    blur_max_sigma: float = Field(
        1.6,
        ge=0.0,
        le=4.0,
        description="Largest Gaussian blur sigma, in pixels of a 64 px image (scaled with size).",
    )
    noise_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="Probability of visible sensor noise."
    )
    noise_max_std: float = Field(
        0.05, ge=0.0, le=0.3, description="Largest noise std (fraction of the 0..255 range)."
    )
    jpeg_quality: tuple[int, int] = Field(
        (35, 95), description="Range of JPEG quality the image is compressed with."
    )
    align_jitter: float = Field(
        0.03,
        ge=0.0,
        le=0.2,
        description="Std of landmark detection error before alignment (fraction of the "
        "inter-ocular distance), so crops are not perfectly aligned.",
    )
    background_texture: float = Field(
        1.0, ge=0.0, le=2.0, description="Strength of background texture (stripes, blobs)."
    )

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.light_elevation_deg, "light_elevation_deg")
        _check_range(self.light_intensity, "light_intensity")
        _check_range(self.ambient, "ambient")
        _check_range(self.jpeg_quality, "jpeg_quality")
        if not (self.jpeg_quality[0] >= 1 and self.jpeg_quality[1] <= 100):
            raise ValueError("jpeg_quality must lie in [1, 100]")
        if sum(self.expression_weights) <= 0 or min(self.expression_weights) < 0:
            raise ValueError("expression_weights must be >= 0 with a positive sum")
        return self


class ImagesPerIdentityConfig(_Strict):
    """How many images each identity of a pool gets: a clipped log-normal (long-tailed)."""

    min: int = Field(5, ge=1, description="Fewest images of an identity.")
    max: int = Field(60, ge=1, le=999, description="Most images of an identity (<= 999).")
    median: float = Field(15.0, gt=0, description="Median images per identity before clipping.")
    log_std: float = Field(
        0.7, ge=0.0, description="Std of log(images per identity); 0 gives every identity `median`."
    )

    @model_validator(mode="after")
    def _check(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class PoolConfig(_Strict):
    """One identity pool written as identity folders (the `train` pool's defaults)."""

    n_ids: int = Field(1000, ge=1, le=1_000_000, description="Number of identities in the pool.")
    images_per_identity: ImagesPerIdentityConfig = Field(
        default_factory=ImagesPerIdentityConfig, description="Images per identity distribution."
    )
    nuisances: NuisanceConfig = Field(
        default_factory=NuisanceConfig, description="Per-image nuisance distributions."
    )


class PretrainPoolConfig(PoolConfig):
    """The teacher's pool: like `train`, but a fixed number of images per identity.

    Its own defaults (rather than a default instance) keep them when a YAML file overrides only
    some keys, e.g. `pretrain: {n_ids: 800}`.
    """

    n_ids: int = Field(400, ge=1, le=1_000_000, description="Number of identities in the pool.")
    images_per_identity: ImagesPerIdentityConfig = Field(
        default_factory=lambda: ImagesPerIdentityConfig(min=32, max=32, median=32, log_std=0.0),
        description="Images per identity distribution (default: exactly 32).",
    )


class RandomPairsProtocol(_Strict):
    """LFW-style random pairs: folds x (n same + n different), identity-disjoint folds."""

    folds: int = Field(10, ge=2, description="Number of contiguous folds.")
    pairs_per_fold: int = Field(
        150, ge=1, description="Same pairs per fold (and as many different pairs)."
    )


class PoseProtocol(_Strict):
    """CFP-FP-style pairs: one frontal and one large-|yaw| image in every pair."""

    folds: int = Field(10, ge=2, description="Number of contiguous folds.")
    pairs_per_fold: int = Field(
        100, ge=1, description="Same pairs per fold (and as many different pairs)."
    )
    frontal_max_yaw_deg: float = Field(10.0, ge=0.0, description="Frontal side: |yaw| <= this.")
    profile_yaw_deg: tuple[float, float] = Field(
        (55.0, 75.0), description="Profile side: |yaw| drawn uniformly in this range."
    )

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.profile_yaw_deg, "profile_yaw_deg")
        if self.profile_yaw_deg[0] <= self.frontal_max_yaw_deg:
            raise ValueError("profile_yaw_deg must start above frontal_max_yaw_deg")
        return self


class AgeProtocol(_Strict):
    """AgeDB-style pairs: both images of every pair are far apart in age."""

    folds: int = Field(10, ge=2, description="Number of contiguous folds.")
    pairs_per_fold: int = Field(
        100, ge=1, description="Same pairs per fold (and as many different pairs)."
    )
    min_age_gap_years: float = Field(
        25.0, ge=0.0, description="Smallest age difference between the two images of a pair."
    )
    age_range_years: tuple[float, float] = Field(
        (16.0, 80.0), description="Ages are drawn within this range."
    )

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.age_range_years, "age_range_years")
        span = self.age_range_years[1] - self.age_range_years[0]
        if span < self.min_age_gap_years:
            raise ValueError("age_range_years is narrower than min_age_gap_years")
        return self


class EvalConfig(_Strict):
    """The evaluation identity pool and its verification protocols (.bin benchmarks)."""

    n_ids: int = Field(600, ge=4, le=1_000_000, description="Number of evaluation identities.")
    nuisances: NuisanceConfig = Field(
        default_factory=NuisanceConfig,
        description="Nuisances of evaluation images (pose/age are overridden per protocol).",
    )
    fw_lfw: RandomPairsProtocol = Field(
        default_factory=RandomPairsProtocol, description="Random pairs (like LFW)."
    )
    fw_cfp: PoseProtocol = Field(
        default_factory=PoseProtocol, description="Frontal-vs-profile pairs (like CFP-FP)."
    )
    fw_age: AgeProtocol = Field(
        default_factory=AgeProtocol, description="Large age-gap pairs (like AgeDB-30)."
    )

    @model_validator(mode="after")
    def _check(self):
        for name in ("fw_lfw", "fw_cfp", "fw_age"):
            folds = getattr(self, name).folds
            if self.n_ids < 2 * folds:
                raise ValueError(
                    f"n_ids ({self.n_ids}) must be >= 2 x {name}.folds ({folds}): folds are "
                    "identity-disjoint and each needs two identities for different pairs"
                )
        return self


class FaceWorldConfig(_Strict):
    """The whole embedded face world: seed, image size, identity population and the three pools."""

    seed: int = Field(
        0, ge=0, description="Seed of the world; every pool derives its streams from it."
    )
    image_size: int = Field(
        64, ge=16, le=512, description="Side of the square aligned crops (64 laptop, 112 paper)."
    )
    identity: IdentityConfig = Field(
        default_factory=IdentityConfig, description="Identity population."
    )
    pretrain: PretrainPoolConfig = Field(
        default_factory=PretrainPoolConfig, description="Identities for the teacher recognizer."
    )
    train: PoolConfig = Field(
        default_factory=PoolConfig,
        description="The 'real' training set the subset pipeline samples from (long-tailed).",
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmark identities.")
    jpeg_bin_quality: int = Field(
        95, ge=1, le=100, description="JPEG quality used inside the eval .bin files."
    )
    render_batch_size: int = Field(
        16, ge=1, le=1024, description="Images rendered per vectorised batch (speed only)."
    )
    chunk_identities: int = Field(
        16,
        ge=1,
        description="Identities per work unit for worker processes (fixed, so results do not "
        "depend on num_workers).",
    )


def load_faceworld_config(raw: Any, source: str = "faceworld") -> FaceWorldConfig:
    """Validate a mapping into FaceWorldConfig; ParameterError names every bad key.

    Args:
        raw: a mapping (e.g. the `faceworld` parameters section) or a FaceWorldConfig.
        source: prefix for key names in the error message (e.g. the section name).
    """
    if isinstance(raw, FaceWorldConfig):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParameterError(f"{source} must be a mapping, got {type(raw).__name__}")
    try:
        return FaceWorldConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"Invalid FaceWorld parameters in '{source}':"]
        for e in err.errors():
            key = ".".join([source, *[str(p) for p in e["loc"]]])
            if e["type"] == "extra_forbidden":
                msg = "unknown parameter (check the spelling)"
            elif e["type"] == "missing":
                msg = "required parameter is missing"
            else:
                msg = f"{e['msg']} (got {e.get('input')!r})"
            lines.append(f"  {key}: {msg}")
        raise ParameterError("\n".join(lines)) from None


def config_hash(config: FaceWorldConfig) -> str:
    """SHA-256 of the canonical JSON of the config plus the renderer version."""
    payload = {"renderer_version": RENDERER_VERSION, "config": config.model_dump(mode="json")}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()

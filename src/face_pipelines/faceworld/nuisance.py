"""Per-image nuisances: everything that changes between two photos of the same FaceWorld person.

Nuisances are a dict of equal-length arrays (one entry per image, names in NUISANCE_FIELDS); every
one is a ground-truth label written to labels.parquet. Pose is in degrees (yaw > 0: the face turns
towards image right; pitch > 0: looking up), age in years, light colours and white balance are gains.
"""

from __future__ import annotations

import numpy as np

from face_pipelines.faceworld.config import NuisanceConfig
from face_pipelines.faceworld.identity import IDENTITY_INDEX

__all__ = [
    "NUISANCE_FIELDS",
    "EXPRESSIONS",
    "sample_nuisances",
    "nuisance_rows",
    "concat_nuisances",
]

EXPRESSIONS = ("neutral", "smile", "laugh", "surprise", "frown")

# name -> dtype; the order is the column order of labels.parquet
NUISANCE_FIELDS: dict[str, type] = {
    "yaw": np.float32,
    "pitch": np.float32,
    "roll": np.float32,
    "expression": np.int16,
    "expression_intensity": np.float32,
    "smile": np.bool_,
    "age": np.float32,
    "light_azimuth": np.float32,
    "light_elevation": np.float32,
    "light_intensity": np.float32,
    "light_r": np.float32,
    "light_g": np.float32,
    "light_b": np.float32,
    "ambient": np.float32,
    "white_balance_r": np.float32,
    "white_balance_b": np.float32,
    "specular": np.float32,
    "glasses": np.bool_,
    "sunglasses": np.bool_,
    "beard": np.bool_,
    "hat": np.bool_,
    "hat_style": np.int16,
    "hat_hue": np.float32,
    "hat_value": np.float32,
    "bg_r": np.float32,
    "bg_g": np.float32,
    "bg_b": np.float32,
    "bg2_r": np.float32,
    "bg2_g": np.float32,
    "bg2_b": np.float32,
    "bg_pattern": np.int16,
    "bg_freq": np.float32,
    "bg_angle": np.float32,
    "bg_phase": np.float32,
    "bg_contrast": np.float32,
    "blur": np.float32,
    "noise": np.float32,
    "jpeg_quality": np.int16,
    "align_dx": np.float32,
    "align_dy": np.float32,
    "align_scale": np.float32,
    "align_rot": np.float32,
    "noise_seed": np.int64,
}


def _truncated_normal(rng: np.random.Generator, n: int, std: float, limit: float) -> np.ndarray:
    # Redraw (rather than clip) so no probability mass piles up at the limit.
    x = rng.standard_normal(n) * std
    bad = np.abs(x) > limit
    for _ in range(20):
        if not bad.any():
            break
        x[bad] = rng.standard_normal(int(bad.sum())) * std
        bad = np.abs(x) > limit
    return np.clip(x, -limit, limit)


def sample_nuisances(
    rng: np.random.Generator,
    n: int,
    pool_config: NuisanceConfig,
    identities: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Draw nuisances for `n` images.

    Args:
        rng: the random stream.
        n: number of images.
        pool_config: the pool's NuisanceConfig (pose, light, quality distributions).
        identities: optional [n, D] identity rows, one per image; when given, age follows the
            identity's base age and glasses / beard follow its propensities. Without it those
            use population averages.

    Returns:
        dict name -> array [n] with the dtypes of NUISANCE_FIELDS.

    Long because: one draw per nuisance, and the order of the `rng` calls defines every existing
    world's images, so the draws stay one list in a fixed order.
    """
    c = pool_config
    out: dict[str, np.ndarray] = {}

    # pose: near-frontal core plus a thin uniform tail out to +-yaw_max
    core = _truncated_normal(rng, n, c.yaw_std_deg, c.yaw_max_deg)
    tail = rng.uniform(-c.yaw_max_deg, c.yaw_max_deg, n)
    out["yaw"] = np.where(rng.random(n) < c.yaw_tail_fraction, tail, core)
    out["pitch"] = _truncated_normal(rng, n, c.pitch_std_deg, c.pitch_max_deg)
    out["roll"] = _truncated_normal(rng, n, c.roll_std_deg, c.roll_max_deg)

    w = np.asarray(c.expression_weights, dtype=np.float64)
    out["expression"] = rng.choice(len(EXPRESSIONS), size=n, p=w / w.sum())
    out["expression_intensity"] = rng.uniform(0.5, 1.0, n)
    out["smile"] = np.isin(out["expression"], (1, 2))

    if identities is not None:
        identities = np.asarray(identities)
        if identities.shape[0] != n:
            raise ValueError(f"identities has {identities.shape[0]} rows for {n} images")
        base_age = identities[:, IDENTITY_INDEX["base_age"]].astype(np.float64)
        p_glasses = identities[:, IDENTITY_INDEX["glasses_propensity"]].astype(np.float64)
        p_beard = identities[:, IDENTITY_INDEX["beard_propensity"]].astype(np.float64)
    else:
        base_age = rng.uniform(18.0, 72.0, n)
        p_glasses = np.full(n, 0.15)
        p_beard = np.full(n, 0.2)
    out["age"] = np.clip(base_age + rng.standard_normal(n) * c.age_spread_years, 14.0, 90.0)

    # illumination: key light direction/intensity/colour, ambient fill, camera white balance
    out["light_azimuth"] = rng.uniform(-c.light_azimuth_max_deg, c.light_azimuth_max_deg, n)
    out["light_elevation"] = rng.uniform(*c.light_elevation_deg, n)
    out["light_intensity"] = rng.uniform(*c.light_intensity, n)
    temperature = rng.uniform(-1.0, 1.0, n) * c.light_color_jitter
    tint = rng.standard_normal(n) * 0.25 * c.light_color_jitter
    rgb = np.stack([1.0 + 0.6 * temperature, 1.0 + tint, 1.0 - 0.6 * temperature], axis=1)
    rgb = rgb / rgb.mean(axis=1, keepdims=True)
    out["light_r"], out["light_g"], out["light_b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    out["ambient"] = rng.uniform(*c.ambient, n)
    out["white_balance_r"] = np.exp(rng.standard_normal(n) * c.white_balance_jitter)
    out["white_balance_b"] = np.exp(rng.standard_normal(n) * c.white_balance_jitter)
    out["specular"] = rng.uniform(0.0, c.specular_max, n)

    # accessories
    out["glasses"] = rng.random(n) < np.clip(p_glasses * c.glasses_scale, 0.0, 1.0)
    out["sunglasses"] = out["glasses"] & (rng.random(n) < c.sunglasses_fraction)
    out["beard"] = rng.random(n) < np.clip(p_beard * c.beard_scale, 0.0, 1.0)
    out["hat"] = rng.random(n) < c.hat_prob
    out["hat_style"] = rng.integers(0, 2, n)
    out["hat_hue"] = rng.uniform(0.0, 1.0, n)
    out["hat_value"] = rng.uniform(0.15, 0.95, n)

    # background: two colours and a texture (gradient, stripes or blobs)
    bg = rng.uniform(0.03, 0.97, (n, 3))
    bg2 = np.clip(bg + rng.normal(0.0, 0.3, (n, 3)), 0.0, 1.0)
    for k, ch in enumerate("rgb"):
        out[f"bg_{ch}"] = bg[:, k]
        out[f"bg2_{ch}"] = bg2[:, k]
    out["bg_pattern"] = rng.integers(0, 3, n)
    out["bg_freq"] = rng.uniform(0.04, 0.3, n)
    out["bg_angle"] = rng.uniform(0.0, np.pi, n)
    out["bg_phase"] = rng.uniform(0.0, 2 * np.pi, n)
    out["bg_contrast"] = np.clip(rng.uniform(0.0, 1.0, n) * c.background_texture, 0.0, 1.0)

    # capture quality
    blurred = rng.random(n) < c.blur_prob
    out["blur"] = np.where(blurred, rng.uniform(0.5, 1.0, n) * c.blur_max_sigma, 0.0)
    noisy = rng.random(n) < c.noise_prob
    out["noise"] = np.where(noisy, rng.uniform(0.1, 1.0, n) * c.noise_max_std, 0.0)
    out["jpeg_quality"] = rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1, n)

    # detector error before alignment
    out["align_dx"] = rng.standard_normal(n) * c.align_jitter
    out["align_dy"] = rng.standard_normal(n) * c.align_jitter
    out["align_scale"] = rng.standard_normal(n) * c.align_jitter
    out["align_rot"] = rng.standard_normal(n) * c.align_jitter
    out["noise_seed"] = rng.integers(0, 2**62, n)

    return {k: np.asarray(out[k]).astype(t) for k, t in NUISANCE_FIELDS.items()}


def nuisance_rows(nuisances: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    """Select rows (an index array, slice or mask) of every nuisance array."""
    return {k: np.asarray(v)[index] for k, v in nuisances.items()}


def concat_nuisances(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate nuisance dicts row-wise (all must have the same keys)."""
    if not parts:
        return {k: np.zeros(0, dtype=t) for k, t in NUISANCE_FIELDS.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

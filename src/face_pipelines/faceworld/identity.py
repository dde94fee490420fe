"""Identity parameter vectors: what stays the same across every photo of one FaceWorld person.

An identity is a float32 row whose columns are named in IDENTITY_FIELDS: head and jaw shape, skin
tone, hair colour and style, eyes (spacing, size, tilt, iris colour), brows, nose, mouth, ears, marks
(moles, freckles), base age and propensities to wear glasses / a beard. Lengths are in head units
(the inter-ocular distance is about 0.6; the cranium is about 1.45 wide).
"""

from __future__ import annotations

import numpy as np

__all__ = ["IDENTITY_FIELDS", "IDENTITY_INDEX", "sample_identities", "identity_columns"]

IDENTITY_FIELDS: tuple[str, ...] = (
    # head shape
    "head_width",
    "head_height",
    "head_depth",
    "jaw_width",
    "jaw_length",
    "jaw_depth",
    "cheek_fullness",
    # colour
    "skin_tone",  # 0 = very light .. 1 = very dark
    "skin_warmth",  # -1 pink/cool .. +1 yellow/olive
    "skin_redness",
    "hair_lightness",  # 0 black .. 1 platinum
    "hair_warmth",  # 0 ash .. 1 red/ginger
    "greying_rate",
    # hair style
    "hair_volume",
    "hair_front",  # hairline height on the forehead (unit shell coords); low = fringe
    "hair_side",  # hair level at the temples / sides
    "hair_back",  # hair level at the back (low = long hair)
    "hair_long",  # 0/1: long hair falling beside the face and behind the neck
    "hair_recession",
    "hair_crown",  # crown baldness level (large = full head of hair)
    "hair_texture",  # strand frequency
    "hair_part",  # parting position
    # eyes
    "eye_spacing",
    "eye_height",
    "eye_width",
    "eye_open",
    "eye_tilt",
    "iris_hue",  # 0 brown .. 0.5 green .. 1 blue
    "iris_dark",
    # brows
    "brow_height",
    "brow_thickness",
    "brow_arch",
    "brow_length",
    "brow_slope",
    "brow_darkness",
    # nose
    "nose_length",
    "nose_width",
    "nose_protrusion",
    "nose_height",
    "nostril_size",
    # mouth
    "mouth_width",
    "lip_upper",
    "lip_lower",
    "mouth_height",
    "lip_redness",
    # ears
    "ear_size",
    "ear_protrusion",
    "ear_height",
    # marks
    "mole1_x",
    "mole1_y",
    "mole1_size",
    "mole2_x",
    "mole2_y",
    "mole2_size",
    "freckles",
    "freckle_u",
    "freckle_v",
    "blush",
    # age and propensities
    "base_age",
    "beard_propensity",
    "beard_style",  # 0 stubble, 1 goatee, 2 full
    "beard_darkness",
    "glasses_propensity",
    "glasses_style",  # 0 round, 1 rectangular, 2 wide
    "glasses_frame_dark",
    "wrinkle_rate",
)
IDENTITY_INDEX: dict[str, int] = {name: i for i, name in enumerate(IDENTITY_FIELDS)}


def identity_columns(identities: np.ndarray) -> dict[str, np.ndarray]:
    """View an identity matrix [n, D] as a dict of named columns (no copy)."""
    identities = np.asarray(identities)
    if identities.ndim != 2 or identities.shape[1] != len(IDENTITY_FIELDS):
        raise ValueError(
            f"identities must have shape [n, {len(IDENTITY_FIELDS)}], got {identities.shape}"
        )
    return {name: identities[:, i] for i, name in enumerate(IDENTITY_FIELDS)}


def sample_identities(
    rng: np.random.Generator,
    n: int,
    diversity: float = 1.0,
    glasses_wearer_fraction: float = 0.3,
    beard_fraction: float = 0.3,
    mole_fraction: float = 0.35,
    freckle_fraction: float = 0.15,
) -> np.ndarray:
    """Draw `n` identities from the FaceWorld population.

    Args:
        rng: the random stream (the caller owns seeding; same stream -> same identities).
        n: number of identities.
        diversity: scale of every shape/colour spread around the population mean.
        glasses_wearer_fraction, beard_fraction, mole_fraction, freckle_fraction: fractions of
            identities that have the trait at all (photos then vary per image).

    Returns:
        float32 [n, len(IDENTITY_FIELDS)], columns in IDENTITY_FIELDS order.

    Long because: one draw per field, and the order of the `rng` calls *is* the FaceWorld
    population - moving or regrouping a line changes every identity of every existing world - so
    the draws stay one list, read top to bottom by face part.
    """
    d = float(diversity)
    col: dict[str, np.ndarray] = {}

    def normal(mean: float, std: float, lo: float, hi: float) -> np.ndarray:
        return np.clip(mean + std * d * rng.standard_normal(n), lo, hi)

    # head and jaw shape
    col["head_width"] = normal(0.72, 0.045, 0.58, 0.86)
    col["head_height"] = normal(0.95, 0.05, 0.8, 1.1)
    col["head_depth"] = normal(0.86, 0.04, 0.74, 0.98)
    col["jaw_width"] = normal(0.56, 0.06, 0.4, 0.72)
    col["jaw_length"] = normal(0.62, 0.05, 0.5, 0.76)
    col["jaw_depth"] = normal(0.74, 0.04, 0.62, 0.86)
    col["cheek_fullness"] = normal(0.0, 1.0, -2.0, 2.0)

    # skin colour: a broad light..dark axis plus undertone
    col["skin_tone"] = np.clip(rng.beta(1.6, 1.9, n) * min(d, 1.5) + (1 - min(d, 1.5)) * 0.45, 0, 1)
    col["skin_warmth"] = normal(0.0, 0.5, -1.0, 1.0)
    col["skin_redness"] = normal(0.0, 0.5, -1.0, 1.0)

    # hair colour: dark hair is most common; ginger rare
    light = rng.beta(1.2, 2.6, n)
    col["hair_lightness"] = np.clip(0.35 + (light - 0.35) * d, 0, 1)
    col["hair_warmth"] = np.clip(rng.beta(1.3, 3.0, n) * min(d, 1.5), 0, 1)
    col["greying_rate"] = rng.uniform(0.3, 1.6, n)

    # hair style: short, medium, long, receding/bald
    style = rng.choice(4, size=n, p=[0.42, 0.25, 0.23, 0.10])
    col["hair_volume"] = np.where(
        style == 2, normal(0.1, 0.04, 0.02, 0.2), normal(0.06, 0.03, 0.02, 0.16)
    )
    front = normal(0.6, 0.07, 0.45, 0.75)
    fringe = rng.random(n) < 0.25
    col["hair_front"] = np.where(fringe, normal(0.36, 0.04, 0.3, 0.44), front)
    col["hair_front"] = np.where(style == 3, 2.0, col["hair_front"])
    col["hair_side"] = np.select(
        [style == 0, style == 1, style == 2],
        [normal(0.22, 0.05, 0.1, 0.35), normal(-0.2, 0.1, -0.45, 0.05), np.full(n, -3.0)],
        0.15,
    )
    col["hair_back"] = np.select(
        [style == 0, style == 1, style == 2],
        [normal(-0.4, 0.1, -0.6, -0.2), normal(-0.75, 0.1, -0.95, -0.5), np.full(n, -3.0)],
        -0.4,
    )
    col["hair_long"] = (style == 2).astype(np.float64)
    col["hair_recession"] = np.where(
        style == 3, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.35, n)
    )
    col["hair_crown"] = np.where(style == 3, rng.uniform(0.55, 0.85, n), 5.0)
    col["hair_texture"] = rng.uniform(0.0, 1.0, n)
    col["hair_part"] = normal(0.0, 0.3, -0.6, 0.6)

    # eyes
    col["eye_spacing"] = normal(0.3, 0.022, 0.24, 0.37)
    col["eye_height"] = normal(0.1, 0.03, 0.02, 0.18)
    col["eye_width"] = normal(0.115, 0.012, 0.085, 0.15)
    col["eye_open"] = normal(0.42, 0.07, 0.25, 0.62)
    col["eye_tilt"] = normal(0.0, 0.12, -0.3, 0.3)
    col["iris_hue"] = np.clip(rng.beta(0.7, 1.4, n), 0, 1)
    col["iris_dark"] = rng.uniform(0.0, 1.0, n)

    # brows
    col["brow_height"] = normal(0.14, 0.025, 0.08, 0.22)
    col["brow_thickness"] = normal(0.034, 0.008, 0.018, 0.055)
    col["brow_arch"] = normal(0.025, 0.015, -0.01, 0.06)
    col["brow_length"] = normal(0.15, 0.02, 0.1, 0.2)
    col["brow_slope"] = normal(0.0, 0.1, -0.25, 0.25)
    col["brow_darkness"] = rng.uniform(0.0, 1.0, n)

    # nose
    col["nose_length"] = normal(0.26, 0.035, 0.18, 0.36)
    col["nose_width"] = normal(0.11, 0.015, 0.075, 0.15)
    col["nose_protrusion"] = normal(0.17, 0.03, 0.1, 0.25)
    col["nose_height"] = normal(-0.22, 0.03, -0.3, -0.14)
    col["nostril_size"] = normal(0.5, 0.15, 0.2, 0.9)

    # mouth
    col["mouth_width"] = normal(0.2, 0.022, 0.14, 0.27)
    col["lip_upper"] = normal(0.035, 0.01, 0.015, 0.06)
    col["lip_lower"] = normal(0.045, 0.012, 0.02, 0.075)
    col["mouth_height"] = normal(-0.55, 0.03, -0.64, -0.46)
    col["lip_redness"] = rng.uniform(0.0, 1.0, n)

    # ears
    col["ear_size"] = normal(0.22, 0.03, 0.15, 0.3)
    col["ear_protrusion"] = normal(0.04, 0.025, -0.01, 0.1)
    col["ear_height"] = normal(-0.02, 0.04, -0.12, 0.08)

    # marks: moles at fixed face positions, freckle pattern offsets
    has_mole = rng.random(n) < mole_fraction
    two_moles = has_mole & (rng.random(n) < 0.35)
    col["mole1_x"] = rng.uniform(-0.45, 0.45, n)
    col["mole1_y"] = rng.uniform(-0.75, 0.35, n)
    col["mole1_size"] = np.where(has_mole, rng.uniform(0.018, 0.035, n), 0.0)
    col["mole2_x"] = rng.uniform(-0.45, 0.45, n)
    col["mole2_y"] = rng.uniform(-0.75, 0.35, n)
    col["mole2_size"] = np.where(two_moles, rng.uniform(0.015, 0.03, n), 0.0)
    col["freckles"] = np.where(rng.random(n) < freckle_fraction, rng.uniform(0.4, 1.0, n), 0.0)
    col["freckle_u"] = rng.uniform(0.0, 1.0, n)
    col["freckle_v"] = rng.uniform(0.0, 1.0, n)
    col["blush"] = rng.uniform(0.0, 1.0, n)

    # age and per-photo propensities
    col["base_age"] = rng.uniform(18.0, 72.0, n)
    bearded = rng.random(n) < beard_fraction
    col["beard_propensity"] = np.where(bearded, rng.uniform(0.4, 0.95, n), 0.0)
    col["beard_style"] = rng.integers(0, 3, n).astype(np.float64)
    col["beard_darkness"] = rng.uniform(0.5, 1.0, n)
    wearer = rng.random(n) < glasses_wearer_fraction
    col["glasses_propensity"] = np.where(wearer, rng.uniform(0.35, 0.9, n), 0.02)
    col["glasses_style"] = rng.integers(0, 3, n).astype(np.float64)
    col["glasses_frame_dark"] = rng.uniform(0.0, 1.0, n)
    col["wrinkle_rate"] = rng.uniform(0.6, 1.4, n)

    missing = set(IDENTITY_FIELDS) - set(col)
    if missing:  # pragma: no cover - guards the field list against edits
        raise RuntimeError(f"identity fields not sampled: {sorted(missing)}")
    return np.stack([np.asarray(col[f], dtype=np.float32) for f in IDENTITY_FIELDS], axis=1)

"""A picture of the world: identities (rows) x nuisances (columns), for the README and notebooks."""

from __future__ import annotations

import numpy as np

from face_pipelines.faceworld.config import FaceWorldConfig, load_faceworld_config
from face_pipelines.faceworld.face_images import render_identity_images
from face_pipelines.faceworld.nuisance import sample_nuisances

__all__ = ["faceworld_grid", "save_faceworld_grid"]


def faceworld_grid(
    config: FaceWorldConfig | dict | None = None,
    n_ids: int = 6,
    n_variants: int = 8,
    pool: str = "train",
    gap: int = 2,
) -> np.ndarray:
    """Render n_ids identities of a pool, each under n_variants nuisance draws.

    Nuisances follow the pool's distributions except yaw, which sweeps -70..70 degrees across the
    columns so every row shows the pseudo-3-D head turning.

    Args:
        config: the world config (defaults if None).
        n_ids: rows (the first identities of the pool).
        n_variants: columns.
        pool: "pretrain", "train" or "eval".
        gap: white pixels between tiles.

    Returns:
        uint8 RGB image [n_ids*(S+gap)-gap, n_variants*(S+gap)-gap, 3], S = config.image_size.
    """
    from face_pipelines.faceworld.materialise import pool_identities, pool_rng

    config = load_faceworld_config(config)
    if pool not in ("pretrain", "train", "eval"):
        raise ValueError(f"pool must be pretrain, train or eval, got {pool!r}")
    ids = pool_identities(config, pool)[:n_ids]
    n_ids = len(ids)
    rows = np.repeat(ids, n_variants, axis=0)
    nuis_cfg = getattr(config, pool).nuisances
    nz = sample_nuisances(pool_rng(config.seed, pool, 99), len(rows), nuis_cfg, rows)
    nz["yaw"] = np.tile(np.linspace(-70.0, 70.0, n_variants), n_ids).astype(np.float32)
    imgs = render_identity_images(rows, nz, size=config.image_size)
    s = config.image_size
    out = np.full((n_ids * (s + gap) - gap, n_variants * (s + gap) - gap, 3), 255, dtype=np.uint8)
    for i in range(n_ids):
        for j in range(n_variants):
            out[i * (s + gap) : i * (s + gap) + s, j * (s + gap) : j * (s + gap) + s] = imgs[
                i * n_variants + j
            ]
    return out


def save_faceworld_grid(
    path, config: FaceWorldConfig | dict | None = None, n_ids: int = 8, n_variants: int = 10
) -> None:
    """Save faceworld_grid as a 256-colour PNG (small enough for a README), written atomically."""
    from PIL import Image

    from face_pipelines.io.atomic import atomic_path

    img = Image.fromarray(faceworld_grid(config, n_ids=n_ids, n_variants=n_variants))
    pal = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        pal.save(tmp, format="PNG", optimize=True)

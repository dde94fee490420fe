"""FaceWorld: the embedded procedural face world (identities, nuisances, pools, eval protocols).

Public API:
    FaceWorldConfig, load_faceworld_config   configuration (pydantic, unknown keys are errors)
    sample_identities(rng, n)                identity parameter vectors [n, D] (IDENTITY_FIELDS)
    sample_nuisances(rng, n, pool_config)    per-image nuisances with labels (NUISANCE_FIELDS)
    render_identity_images(ids, nz, size)    aligned uint8 RGB crops (pure, deterministic)
    materialise_faceworld(config, root)      pools as identity folders + labels, eval .bin files
    faceworld_grid(config)                   identities x nuisances picture
"""

from face_pipelines.faceworld.config import (
    FaceWorldConfig,
    NuisanceConfig,
    config_hash,
    load_faceworld_config,
)
from face_pipelines.faceworld.face_images import ARCFACE_TEMPLATE_112, render_identity_images
from face_pipelines.faceworld.grid import faceworld_grid, save_faceworld_grid
from face_pipelines.faceworld.identity import IDENTITY_FIELDS, sample_identities
from face_pipelines.faceworld.materialise import materialise_faceworld, plan_pool, pool_identities
from face_pipelines.faceworld.nuisance import EXPRESSIONS, NUISANCE_FIELDS, sample_nuisances
from face_pipelines.faceworld.protocols import PROTOCOLS

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "EXPRESSIONS",
    "IDENTITY_FIELDS",
    "NUISANCE_FIELDS",
    "PROTOCOLS",
    "FaceWorldConfig",
    "NuisanceConfig",
    "config_hash",
    "faceworld_grid",
    "load_faceworld_config",
    "materialise_faceworld",
    "plan_pool",
    "pool_identities",
    "render_identity_images",
    "sample_identities",
    "sample_nuisances",
    "save_faceworld_grid",
]

"""DR-GAN as a synthetic-set generator: identities sampled in the encoder's identity space, each
decoded at pose codes spread over the yaw bins plus noise z - explicit pose control, no AttrOP loop.

    real subset images --encoder--> f per image --(synthesis.plan.sample_centres: the same sampling,
    separation threshold and leakage guard as Vec2Face's plan, in f space)--> identity centres
    --> plan: k images per identity, pose bins cycled from a per-identity offset (every bin used
        about equally, every identity seen at many poses)
    --> render (synthesis.dataset_writer, the one renderer): `PoseCodeGenerator` reads each row's `pose_bin`
        and draws z ~ U(-1, 1) from the shard's seeded generator, so the images are resumable and
        do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.drgan import DRGANGenerator, yaw_to_pose_bin
from face_pipelines.synthesis.plan import CentreSamplingConfig, sample_centres
from face_pipelines.synthesis.sampling import intra_class_vectors

__all__ = [
    "PoseCodeGenerator",
    "PoseCodePlanConfig",
    "make_pose_code_plan",
    "pose_bin_success",
    "spread_pose_bins",
]

POSE_BIN_COLUMN = "pose_bin"


class PoseCodePlanConfig(CentreSamplingConfig):
    """Identity sampling in the DR-GAN encoder's space plus the pose codes of every image."""

    sigma: float = Field(
        0.0,
        ge=0,
        description="noise added to an identity's f per image, relative to the real f's "
        "per-dimension std (0 = one f per identity; pose code and z make the variation)",
    )
    pose_bins: list[int] | None = Field(
        None,
        min_length=1,
        description="pose bins the images cycle over (null = every bin of the generator)",
    )

    @model_validator(mode="after")
    def _check_bins(self):
        if self.pose_bins is not None and (
            min(self.pose_bins) < 0 or len(set(self.pose_bins)) != len(self.pose_bins)
        ):
            raise ValueError(f"pose_bins must be distinct bin indices >= 0, got {self.pose_bins}")
        return self


def spread_pose_bins(
    n_ids: int, k: int, bins: np.ndarray | list[int], rng: np.random.Generator
) -> np.ndarray:
    """int64 [n_ids * k] pose bins: image j of identity i gets bins[(offset_i + j) % len(bins)].

    Every identity walks the bins in order from its own random offset, so per identity the counts
    of any two bins differ by at most one and over the whole set they are close to uniform.
    """
    bins = np.asarray(bins, dtype=np.int64)
    if bins.ndim != 1 or len(bins) == 0:
        raise ParameterError(f"pose bins must be a non-empty list, got {bins.tolist()}")
    offsets = rng.integers(0, len(bins), size=n_ids)
    j = np.arange(k)
    return bins[(offsets[:, None] + j[None, :]) % len(bins)].reshape(-1)


def make_pose_code_plan(
    f: np.ndarray,
    labels: np.ndarray,
    cfg: PoseCodePlanConfig,
    bin_centres_deg: np.ndarray,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """Plan of a DR-GAN synthetic set from the encoder's f of the real images.

    Returns (plan, vectors, centres, report): plan rows identity, index, sigma, pose_bin and
    pose_yaw_deg (the bin's centre); vectors [N, D] the f each row is decoded from.

    Raises:
        ParameterError: cfg.pose_bins names a bin the generator does not have.
    """
    centres_deg = np.asarray(bin_centres_deg, dtype=np.float64)
    n_bins = len(centres_deg)
    bins = np.arange(n_bins) if cfg.pose_bins is None else np.asarray(cfg.pose_bins)
    if bins.max() >= n_bins:
        raise ParameterError(
            f"drgan.synth.plan.pose_bins {bins.tolist()} names a bin >= {n_bins}, the generator's "
            "number of pose bins (drgan.train.model.num_pose_bins)"
        )
    f = np.asarray(f, dtype=np.float32)
    centres, k, report, rng = sample_centres(f, labels, cfg, device=device, progress=progress)
    vectors, plan = intra_class_vectors(
        centres, k, [(cfg.sigma, 1.0)], feature_std=f.std(0), generator=rng
    )
    plan[POSE_BIN_COLUMN] = spread_pose_bins(len(centres), k, bins, rng)
    plan["pose_yaw_deg"] = centres_deg[plan[POSE_BIN_COLUMN].to_numpy()]
    report = {
        **report,
        "space": "drgan encoder f",
        "synthetic_images": int(len(plan)),
        "pose_bins": bins.tolist(),
        "images_per_pose_bin": np.bincount(plan[POSE_BIN_COLUMN], minlength=n_bins).tolist(),
    }
    return plan, vectors.astype(np.float32), centres, report


class PoseCodeGenerator(nn.Module):
    """The DR-GAN decoder as the renderer's generator: f rows + the plan's pose bins -> images.

    `target_columns` tells the renderer which plan columns to hand to `generate`; the noise z is
    drawn from the renderer's per-shard generator (on the CPU, so a seed means the same images on
    any device).
    """

    target_columns = (POSE_BIN_COLUMN,)

    def __init__(self, drgan: DRGANGenerator) -> None:
        super().__init__()
        self.drgan = drgan

    @property
    def image_size(self) -> int:
        return self.drgan.image_size

    @torch.no_grad()
    def generate(
        self,
        vectors: torch.Tensor,
        generator: torch.Generator | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """f [B, feat_dim] and targets {"pose_bin": [B] ints} -> images [B, 3, H, W] in [-1, 1]."""
        if not targets or POSE_BIN_COLUMN not in targets:
            raise DataError(
                f"the DR-GAN generator needs a '{POSE_BIN_COLUMN}' per row (from the render plan)"
            )
        bins = torch.tensor(np.asarray(targets[POSE_BIN_COLUMN], dtype=np.int64))
        if bins.shape != (len(vectors),):
            raise DataError(f"{len(vectors)} vectors but pose bins of shape {tuple(bins.shape)}")
        z = self.drgan.sample_noise(len(vectors), vectors.device, generator)
        return self.drgan.decode(vectors.float(), bins.to(vectors.device), z)


def pose_bin_success(
    target_bins: np.ndarray,
    yaw_pred_deg: np.ndarray,
    bin_centres_deg: np.ndarray,
) -> dict:
    """How often the pose model puts a generated image in the bin it was generated for.

    Bins are read as in training (models.drgan.yaw_to_pose_bin: nearest centre, clamped to the end
    bins). Returns pose_bin_hit_rate, pose_bin_within_one_rate, pose_yaw_error_median_deg (|yaw -
    bin centre|), and per bin (lists indexed by bin): images, hit rate (NaN where no image) and
    the median predicted yaw.
    """
    target = np.asarray(target_bins, dtype=np.int64)
    yaw = np.asarray(yaw_pred_deg, dtype=np.float64)
    centres = np.asarray(bin_centres_deg, dtype=np.float64)
    if target.shape != yaw.shape or target.ndim != 1 or len(target) == 0:
        raise DataError(f"pose_bin_success: {target.shape} target bins vs {yaw.shape} predictions")
    pred = yaw_to_pose_bin(yaw, len(centres), float(centres[0]), float(centres[-1]))
    hit = pred == target
    per_bin = [np.flatnonzero(target == b) for b in range(len(centres))]
    return {
        "pose_bin_hit_rate": float(hit.mean()),
        "pose_bin_within_one_rate": float((np.abs(pred - target) <= 1).mean()),
        "pose_yaw_error_median_deg": float(np.median(np.abs(yaw - centres[target]))),
        "pose_bin_centres_deg": centres.tolist(),
        "pose_bin_images": [int(len(i)) for i in per_bin],
        "pose_bin_hit_rate_per_bin": [float(hit[i].mean()) if len(i) else None for i in per_bin],
        "pose_bin_yaw_pred_median_deg": [
            float(np.median(yaw[i])) if len(i) else None for i in per_bin
        ],
    }

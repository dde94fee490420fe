"""Nodes of the drgan pipeline: train the DR-GAN pose-code generator on the packed real subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from face_pipelines.errors import DataError
from face_pipelines.io.packed import PackedImages
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import image_figure
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.training.drgan import train_drgan


def subset_yaw_labels(manifest: pd.DataFrame, packed: PackedImages) -> np.ndarray:
    """Per-image yaw (degrees) of the packed subset, from the manifest rows aligned with it.

    Raises:
        DataError: the manifest has no yaw column or missing values, or is not aligned with the
            packed images (row count or identities differ).
    """
    where = "subset_packed_manifest (data/03_primary/subset_manifest.parquet)"
    if "yaw" not in manifest.columns:
        raise DataError(
            f"{where} has no 'yaw' column: DR-GAN's pose codes need a yaw label (degrees) per "
            "image. FaceWorld writes it; for real data add the pose model's predictions as 'yaw'"
        )
    if len(manifest) != len(packed):
        raise DataError(
            f"{where} has {len(manifest)} rows but {packed.root} holds {len(packed)} images"
        )
    if "identity" in manifest.columns and not np.array_equal(
        manifest["identity"].to_numpy(np.int64), packed.labels
    ):
        raise DataError(f"{where} rows are not aligned with {packed.root} (identities differ)")
    yaw = manifest["yaw"].to_numpy(np.float64, na_value=np.nan)
    missing = np.flatnonzero(~np.isfinite(yaw))
    if len(missing):
        raise DataError(
            f"{where}: column 'yaw' is missing for {len(missing)} image(s) (first: row "
            f"{int(missing[0])}, {manifest.iloc[int(missing[0])].get('path', '?')})"
        )
    return yaw


def train_pose_generator(
    subset_packed_dir: Path,
    subset_packed_manifest: pd.DataFrame,
    drgan_dir: Path,
    drgan: dict,
    common: dict,
):
    """Train DR-GAN with FaceWorld's yaw labels; report, pose grid figure, MLflow metrics."""
    p = validate_section("drgan", drgan)
    com = validate_section("common", common)
    packed = PackedImages(Path(subset_packed_dir))
    yaw = subset_yaw_labels(subset_packed_manifest, packed)
    hist = MetricHistory()
    report = train_drgan(
        subset_packed_dir,
        yaw,
        drgan_dir,
        p.train,
        device=com.device,
        progress=com.progress,
        log=hist,
    )
    # One figure: identity 0 across all pose codes after each epoch (rows), then the final grid.
    grids = [np.asarray(Image.open(f).convert("RGB")) for f in report["epoch_grids"]]
    grids.append(np.asarray(Image.open(report["grid"]).convert("RGB")))
    centres = report["pose_bin_centres_deg"]
    fig = image_figure(
        np.concatenate(grids),
        f"DR-GAN: real | yaw codes {centres[0]:g}..{centres[-1]:g} deg; "
        f"rows: epochs 1..{len(grids) - 1} (one identity), then the final model",
    )
    metrics = hist.as_mlflow() | flat_metrics(
        {k: v for k, v in report.items() if isinstance(v, int | float)}, prefix="final"
    )
    return report, fig, metrics

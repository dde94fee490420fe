"""Measure a rendered synthetic dataset from its pixels: what the dataset card of every generator
(Vec2Face, DR-GAN) is built from - teacher features and pose-model yaw of the saved JPEGs, and the
pose model's yaw of the real subset for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from face_pipelines.io.images import decode_image
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.inference import (
    embed_images,
    load_pose_regressor,
    load_recognizer,
    predict_pose,
)
from face_pipelines.reporting.dataset_card import build_dataset_card
from face_pipelines.synthesis.dataset_writer import load_rendered_manifest


class RenderedMeasures(NamedTuple):
    manifest: pd.DataFrame  # the rendered manifest plus yaw_pred (pose model, on the JPEGs)
    images: np.ndarray  # uint8 [N, H, W, 3], decoded from disk in manifest order
    features: np.ndarray  # teacher features of the images, float32 [N, D]
    yaw: np.ndarray  # pose model yaw of the images (degrees)
    real_yaw: np.ndarray  # pose model yaw of the real subset (degrees)
    images_on_disk: int  # JPEG files found under the root


def decode_rendered(root: Path, paths: list[str], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3] images of a rendered dataset, in the order of `paths`."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, rel in enumerate(paths):
        out[i] = decode_image((root / rel).read_bytes(), source=str(root / rel))
    return out


def measure_rendered_dataset(
    root: str | Path,
    image_size: int,
    teacher_checkpoint: str,
    teacher_kwargs: dict,
    pose_checkpoint: str,
    subset_packed_dir: str | Path,
    device,
) -> RenderedMeasures:
    """Decode a completely rendered dataset and measure it with the teacher and the pose model.

    Raises:
        DataError / MissingInputError: the dataset is incomplete or missing (load_rendered_manifest).
    """
    root = Path(root)
    manifest = load_rendered_manifest(root)
    images = decode_rendered(root, manifest["path"].tolist(), int(image_size))
    model, _ = load_recognizer(teacher_checkpoint, device, **teacher_kwargs)
    features = embed_images(model, images, device)
    pose = load_pose_regressor(pose_checkpoint, device)
    yaw = predict_pose(pose, images, device)[:, 0]
    real = PackedImages(Path(subset_packed_dir))
    real_images, _ = real.get_batch(np.arange(len(real)))
    real_yaw = predict_pose(pose, real_images, device)[:, 0]
    on_disk = sum(1 for _ in root.glob("*/*.jpg"))
    return RenderedMeasures(manifest.assign(yaw_pred=yaw), images, features, yaw, real_yaw, on_disk)


def rendered_dataset_card(
    root: str | Path,
    image_size: int,
    teacher: tuple[str, dict],
    pose_checkpoint: str,
    subset_packed_dir: str | Path,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    thresholds: tuple[float, float],
    render_report: dict,
    device,
) -> tuple[dict, RenderedMeasures]:
    """The dataset card of a rendered set (reporting.dataset_card.build_dataset_card) from its
    pixels, and the measures it was built from.

    teacher: (checkpoint, load_recognizer keyword arguments); thresholds: (separation, leakage)
    cosine thresholds in the teacher's space.
    """
    m = measure_rendered_dataset(
        root, image_size, teacher[0], teacher[1], pose_checkpoint, subset_packed_dir, device
    )
    card = build_dataset_card(
        m.manifest,
        m.features,
        np.asarray(real_features),
        np.asarray(real_labels),
        thresholds[0],
        thresholds[1],
        m.yaw,
        m.real_yaw,
        render_report,
        m.images_on_disk,
        device=str(device),
    )
    return card, m

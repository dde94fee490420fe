"""Nodes of the elegant pipelines: attribute classifier and ELEGANT editor on the real subset, and
the exemplar attribute edit of the synthetic dataset."""

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
from face_pipelines.training.elegant import (
    attribute_labels,
    edit_dataset,
    load_attribute_classifier,
    load_elegant,
    train_attribute_classifier,
    train_elegant,
)
from face_pipelines.training.recognizer import load_recognizer

SUBSET_MANIFEST = "subset_packed_manifest (data/03_primary/subset_manifest.parquet)"


def subset_attribute_labels(
    manifest: pd.DataFrame, packed: PackedImages, attributes: list[str]
) -> np.ndarray:
    """float32 [N, n] labels of the packed subset from the manifest rows aligned with it."""
    if len(manifest) != len(packed):
        raise DataError(
            f"{SUBSET_MANIFEST} has {len(manifest)} rows but {packed.root} holds {len(packed)} images"
        )
    if "identity" in manifest.columns and not np.array_equal(
        manifest["identity"].to_numpy(np.int64), packed.labels
    ):
        raise DataError(f"{SUBSET_MANIFEST} rows are not aligned with {packed.root}")
    return attribute_labels(manifest, attributes, SUBSET_MANIFEST, "elegant.train.attributes")


def load_judge(judge_summary: dict, teacher: dict):
    """The teacher pipeline's independent judge recognizer (no ELEGANT loss uses it)."""
    arch = validate_section("teacher", teacher).judge.checkpoint_arch
    return load_recognizer(judge_summary["checkpoint"], arch=arch)[0]


def train_edit_classifier(
    subset_packed_dir: Path,
    subset_packed_manifest: pd.DataFrame,
    elegant_dir: Path,
    elegant: dict,
    common: dict,
) -> dict:
    """The attribute classifier that scores edits, trained on the subset's labels."""
    p = validate_section("elegant", elegant)
    com = validate_section("common", common)
    packed = PackedImages(Path(subset_packed_dir))
    labels = subset_attribute_labels(subset_packed_manifest, packed, p.train.attributes)
    return train_attribute_classifier(
        subset_packed_dir,
        labels,
        p.train.attributes,
        Path(elegant_dir) / "classifier",
        p.classifier,
        device=com.device,
        progress=com.progress,
    )


def train_attribute_editor(
    subset_packed_dir: Path,
    subset_packed_manifest: pd.DataFrame,
    elegant_dir: Path,
    elegant_classifier_report: dict,
    judge_summary: dict,
    elegant: dict,
    teacher: dict,
    common: dict,
):
    """Train ELEGANT; report edit success (classifier) and judge cos on real pairs, grid figure."""
    p, com = validate_section("elegant", elegant), validate_section("common", common)
    packed = PackedImages(Path(subset_packed_dir))
    labels = subset_attribute_labels(subset_packed_manifest, packed, p.train.attributes)
    classifier, _ = load_attribute_classifier(elegant_classifier_report["checkpoint"])
    judge = load_judge(judge_summary, teacher)
    hist = MetricHistory()
    report = train_elegant(
        subset_packed_dir,
        labels,
        elegant_dir,
        p.train,
        device=com.device,
        progress=com.progress,
        log=hist,
        classifier=classifier,
        judge=judge,
    )
    report["classifier"] = elegant_classifier_report
    report["judge"] = judge_summary["checkpoint"]
    # One block per attribute, top to bottom: a header row (source | 3 exemplars), then the grid
    # whose corners take the attribute slot from the source and the exemplars (blends between).
    grids = [np.asarray(Image.open(g).convert("RGB")) for g in report["grids"]]
    width = max(g.shape[1] for g in grids)
    grids = [
        np.pad(g, ((0, 0), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids
    ]
    fig = image_figure(
        np.concatenate(grids),
        "ELEGANT grids: " + ", ".join(p.train.attributes),
    )
    metrics = hist.as_mlflow() | flat_metrics(report["edits_of_real_pairs"], prefix="final")
    return report, fig, metrics


def edit_synthetic_attributes(
    synthetic_dir: Path,
    synthetic_dataset_info: dict,
    elegant_edited_dir: Path,
    elegant_report: dict,
    elegant_classifier_report: dict,
    judge_summary: dict,
    subset_packed_dir: Path,
    subset_packed_manifest: pd.DataFrame,
    elegant: dict,
    teacher: dict,
    common: dict,
):
    """Transfer attributes from real exemplars into a fraction of the synthetic images."""
    p, com = validate_section("elegant", elegant), validate_section("common", common)
    src = Path(synthetic_dir)
    manifest_path = src / "manifest.parquet"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} is missing: run the render pipeline first")
    gen, attributes = load_elegant(elegant_report["checkpoint"])
    classifier, clf_attributes = load_attribute_classifier(elegant_classifier_report["checkpoint"])
    if clf_attributes != attributes:
        raise DataError(
            f"the attribute classifier ({clf_attributes}) and ELEGANT ({attributes}) were trained "
            "on different attributes; re-run the elegant pipeline"
        )
    judge = load_judge(judge_summary, teacher)
    packed = PackedImages(Path(subset_packed_dir))
    labels = subset_attribute_labels(subset_packed_manifest, packed, attributes)
    out_root = src if p.edit.overwrite_originals else Path(elegant_edited_dir)
    _, report = edit_dataset(
        src,
        pd.read_parquet(manifest_path),
        out_root,
        gen,
        attributes,
        p.edit.attributes or attributes,
        packed,
        labels,
        classifier,
        judge,
        p.edit.fraction,
        seed=p.edit.seed,
        device=com.device,
        jpeg_quality=p.edit.jpeg_quality,
        batch_size=p.edit.batch_size,
    )
    report["synthetic_dataset"] = synthetic_dataset_info.get("root", str(src))
    return report, flat_metrics(report, prefix="")

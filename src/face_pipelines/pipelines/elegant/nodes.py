"""Nodes of the elegant pipelines: attribute classifier and ELEGANT editor on the real subset, and
the exemplar attribute edit of the synthetic dataset into a new dataset (the source set, another
stage's output, is only read). The edited set's recognizer and table are the shared chain's nodes
(pipeline_registry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from face_pipelines.errors import DataError
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.inference import load_attribute_classifier, load_elegant, load_judge
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import image_figure
from face_pipelines.reporting.lineage import (
    active_mlflow_run_id,
    add_stage,
    checkpoint_input,
    lineage_stage,
)
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.tracking import live_metrics, log_trained_model, metrics_not_logged_live
from face_pipelines.training.elegant import (
    attribute_labels,
    attribute_labels_by_path,
    edit_dataset,
    read_label_table,
    train_attribute_classifier,
    train_elegant,
)

SUBSET_MANIFEST = "subset_packed_manifest (data/03_primary/subset_manifest.parquet)"


def subset_attribute_labels(
    manifest: pd.DataFrame,
    packed: PackedImages,
    attributes: list[str],
    labels_path: str | None = None,
) -> np.ndarray:
    """float32 [N, n] labels of the packed subset: from the manifest rows aligned with it, or
    looked up by path in the label table at `labels_path` (elegant.labels_path)."""
    if len(manifest) != len(packed):
        raise DataError(
            f"{SUBSET_MANIFEST} has {len(manifest)} rows but {packed.root} holds {len(packed)} images"
        )
    if "identity" in manifest.columns and not np.array_equal(
        manifest["identity"].to_numpy(np.int64), packed.labels
    ):
        raise DataError(f"{SUBSET_MANIFEST} rows are not aligned with {packed.root}")
    if labels_path:
        table = read_label_table(labels_path)
        return attribute_labels_by_path(manifest, table, attributes, f"{labels_path}")
    return attribute_labels(manifest, attributes, SUBSET_MANIFEST, "elegant.train.attributes")


def _judge(judge_summary: dict, teacher: dict):
    """The teacher pipeline's independent judge recognizer (no ELEGANT loss uses it)."""
    judge = validate_section("teacher", teacher).judge
    return load_judge(judge_summary["checkpoint"], **judge.checkpoint_kwargs())


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
    labels = subset_attribute_labels(
        subset_packed_manifest, packed, p.train.attributes, p.labels_path
    )
    return train_attribute_classifier(
        subset_packed_dir,
        labels,
        p.train.attributes,
        Path(elegant_dir) / "classifier",
        com.seeded(p.classifier),
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
    labels = subset_attribute_labels(
        subset_packed_manifest, packed, p.train.attributes, p.labels_path
    )
    classifier, _ = load_attribute_classifier(elegant_classifier_report["checkpoint"])
    judge = _judge(judge_summary, teacher)
    hist = MetricHistory()
    report = train_elegant(
        subset_packed_dir,
        labels,
        elegant_dir,
        com.seeded(p.train),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
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
    metrics = metrics_not_logged_live(hist) | flat_metrics(
        report["edits_of_real_pairs"], prefix="final"
    )
    return log_trained_model(report), fig, metrics


def edit_synthetic_attributes(
    synthetic_dir: Path,
    synthetic_dataset_info: dict,
    dataset_card: dict,
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
    """Transfer attributes from real exemplars into a fraction of the synthetic images, written as
    a new dataset (elegant_edited_dir); returns the edit report, its MLflow metrics, the edited
    dataset's info (what the recognizer trains on) and its card (the source card plus
    `attribute_edits`)."""
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
    judge = _judge(judge_summary, teacher)
    packed = PackedImages(Path(subset_packed_dir))
    labels = subset_attribute_labels(subset_packed_manifest, packed, attributes, p.labels_path)
    out_root = Path(elegant_edited_dir)
    if out_root.resolve() == src.resolve():
        raise DataError(
            f"elegant_edited_dir is the synthetic dataset itself ({src}): an editor writes a new "
            "dataset and never edits the render stage's output; point the catalog entry elsewhere"
        )
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
        seed=com.stage_seed(p.edit.seed),
        device=com.device,
        jpeg_quality=p.edit.jpeg_quality,
        batch_size=p.edit.batch_size,
        strength=p.edit.strength,
    )
    report["synthetic_dataset"] = synthetic_dataset_info.get("root", str(src))
    info = {
        **synthetic_dataset_info,
        "root": str(out_root),
        "edited_from": str(src),
        "attribute_editor": elegant_report["checkpoint"],
        "edits": report["edits"],
    }
    card = edited_dataset_card(dataset_card, report, elegant_classifier_report)
    # The edited set's lineage: the source set's plus the editor stage.
    editor = {
        "editor checkpoint": checkpoint_input(elegant_report["checkpoint"]),
        "attribute classifier checkpoint": checkpoint_input(
            elegant_classifier_report["checkpoint"]
        ),
    }
    card["lineage"] = add_stage(
        dataset_card.get("lineage"),
        "elegant",
        lineage_stage("elegant", p, editor),
        active_mlflow_run_id(),
    )
    return report, flat_metrics(report, prefix=""), info, card


def edited_dataset_card(dataset_card: dict, edit_report: dict, classifier_report: dict) -> dict:
    """The render card of the source dataset plus an `attribute_edits` section: edit success by
    the attribute classifier (which one, and its held-out accuracy on real images), identity
    preservation (judge cos before/after), attribute frequencies synthetic before/after vs real."""
    keys = (
        "edits",
        "success",
        "judge_cos_mean",
        "judge_cos_ge_0.7",
        "success_and_judge_cos_ge_0.7",
        "per_attribute",
        "frequency",
        "classifier_note",
    )
    heldout = classifier_report.get("heldout", {})
    return {
        **dataset_card,
        "attribute_edits": {
            **{k: edit_report[k] for k in keys if k in edit_report},
            "classifier": {
                "what": classifier_report.get("what"),
                "checkpoint": classifier_report.get("checkpoint"),
                "heldout_balanced_accuracy": {
                    a: r.get("balanced_accuracy") for a, r in heldout.items()
                },
                "heldout_true_positive_rate": {
                    a: r.get("true_positive_rate") for a, r in heldout.items()
                },
                "heldout_true_negative_rate": {
                    a: r.get("true_negative_rate") for a, r in heldout.items()
                },
            },
            "source_dataset": edit_report.get("source"),
        },
    }

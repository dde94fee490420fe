"""Nodes of the recognizer pipeline: the same recipe trained on the synthetic set and on the real
subset (the baseline), each as a namespaced instance of one pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from face_pipelines.io.encoded import EncodedImages, write_encoded_index
from face_pipelines.io.subset import pack_subset, repack_packed, subsample_per_identity
from face_pipelines.params import validate_section
from face_pipelines.reporting.metrics import MetricHistory
from face_pipelines.tracking import live_metrics, log_trained_model, metrics_not_logged_live
from face_pipelines.training.data import choose_training_format
from face_pipelines.training.recognizer import train_recognizer

log = logging.getLogger(__name__)


def plan_training_sets(
    synthetic_dataset_info: dict,
    subset_packed_manifest: pd.DataFrame,
    recognizer: dict,
    common: dict,
) -> dict:
    """How many images each instance trains on (equal counts by default: a fair comparison), and
    the seed of the per-identity subsampling."""
    p = validate_section("recognizer", recognizer)
    com = validate_section("common", common)
    counts = {
        "synthetic": int(synthetic_dataset_info["images"]),
        "real": int(len(subset_packed_manifest)),
    }
    n = dict(counts)
    if p.match_image_count:
        n = dict.fromkeys(counts, min(counts.values()))
    if p.max_images:
        n = {k: min(v, p.max_images) for k, v in n.items()}
    return {"available": counts, "images": n, "seed": com.stage_seed(p.seed)}


def plan_matched_training_set(
    synthetic_dataset_info: dict,
    reference_summary: dict,
    recognizer: dict,
    match: bool,
    common: dict,
) -> dict:
    """How many images a further set's recognizer trains on: with `match`, as many as the
    reference recognizer did (e.g. the Vec2Face-set one), so the sets are compared at equal size."""
    p = validate_section("recognizer", recognizer)
    com = validate_section("common", common)
    available = int(synthetic_dataset_info["images"])
    reference = int(reference_summary["training_set"]["images"])
    n = min(available, reference) if match else available
    if p.max_images:
        n = min(n, p.max_images)
    return {
        "available": {"set": available, "reference_trained_on": reference},
        "images": {"synthetic": n},
        "seed": com.stage_seed(p.seed),
    }


def build_synthetic_training_set(
    plan: dict, synthetic_dataset_info: dict, packed_dir: Path, recognizer: dict, common: dict
) -> dict:
    """The rendered synthetic dataset (subsampled per the plan) as a training set: decoded into the
    packed format, or - when that would not fit `recognizer.data` - an index of its JPEGs."""
    p = validate_section("recognizer", recognizer)
    com = validate_section("common", common)
    root = Path(synthetic_dataset_info["root"])
    size = int(synthetic_dataset_info["image_size"])
    manifest = pd.read_parquet(root / "manifest.parquet")
    chosen = subsample_per_identity(manifest, plan["images"]["synthetic"], plan["seed"])
    fmt, why = choose_training_format(len(chosen), size, p.data.format, p.data.packed_limit_gib)
    log.info("recognizer training set from %s: %s", root, why)
    if fmt == "jpeg":
        images = EncodedImages.from_folder(root, chosen["path"], chosen["identity"], size)
        write_encoded_index(packed_dir, images)
        return {
            "packed_dir": str(packed_dir),
            "images": len(images),
            "identities": int(chosen["identity"].nunique()),
            "skipped": 0,  # a JPEG that fails to decode is skipped (and listed) by the trainer
            "format": fmt,
            "format_reason": why,
        }
    _, report = pack_subset(
        chosen,
        packed_dir,
        image_size=size,
        shard_size=4096,
        folder_root=root,
        num_workers=com.num_workers,
        progress=com.progress,
    )
    return {
        "packed_dir": str(packed_dir),
        "images": report["packed"],
        "identities": int(chosen["identity"].nunique()),
        "skipped": report["skipped"],
        "format": fmt,
        "format_reason": why,
    }


def build_real_training_set(
    plan: dict,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    packed_dir: Path,
    common: dict,
) -> dict:
    """Subsample the packed real subset per the plan into its own packed set."""
    com = validate_section("common", common)
    m = subset_packed_manifest.assign(_row=np.arange(len(subset_packed_manifest)))
    chosen = subsample_per_identity(m, plan["images"]["real"], plan["seed"])
    # The subset stage already holds these images packed: copying rows reads no JPEG again.
    log.info(
        "recognizer training set 'real': packed, %d rows of %s", len(chosen), subset_packed_dir
    )
    info = repack_packed(
        subset_packed_dir, chosen["_row"].to_numpy(), packed_dir, progress=com.progress
    )
    return {"packed_dir": str(packed_dir), **info, "skipped": 0}


def train_instance(
    training_set: dict, model_dir: Path, recognizer: dict, common: dict
) -> tuple[dict, dict]:
    """Train the recognizer recipe on one packed training set."""
    p = validate_section("recognizer", recognizer)
    com = validate_section("common", common)
    hist = MetricHistory()
    summary = train_recognizer(
        training_set["packed_dir"],
        model_dir,
        com.seeded(p.train),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
    )
    summary = log_trained_model({**summary, "training_set": training_set})
    return summary, metrics_not_logged_live(hist)

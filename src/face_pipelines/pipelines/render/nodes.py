"""Nodes of the render pipeline: render the planned dataset (AttrOP on the planned images) and
measure it against the real subset in a dataset card."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.params import validate_section
from face_pipelines.reporting.dataset_card import card_figure, card_summary
from face_pipelines.reporting.metrics import flat_metrics
from face_pipelines.reporting.rendered import rendered_dataset_card
from face_pipelines.synthesis.attrop import AttrOPBatchEditor
from face_pipelines.synthesis.factory import load_attrop_models, load_generator
from face_pipelines.synthesis.render import export_recordio, file_fingerprint, render_dataset
from face_pipelines.training.device import resolve_device

log = logging.getLogger(__name__)


def render_synthetic_dataset(
    identity_plan: pd.DataFrame,
    identity_vectors: np.ndarray,
    identity_centres: np.ndarray,
    vec2face_report: dict,
    teacher_summary: dict,
    pose_summary: dict,
    synthetic_dir: Path,
    render: dict,
    teacher: dict,
    common: dict,
) -> tuple[dict, dict]:
    """Sharded, resumable rendering; AttrOP runs on the plan's `attrop` rows."""
    p = validate_section("render", render)
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    device = str(resolve_device(com.device))
    ckpt = vec2face_report["checkpoint"]
    editor = None
    if p.attrop_enabled and bool(identity_plan["attrop"].any()):
        editor = AttrOPBatchEditor(
            identity_centres,
            partial(
                load_attrop_models,
                teacher_summary["checkpoint"],
                pose_summary["checkpoint"],
                t.checkpoint_kwargs(),
                device,
            ),
            config=p.attrop,
        )
    plan = identity_plan if p.attrop_enabled else identity_plan.assign(attrop=False)
    manifest, report = render_dataset(
        plan,
        np.asarray(identity_vectors),
        partial(load_generator, ckpt, device),
        synthetic_dir,
        shard_identities=p.shard_identities,
        attrop=editor,
        batch_size=p.batch_size,
        num_workers=p.num_workers,
        seed=p.seed,
        progress=com.progress,
        jpeg_quality=p.jpeg_quality,
        fingerprint=file_fingerprint(ckpt),
    )
    if p.export_recordio:
        export_recordio(synthetic_dir, Path(synthetic_dir).with_suffix(".rec"))
    info = {
        "root": str(synthetic_dir),
        "images": int(len(manifest)),
        "identities": int(manifest["identity"].nunique()),
        "image_size": int(report["image_size"]),
        "generator": ckpt,
    }
    return info, report


def make_dataset_card(
    synthetic_dataset_info: dict,
    render_report: dict,
    sample_report: dict,
    teacher_features: np.ndarray,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    teacher_summary: dict,
    pose_summary: dict,
    sample: dict,
    render: dict,
    vec2face: dict,
    teacher: dict,
    common: dict,
):
    """Re-extract teacher features and pose from the rendered pixels and compare with real.

    The card is also written into the dataset root (dataset_card.json) so a dataset folder - or a
    DVC revision of it - carries its own card for `face-pipelines diff`.
    """
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    device = resolve_device(com.device)
    root = Path(synthetic_dataset_info["root"])
    card, _ = rendered_dataset_card(
        root,
        synthetic_dataset_info["image_size"],
        (teacher_summary["checkpoint"], t.checkpoint_kwargs()),
        pose_summary["checkpoint"],
        subset_packed_dir,
        teacher_features,
        subset_packed_manifest["identity"].to_numpy(),
        (sample_report["threshold"], sample_report["leakage_threshold"]),
        render_report,
        device,
    )
    card["parameters"] = {"sample": sample, "render": render, "vec2face": vec2face}
    write_text_atomic(root / "dataset_card.json", json.dumps(card, indent=2))
    summary = card_summary(card)
    log.info("\n%s", summary)
    metrics = flat_metrics(
        {k: v for k, v in card.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    )
    return card, card_figure(card), metrics

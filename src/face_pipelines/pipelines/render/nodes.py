"""Nodes of the render pipeline: render the planned dataset with any generator (AttrOP on the
planned images when it is on) and measure the Vec2Face set against the real subset in a dataset
card. The render node is generator-agnostic: pipeline_registry instantiates it per generator."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from face_pipelines.device import resolve_device
from face_pipelines.io.subset import require_path
from face_pipelines.params import (
    RenderAttrOPParams,
    RenderParams,
    TeacherParams,
    validate_section,
)
from face_pipelines.reporting.dataset_card import (
    add_feature_probe,
    add_generator_quality,
    card_outputs,
)
from face_pipelines.reporting.lineage import (
    active_mlflow_run_id,
    build_lineage,
    checkpoint_input,
    file_input,
    frame_input,
    lineage_stage,
    upstream_stages,
)
from face_pipelines.reporting.rendered import rendered_dataset_card
from face_pipelines.synthesis.attrop import AttrOPBatchEditor
from face_pipelines.synthesis.dataset_writer import (
    export_recordio,
    file_fingerprint,
    render_dataset,
)
from face_pipelines.synthesis.factory import load_attrop_models, load_generator
from face_pipelines.synthesis.generators import DEFAULT_GENERATOR, generator_kind


def _attrop_models(
    a: RenderAttrOPParams, teacher_summary: dict, pose_summary: dict, t: TeacherParams, device: str
) -> partial:
    """AttrOP's (picklable) model factory from render.attrop's model keys; user paths are checked
    here, before any rendering starts."""
    key = "render.attrop"
    identity, identity_kwargs = teacher_summary["checkpoint"], t.checkpoint_kwargs()
    if a.identity_model.source == "checkpoint":
        what = "a recognizer embedding into the teacher's feature space (the teacher's weights)"
        identity = str(
            require_path(a.identity_model.checkpoint, f"{key}.identity_model.checkpoint", what)
        )
        identity_kwargs = a.identity_model.checkpoint_kwargs()
    pose, pose_kind = pose_summary["checkpoint"], "pose_regressor"
    if a.pose_model.source == "sixdrepnet":
        what = "the 6DRepNet file (6DRepNet_300W_LP_AFLW2000.pth, deploy or train form)"
        pose = str(require_path(a.pose_model.checkpoint, f"{key}.pose_model.checkpoint", what))
        pose_kind = "sixdrepnet"
    quality = None
    if a.quality_model.source == "checkpoint":
        what = "a recognizer whose embedding norm is quality (MagFace IResNet-100 state dict)"
        quality = str(
            require_path(a.quality_model.checkpoint, f"{key}.quality_model.checkpoint", what)
        )
    return partial(
        load_attrop_models,
        identity,
        pose,
        identity_kwargs,
        device,
        pose_kind,
        quality,
        a.quality_model.checkpoint_kwargs(),
    )


def _attrop_plan(identity_plan: pd.DataFrame, p: RenderParams) -> pd.DataFrame:
    """The plan as rendered: no AttrOP rows when it is off; render.attrop.quality_model.target,
    when set, is the quality target of every AttrOP row (the plan's are the teacher's norms)."""
    if not p.attrop_enabled:
        return identity_plan.assign(attrop=False)
    target = p.attrop.quality_model.target
    if target is None:
        return identity_plan
    optimised = identity_plan["attrop"].fillna(False).to_numpy(dtype=bool)
    return identity_plan.assign(quality_target=np.where(optimised, target, np.nan))


def render_synthetic_dataset(
    identity_plan: pd.DataFrame,
    identity_vectors: np.ndarray,
    identity_centres: np.ndarray,
    generator_report: dict,
    teacher_summary: dict,
    pose_summary: dict,
    synthetic_dir: Path,
    render: dict,
    teacher: dict,
    common: dict,
) -> tuple[dict, dict]:
    """Sharded, resumable rendering with the generator the report names
    (synthesis.generators.GeneratorReport); AttrOP runs on the plan's `attrop` rows."""
    p = validate_section("render", render)
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    device = str(resolve_device(com.device))
    ckpt = generator_report["checkpoint"]
    kind = generator_kind(generator_report)
    editor = None
    if p.attrop_enabled and bool(identity_plan["attrop"].any()):
        editor = AttrOPBatchEditor(
            identity_centres,
            _attrop_models(p.attrop, teacher_summary, pose_summary, t, device),
            config=p.attrop,
        )
    plan = _attrop_plan(identity_plan, p)
    manifest, report = render_dataset(
        plan,
        np.asarray(identity_vectors),
        partial(load_generator, ckpt, device, kind),
        synthetic_dir,
        shard_identities=p.shard_identities,
        attrop=editor,
        batch_size=p.batch_size,
        num_workers=p.num_workers,
        seed=com.stage_seed(p.seed),
        progress=com.progress,
        jpeg_quality=p.jpeg_quality,
        fingerprint=_generator_fingerprint(kind, ckpt),
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


def _generator_fingerprint(kind: str, checkpoint: str) -> str:
    """What the rendered images depend on besides the plan: the loader kind and the checkpoint."""
    fingerprint = file_fingerprint(checkpoint)
    return fingerprint if kind == DEFAULT_GENERATOR else f"{kind}:{fingerprint}"


def _vec2face_set_lineage(
    params: dict[str, dict],
    faceworld_info: dict,
    subset_packed_dir: Path,
    teacher_features: np.ndarray,
    teacher_summaries: dict[str, dict],
    vec2face_report: dict,
    identity_plan: pd.DataFrame,
) -> dict:
    """The card's lineage: validated parameters of every stage, content fingerprints of the
    checkpoints, features and plan, the code version and the MLflow run writing the card."""
    p = {k: validate_section(k, v) for k, v in params.items()}
    stages = upstream_stages(
        p, faceworld_info, subset_packed_dir, teacher_summaries, teacher_features
    )
    gen = {"generator checkpoint": checkpoint_input(vec2face_report["checkpoint"])}
    stages["vec2face"] = lineage_stage("vec2face", p["vec2face"], gen)
    plan = {"identity plan": frame_input(identity_plan)}
    if p["sample"].distribution_centres:
        plan["distribution centres"] = file_input(p["sample"].distribution_centres)
    stages["sample"] = lineage_stage("sample", p["sample"], plan)
    stages["render"] = lineage_stage("render", p["render"], _attrop_model_files(p["render"]))
    return build_lineage(stages, {"render": active_mlflow_run_id()})


def _attrop_model_files(p: RenderParams) -> dict:
    """Fingerprints of the AttrOP models given by path (the teacher's are in the teacher stage)."""
    if not p.attrop_enabled:
        return {}
    a = p.attrop
    paths = {
        "identity model": a.identity_model.source == "checkpoint" and a.identity_model.checkpoint,
        "quality model": a.quality_model.source == "checkpoint" and a.quality_model.checkpoint,
        "pose model": a.pose_model.source == "sixdrepnet" and a.pose_model.checkpoint,
    }
    return {name: checkpoint_input(path) for name, path in paths.items() if path}


def make_dataset_card(
    synthetic_dataset_info: dict,
    render_report: dict,
    sample_report: dict,
    teacher_features: np.ndarray,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    teacher_summary: dict,
    pose_summary: dict,
    vec2face_report: dict,
    sample: dict,
    render: dict,
    vec2face: dict,
    teacher: dict,
    common: dict,
    faceworld_info: dict,
    judge_summary: dict,
    identity_plan: pd.DataFrame,
    faceworld: dict,
    subset: dict,
):
    """Re-extract teacher features and pose from the rendered pixels and compare with real.

    The card is returned twice: for data/08_reporting and for the dataset root (catalog entry
    synthetic_dataset_card), so a dataset folder - or a DVC revision of it - carries its own card
    for `face-pipelines diff`. Its `lineage` records every stage that made the set
    (reporting.lineage).
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
    card["lineage"] = _vec2face_set_lineage(
        {
            "common": common,
            "faceworld": faceworld,
            "subset": subset,
            "teacher": teacher,
            "vec2face": vec2face,
            "sample": sample,
            "render": render,
        },
        faceworld_info,
        subset_packed_dir,
        teacher_features,
        {"teacher": teacher_summary, "judge": judge_summary, "pose": pose_summary},
        vec2face_report,
        identity_plan,
    )
    # What the generator's input vectors carry and how well it renders held-out faces explain
    # the card's yaw and spread numbers; both come from the vec2face report.
    card = add_generator_quality(add_feature_probe(card, vec2face_report), vec2face_report)
    return card_outputs(card)

"""DR-GAN's own nodes: train the pose-code generator on the packed real subset, sample identities
and pose codes in its encoder's f space, measure what a pose-code set has that others do not (card),
and export the encoder as a recognizer. Rendering, the recognizer on its set and the verification
table are the shared chain's nodes, instantiated under the `drgan` namespace (pipeline_registry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError
from face_pipelines.io.packed import PackedImages
from face_pipelines.metrics.separability import identity_centres, intra_class_cosines
from face_pipelines.models.drgan import yaw_to_pose_bin
from face_pipelines.models.inference import embed_images, load_drgan, load_judge
from face_pipelines.params import CommonParams, DRGANParams, TeacherParams, validate_section
from face_pipelines.reporting.dataset_card import add_pose_code_measures, card_outputs
from face_pipelines.reporting.figures import image_figure
from face_pipelines.reporting.lineage import (
    active_mlflow_run_id,
    build_lineage,
    checkpoint_input,
    frame_input,
    lineage_stage,
    upstream_stages,
)
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.reporting.rendered import RenderedMeasures, rendered_dataset_card
from face_pipelines.synthesis.pose_code import make_pose_code_plan, pose_bin_success
from face_pipelines.synthesis.sampling import calibrate_threshold
from face_pipelines.tracking import live_metrics, log_trained_model, metrics_not_logged_live
from face_pipelines.training.drgan import (
    encode_images,
    even_rows,
    judge_reconstruction,
    save_encoder_checkpoint,
    train_drgan,
)


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
        com.seeded(p.train),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
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
    metrics = metrics_not_logged_live(hist) | flat_metrics(
        {k: v for k, v in report.items() if isinstance(v, int | float)}, prefix="final"
    )
    # The render node loads the checkpoint with the loader this names (GeneratorReport).
    return log_trained_model({**report, "generator": "drgan"}), fig, metrics


# -- drgan_synth: DR-GAN's sampling and card (rendering is the shared render node) -----------------
def sample_pose_code_identities(
    drgan_report: dict,
    subset_packed_dir: Path,
    drgan: dict,
    common: dict,
):
    """Encode the real subset with DR-GAN's encoder; sample identities in that f space (Vec2Face's
    sampling: separation threshold, leakage guard) and give every image a pose code (the target
    the generator renders it at)."""
    p = validate_section("drgan", drgan).synth
    com = validate_section("common", common)
    device = str(resolve_device(com.device))
    gen = load_drgan(drgan_report["checkpoint"], device)
    packed = PackedImages(Path(subset_packed_dir))
    images, labels = packed.get_batch(np.arange(len(packed)))
    f = encode_images(gen, images, device)
    plan, vectors, centres, report = make_pose_code_plan(
        f, labels, com.seeded(p.plan), drgan_report["pose_bin_centres_deg"], device, com.progress
    )
    metrics = flat_metrics(
        {k: v for k, v in report.items() if isinstance(v, int | float)}
        | {"sampling": {k: v for k, v in report["sampling"].items() if isinstance(v, int | float)}}
    )
    return plan, vectors, centres, report, metrics


def make_pose_code_dataset_card(
    synthetic_dataset_info: dict,
    render_report: dict,
    sample_report: dict,
    drgan_report: dict,
    teacher_features: np.ndarray,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    teacher_summary: dict,
    pose_summary: dict,
    judge_summary: dict,
    drgan: dict,
    teacher: dict,
    common: dict,
    faceworld_info: dict,
    identity_plan: pd.DataFrame,
    faceworld: dict,
    subset: dict,
):
    """The render card (teacher features and pose re-measured on the JPEGs, compared with real),
    plus per-pose-bin success by the pose model and identity kept by the judge, and the set's
    lineage (reporting.lineage). Returned like every set's card (reporting.dataset_card.card_outputs):
    for data/08_reporting and for the dataset root, with its figure and metrics."""
    p = validate_section("drgan", drgan)
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    device = resolve_device(com.device)
    real_labels = subset_packed_manifest["identity"].to_numpy()
    card, m = rendered_dataset_card(
        Path(synthetic_dataset_info["root"]),
        synthetic_dataset_info["image_size"],
        (teacher_summary["checkpoint"], t.checkpoint_kwargs()),
        pose_summary["checkpoint"],
        subset_packed_dir,
        teacher_features,
        real_labels,
        _teacher_space_thresholds(p, teacher_features, real_labels, device),
        render_report,
        device,
    )
    judged = _judge_measures(m, drgan_report, judge_summary, subset_packed_dir, p, t, com, device)
    centres = np.asarray(drgan_report["pose_bin_centres_deg"])
    card = add_pose_code_measures(
        card,
        pose_bin_success(m.manifest["pose_bin"].to_numpy(), m.yaw, centres),
        judged,
        _real_pose_bin_success(subset_packed_manifest, m.real_yaw, centres),
    )
    card["generator"] = "drgan"
    card["generator_images_per_second"] = drgan_report.get("generate_images_per_s")
    card["sampling_space"] = "drgan encoder f"
    card["sampling_threshold_f"] = sample_report["threshold"]
    card["parameters"] = {"drgan": drgan}
    sections = {"common": common, "teacher": teacher, "faceworld": faceworld, "subset": subset}
    stages = upstream_stages(
        {k: validate_section(k, v) for k, v in sections.items()},
        faceworld_info,
        subset_packed_dir,
        {"teacher": teacher_summary, "judge": judge_summary, "pose": pose_summary},
        teacher_features,
    )
    stages["drgan"] = lineage_stage(
        "drgan",
        p,
        {
            "generator checkpoint": checkpoint_input(drgan_report["checkpoint"]),
            "identity plan": frame_input(identity_plan),
        },
    )
    card["lineage"] = build_lineage(stages, {"drgan": active_mlflow_run_id()})
    return card_outputs(card)


def _teacher_space_thresholds(
    p: DRGANParams, teacher_features: np.ndarray, real_labels: np.ndarray, device
) -> tuple[float, float]:
    """The card's (separation, leakage) thresholds. Sampling ran in DR-GAN's f space; the card
    measures in the teacher's, so an uncalibrated plan threshold is calibrated there the same way."""
    plan_cfg = p.synth.plan
    threshold = plan_cfg.threshold
    if threshold is None:
        threshold = calibrate_threshold(
            identity_centres(np.asarray(teacher_features), real_labels),
            plan_cfg.calibration_quantile,
            device=str(device),
        )
    leak = threshold if plan_cfg.leakage_threshold is None else plan_cfg.leakage_threshold
    return threshold, leak


def _judge_measures(
    m: RenderedMeasures,
    drgan_report: dict,
    judge_summary: dict,
    subset_packed_dir: Path,
    p: DRGANParams,
    t: TeacherParams,
    com: CommonParams,
    device,
) -> dict:
    """Identity kept by the judge (a recognizer no loss used): on DR-GAN's re-renderings of real
    images across the pose codes, and as the rendered set's intra-class cosine."""
    gen = load_drgan(drgan_report["checkpoint"], device)
    judge = load_judge(judge_summary["checkpoint"], device, **t.judge.checkpoint_kwargs())
    packed = PackedImages(Path(subset_packed_dir))
    real_u8, _ = packed.get_batch(even_rows(packed.labels, p.synth.judge_images))
    judged = judge_reconstruction(gen, judge, real_u8, device, com.stage_seed(p.synth.render.seed))
    judge_feats = embed_images(judge, m.images, device)
    judged["judge_intra_class_cos_mean"] = float(
        intra_class_cosines(judge_feats, m.manifest["identity"].to_numpy()).mean()
    )
    return judged


def _real_pose_bin_success(
    subset_packed_manifest: pd.DataFrame, real_yaw: np.ndarray, centres: np.ndarray
) -> dict | None:
    """The pose model's bin success on the real images against their ground-truth yaw (FaceWorld
    labels it): the ceiling for the generated set. None without a yaw column."""
    if "yaw" not in subset_packed_manifest.columns:
        return None
    real_bins = yaw_to_pose_bin(
        subset_packed_manifest["yaw"].to_numpy(np.float64),
        len(centres),
        centres[0],
        centres[-1],
    )
    return pose_bin_success(real_bins, real_yaw, centres)


# -- drgan_eval: the encoder, verified next to the recognizers (the shared chain's nodes) ---------
def export_drgan_encoder(drgan_report: dict, drgan_encoder_dir: Path) -> dict:
    """The encoder as a recognizer checkpoint (arch drgan_encoder) for the verification table."""
    return save_encoder_checkpoint(drgan_report["checkpoint"], Path(drgan_encoder_dir) / "model.pt")

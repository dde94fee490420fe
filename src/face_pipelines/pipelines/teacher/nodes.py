"""Nodes of the teacher pipeline: the recognizer whose features Vec2Face learns from, an independent
judge recognizer (identity is scored by a model no generator loss uses), and the pose model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from face_pipelines.device import resolve_device
from face_pipelines.io.subset import pack_subset, require_path
from face_pipelines.metrics.benchmarks import verification_table
from face_pipelines.models.inference import extract_features, load_recognizer
from face_pipelines.params import validate_section
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.tracking import live_metrics, log_trained_model, metrics_not_logged_live
from face_pipelines.training.attributes import train_pose_regressor
from face_pipelines.training.recognizer import train_recognizer


def _needs_pretrain(t) -> bool:
    return "train" in (t.source, t.judge.source, t.pose.source)


def pack_pretrain_pool(
    faceworld_info: dict, pretrain_packed_dir: Path, teacher: dict, common: dict
) -> tuple[pd.DataFrame, dict]:
    """Pack FaceWorld's pretrain pool (with its pose labels) for the models trained here."""
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    if not _needs_pretrain(t):
        return pd.DataFrame({"path": [], "identity": []}), {"packed": 0, "skipped": 0}
    if not faceworld_info.get("enabled"):
        raise ValueError(
            "teacher/judge/pose source 'train' needs FaceWorld's pretrain pool: set "
            "faceworld.enabled: true or give checkpoints by path"
        )
    root = Path(faceworld_info["root"]) / "pretrain"
    labels = pd.read_parquet(root / "labels.parquet")
    packed, report = pack_subset(
        labels,
        pretrain_packed_dir,
        image_size=faceworld_info["image_size"],
        shard_size=4096,
        folder_root=root,
        num_workers=com.num_workers,
        progress=com.progress,
    )
    return packed, report


def _train(name: str, cfg, packed_dir: Path, out_dir: Path, com) -> tuple[dict, dict]:
    hist = MetricHistory()
    summary = train_recognizer(
        packed_dir,
        out_dir / name,
        com.seeded(cfg),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
    )
    return log_trained_model(summary), metrics_not_logged_live(hist)


def train_teacher(
    pretrain_pack_report: dict,
    pretrain_packed_dir: Path,
    teacher_dir: Path,
    pose_summary: dict,
    teacher: dict,
    common: dict,
) -> tuple[dict, dict]:
    """Train the teacher on the pretrain pool, or point at the user's checkpoint. With
    `teacher.recognizer.pose_retention.weight > 0` the pose model (trained or loaded here) supplies
    the (yaw, pitch) targets that keep pose readable from the teacher's raw features."""
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    if t.source == "checkpoint":
        path = require_path(
            t.checkpoint,
            "teacher.checkpoint",
            "a recognizer checkpoint (the paper's: arcface-r100-glint360k.pth, insightface layout)",
        )
        return {"checkpoint": str(path), "source": "checkpoint"}, {}
    cfg = t.recognizer
    if cfg.pose_retention.weight > 0 and not cfg.pose_retention.checkpoint:
        retention = cfg.pose_retention.model_copy(update={"checkpoint": pose_summary["checkpoint"]})
        cfg = cfg.model_copy(update={"pose_retention": retention})
    summary, metrics = _train("teacher", cfg, pretrain_packed_dir, teacher_dir, com)
    return {**summary, "source": "train"}, metrics


def train_judge(
    pretrain_pack_report: dict,
    pretrain_packed_dir: Path,
    teacher_dir: Path,
    teacher: dict,
    common: dict,
) -> tuple[dict, dict]:
    """Train the independent judge (other architecture and seed than the teacher)."""
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    if t.judge.source == "checkpoint":
        path = require_path(
            t.judge.checkpoint,
            "teacher.judge.checkpoint",
            "a recognizer other than the teacher (e.g. magface-r100-glint360k.pth)",
        )
        return {"checkpoint": str(path), "source": "checkpoint"}, {}
    summary, metrics = _train("judge", t.judge.recognizer, pretrain_packed_dir, teacher_dir, com)
    return {**summary, "source": "train"}, metrics


def train_pose_model(
    pretrain_manifest: pd.DataFrame,
    pretrain_packed_dir: Path,
    teacher_dir: Path,
    teacher: dict,
    common: dict,
) -> tuple[dict, dict]:
    """Train the differentiable yaw/pitch regressor on FaceWorld's ground-truth pose labels."""
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    if t.pose.source == "checkpoint":
        path = require_path(
            t.pose.checkpoint,
            "teacher.pose.checkpoint",
            "a pose_regressor checkpoint or the 6DRepNet file (6DRepNet_300W_LP_AFLW2000.pth)",
        )
        return {"checkpoint": str(path), "source": "checkpoint"}, {}
    targets = pretrain_manifest[["yaw", "pitch"]].to_numpy(np.float32)
    hist = MetricHistory()
    summary = train_pose_regressor(
        pretrain_packed_dir,
        targets,
        teacher_dir / "pose",
        com.seeded(t.pose.train),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
    )
    return log_trained_model({**summary, "source": "train"}), metrics_not_logged_live(hist)


def extract_teacher_features(
    teacher_summary: dict,
    judge_summary: dict,
    pose_summary: dict,
    faceworld_info: dict,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    teacher: dict,
    common: dict,
) -> tuple[np.ndarray, dict, dict]:
    """Raw teacher features of the packed subset (aligned with its manifest) + teacher report."""
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    device = resolve_device(com.device)
    model, size = load_recognizer(
        teacher_summary["checkpoint"],
        device,
        **t.checkpoint_kwargs(),
    )
    feats = extract_features(model, subset_packed_dir, device, t.feature_batch_size, com.progress)
    if len(feats) != len(subset_packed_manifest):
        raise ValueError(f"{len(feats)} features for {len(subset_packed_manifest)} manifest rows")
    norms = np.linalg.norm(feats, axis=1)
    report = {
        "teacher": teacher_summary,
        "judge": judge_summary,
        "pose": pose_summary,
        "features": {
            "count": int(len(feats)),
            "dim": int(feats.shape[1]),
            "norm_mean": float(norms.mean()),
            "norm_std": float(norms.std()),
            "dim_mean_abs": float(np.abs(feats.mean(0)).mean()),
            "dim_std_mean": float(feats.std(0).mean()),
        },
    }
    if faceworld_info.get("enabled"):
        root = Path(faceworld_info["root"])
        benches = {k: root / v["bin"] for k, v in faceworld_info["eval"].items()}
        recs = {"teacher": teacher_summary["checkpoint"], "judge": judge_summary["checkpoint"]}
        report["verification"] = verification_table(recs, benches, device, progress=com.progress)
    return (
        feats,
        report,
        flat_metrics({k: report[k] for k in ("features",)})
        | flat_metrics(
            {
                n: {b: r["accuracy"] for b, r in res.items() if isinstance(r, dict)}
                for n, res in report.get("verification", {}).get("results", {}).items()
            }
        ),
    )

"""Nodes of the vec2face pipeline: train the generator on (image, teacher feature) pairs, or
load one by path (vec2face.source: checkpoint)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from face_pipelines.device import resolve_device
from face_pipelines.errors import ParameterError
from face_pipelines.image_tensors import image_grid
from face_pipelines.io.subset import require_path
from face_pipelines.metrics.feature_probe import probe_features, probe_headline, probe_summary
from face_pipelines.models.inference import load_judge, load_pose_regressor, load_recognizer
from face_pipelines.models.vec2face import load_vec2face
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import image_figure
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.tracking import live_metrics, log_trained_model, metrics_not_logged_live
from face_pipelines.training.vec2face import generate_batched, train_vec2face

log = logging.getLogger(__name__)


def train_generator(
    teacher_summary: dict,
    judge_summary: dict,
    pose_summary: dict,
    teacher_features: np.ndarray,
    subset_packed_manifest: pd.DataFrame,
    subset_packed_dir: Path,
    vec2face_dir: Path,
    grids_dir: Path,
    vec2face: dict,
    teacher: dict,
    common: dict,
):
    """Train Vec2Face; report identity preservation by the teacher and by the independent judge."""
    p = validate_section("vec2face", vec2face)
    t = validate_section("teacher", teacher)
    com = validate_section("common", common)
    # What the generator has to invert: does the raw feature carry pose, light, age...? It takes
    # seconds, so it runs first and a bad `vec2face.probe` fails before training.
    probe: dict = {"enabled": False}
    if p.probe.enabled:
        probe = probe_features(
            np.asarray(teacher_features),
            subset_packed_manifest,
            folds=p.probe.folds,
            ridge_alpha=p.probe.ridge_alpha,
            attributes=p.probe.attributes,
            max_images=p.probe.max_images,
            seed=com.stage_seed(0),
        )
        log.info("What the teacher's raw features carry: %s", probe_summary(probe))
    if p.source == "checkpoint":
        report = load_generator_checkpoint(
            p.checkpoint, np.asarray(teacher_features), grids_dir, com.device
        )
        title = "Vec2Face (loaded): G(f) unmasked | inference masking, two seeds"
        return _node_outputs(report, probe, MetricHistory(), title)
    teacher_model, _ = load_recognizer(
        teacher_summary["checkpoint"],
        **t.checkpoint_kwargs(),
    )
    judge_model = load_judge(judge_summary["checkpoint"], **t.judge.checkpoint_kwargs())
    # The pose model is in no generator loss: it reads whether G(f) turns the head as x does.
    pose_model = load_pose_regressor(pose_summary["checkpoint"])
    hist = MetricHistory()
    report = train_vec2face(
        subset_packed_dir,
        np.asarray(teacher_features),
        teacher_model,
        judge_model,
        vec2face_dir,
        grids_dir,
        com.seeded(p.train),
        device=com.device,
        progress=com.progress,
        log=live_metrics(hist),
        pose_model=pose_model,
    )
    report["judge"] = {
        "checkpoint": judge_summary["checkpoint"],
        "what": "independent recognizer from the teacher pipeline (other seed, "
        "width and loss than the teacher; no generator loss uses it)",
    }
    title = "Vec2Face: real | reconstruction | new identities (x2)"
    return _node_outputs(log_trained_model(report), probe, hist, title)


def _node_outputs(report: dict, probe: dict, hist: MetricHistory, title: str):
    """Report (with the feature probe), its sample grid as a figure, and the MLflow metrics."""
    report["feature_probe"] = probe
    grid = np.asarray(Image.open(report["grid"]).convert("RGB"))
    fig = image_figure(grid, title)
    metrics = metrics_not_logged_live(hist) | flat_metrics(
        {k: v for k, v in report.items() if isinstance(v, int | float)}, prefix="final"
    )
    metrics |= flat_metrics(probe_headline(probe), prefix="probe")
    return report, fig, metrics


def load_generator_checkpoint(
    checkpoint: str | None,
    teacher_features: np.ndarray,
    grids_dir: Path,
    device: str = "auto",
    grid_columns: int = 8,
) -> dict:
    """vec2face.source=checkpoint: the report render reads, for a generator given by path.

    The file (upstream's released vec2face_generator.pth or a project vec2face checkpoint) is
    loaded once here so a wrong file fails now, not in the render stage; the grid shows G(f) of the
    first teacher features, unmasked and with two draws of inference masking.
    """
    path = require_path(
        checkpoint,
        "vec2face.checkpoint",
        "upstream's released vec2face_generator.pth or a vec2face model.pt",
    )
    dev = resolve_device(device)
    gen = load_vec2face(path, dev)
    if teacher_features.ndim != 2 or teacher_features.shape[1] != gen.config.feat_dim:
        raise ParameterError(
            f"vec2face.checkpoint {path} takes {gen.config.feat_dim}-d vectors but the teacher's "
            f"features have shape {teacher_features.shape}: the teacher must be the recognizer "
            "the generator was trained on (the release: ArcFace-R100, Glint360K)"
        )
    feats = teacher_features[:grid_columns]
    rows = [generate_batched(gen, feats, dev, masking=None)]
    rows += [generate_batched(gen, feats, dev, seed=seed) for seed in (0, 1)]
    grid_path = Path(grids_dir) / "final.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(np.concatenate(rows), ncols=max(len(feats), 1))).save(grid_path)
    return {
        "checkpoint": str(path),
        "source": "checkpoint",
        "grid": str(grid_path),
        "image_size": gen.image_size,
        "config": gen.config.model_dump(mode="json"),
    }

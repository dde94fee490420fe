"""Nodes of the vec2face pipeline: train the generator on (image, teacher feature) pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from face_pipelines.metrics.feature_probe import probe_features, probe_headline, probe_summary
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import image_figure
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.training.recognizer import load_recognizer
from face_pipelines.training.vec2face import train_vec2face

log = logging.getLogger(__name__)


def train_generator(
    teacher_summary: dict,
    judge_summary: dict,
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
            seed=com.seed,
        )
        log.info("What the teacher's raw features carry: %s", probe_summary(probe))
    teacher_model, _ = load_recognizer(
        teacher_summary["checkpoint"],
        **t.checkpoint_kwargs(),
    )
    judge_model, _ = load_recognizer(judge_summary["checkpoint"], arch=t.judge.checkpoint_arch)
    hist = MetricHistory()
    report = train_vec2face(
        subset_packed_dir,
        np.asarray(teacher_features),
        teacher_model,
        judge_model,
        vec2face_dir,
        grids_dir,
        p.train,
        device=com.device,
        progress=com.progress,
        log=hist,
    )
    report["judge"] = {
        "checkpoint": judge_summary["checkpoint"],
        "what": "independent recognizer from the teacher pipeline (other seed, "
        "width and loss than the teacher; no generator loss uses it)",
    }
    report["feature_probe"] = probe
    from PIL import Image

    grid = np.asarray(Image.open(report["grid"]).convert("RGB"))
    fig = image_figure(grid, "Vec2Face: real | reconstruction | new identities (x2)")
    metrics = hist.as_mlflow() | flat_metrics(
        {k: v for k, v in report.items() if isinstance(v, int | float)}, prefix="final"
    )
    metrics |= flat_metrics(probe_headline(probe), prefix="probe")
    return report, fig, metrics

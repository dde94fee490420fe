"""Nodes of the ablation pipeline: recipe variants x training sets, evaluated on the benchmarks."""

from __future__ import annotations

from pathlib import Path

from face_pipelines.metrics.benchmarks import benchmark_paths
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import ablation_figure
from face_pipelines.reporting.metrics import MetricHistory, flat_metrics
from face_pipelines.tracking import live_metrics, metrics_not_logged_live
from face_pipelines.training.ablation import (
    ablation_markdown,
    ablation_metrics,
    run_ablation,
    variant_configs,
)


def run_recognizer_ablation(
    real_training_set: dict,
    synthetic_training_set: dict,
    faceworld_info: dict,
    out_dir: Path,
    ablation: dict,
    recognizer: dict,
    evaluate: dict,
    common: dict,
):
    """Train each `ablation.variants` recipe on each of `ablation.datasets`; table, figure, metrics."""
    p = validate_section("ablation", ablation)
    rec = validate_section("recognizer", recognizer)
    ev = validate_section("evaluate", evaluate)
    com = validate_section("common", common)
    variants = variant_configs(rec.train.model_dump(), p.variants)
    variants = {name: com.seeded(cfg) for name, cfg in variants.items()}
    sets = {"real": real_training_set, "synthetic": synthetic_training_set}
    datasets = {name: sets[name]["packed_dir"] for name in p.datasets}
    history = MetricHistory()
    table = run_ablation(
        datasets,
        variants,
        benchmark_paths(faceworld_info, ev.faceworld_benchmarks, ev.benchmarks),
        out_dir,
        device=com.device,
        progress=com.progress,
        log=live_metrics(history),
        batch_size=ev.batch_size,
    )
    metrics = {**metrics_not_logged_live(history), **flat_metrics(ablation_metrics(table))}
    return table, ablation_markdown(table), ablation_figure(table), metrics

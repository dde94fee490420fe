"""Nodes of the evaluate pipeline: every recognizer on every benchmark, one table."""

from __future__ import annotations

from face_pipelines.metrics.benchmarks import (
    benchmark_paths,
    verification_markdown,
    verification_table,
)
from face_pipelines.params import validate_section
from face_pipelines.reporting.dataset_card import dataset_provenance
from face_pipelines.reporting.metrics import flat_metrics
from face_pipelines.training.device import resolve_device


def evaluate_recognizers(
    synthetic_summary: dict,
    real_summary: dict,
    faceworld_info: dict,
    dataset_card: dict,
    evaluate: dict,
    common: dict,
) -> tuple[dict, str, dict]:
    """Verification accuracy (10-fold, flip TTA) of the synthetic- and real-trained recognizers.

    The MLflow metrics also carry `dataset.*`: the synthetic set's card measures and recipe knobs
    (reporting.dataset_card.dataset_provenance), so evaluate runs can be compared on their own.
    """
    p = validate_section("evaluate", evaluate)
    com = validate_section("common", common)
    benches = benchmark_paths(faceworld_info, p.faceworld_benchmarks, p.benchmarks)
    recognizers = {"synthetic": synthetic_summary["checkpoint"], "real": real_summary["checkpoint"]}
    table = verification_table(
        recognizers, benches, resolve_device(com.device), p.batch_size, progress=com.progress
    )
    table["training_images"] = {
        k: v["training_set"]["images"]
        for k, v in {"synthetic": synthetic_summary, "real": real_summary}.items()
    }
    metrics = {
        f"{rec}.{b}": r["accuracy"]
        for rec, res in table["results"].items()
        for b, r in res.items()
        if isinstance(r, dict)
    }
    metrics.update({f"{rec}.mean": res["mean_accuracy"] for rec, res in table["results"].items()})
    if "synthetic_to_real_ratio" in table:
        metrics["synthetic_to_real_ratio"] = table["synthetic_to_real_ratio"]
    metrics.update({f"dataset.{k}": v for k, v in dataset_provenance(dataset_card).items()})
    return table, verification_markdown(table), flat_metrics(metrics)

"""Nodes of the evaluate pipeline: every recognizer on every benchmark, one table."""

from __future__ import annotations

import logging

import pandas as pd
from matplotlib.figure import Figure

from face_pipelines.device import resolve_device
from face_pipelines.io.subset import require_path
from face_pipelines.metrics.benchmarks import (
    benchmark_paths,
    table_metrics,
    verification_markdown,
    verification_table,
)
from face_pipelines.params import validate_section
from face_pipelines.reporting.dataset_card import dataset_provenance
from face_pipelines.reporting.figures import roc_figure
from face_pipelines.reporting.lineage import file_sha256, lineage_tracking_params
from face_pipelines.reporting.metrics import flat_metrics
from face_pipelines.tracking import model_uri_of, resolve_model_uri

log = logging.getLogger(__name__)


def verify_recognizers(
    trained: dict[str, dict],
    faceworld_info: dict,
    evaluate: dict,
    common: dict,
    untrained: dict[str, str] | None = None,
    ratios: tuple[tuple[str, str, str], ...] = (),
    roc: bool = False,
) -> dict:
    """Verification table (10-fold, flip TTA) of trained recognizers (name -> training summary)
    and untrained ones (name -> checkpoint), with `training_images` per trained recognizer and
    each (name, numerator, denominator) mean-accuracy ratio; with `roc`, the ROC points too."""
    p = validate_section("evaluate", evaluate)
    com = validate_section("common", common)
    benches = benchmark_paths(faceworld_info, p.faceworld_benchmarks, p.benchmarks)
    recognizers = dict(untrained or {}) | {k: v["checkpoint"] for k, v in trained.items()}
    table = verification_table(
        recognizers,
        benches,
        resolve_device(com.device),
        p.batch_size,
        progress=com.progress,
        roc=roc,
    )
    table["training_images"] = {k: v["training_set"]["images"] for k, v in trained.items()}
    res = table["results"]
    for name, num, den in ratios:
        table[name] = res[num]["mean_accuracy"] / res[den]["mean_accuracy"]
    return table


def compare_recognizers(
    faceworld_info: dict,
    evaluate: dict,
    common: dict,
    ratios: tuple[tuple[str, str, str], ...] = (),
    **recognizers: dict,
) -> tuple[dict, str, dict]:
    """One verification table of a further set's recognizers (keyword = the table's name): a
    training summary (it has `training_set`) counts as trained, any other summary (e.g. DR-GAN's
    encoder exported as a recognizer) is verified as it is; `ratios` as in verify_recognizers."""
    trained = {k: v for k, v in recognizers.items() if "training_set" in v}
    untrained = {k: v["checkpoint"] for k, v in recognizers.items() if k not in trained}
    table = verify_recognizers(
        trained, faceworld_info, evaluate, common, untrained=untrained, ratios=ratios
    )
    return table, verification_markdown(table), flat_metrics(table_metrics(table))


def evaluate_recognizers(
    synthetic_summary: dict,
    real_summary: dict,
    faceworld_info: dict,
    dataset_card: dict,
    evaluate: dict,
    common: dict,
) -> tuple[dict, str, dict, dict[str, pd.DataFrame], Figure]:
    """Verification accuracy (10-fold, flip TTA) of the synthetic- and real-trained recognizers,
    TAR at FAR 1e-4..1e-1 and the ROC per recognizer and benchmark (`roc_outputs`).

    With `evaluate.checkpoint` set, that recognizer (a path or a `models:/` URI) is verified too,
    as row `checkpoint`, and the table says which one it was (`checkpoint_to_verify`).

    The MLflow metrics also carry `dataset.*`: the synthetic set's card measures and recipe knobs
    (reporting.dataset_card.dataset_provenance), so evaluate runs can be compared on their own;
    the card's lineage goes to MLflow params `dataset.*` (see `log_dataset_lineage`).
    """
    given = checkpoint_to_verify(validate_section("evaluate", evaluate).checkpoint)
    table = verify_recognizers(
        {"synthetic": synthetic_summary, "real": real_summary},
        faceworld_info,
        evaluate,
        common,
        untrained={"checkpoint": given["path"]} if given else None,
        roc=True,
    )
    curves = table.pop("roc")
    markdown = verification_markdown(table)
    if given:
        table["checkpoint"] = given
        markdown += (
            f"\nrow `checkpoint`: {given['parameter']}={given['source']} "
            f"({given['path']}, sha256 {given['sha256']})\n"
        )
    metrics = table_metrics(table)
    metrics.update({f"dataset.{k}": v for k, v in dataset_provenance(dataset_card).items()})
    log_dataset_lineage(dataset_card)
    roc_points, figure = roc_outputs(table, curves)
    return table, markdown, flat_metrics(metrics), roc_points, figure


def checkpoint_to_verify(value: str | None, key: str = "evaluate.checkpoint") -> dict | None:
    """The recognizer parameter `key` names, checked before any work: {parameter, source (the
    value as the user gave it, a `models:/` URI the hook resolved included), path (the local
    file), sha256}; None when unset. A missing file or a URI MLflow cannot fetch is an error
    naming `key`."""
    if not value:
        return None
    local = require_path(
        resolve_model_uri(value, f"parameter {key}"),
        key,
        "a recognizer checkpoint of this project, or models:/name/version",
    )
    source = model_uri_of(local) or value
    return {"parameter": key, "source": source, "path": str(local), "sha256": file_sha256(local)}


def log_dataset_lineage(dataset_card: dict) -> dict[str, str]:
    """Log the synthetic set's lineage keys (reporting.lineage.lineage_tracking_params: per-stage
    parameter digests, input fingerprints, upstream recipe knobs, code) as MLflow params of the
    active run, so `face-pipelines compare` shows e.g. a teacher change as a column. Returns them;
    without an active run (or a lineage) nothing is logged, and a logging failure only warns."""
    params = lineage_tracking_params(dataset_card.get("lineage"))
    if not params:
        return params
    import mlflow  # lazily: only evaluate runs log here, and the import takes seconds

    if mlflow.active_run() is None:
        return params
    try:
        mlflow.log_params(params)
    except Exception as exc:  # noqa: BLE001 - provenance must never fail an evaluated run
        log.warning("could not log the dataset lineage to MLflow: %s", exc)
    return params


def roc_outputs(table: dict, curves: dict) -> tuple[dict[str, pd.DataFrame], Figure]:
    """The ROC points as one table per `<recognizer>/<benchmark>` (far, tar, threshold: CSV files
    that dvc.yaml declares as plots) and the figure (one panel per benchmark, log FAR)."""
    points = {
        f"{rec}/{bench}": pd.DataFrame(curve)
        for rec, per_bench in curves.items()
        for bench, curve in per_bench.items()
    }
    any_recognizer = next(iter(table["results"].values()))
    impostor_pairs = {b: any_recognizer[b]["impostor_pairs"] for b in table["benchmarks"]}
    return points, roc_figure(curves, impostor_pairs)

"""Compare MLflow runs: the parameters that differ between runs next to the accuracy they reached.

kedro-mlflow records one run per `kedro run` with flattened parameters (`recognizer.train.method`) and
the evaluate pipeline's metrics (`evaluate.<recognizer>.<benchmark>`, `evaluate.<recognizer>.mean`,
`evaluate.synthetic_to_real_ratio`, `evaluate.tar_at_far_<far>.<recognizer>.<benchmark>`).
`compare_runs` turns them into one table:

    df = compare_runs(filter_string="params.recognizer.train.method = 'topofr'")
    comparison_figure(df).savefig("compare.png")

This is reporting glue around MLflow (not library code used by pipelines), so it may use mlflow; it
imports it lazily, inside the functions, because the import takes seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from face_pipelines.errors import DataError, MissingInputError, ParameterError

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TRACKING_URI",
    "compare_runs",
    "comparison_figure",
    "comparison_markdown",
    "format_comparison",
    "resolve_tracking_uri",
]

DEFAULT_EXPERIMENT = "face_pipelines"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # conf/base/mlflow.yml's default
METRIC_PREFIX = "evaluate."
RECOGNIZERS = ("synthetic", "real")
RATIO = "synthetic_to_real_ratio"
_BASE_COLUMNS = ["run_id", "run_name", "dvc_exp", "start_time"]
DATASET_PREFIX = "dataset."  # evaluate's provenance of the synthetic set (dataset_provenance)
TAR_PREFIX = "tar_at_far_"  # evaluate's `tar_at_far_<far>.<recognizer>.<benchmark>` metrics
DVC_EXP_TAG = "tags.dvc_exp"  # set by hooks.DvcExperimentTagHook under `dvc exp run`


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI to read: the argument, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.

    Raises:
        MissingInputError: a local store (sqlite file or mlruns folder) that does not exist - MLflow
            would silently create an empty one, which hides a wrong working directory or path.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    local = _local_store(uri)
    if local is not None and not local.exists():
        raise MissingInputError(
            f"no MLflow store at {local.resolve()} (tracking URI {uri}): run a pipeline first "
            "(`kedro run`), run from the project root, or pass --tracking-uri / set "
            "MLFLOW_TRACKING_URI"
        )
    return uri


def _local_store(uri: str) -> Path | None:
    """The file or folder a local tracking URI points at; None for servers and databases."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(unquote(path))
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and not re.match(r"^[a-z][a-z0-9+.-]*:", uri):
        return Path(uri)  # a bare path is a file store
    return None


def _metric_column(name: str) -> str:
    return name[len("metrics." + METRIC_PREFIX) :]


def _param_value_text(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def compare_runs(
    experiment: str = DEFAULT_EXPERIMENT,
    filter_string: str | None = None,
    tracking_uri: str | None = None,
    params: Sequence[str] = (),
    include_unevaluated: bool = False,
    tar_at_far: Sequence[str | float] = (),
) -> pd.DataFrame:
    """One row per MLflow run: run name/start, the parameters that vary, accuracy per benchmark.

    Args:
        experiment: MLflow experiment name (kedro-mlflow's is "face_pipelines").
        filter_string: an MLflow search filter, e.g. "params.recognizer.train.method = 'topofr'".
        tracking_uri: where runs are stored; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db.
        params: parameter keys to show even when they do not vary (e.g. "recognizer.train.epochs").
        include_unevaluated: also list runs without evaluate metrics (e.g. `synth` runs).
        tar_at_far: FAR levels (1e-3, "1e-4", 0.01, ...) whose TAR columns to add, as evaluate
            logs them: `tar_at_far_<far>.<recognizer>.<benchmark>` (NaN where the benchmark had too
            few impostor pairs for that FAR, which evaluate does not log).

    Returns:
        DataFrame sorted by start time with columns run_id, run_name, dvc_exp (the `dvc exp run`
        name, when any run has one), start_time, the parameters (flattened keys; those that differ
        between the listed runs plus `params`), the synthetic set's `dataset.*` measures and recipe
        knobs that differ (logged by evaluate), then
        `<recognizer>.<benchmark>` accuracies, `<recognizer>.mean` and `synthetic_to_real_ratio`,
        then the `tar_at_far_<far>.<recognizer>.<benchmark>` columns asked for. `df.attrs` holds
        "param_columns", "dataset_columns", "benchmarks", "tar_columns", "tracking_uri",
        "experiment".

    Raises:
        MissingInputError: the local tracking store does not exist.
        DataError: the experiment does not exist, or no run matches.
        ParameterError: the filter string is not valid MLflow filter syntax.
    """
    uri = resolve_tracking_uri(tracking_uri)
    where = f"experiment {experiment!r} at {uri}" + (
        f" with filter {filter_string!r}" if filter_string else ""
    )
    runs = _search_runs(experiment, filter_string, uri)
    metric_cols = [c for c in runs.columns if c.startswith("metrics." + METRIC_PREFIX)]
    runs = _listed_runs(runs, metric_cols, where, include_unevaluated)
    out = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "run_name": runs.get("tags.mlflow.runName", pd.Series("", index=runs.index)),
            "start_time": runs["start_time"],
        }
    )
    param_cols = _add_param_columns(out, runs, params)
    if DVC_EXP_TAG in runs and runs[DVC_EXP_TAG].notna().any():
        out.insert(2, "dvc_exp", runs[DVC_EXP_TAG])
    dataset_cols = _add_dataset_columns(out, runs, metric_cols)
    benchmarks = _add_accuracy_columns(out, runs, metric_cols)
    tar_cols = _add_tar_columns(out, runs, _far_labels(tar_at_far), benchmarks)
    out.attrs.update(
        param_columns=param_cols,
        dataset_columns=dataset_cols,
        benchmarks=benchmarks,
        tar_columns=tar_cols,
        tracking_uri=uri,
        experiment=experiment,
    )
    return out


def _search_runs(experiment: str, filter_string: str | None, uri: str) -> pd.DataFrame:
    """mlflow.search_runs of `experiment` at `uri` (the process's tracking URI is restored).

    Raises:
        DataError: the experiment does not exist.
        ParameterError: the filter string is not valid MLflow filter syntax.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in mlflow.search_experiments())
            raise DataError(
                f"MLflow experiment {experiment!r} not found at {uri}; experiments there: "
                f"{names or 'none'}"
            )
        try:
            return mlflow.search_runs(
                experiment_ids=[exp.experiment_id],
                filter_string=filter_string or "",
                output_format="pandas",
            )
        except MlflowException as exc:
            raise ParameterError(
                f"filter {filter_string!r} is not a valid MLflow filter "
                f"(e.g. \"params.recognizer.train.method = 'topofr'\"): {exc.message}"
            ) from exc
    finally:
        mlflow.set_tracking_uri(previous)


def _listed_runs(
    runs: pd.DataFrame, metric_cols: list[str], where: str, include_unevaluated: bool
) -> pd.DataFrame:
    """The runs to list, by start time: those with evaluate metrics, or all of them.

    Raises:
        DataError: no run matched, or none has evaluation metrics (and not include_unevaluated).
    """
    if runs.empty:
        raise DataError(f"no MLflow runs in {where}")
    evaluated = runs[metric_cols].notna().any(axis=1) if metric_cols else runs["run_id"].isna()
    if not include_unevaluated:
        if not evaluated.any():
            raise DataError(
                f"{len(runs)} run(s) in {where}, but none has evaluation metrics "
                f"({METRIC_PREFIX}*): run `kedro run --pipelines recognizer,evaluate`, or list them "
                "anyway with include_unevaluated=True (--all)"
            )
        runs = runs[evaluated]
    return runs.sort_values("start_time", kind="stable").reset_index(drop=True)


def _add_param_columns(out: pd.DataFrame, runs: pd.DataFrame, params: Sequence[str]) -> list[str]:
    """Add the parameters that differ between the runs, plus `params`, to `out`; their names."""
    param_cols = []
    for col in sorted(c for c in runs.columns if c.startswith("params.")):
        key = col[len("params.") :]
        values = runs[col].map(_param_value_text)
        if values.nunique() > 1 or key in params:
            out[key] = runs[col]
            param_cols.append(key)
    for key in params:
        if key not in param_cols:
            out[key] = None
            param_cols.append(key)
    return param_cols


def _add_dataset_columns(
    out: pd.DataFrame, runs: pd.DataFrame, metric_cols: list[str]
) -> list[str]:
    """Add the synthetic set's `dataset.*` measures that differ between the runs; their names."""
    dataset_cols = []
    for col in sorted(c for c in metric_cols if _metric_column(c).startswith(DATASET_PREFIX)):
        values = runs[col].astype(float)
        if values.nunique(dropna=False) > 1:
            out[_metric_column(col)] = values
            dataset_cols.append(_metric_column(col))
    return dataset_cols


def _add_accuracy_columns(
    out: pd.DataFrame, runs: pd.DataFrame, metric_cols: list[str]
) -> list[str]:
    """Add `<recognizer>.<benchmark>`, `<recognizer>.mean` and the ratio; the benchmarks."""
    benchmarks = sorted(
        {
            _metric_column(c).split(".", 1)[1]
            for c in metric_cols
            if _metric_column(c).split(".", 1)[0] in RECOGNIZERS
            and "." in _metric_column(c)
            and not _metric_column(c).endswith(".mean")
        }
    )
    for rec in RECOGNIZERS:
        for name in [*benchmarks, "mean"]:
            col = f"metrics.{METRIC_PREFIX}{rec}.{name}"
            out[f"{rec}.{name}"] = runs[col].astype(float) if col in runs else np.nan
    ratio = f"metrics.{METRIC_PREFIX}{RATIO}"
    out[RATIO] = runs[ratio].astype(float) if ratio in runs else np.nan
    return benchmarks


def _add_tar_columns(
    out: pd.DataFrame, runs: pd.DataFrame, far_labels: list[str], benchmarks: list[str]
) -> list[str]:
    """Add `tar_at_far_<far>.<recognizer>.<benchmark>` per FAR label (NaN where not logged)."""
    tar_cols = []
    for label in far_labels:
        for rec in RECOGNIZERS:
            for bench in benchmarks:
                name = f"{TAR_PREFIX}{label}.{rec}.{bench}"
                col = f"metrics.{METRIC_PREFIX}{name}"
                out[name] = runs[col].astype(float) if col in runs else np.nan
                tar_cols.append(name)
    return tar_cols


def _far_labels(fars: Sequence[str | float]) -> list[str]:
    """FAR levels as evaluate names them (metrics.verification.far_label): 0.001 -> "1e-3"."""
    from face_pipelines.metrics.verification import far_label

    labels = []
    for far in fars:
        try:
            value = float(far)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 < value < 1.0:
            raise ParameterError(f"TAR@FAR level {far!r} is not a FAR in (0, 1), e.g. 1e-3")
        if far_label(value) not in labels:
            labels.append(far_label(value))
    return labels


def format_comparison(df: pd.DataFrame) -> str:
    """The comparison as a console table (short run ids, minutes, 3-decimal accuracies)."""
    return _display(df).to_string(index=False, na_rep="-")


def comparison_markdown(df: pd.DataFrame) -> str:
    """The comparison as a markdown table (same cells as the console table), e.g. for docs."""
    from face_pipelines.reporting.dataset_diff import markdown_table

    show = _display(df).fillna("-").astype(str)
    return markdown_table(list(show.columns), show.values.tolist())


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: short run ids, minutes, %g for dataset measures, 3-decimal accuracies."""
    show = df.copy()
    show["run_id"] = show["run_id"].str[:8]
    if "start_time" in show:
        show["start_time"] = pd.to_datetime(show["start_time"]).dt.strftime("%Y-%m-%d %H:%M")
    for col in df.attrs.get("dataset_columns", []):
        show[col] = show[col].map(lambda v: "-" if pd.isna(v) else f"{v:g}")
    for col in show.columns:
        if (
            col not in _BASE_COLUMNS
            and col not in df.attrs.get("param_columns", [])
            and col not in df.attrs.get("dataset_columns", [])
        ):
            show[col] = show[col].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    return show


def comparison_figure(df: pd.DataFrame, title: str | None = None):
    """Grouped bars: per run, the synthetic-trained recognizer's accuracy on each benchmark.

    The real-trained baseline of the same run is a black tick over each bar; the synthetic/real
    ratio is written above each group.
    """
    from face_pipelines.reporting.figures import plt

    benchmarks = df.attrs.get("benchmarks") or sorted(
        {c.split(".", 1)[1] for c in df.columns if c.startswith("synthetic.")} - {"mean"}
    )
    n_runs, n_b = len(df), max(len(benchmarks), 1)
    width = 0.8 / n_b
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 + n_runs * (0.5 + 0.35 * n_b)), 3.8), dpi=100)
    x = np.arange(n_runs)
    for j, bench in enumerate(benchmarks):
        pos = x - 0.4 + width * (j + 0.5)
        syn = df.get(f"synthetic.{bench}", pd.Series(np.nan, index=df.index)).to_numpy(float)
        real = df.get(f"real.{bench}", pd.Series(np.nan, index=df.index)).to_numpy(float)
        ax.bar(pos, np.nan_to_num(syn), width=width * 0.9, label=bench)
        ax.scatter(pos, real, marker="_", s=200, color="black", zorder=3)
    ax.scatter([], [], marker="_", s=200, color="black", label="real-trained")
    if RATIO in df:
        for xi, r in zip(x, df[RATIO], strict=True):
            if pd.notna(r):
                ax.text(xi, 1.02, f"ratio {r:.2f}", ha="center", va="bottom", fontsize=8)
    # A DVC experiment name says what the run was; the run name (the pipelines) is the fallback.
    names = df["run_name"]
    if "dvc_exp" in df:
        names = df["dvc_exp"].where(df["dvc_exp"].notna(), df["run_name"])
    labels = [f"{name or '?'}\n{rid[:8]}" for name, rid in zip(names, df["run_id"], strict=True)]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("verification accuracy")
    ax.set_title(title or "synthetic-trained recognizer per run (ticks: real-trained)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig

"""MLflow while training runs: live metric curves, trained models on the run, `models:/` inputs.

Library code reports through a `log(metrics, step)` callback and never imports MLflow. The Kedro hook
(`hooks.LiveTrackingHooks`) opens a tracking context around every node: the active MLflow run and the
prefix of the node's `MlflowMetricsHistoryDataset` output (the name its curves carry, e.g. `judge` or
`recognizer_synthetic`). Inside a node:

- `log=live_metrics(history)` gives the trainer a callback that records into `history` and writes
  every point to the run from a background thread (`LiveMetrics`), so curves appear while it trains
  and points already written survive a crash or a kill. The callback pickles to its run target, so
  rank 0 of a spawned multi-process run (`devices > 1`) logs live too.
- `metrics_not_logged_live(history)` is what the node returns for kedro-mlflow to log at the end:
  only the points that did not reach MLflow live (none, normally). kedro-mlflow's end-of-node
  logging and the live logger never write the same point twice.
- `log_trained_model(summary)` logs the checkpoint the summary names as an MLflow logged model
  (checkpoint + config.json; sha256 and DVC path as tags) and registers it when `mlflow.register`.

Outside a tracked Kedro run (tests, notebooks, tracking disabled) all three fall back to plain
behaviour: the history alone, the whole history, nothing logged.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

from face_pipelines.errors import MissingInputError
from face_pipelines.reporting.lineage import file_sha256, weights_fingerprint
from face_pipelines.reporting.metrics import MetricHistory

log = logging.getLogger(__name__)

MODELS_URI = "models:/"
_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass(frozen=True)
class RunTarget:
    """Where live metrics go: an MLflow run on a tracking server, under a name prefix."""

    run_id: str
    tracking_uri: str
    prefix: str = ""

    def key(self, name: str) -> str:
        # the same `prefix.name` that kedro-mlflow's MlflowMetricsHistoryDataset writes
        return f"{self.prefix}.{name}" if self.prefix else name


def _numeric_points(metrics: Mapping[str, object], step: int, timestamp: int) -> list[tuple]:
    """(name, value, timestamp, step) of the finite numbers, as MetricHistory keeps them."""
    out = []
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, Number):
            continue
        value = float(value)
        if math.isfinite(value):
            out.append((name, value, timestamp, int(step)))
    return out


_OPEN_LOGGERS: weakref.WeakSet[LiveMetrics] = weakref.WeakSet()


@atexit.register
def _flush_open_loggers() -> None:
    # An uncaught exception (or a normal exit) still writes what is queued before the interpreter
    # goes; only a hard kill loses the points of the last fraction of a second.
    for logger in list(_OPEN_LOGGERS):
        logger.flush(timeout=10.0)


class LiveMetrics:
    """`log(metrics, step)` that writes each point to an MLflow run from a background thread.

    Calls return at once (the trainer never waits on the tracking store); the writer sends whatever
    has queued as one `log_batch` and repeats, so a point reaches the store a few milliseconds to a
    round trip after it was reported. Points whose write failed are kept and handed back by
    `not_logged()` so the end-of-node logging can still record them.

    Pickling keeps only the run target: the copy a spawned worker receives logs live from that
    process (rank 0) and records no history; the parent's history stays empty for those points.
    """

    logs_from_workers = True  # train_recognizer hands it to spawned workers (devices > 1)

    def __init__(self, target: RunTarget, history: MetricHistory | None = None):
        self.target = target
        self.history = history
        self._cond = threading.Condition()
        self._queue: list[tuple] = []
        self._in_flight: list[tuple] = []
        self._failed: list[tuple] = []
        self._thread: threading.Thread | None = None
        self._warned = False

    def __getstate__(self) -> dict:
        return {"target": self.target}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["target"])

    def __call__(self, metrics: Mapping[str, object], step: int) -> None:
        if self.history is not None:
            self.history(metrics, step)
        if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone writes to the run
            return
        points = _numeric_points(metrics, step, int(time.time() * 1000))
        if not points:
            return
        with self._cond:
            self._queue.extend(points)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_loop, name="mlflow-live-metrics", daemon=True
                )
                self._thread.start()
                _OPEN_LOGGERS.add(self)
            self._cond.notify_all()

    def _write_loop(self) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.target.tracking_uri)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                self._in_flight = batch
            failed: list[tuple] = []
            try:
                client.log_batch(
                    self.target.run_id,
                    metrics=[Metric(self.target.key(k), v, t, s) for k, v, t, s in batch],
                )
            except Exception as exc:  # the store is down or locked: keep the points, say so once
                failed = batch
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "live MLflow metrics for run %s could not be written (%s); they are kept "
                        "and logged when the node ends",
                        self.target.run_id,
                        exc,
                    )
            with self._cond:
                self._failed.extend(failed)
                self._in_flight = []
                self._cond.notify_all()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every point reported so far was written (or failed); False on timeout."""
        with self._cond:
            if self._thread is None:
                return True
            return self._cond.wait_for(lambda: not self._queue and not self._in_flight, timeout)

    def not_logged(self, timeout: float = 60.0) -> dict[str, list[dict]]:
        """Points that did not reach MLflow live, in MetricHistory.as_mlflow() form (unprefixed).

        A write still pending after `timeout` counts as not logged: a duplicated point is better
        than a lost one.
        """
        self.flush(timeout)
        with self._cond:
            points = self._failed + self._in_flight + self._queue
        out: dict[str, list[dict]] = {}
        for name, value, _, step in sorted(points, key=lambda p: (p[2], p[3])):
            out.setdefault(name, []).append({"step": step, "value": value})
        return out


# -------------------------------------------------------------------------------- node context
@dataclass
class NodeTracking:
    """What the hook knows about the running node: its run target (None when not tracked)."""

    node: str
    target: RunTarget | None
    register: bool = False
    loggers: list[LiveMetrics] = field(default_factory=list)


_CURRENT: contextvars.ContextVar[NodeTracking | None] = contextvars.ContextVar(
    "face_pipelines_node_tracking", default=None
)


def begin_node(node: str, metrics_prefix: str | None, register: bool = False) -> NodeTracking:
    """Open the node's tracking context on the active MLflow run (called by the Kedro hook)."""
    import mlflow

    run = mlflow.active_run()
    target = None
    if run is not None:
        target = RunTarget(run.info.run_id, mlflow.get_tracking_uri(), metrics_prefix or "")
    ctx = NodeTracking(node, target, register)
    _CURRENT.set(ctx)
    return ctx


def end_node() -> None:
    """Write what the node's live loggers still hold and close its context (success or error)."""
    ctx = _CURRENT.get()
    if ctx is None:
        return
    for logger in ctx.loggers:
        if not logger.flush():
            log.warning("live MLflow metrics of node %s were still being written", ctx.node)
    _CURRENT.set(None)


def live_metrics(history: MetricHistory) -> Callable[[Mapping[str, object], int], None]:
    """The `log(metrics, step)` a training node passes to its trainer: records into `history` and,
    inside a tracked node, writes every point to the MLflow run while training runs."""
    ctx = _CURRENT.get()
    if ctx is None or ctx.target is None:
        return history
    logger = LiveMetrics(ctx.target, history)
    ctx.loggers.append(logger)
    return logger


def metrics_not_logged_live(history: MetricHistory) -> dict[str, list[dict]]:
    """What the node returns to its MlflowMetricsHistoryDataset: `history` minus the points the
    live logger already wrote (all of it when nothing logged live)."""
    ctx = _CURRENT.get()
    for logger in ctx.loggers if ctx is not None else ():
        if logger.history is history:
            return logger.not_logged()
    return history.as_mlflow()


# -------------------------------------------------------------------------------- models
def _project_relative(path: Path) -> str:
    """The path as DVC knows it: relative to the project (the working directory of `kedro run`)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _flat_params(prefix: str, obj: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif obj is not None:
        out[prefix] = str(obj)[:500]
    return out


def log_model_checkpoint(
    checkpoint: str | os.PathLike,
    name: str,
    run_id: str,
    tracking_uri: str | None = None,
    register: bool = False,
) -> dict[str, str]:
    """Log a project checkpoint to `run_id` as an MLflow logged model named `name`.

    The model's artifacts are the checkpoint file itself (state dict, arch, config, meta - what the
    project's loaders read) and `config.json` (arch, config, meta, sha256, DVC path); the logged
    model carries the config as params, and the model, the model version (if registered) and the
    run carry the checkpoint's sha256, DVC path and weights fingerprint (the one dataset-card
    lineage records, reporting.lineage) as tags. Returns the URIs and tags.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from face_pipelines.io.checkpoint import load_checkpoint

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    sha = file_sha256(path)
    dvc_path = _project_relative(path)
    info = {
        "arch": ckpt.get("arch"),
        "config": ckpt.get("config"),
        "meta": ckpt.get("meta"),
        "checkpoint_file": path.name,
        "sha256": sha,
        "dvc_path": dvc_path,
    }
    tags = {
        "sha256": sha,
        "dvc_path": dvc_path,
        "arch": str(ckpt.get("arch")),
        # what a dataset card's lineage records for the checkpoints it was made with
        "weights_fingerprint": weights_fingerprint(path),
    }
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    params = _flat_params("", {"arch": ckpt.get("arch"), "config": ckpt.get("config")}, {})
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, tags=tags, params=params
    )
    with tempfile.TemporaryDirectory(prefix="face_pipelines_model_") as tmp:
        staged = Path(tmp) / path.name
        try:
            os.link(path, staged)  # no copy of a large checkpoint when the file system allows
        except OSError:
            shutil.copy2(path, staged)
        (Path(tmp) / "config.json").write_text(json.dumps(info, indent=2, default=str))
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    out = {"model_uri": f"models:/{model.model_id}", **tags}
    if register:
        with contextlib.suppress(MlflowException):  # already registered: a new version below
            client.create_registered_model(name)
        # The artifact location, not models:/<id>: MLflow resolves the latter with the global
        # tracking URI, which need not be this client's.
        version = client.create_model_version(
            name, source=model.artifact_location, run_id=run_id, tags=tags, model_id=model.model_id
        )
        out["registered"] = f"models:/{name}/{version.version}"
    for key, value in out.items():
        client.set_tag(run_id, f"model.{name}.{key}", value)
    return out


def log_trained_model(summary: dict, name: str | None = None) -> dict:
    """Log the checkpoint `summary["checkpoint"]` to the node's MLflow run; returns `summary`.

    Named after the node's metrics prefix (e.g. `vec2face`, `recognizer_synthetic`) unless `name`
    is given. Outside a tracked node it does nothing; a failure to log is a warning, never a failed
    training node (the checkpoint is on disk either way).
    """
    ctx = _CURRENT.get()
    if ctx is None or ctx.target is None or not summary.get("checkpoint"):
        return summary
    name = name or ctx.target.prefix or ctx.node
    try:
        out = log_model_checkpoint(
            summary["checkpoint"], name, ctx.target.run_id, ctx.target.tracking_uri, ctx.register
        )
        log.info("logged %s to MLflow as %s", summary["checkpoint"], out.get("registered", name))
    except Exception as exc:
        log.warning("could not log %s to MLflow: %s", summary["checkpoint"], exc)
    return summary


# local checkpoint path -> the `models:/` URI resolve_model_uri fetched it for (this process)
_RESOLVED_FROM: dict[str, str] = {}


def resolve_model_uri(value: str, where: str = "checkpoint") -> str:
    """A local checkpoint path for `models:/name/version` (or `models:/name@alias`, `models:/<id>`);
    any other value unchanged. Downloads the model's artifacts through MLflow (a local store hands
    back its own folder) and returns the checkpoint file in them."""
    if not isinstance(value, str) or not value.startswith(MODELS_URI):
        return value
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=value))
    except Exception as exc:
        raise MissingInputError(f"{where}={value!r}: MLflow could not fetch it ({exc})") from exc
    if local.is_file():
        found = [local]
    else:
        found = sorted(p for p in local.iterdir() if p.suffix in (".pt", ".pth"))
    if len(found) != 1:
        raise MissingInputError(
            f"{where}={value!r}: expected one .pt/.pth checkpoint in the model's artifacts at "
            f"{local}, found {[p.name for p in found]}"
        )
    _RESOLVED_FROM[str(found[0])] = value
    return str(found[0])


def model_uri_of(path: str | os.PathLike) -> str | None:
    """The `models:/` URI that `resolve_model_uri` turned into the local file `path` in this
    process (the Kedro hook resolves parameters before a node sees them), else None: how a node
    labels its output with the model the user named rather than MLflow's artifact folder."""
    return _RESOLVED_FROM.get(str(path))


def resolve_model_uris(value: Any, where: str) -> Any:
    """`value` with every `models:/...` string (nested in dicts and lists) resolved to a path."""
    if isinstance(value, str):
        return resolve_model_uri(value, where)
    if isinstance(value, Mapping):
        return {k: resolve_model_uris(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_model_uris(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def contains_model_uri(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(MODELS_URI)
    if isinstance(value, Mapping):
        return any(contains_model_uri(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_model_uri(v) for v in value)
    return False

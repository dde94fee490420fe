"""MLflow while training runs (face_pipelines.tracking, hooks.LiveTrackingHooks): live curves that
survive a killed or crashed trainer, no point logged twice, multi-process runs, trained models on the
run and in the registry, and `models:/` parameters resolved to local checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from face_pipelines.io.checkpoint import load_checkpoint, save_checkpoint
from face_pipelines.reporting.lineage import file_sha256, weights_fingerprint
from face_pipelines.reporting.metrics import MetricHistory
from face_pipelines.tracking import (
    LiveMetrics,
    RunTarget,
    live_metrics,
    log_model_checkpoint,
    metrics_not_logged_live,
    resolve_model_uri,
)

from .training.helpers import make_packed

# The real recognizer trainer, tiny: 32 px images, 4 steps per epoch, a per-step log every step.
TRAINER = textwrap.dedent(
    """
    import sys, time
    from face_pipelines.reporting.metrics import MetricHistory
    from face_pipelines.tracking import LiveMetrics, RunTarget
    from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

    uri, run_id, packed, out, mode = sys.argv[1:6]
    live = LiveMetrics(RunTarget(run_id, uri, "recognizer_synthetic"), MetricHistory())

    def log(metrics, step):
        live(metrics, step)
        if mode == "raise" and step == 3 and "epoch/loss" in metrics:
            raise RuntimeError("simulated crash after epoch 3")
        if mode == "kill":
            time.sleep(0.3)  # slow enough for the test to see curves and kill it mid-run

    cfg = RecognizerConfig(
        arch="small", embedding_dim=8, epochs=200, batch_size=16, lr=0.05, num_workers=0,
        log_every=1, backbone_kwargs={"widths": [4, 4, 8, 8], "stem_width": 4},
    )
    train_recognizer(packed, out, cfg, "cpu", False, log)
    """
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking store with the project's experiment (as kedro-mlflow creates it)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("face_pipelines", artifact_location=(root / "mlruns").as_uri())
    return uri, root / "mlflow.db", client, exp


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("live") / "packed", n=64, size=32, classes=4)


def _points(db, run_id: str, key: str) -> list[tuple[int, float, int]]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "select step, value, timestamp from metrics where run_uuid = ? and key = ? "
            "order by step, timestamp",
            (run_id, key),
        ).fetchall()


def _train_in_subprocess(store, packed, out, mode: str) -> tuple[subprocess.Popen, str]:
    uri, _, client, exp = store
    run_id = client.create_run(exp, run_name=f"killed-{mode}").info.run_id
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, uri, run_id, str(packed), str(out), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, run_id


def test_a_killed_training_run_keeps_the_curves_it_logged_while_training(store, packed, tmp_path):
    _, db, _, _ = store
    proc, run_id = _train_in_subprocess(store, packed, tmp_path / "run", "kill")
    try:
        deadline = time.monotonic() + 240
        while len(_points(db, run_id, "recognizer_synthetic.epoch/loss")) < 2:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no live epoch curve after 240 s"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, nothing flushed at exit
    epochs = _points(db, run_id, "recognizer_synthetic.epoch/loss")
    steps = _points(db, run_id, "recognizer_synthetic.loss")
    assert [s for s, _, _ in epochs][:2] == [1, 2] and len(epochs) < 200
    # Every optimizer step of the logged epochs is there, each once, with its step.
    assert [s for s, _, _ in steps][: 4 * len(epochs)] == list(range(1, 4 * len(epochs) + 1))
    assert len({s for s, _, _ in steps}) == len(steps)
    assert _points(db, run_id, "recognizer_synthetic.lr")
    # Written while training ran: the first point reached the store well before the last.
    assert steps[-1][2] - steps[0][2] > 1000


def test_a_crashed_training_run_flushes_what_it_reported(store, packed, tmp_path):
    _, db, _, _ = store
    proc, run_id = _train_in_subprocess(store, packed, tmp_path / "run", "raise")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "simulated crash after epoch 3" in err
    epochs = _points(db, run_id, "recognizer_synthetic.epoch/loss")
    assert [s for s, _, _ in epochs] == [1, 2, 3]
    assert [s for s, _, _ in _points(db, run_id, "recognizer_synthetic.loss")] == list(range(1, 13))


def test_live_points_are_not_logged_again_at_the_end_of_the_node(store):
    from face_pipelines import tracking

    uri, db, client, exp = store
    run_id = client.create_run(exp).info.run_id
    history = MetricHistory()
    token = tracking._CURRENT.set(
        tracking.NodeTracking("train_judge", RunTarget(run_id, uri, "judge"))
    )
    try:
        log = live_metrics(history)
        assert isinstance(log, LiveMetrics) and log.history is history
        for step in range(1, 6):
            log({"loss": 1.0 / step, "ok": True, "nan": float("nan")}, step)
        log({"epoch/loss": 0.5}, 1)
        remainder = metrics_not_logged_live(history)
    finally:
        tracking._CURRENT.reset(token)
    assert remainder == {}  # kedro-mlflow's MlflowMetricsHistoryDataset gets nothing to repeat
    assert history.as_mlflow()["loss"][-1] == {"step": 5, "value": 0.2}
    assert [s for s, _, _ in _points(db, run_id, "judge.loss")] == [1, 2, 3, 4, 5]
    assert [s for s, _, _ in _points(db, run_id, "judge.epoch/loss")] == [1]
    assert not _points(db, run_id, "judge.ok") and not _points(db, run_id, "judge.nan")


def test_points_the_store_refused_are_handed_to_the_end_of_node_logging(store):
    uri = store[0]
    history = MetricHistory()
    log = LiveMetrics(RunTarget("no-such-run", uri, "vec2face"), history)
    log({"loss": 2.0}, 1)
    log({"loss": 1.0}, 2)
    assert log.not_logged() == {"loss": [{"step": 1, "value": 2.0}, {"step": 2, "value": 1.0}]}


def test_outside_a_tracked_node_the_history_is_the_callback():
    history = MetricHistory()
    assert live_metrics(history) is history
    history({"loss": 1.0}, 1)
    assert metrics_not_logged_live(history) == {"loss": [{"step": 1, "value": 1.0}]}


def test_two_process_training_logs_live_from_rank_0(store, packed, tmp_path):
    from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

    uri, db, client, exp = store
    run_id = client.create_run(exp).info.run_id
    history = MetricHistory()
    log = LiveMetrics(RunTarget(run_id, uri, "recognizer_real"), history)
    copy = pickle.loads(pickle.dumps(log))  # what a spawned worker receives: the target only
    assert copy.target == log.target and copy.history is None
    cfg = RecognizerConfig(
        arch="small",
        embedding_dim=8,
        epochs=2,
        batch_size=16,
        lr=0.05,
        num_workers=0,
        log_every=1,
        devices=2,
        backbone_kwargs={"widths": [4, 4, 8, 8], "stem_width": 4},
    )
    train_recognizer(packed, tmp_path / "ddp", cfg, "cpu", False, log)
    # 64 images, 2 ranks x 16 per batch: 2 optimizer steps per epoch; rank 0 alone logs.
    assert [s for s, _, _ in _points(db, run_id, "recognizer_real.loss")] == [1, 2, 3, 4]
    assert [s for s, _, _ in _points(db, run_id, "recognizer_real.epoch/loss")] == [1, 2]
    assert metrics_not_logged_live(history) == {}  # the points went from the worker, not here


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project root: DVC paths are relative to it
    path = tmp_path / "data" / "06_models" / "recognizers" / "synthetic" / "model.pt"
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    return save_checkpoint(path, "small", {"embedding_dim": 8}, state, meta={"epochs": 2})


def test_a_trained_model_is_logged_tagged_registered_and_resolvable(store, checkpoint):
    import mlflow

    uri, _, client, exp = store
    run_id = client.create_run(exp).info.run_id
    out = log_model_checkpoint(checkpoint, "recognizer_synthetic", run_id, uri, register=True)
    sha = file_sha256(checkpoint)
    assert (
        out["sha256"] == sha and out["dvc_path"] == "data/06_models/recognizers/synthetic/model.pt"
    )
    tags = client.get_run(run_id).data.tags
    assert tags["model.recognizer_synthetic.sha256"] == sha
    assert tags["model.recognizer_synthetic.dvc_path"] == out["dvc_path"]
    assert tags["model.recognizer_synthetic.weights_fingerprint"] == weights_fingerprint(checkpoint)
    assert tags["model.recognizer_synthetic.registered"] == "models:/recognizer_synthetic/1"
    model = client.get_logged_model(out["model_uri"].removeprefix("models:/"))
    assert model.source_run_id == run_id and model.tags["sha256"] == sha
    assert model.params["arch"] == "small" and model.params["config.embedding_dim"] == "8"
    version = client.get_model_version("recognizer_synthetic", "1")
    assert version.tags["sha256"] == sha and version.run_id == run_id

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        for uri_form in ("models:/recognizer_synthetic/1", out["model_uri"]):
            local = resolve_model_uri(uri_form)
            assert file_sha256(local) == sha
            assert torch.equal(
                load_checkpoint(local)["state_dict"]["w"], torch.arange(6.0).view(2, 3)
            )
        config = json.loads((Path(local).parent / "config.json").read_text())
        assert config["arch"] == "small" and config["sha256"] == sha
        # A second version of the same name, not a clash.
        again = log_model_checkpoint(checkpoint, "recognizer_synthetic", run_id, uri, register=True)
        assert again["registered"] == "models:/recognizer_synthetic/2"
        assert resolve_model_uri("data/plain/path.pt") == "data/plain/path.pt"
        with pytest.raises(FileNotFoundError, match="models:/nothing/1"):
            resolve_model_uri("models:/nothing/1", "parameter render.x")
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_hook_names_live_metrics_after_the_dataset_and_resolves_models_uris(store, checkpoint):
    import mlflow
    from kedro.io import DataCatalog
    from kedro.pipeline import node
    from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

    from face_pipelines import tracking
    from face_pipelines.hooks import LiveTrackingHooks

    uri, _, client, exp = store
    run_id = client.create_run(exp).info.run_id
    log_model_checkpoint(checkpoint, "vec2face", run_id, uri, register=True)
    catalog = DataCatalog({"judge_mlflow_metrics": MlflowMetricsHistoryDataset(prefix="judge")})
    train = node(
        lambda p: ({}, {}), "params:teacher", ["judge_summary", "judge_mlflow_metrics"], name="tj"
    )
    hooks = LiveTrackingHooks()
    hooks._register = True
    params = {"source": "checkpoint", "checkpoint": "models:/vec2face/1", "nested": [{"c": 1}]}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            new_inputs = hooks.before_node_run(train, catalog, {"params:teacher": params})
            ctx = tracking._CURRENT.get()
            assert ctx.target == RunTarget(run_id, uri, "judge") and ctx.register
            assert file_sha256(new_inputs["params:teacher"]["checkpoint"]) == file_sha256(
                checkpoint
            )
            assert new_inputs["params:teacher"]["nested"] == [{"c": 1}]
            summary = {"checkpoint": str(checkpoint), "source": "train"}
            assert tracking.log_trained_model(summary) is summary
            hooks.after_node_run()
            assert tracking._CURRENT.get() is None
            # No models:/ in the inputs: nothing to replace.
            assert hooks.before_node_run(train, catalog, {"params:teacher": {"a": 1}}) is None
            hooks.on_node_error()
    finally:
        mlflow.set_tracking_uri(previous)
    tags = client.get_run(run_id).data.tags
    assert tags["model.judge.registered"] == "models:/judge/1"

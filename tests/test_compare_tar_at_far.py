"""`face-pipelines compare --tar-at-far`: TAR columns read from the metrics evaluate logs."""

from __future__ import annotations

import math

import pytest

from face_pipelines.commands import main
from face_pipelines.errors import ParameterError
from face_pipelines.metrics.benchmarks import table_metrics
from face_pipelines.reporting.metrics import flat_metrics
from face_pipelines.reporting.run_compare import compare_runs


def _result(acc: float, tar: dict[str, float | None]) -> dict:
    levels = {far: {"tar": v, "reliable": v is not None} for far, v in tar.items()}
    return {"accuracy": acc, "accuracy_std": 0.01, "tar_at_far": levels}


def _table(offset: float) -> dict:
    """A verification table as evaluate builds it: 1e-4 unreliable on fw_lfw (too few pairs)."""
    tars = {"1e-4": None, "1e-3": 0.5 + offset, "1e-2": 0.7 + offset, "1e-1": 0.9}
    return {
        "benchmarks": ["fw_lfw"],
        "results": {
            rec: {"fw_lfw": _result(0.8 + offset, tars), "mean_accuracy": 0.8 + offset}
            for rec in ("synthetic", "real")
        },
        "synthetic_to_real_ratio": 1.0,
    }


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("face_pipelines", (root / "mlruns").as_uri())
        for i, method in enumerate(("arcface", "topofr")):
            with mlflow.start_run(experiment_id=exp, run_name="recognizer,evaluate"):
                mlflow.log_param("recognizer.train.method", method)
                # the names kedro-mlflow gives evaluate's metrics (prefix "evaluate")
                metrics = flat_metrics(table_metrics(_table(0.1 * i)), prefix="evaluate")
                mlflow.log_metrics({k: v[0]["value"] for k, v in metrics.items()})
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


def test_compare_adds_tar_at_far_columns_per_recognizer_and_benchmark(tracking_uri):
    df = compare_runs(tracking_uri=tracking_uri, tar_at_far=["1e-3", 0.01, "1e-4", 0.001])
    assert df.attrs["tar_columns"] == [
        f"tar_at_far_{far}.{rec}.fw_lfw"
        for far in ("1e-3", "1e-2", "1e-4")
        for rec in ("synthetic", "real")
    ]
    assert df["tar_at_far_1e-3.synthetic.fw_lfw"].tolist() == pytest.approx([0.5, 0.6])
    assert df["tar_at_far_1e-2.real.fw_lfw"].tolist() == pytest.approx([0.7, 0.8])
    # evaluate logs no TAR where the benchmark has too few impostor pairs for the FAR
    assert all(math.isnan(v) for v in df["tar_at_far_1e-4.synthetic.fw_lfw"])
    # without the option the table is as before
    plain = compare_runs(tracking_uri=tracking_uri)
    assert not any(c.startswith("tar_at_far_") for c in plain.columns)
    assert plain.attrs["benchmarks"] == ["fw_lfw"]


def test_compare_command_shows_tar_at_far(tracking_uri, capsys):
    assert main(["compare", "--tracking-uri", tracking_uri, "--tar-at-far", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "tar_at_far_1e-3.synthetic.fw_lfw" in out and "0.600" in out
    with pytest.raises(ParameterError, match="not a FAR"):
        compare_runs(tracking_uri=tracking_uri, tar_at_far=["2"])

"""`evaluate.checkpoint`: a given recognizer, by path or as an MLflow model (`models:/name/version`),
verified on the same benchmarks as the trained ones, as row `checkpoint` labelled with its source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import MissingInputError
from face_pipelines.hooks import LiveTrackingHooks
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.verification_bin import write_verification_bin
from face_pipelines.models.registry import build_backbone
from face_pipelines.pipelines.evaluate.nodes import evaluate_recognizers
from face_pipelines.pipelines.evaluate.pipeline import create_pipeline
from face_pipelines.reporting.lineage import file_sha256
from face_pipelines.tracking import log_model_checkpoint

SMALL = {"widths": [4, 4, 8, 8], "stem_width": 4, "input_size": 32, "embedding_dim": 8}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two 20-pair benchmarks and two differently initialised tiny recognizers (synthetic, real):
    the node run with a given `evaluate.checkpoint`, and the synthetic one's checkpoint."""
    tmp_path = tmp_path_factory.mktemp("evaluate_checkpoint")
    rng = np.random.default_rng(0)
    benchmarks = {}
    for name in ("b1", "b2"):
        path = tmp_path / f"{name}.bin"
        images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
        write_verification_bin(path, images, np.arange(20) % 2 == 0)
        benchmarks[name] = str(path)
    summaries = {}
    for seed, rec in enumerate(("synthetic", "real")):
        torch.manual_seed(seed)
        weights = build_backbone("small", **SMALL).state_dict()
        ckpt = save_checkpoint(tmp_path / rec / "model.pt", "small", SMALL, weights)
        summaries[rec] = {"checkpoint": str(ckpt), "training_set": {"images": 10}}

    def run(checkpoint):
        evaluate = {"faceworld_benchmarks": False, "benchmarks": benchmarks, "batch_size": 16}
        return evaluate_recognizers(
            summaries["synthetic"],
            summaries["real"],
            {"enabled": False},
            {},
            evaluate | {"checkpoint": checkpoint},
            {"device": "cpu", "progress": False},
        )

    return run, summaries["synthetic"]["checkpoint"]


@pytest.fixture(scope="module")
def registered(inputs, tmp_path_factory):
    """The synthetic recognizer registered as `models:/given/1` in a temporary sqlite store that
    is the tracking URI while the test runs."""
    import mlflow
    from mlflow.tracking import MlflowClient

    _, checkpoint = inputs
    tmp_path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("face_pipelines", (tmp_path / "mlruns").as_uri())
    run_id = client.create_run(exp).info.run_id
    out = log_model_checkpoint(checkpoint, "given", run_id, uri, register=True)
    assert out["registered"] == "models:/given/1"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield out
    mlflow.set_tracking_uri(previous)


def test_a_checkpoint_by_path_is_verified_as_its_own_labelled_row(inputs):
    run, checkpoint = inputs
    table, markdown, metrics, roc_points, _ = run(checkpoint)
    res = table["results"]
    assert set(res) == {"checkpoint", "synthetic", "real"}
    # The same weights as the synthetic recognizer: the same protocol gives the same numbers.
    assert res["checkpoint"] == res["synthetic"] != res["real"]
    assert table["checkpoint"] == {
        "parameter": "evaluate.checkpoint",
        "source": checkpoint,
        "path": checkpoint,
        "sha256": file_sha256(checkpoint),
    }
    assert table["training_images"] == {"synthetic": 10, "real": 10}
    assert metrics["checkpoint.b1"][0]["value"] == res["synthetic"]["b1"]["accuracy"]
    assert {"checkpoint/b1", "checkpoint/b2"} <= set(roc_points)
    assert "| checkpoint | " in markdown
    assert f"row `checkpoint`: evaluate.checkpoint={checkpoint} " in markdown


def test_without_a_checkpoint_the_table_is_the_trained_recognizers_only(inputs):
    run, _ = inputs
    table, markdown, metrics, _, _ = run(None)
    assert set(table["results"]) == {"synthetic", "real"} and "checkpoint" not in table
    assert "checkpoint" not in markdown and not any(k.startswith("checkpoint.") for k in metrics)


def test_a_models_uri_gives_the_numbers_of_its_file_and_is_named_in_the_table(inputs, registered):
    run, checkpoint = inputs
    by_path, *_ = run(checkpoint)
    by_uri, markdown, *_ = run("models:/given/1")
    assert by_uri["results"] == by_path["results"]
    label = by_uri["checkpoint"]
    assert label["source"] == "models:/given/1" and label["path"] != checkpoint
    assert label["sha256"] == file_sha256(checkpoint)
    assert "evaluate.checkpoint=models:/given/1 (" in markdown


def test_under_kedro_the_hook_resolves_the_uri_and_the_table_still_names_it(inputs, registered):
    """In a `kedro run` the hook hands the node a local file; the label is still the URI."""
    import mlflow
    from kedro.io import DataCatalog

    run, checkpoint = inputs
    (node,) = create_pipeline().nodes
    params = {"faceworld_benchmarks": False, "checkpoint": "models:/given/1"}
    with mlflow.start_run():
        hooks = LiveTrackingHooks()
        resolved = hooks.before_node_run(node, DataCatalog(), {"params:evaluate": params})
        hooks.after_node_run()
    local = resolved["params:evaluate"]["checkpoint"]
    assert local != "models:/given/1" and file_sha256(local) == file_sha256(checkpoint)
    table, *_ = run(local)
    assert table["checkpoint"]["source"] == "models:/given/1"
    assert table["checkpoint"]["path"] == local


def test_a_missing_path_is_an_error_naming_the_key(inputs):
    run, _ = inputs
    with pytest.raises(
        MissingInputError, match=r"evaluate\.checkpoint='no/such\.pt': .* not exist"
    ):
        run("no/such.pt")


def test_a_model_mlflow_cannot_fetch_is_an_error_naming_the_key(inputs, registered):
    run, _ = inputs
    with pytest.raises(
        MissingInputError, match=r"evaluate\.checkpoint='models:/nothing/1': MLflow"
    ):
        run("models:/nothing/1")

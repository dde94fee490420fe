"""The evaluate node's TAR@FAR, ROC points and ROC figure, saved through the project's catalog
entries to the paths dvc.yaml declares as the evaluate stage's plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog

from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.verification_bin import write_verification_bin
from face_pipelines.models.registry import build_backbone
from face_pipelines.pipelines.evaluate.nodes import evaluate_recognizers
from face_pipelines.pipelines.evaluate.pipeline import create_pipeline
from tests.conftest import REPO

SMALL = {"widths": [4, 4, 8, 8], "stem_width": 4, "input_size": 32, "embedding_dim": 8}


@pytest.fixture
def evaluated(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    benchmarks = {}
    for name in ("b1", "b2"):  # 20 pairs each: 10 impostor pairs
        path = tmp_path / f"{name}.bin"
        images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
        write_verification_bin(path, images, np.arange(20) % 2 == 0)
        benchmarks[name] = str(path)
    summaries = {}
    for rec in ("synthetic", "real"):
        ckpt = save_checkpoint(
            tmp_path / f"{rec}.pt", "small", SMALL, build_backbone("small", **SMALL).state_dict()
        )
        summaries[rec] = {"checkpoint": str(ckpt), "training_set": {"images": 10}}
    return evaluate_recognizers(
        summaries["synthetic"],
        summaries["real"],
        {"enabled": False},
        {},
        {"faceworld_benchmarks": False, "benchmarks": benchmarks, "batch_size": 16},
        {"device": "cpu", "progress": False},
    )


def test_outputs_match_the_pipeline():
    (node,) = create_pipeline().nodes
    assert node.outputs[-2:] == ["verification_roc_points", "verification_roc_plot"]


def test_tar_at_far_with_too_few_impostor_pairs_is_flagged(evaluated):
    table, markdown, metrics, _, _ = evaluated
    assert "roc" not in table  # the points are their own output, not metrics
    res = table["results"]["synthetic"]["b1"]
    assert (res["genuine_pairs"], res["impostor_pairs"]) == (10, 10)
    assert list(res["tar_at_far"]) == ["1e-4", "1e-3", "1e-2", "1e-1"]
    # 10 impostor pairs: only FAR 1e-1 allows one false accept.
    assert [v["reliable"] for v in res["tar_at_far"].values()] == [False, False, False, True]
    assert res["tar_at_far"]["1e-3"]["tar"] is None
    assert 0.0 <= res["tar_at_far"]["1e-1"]["tar"] <= 1.0
    assert "tar_at_far_1e-1.synthetic.b1" in metrics
    assert not any(k.startswith("tar_at_far_1e-3") for k in metrics)
    assert "| synthetic | b1 | n/a | n/a | n/a |" in markdown


def test_roc_points_and_figure_save_through_the_catalog_where_dvc_plots_them(
    evaluated, tmp_path, monkeypatch
):
    _, _, _, points, figure = evaluated
    assert set(points) == {"synthetic/b1", "synthetic/b2", "real/b1", "real/b2"}
    catalog_conf = yaml.safe_load((REPO / "conf/base/catalog.yml").read_text())
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    plots = {next(iter(p)) if isinstance(p, dict) else p: p for p in stage["plots"]}
    roc_conf = catalog_conf["verification_roc_points"]
    plot_conf = catalog_conf["verification_roc_plot"]
    assert plot_conf["type"] == "kedro_mlflow.io.artifacts.MlflowArtifactDataset"
    roc_plot = plots[roc_conf["path"]][roc_conf["path"]]
    assert plot_conf["dataset"]["filepath"] in plots

    monkeypatch.chdir(tmp_path)  # the catalog's paths are relative to the project
    # The figure's inner dataset: the MLflow wrapper would log to a run, which a test has not.
    catalog = DataCatalog.from_config({"roc": roc_conf, "plot": plot_conf["dataset"]})
    catalog.save("roc", points)
    catalog.save("plot", figure)

    csv = pd.read_csv(tmp_path / roc_conf["path"] / "real" / "b2.csv")
    assert {roc_plot["x"], roc_plot["y"], "threshold"} == set(csv.columns)
    assert csv.iloc[0][["far", "tar"]].tolist() == [0.0, 0.0]
    assert csv.iloc[-1][["far", "tar"]].tolist() == [1.0, 1.0]
    assert (csv.diff().dropna()[["far", "tar"]] >= 0).all().all()
    png = tmp_path / plot_conf["dataset"]["filepath"]
    assert png.read_bytes()[:4] == b"\x89PNG"

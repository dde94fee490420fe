"""`face-pipelines compare` / `compare_runs` on the MLflow runs of the tiny project."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from face_pipelines.commands import main
from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.reporting.run_compare import compare_runs

from .conftest import TOPOFR_EXP

TOPOFR = "params.recognizer.train.method = 'topofr'"


def test_compare_lists_evaluated_runs_with_varying_params_plot_csv_and_markdown(
    tiny_project, tmp_path, capsys
):
    plot, csv = tmp_path / "out" / "compare.png", tmp_path / "out" / "compare.csv"
    md = tmp_path / "out" / "compare.md"
    args = ["compare", "--tracking-uri", tiny_project.tracking_uri, "--plot", str(plot)]
    assert main([*args, "--csv", str(csv), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 run(s) in experiment 'face_pipelines'")
    assert "arcface" in out and "topofr" in out and "synthetic.fw_lfw" in out

    df = pd.read_csv(csv)
    assert len(df) == 2
    # Only the recognizer method differs between the two evaluate runs.
    assert list(df["recognizer.train.method"]) == ["arcface", "topofr"]
    assert not any(c.startswith("subset.") for c in df.columns)
    # The DVC experiment name links the run to `dvc exp show`; runs outside an experiment have none.
    assert df["dvc_exp"].isna().iloc[0] and df["dvc_exp"].iloc[1] == TOPOFR_EXP
    # Both runs trained on the same synthetic set: no dataset.* column varies, so none is shown.
    assert not any(c.startswith("dataset.") for c in df.columns)
    # The latest run (TopoFR) wrote the verification table that is on disk now.
    table = json.loads((tiny_project.root / "data/08_reporting/verification.json").read_text())
    last = df.iloc[-1]
    for rec, res in table["results"].items():
        for bench in table["benchmarks"]:
            assert last[f"{rec}.{bench}"] == pytest.approx(res[bench]["accuracy"])
        assert last[f"{rec}.mean"] == pytest.approx(res["mean_accuracy"])
    assert last["synthetic_to_real_ratio"] == pytest.approx(table["synthetic_to_real_ratio"])

    # The markdown table: a header, a separator and one row per run, cells as in the console.
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert len(lines) == 2 + len(df) and set(lines[1]) <= set("|-")
    assert header[:2] == ["run_id", "run_name"] and "synthetic.fw_lfw" in header
    cells = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert cells[header.index("dvc_exp")] == TOPOFR_EXP
    assert cells[header.index("synthetic.mean")] == f"{last['synthetic.mean']:.3f}"

    img = np.asarray(Image.open(plot))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0  # not a blank canvas


def test_compare_runs_filter_and_all_runs(tiny_project):
    df = compare_runs(filter_string=TOPOFR, tracking_uri=tiny_project.tracking_uri)
    assert len(df) == 1
    assert df.attrs["benchmarks"] == ["fw_age", "fw_cfp", "fw_lfw"]
    # One run: nothing varies, so parameters appear only when asked for.
    assert df.attrs["param_columns"] == []
    df = compare_runs(
        filter_string=TOPOFR,
        tracking_uri=tiny_project.tracking_uri,
        params=["recognizer.train.method"],
    )
    assert df["recognizer.train.method"].tolist() == ["topofr"]
    every = compare_runs(tracking_uri=tiny_project.tracking_uri, include_unevaluated=True)
    assert len(every) == 3 and "synth" in set(every["run_name"])
    assert every.loc[every["run_name"] == "synth", "synthetic.mean"].isna().all()


def test_default_tracking_uri_from_env_then_project_sqlite(tiny_project, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_project.tracking_uri)
    monkeypatch.chdir(tmp_path)
    assert len(compare_runs()) == 2
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(MissingInputError, match="no MLflow store at .*mlflow.db"):
        compare_runs()
    assert not (tmp_path / "mlflow.db").exists()  # never creates an empty store
    monkeypatch.chdir(tiny_project.root)
    assert df_names(compare_runs()) == ["recognizer+evaluate", "recognizer+evaluate"]


def df_names(df: pd.DataFrame) -> list[str]:
    # kedro-mlflow names a run after its pipelines, in either order
    return ["+".join(sorted(n.split("+"), reverse=True)) for n in df["run_name"]]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"experiment": "nope"}, DataError, "experiment 'nope' not found"),
        ({"filter_string": "params.recognizer.train.method = 'x'"}, DataError, "no MLflow runs"),
        ({"filter_string": "params.x ="}, ParameterError, "not a valid MLflow filter"),
    ],
)
def test_compare_bad_input_exits_2(tiny_project, capsys, kwargs, error, message):
    with pytest.raises(error, match=message):
        compare_runs(tracking_uri=tiny_project.tracking_uri, **kwargs)
    flags = {"experiment": "--experiment", "filter_string": "--filter"}
    args = [x for k, v in kwargs.items() for x in (flags[k], v)]
    assert main(["compare", "--tracking-uri", tiny_project.tracking_uri, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("face-pipelines compare: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_compare_without_store_exits_2(tmp_path, capsys):
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_evaluate_runs_carry_the_synthetic_sets_provenance(tiny_project):
    """evaluate logs the card's measures and recipe knobs as dataset.* metrics next to accuracy."""
    import mlflow

    card = json.loads((tiny_project.root / "data/08_reporting/dataset_card.json").read_text())
    mlflow.set_tracking_uri(tiny_project.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["face_pipelines"], output_format="pandas")
    evaluated = runs[runs["metrics.evaluate.synthetic.mean"].notna()]
    assert len(evaluated) == 2
    for _, run in evaluated.iterrows():
        assert run["metrics.evaluate.dataset.identities"] == card["identities"]
        assert run["metrics.evaluate.dataset.separability"] == pytest.approx(card["separability"])
        mix = card["parameters"]["sample"]["config"]["sigma_mix"]
        expected = sum(s * p for s, p in mix) / sum(p for _, p in mix)
        assert run["metrics.evaluate.dataset.sigma_mean"] == pytest.approx(expected)
        attrop = card["parameters"]["render"]["attrop_enabled"]
        assert run["metrics.evaluate.dataset.attrop_enabled"] == float(attrop)


def test_dataset_provenance_keeps_numbers_and_recipe_knobs_only():
    from face_pipelines.reporting.dataset_card import dataset_provenance

    card = {
        "identities": 40,
        "separability": 0.9,
        "feature_fd": float("nan"),  # not finite: left out
        "attrop_yaw_success": None,  # not measured: left out
        "parameters": {
            "sample": {"config": {"sigma_mix": [[0.2, 3], [0.6, 1]], "calibration_quantile": 0.9}},
            "render": {"attrop_enabled": False},
        },
    }
    assert dataset_provenance(card) == {
        "identities": 40.0,
        "separability": 0.9,
        "sigma_mean": pytest.approx(0.3),
        "calibration_quantile": 0.9,
        "attrop_enabled": 0.0,
    }
    assert dataset_provenance({}) == {}


def test_comparison_figure_labels_runs_by_their_dvc_experiment(tiny_project):
    from face_pipelines.reporting.figures import plt
    from face_pipelines.reporting.run_compare import comparison_figure

    df = compare_runs(tracking_uri=tiny_project.tracking_uri)
    fig = comparison_figure(df)
    try:
        labels = [t.get_text().split("\n")[0] for t in fig.axes[0].get_xticklabels()]
    finally:
        plt.close(fig)
    # The run made under `dvc exp run --name` is labelled by it; the other by its run name.
    assert labels == [df["run_name"].iloc[0], TOPOFR_EXP]

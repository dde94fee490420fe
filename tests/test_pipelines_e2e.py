"""The whole chain end to end on a tiny FaceWorld, through the Kedro CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

KEDRO = str(Path(sys.executable).with_name("kedro"))
FIXTURE = Path(__file__).parent / "fixtures" / "conf_tiny"


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [KEDRO, *args], cwd=project, capture_output=True, text=True, env=env, timeout=900
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of every pipeline on the tiny configuration (shared by the tests below)."""
    from tests.conftest import REPO

    project = tmp_path_factory.mktemp("e2e") / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # the package itself comes from the installed (editable) project
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    shutil.copytree(FIXTURE, project / "conf" / "tiny")
    # The spelling users know (`--pipeline`) must work too.
    first = _kedro(project, "run", "--env", "tiny", "--pipeline", "synth")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _kedro(project, "run", "--env", "tiny", "--pipelines", "recognizer,evaluate")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return project, first


def test_synth_prints_dataset_card_and_writes_complete_dataset(tiny_run):
    project, first = tiny_run
    assert "Synthetic dataset card" in first.stdout
    card = json.loads((project / "data/08_reporting/dataset_card.json").read_text())
    root = project / "data/07_model_output/synthetic_dataset"
    files = sorted(root.glob("*/*.jpg"))
    assert card["images"] == card["images_on_disk"] == len(files) > 0
    manifest = pd.read_parquet(root / "manifest.parquet")
    assert len(manifest) == len(files)
    assert set(manifest["identity"]) == set(range(card["identities"]))
    assert (root / "_COMPLETE").exists()
    for key in (
        "separability",
        "separability_real",
        "separability_curve",
        "separability_curve_real",
        "intra_class_cos_mean",
        "intra_class_cos_mean_real",
        "feature_fd",
        "leaked_identities",
        "attrop_yaw_success",
    ):
        assert key in card


def test_vec2face_report_has_honest_identity_measures(tiny_run):
    project, _ = tiny_run
    report = json.loads((project / "data/08_reporting/vec2face_report.json").read_text())
    for key in (
        "identity_cos_mean",
        "judge_identity_cos_mean",
        "ssim_mean",
        "judge_fd",
        "pixel_spread_generated",
        "pixel_spread_real",
    ):
        assert isinstance(report[key], float)
    assert Path(report["checkpoint"]).exists()


def test_evaluation_table_has_ratio(tiny_run):
    project, _ = tiny_run
    table = json.loads((project / "data/08_reporting/verification.json").read_text())
    assert set(table["results"]) == {"synthetic", "real"}
    assert set(table["benchmarks"]) == {"fw_lfw", "fw_cfp", "fw_age"}
    ratio = (
        table["results"]["synthetic"]["mean_accuracy"] / table["results"]["real"]["mean_accuracy"]
    )
    assert table["synthetic_to_real_ratio"] == pytest.approx(ratio)
    # equal image counts by default
    assert table["training_images"]["synthetic"] == table["training_images"]["real"]


def test_ablation_pipeline_trains_every_variant_on_both_sets(tiny_run):
    project, _ = tiny_run
    result = _kedro(project, "run", "--env", "tiny", "--pipelines", "ablation")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reporting = project / "data/08_reporting"
    table = json.loads((reporting / "ablation.json").read_text())
    pairs = [(r["variant"], r["dataset"]) for r in table["rows"]]
    assert pairs == [
        (v, d) for v in ("arcface", "topofr", "topofr_no_sde") for d in ("real", "synthetic")
    ]
    assert set(table["rows"][0]["accuracy"]) == {"fw_lfw", "fw_cfp", "fw_age"}
    assert {r["images"] for r in table["rows"]} == {
        json.loads((project / "data/08_reporting/verification.json").read_text())[
            "training_images"
        ]["real"]
    }
    assert "sde_mean_weight" in table["rows"][2]["diagnostics"]
    assert "sde_mean_weight" not in table["rows"][4]["diagnostics"]
    md = (reporting / "ablation.md").read_text()
    assert md.count("topofr_no_sde") == 2
    assert (reporting / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    with sqlite3.connect(project / "mlflow.db") as con:
        metrics = {k for (k,) in con.execute("select key from metrics")}
    assert "ablation.topofr.real.fw_cfp" in metrics
    assert "ablation.topofr.synthetic.epoch/l_sa" in metrics
    # A second run reuses every finished variant instead of retraining.
    again = _kedro(project, "run", "--env", "tiny", "--pipelines", "ablation")
    assert again.returncode == 0, again.stderr[-2000:]
    table2 = json.loads((reporting / "ablation.json").read_text())
    assert all(r["reused"] for r in table2["rows"])


def test_drgan_pipeline_trains_on_the_subset_with_its_yaw_labels(tiny_run):
    project, _ = tiny_run
    result = _kedro(project, "run", "--env", "tiny", "--pipelines", "drgan")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((project / "data/08_reporting/drgan_report.json").read_text())
    assert Path(report["checkpoint"]).is_file()
    assert (project / "data/08_reporting/drgan_grid.png").read_bytes()[:4] == b"\x89PNG"
    with sqlite3.connect(project / "mlflow.db") as con:
        metrics = {k for (k,) in con.execute("select key from metrics")}
    assert any(m.startswith("drgan.") for m in metrics)


def test_drgan_synth_and_eval_render_a_separate_set_card_and_table(tiny_run):
    project, _ = tiny_run
    default_manifest = project / "data/07_model_output/synthetic_dataset/manifest.parquet"
    before = default_manifest.read_bytes()
    result = _kedro(project, "run", "--env", "tiny", "--pipelines", "drgan,drgan_synth,drgan_eval")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = project / "data/07_model_output/synthetic_dataset_drgan"
    manifest = pd.read_parquet(root / "manifest.parquet")
    files = {p.relative_to(root).as_posix() for p in root.glob("*/*.jpg")}
    assert (root / "_COMPLETE").is_file() and set(manifest["path"]) == files
    assert manifest["pose_bin"].between(0, 2).all() and manifest["pose_bin"].nunique() > 1
    assert default_manifest.read_bytes() == before  # the default (Vec2Face) set is untouched
    reporting = project / "data/08_reporting"
    card = json.loads((reporting / "drgan_dataset_card.json").read_text())
    assert card["images"] == card["images_on_disk"] == len(files)
    assert len(card["pose_bin_hit_rate_per_bin"]) == 3
    assert 0 <= card["pose_bin_hit_rate"] <= 1 and -1 <= card["judge_identity_cos_mean"] <= 1
    assert "pose_bin_hit_rate_at_least_0_8" in card["checks"]
    assert not any(k.startswith("attrop") for k in card["checks"])
    table = json.loads((reporting / "drgan_verification.json").read_text())
    assert set(table["results"]) == {"drgan_encoder", "drgan_set", "vec2face_set", "real"}
    images = table["training_images"]
    assert images["drgan_set"] == min(len(files), images["vec2face_set"])
    assert "drgan_encoder" in (reporting / "drgan_verification.md").read_text()
    with sqlite3.connect(project / "mlflow.db") as con:
        metrics = {k for (k,) in con.execute("select key from metrics")}
    assert "drgan_dataset_card.pose_bin_hit_rate" in metrics
    assert "drgan_evaluate.drgan_encoder.fw_cfp" in metrics


def test_elegant_pipelines_train_edit_a_copy_card_it_and_verify_its_recognizer(tiny_run):
    project, _ = tiny_run
    synthetic = project / "data/07_model_output/synthetic_dataset"
    before = (synthetic / "manifest.parquet").read_bytes()
    result = _kedro(
        project, "run", "--env", "tiny", "--pipelines", "elegant,elegant_edit,elegant_eval"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reporting = project / "data/08_reporting"
    report = json.loads((reporting / "elegant_report.json").read_text())
    assert Path(report["checkpoint"]).is_file() and report["attributes"] == ["smile", "glasses"]
    assert (reporting / "elegant_interpolation.png").read_bytes()[:4] == b"\x89PNG"
    edit = json.loads((reporting / "elegant_edit_report.json").read_text())
    edited = pd.read_parquet(
        project / "data/07_model_output/synthetic_dataset_elegant/manifest.parquet"
    )
    assert edit["edits"] == int(edited["edited"].sum()) > 0
    assert set(edited.loc[edited["edited"], "edit_attribute"]) <= {"smile", "glasses"}
    assert (synthetic / "manifest.parquet").read_bytes() == before  # originals untouched
    # The edited copy's card: the source card plus the edits' success, identity and frequencies.
    source_card = json.loads((reporting / "dataset_card.json").read_text())
    card = json.loads((reporting / "elegant_dataset_card.json").read_text())
    assert card["images"] == source_card["images"] == len(edited)
    edits = card["attribute_edits"]
    assert edits["edits"] == edit["edits"] and edits["success"] == edit["success"]
    assert set(edits["frequency"]) == {"smile", "glasses"}
    assert set(edits["classifier"]["heldout_balanced_accuracy"]) == {"smile", "glasses"}
    # elegant_eval: the edited set's recognizer on the recognizer plan's images, next to the
    # unedited set's (same count, same selection) and the real one.
    table = json.loads((reporting / "elegant_verification.json").read_text())
    assert set(table["results"]) == {"edited_set", "unedited_set", "real"}
    assert table["training_images"]["edited_set"] == table["training_images"]["unedited_set"]
    ratio = (
        table["results"]["edited_set"]["mean_accuracy"]
        / (table["results"]["unedited_set"]["mean_accuracy"])
    )
    assert table["edited_to_unedited_ratio"] == pytest.approx(ratio)
    assert "edited_to_unedited_ratio" in (reporting / "elegant_verification.md").read_text()
    with sqlite3.connect(project / "mlflow.db") as con:
        metrics = {k for (k,) in con.execute("select key from metrics")}
    assert "elegant_edit.success" in metrics and any(m.startswith("elegant.") for m in metrics)
    assert "elegant_evaluate.edited_to_unedited_ratio" in metrics


def test_mlflow_records_runs_with_params_and_metrics(tiny_run):
    project, _ = tiny_run
    db = project / "mlflow.db"
    assert db.exists()
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid, name, status from runs").fetchall()
        names = {r[1] for r in runs}
        assert {"synth", "recognizer,evaluate"} <= names or len(runs) >= 2, runs
        assert all(r[2] == "FINISHED" for r in runs)
        params = {k for (k,) in con.execute("select key from params")}
        metrics = {k for (k,) in con.execute("select key from metrics")}
    assert "subset.n_ids" in params and "vec2face.train.epochs" in params
    assert any(m.startswith("dataset_card.") for m in metrics)
    assert any(m.startswith("evaluate.") for m in metrics)


def test_rerun_of_subset_reuses_faceworld(tiny_run):
    project, _ = tiny_run
    marker = project / "data/01_raw/faceworld/faceworld.json"
    before = marker.stat().st_mtime_ns
    result = _kedro(project, "run", "--env", "tiny", "--pipelines", "subset")
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.stat().st_mtime_ns == before


def test_bad_parameter_fails_before_any_node_with_file_and_key(tiny_run):
    project, _ = tiny_run
    bad = project / "conf" / "tiny" / "parameters_bad.yml"
    bad.write_text("render:\n  batch_sise: 3\n")
    try:
        result = _kedro(project, "run", "--env", "tiny", "--pipelines", "render")
    finally:
        bad.unlink()
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "render.batch_sise" in out and "parameters_bad.yml" in out
    assert "Running node" not in out

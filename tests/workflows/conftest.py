"""A real tiny project run shared by the workflow tests (dataset diff, run comparison, notebook).

It runs the tiny configuration end to end once per session, the way tests/test_pipelines_e2e.py
does: a copy of the project in a temp folder with tests/fixtures/conf_tiny as env "tiny", then
`synth`, `recognizer,evaluate` (ArcFace) and `recognizer,evaluate` again with TopoFR (with
$DVC_EXP_NAME set, as under `dvc exp run`), so MLflow holds two evaluated runs whose parameters
differ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "conf_tiny"
BIN = Path(sys.executable).parent
KEDRO = str(BIN / "kedro")
DATASET = "data/07_model_output/synthetic_dataset"
TOPOFR_EXP = "tiny-topofr"  # the DVC experiment name the TopoFR run is made under


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: no telemetry, no inherited MLflow URI, extras set."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def run_kedro(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`kedro <args>` in `project` (extra environment `env`); fails the test with the output's tail
    when it fails."""
    result = subprocess.run(
        [KEDRO, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@dataclass(frozen=True)
class TinyProject:
    """A project copy after the tiny runs: its root, dataset root and MLflow tracking URI."""

    root: Path

    @property
    def dataset(self) -> Path:
        """The rendered synthetic dataset root."""
        return self.root / DATASET

    @property
    def tracking_uri(self) -> str:
        """kedro-mlflow's sqlite store of this project copy (absolute)."""
        return f"sqlite:///{self.root / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> TinyProject:
    """The tiny configuration run end to end once (about a minute on 2 cores)."""
    project = tmp_path_factory.mktemp("workflows") / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # the package itself comes from the installed (editable) project
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    shutil.copytree(FIXTURE, project / "conf" / "tiny")
    run_kedro(project, "run", "--env", "tiny", "--pipelines", "synth")
    run_kedro(project, "run", "--env", "tiny", "--pipelines", "recognizer,evaluate")
    run_kedro(
        project,
        "run",
        "--env",
        "tiny",
        "--pipelines",
        "recognizer,evaluate",
        "--params",
        "recognizer.train.method=topofr",
        DVC_EXP_NAME=TOPOFR_EXP,  # as `dvc exp run --name` would set it
    )
    return TinyProject(project)

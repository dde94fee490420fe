"""Shared test fixtures. Tests never use the network or a GPU; telemetry is off."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# As in face_pipelines.settings: OpenMP waits sleep instead of spinning (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the Kedro project (pyproject, conf, empty data layers) in a temp folder."""
    dst = tmp_path / "project"
    dst.mkdir()
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    (dst / "src").mkdir()  # the package itself comes from the installed (editable) project
    shutil.copytree(REPO / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir(exist_ok=True)
    for layer in sorted((REPO / "data").iterdir()):
        if layer.is_dir():
            (dst / "data" / layer.name).mkdir(parents=True)
    return dst

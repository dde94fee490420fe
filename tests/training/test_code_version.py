"""A run's identity includes the source it runs: changed code is set aside, same code resumes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.training import code_version, engine
from face_pipelines.training.code_version import SourceDigest, import_closure, source_digest
from face_pipelines.training.engine import fit

from .helpers import make_packed
from .test_engine import build, classify_step  # the engine tests' tiny classifier run

ENGINE = "face_pipelines.training.engine"


@pytest.fixture(scope="module")
def packed_root(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("code_version") / "packed", n=16, size=8)


def fake_digest(version: str):
    files = {"training/engine.py": "0" * 16, "losses/gan.py": version * 16}
    return lambda modules: SourceDigest(version * 64, files)


def test_same_code_resumes_changed_code_is_set_aside(packed_root, tmp_path, monkeypatch, caplog):
    run = tmp_path / "train_state"
    monkeypatch.setattr(engine, "source_digest", fake_digest("a"))
    state, loader = build(packed_root)
    assert len(fit(classify_step, state, loader, 1, run, progress=False)) == 1
    saved = load_checkpoint(run / "last.pt")["config"][engine.SOURCE_KEY]
    assert saved["digest"] == "a" * 64 and saved["files"]["losses/gan.py"] == "a" * 16

    # Same code: an interrupted (shorter) run resumes, a finished one is reused as it is.
    state, loader = build(packed_root)
    assert len(fit(classify_step, state, loader, 2, run, progress=False)) == 1
    assert state.step == 4
    state, loader = build(packed_root)
    assert fit(classify_step, state, loader, 2, run, progress=False) == []
    assert not list(run.glob("stale-*.pt"))

    # Changed code: the finished run is neither reused nor resumed but set aside, and the log
    # names the file that changed.
    monkeypatch.setattr(engine, "source_digest", fake_digest("b"))
    state, loader = build(packed_root)
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        assert len(fit(classify_step, state, loader, 2, run, progress=False)) == 2
    assert state.step == 4
    assert len(list(run.glob("stale-*.pt"))) == 1
    message = f"code changed since {run / 'last.pt'} was written: losses/gan.py; moved it to stale-"
    assert message in caplog.text
    assert load_checkpoint(run / "last.pt")["config"][engine.SOURCE_KEY]["digest"] == "b" * 64


def test_checkpoint_without_a_source_digest_is_set_aside(packed_root, tmp_path, caplog):
    run = tmp_path / "train_state"
    state, loader = build(packed_root)
    fit(classify_step, state, loader, 1, run, progress=False)
    ckpt = load_checkpoint(run / "last.pt")
    del ckpt["config"][engine.SOURCE_KEY]  # as written before runs recorded their code
    torch.save(ckpt, run / "last.pt")
    state, loader = build(packed_root)
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        assert len(fit(classify_step, state, loader, 1, run, progress=False)) == 1
    assert "code changed since" in caplog.text and "records no source digest" in caplog.text


def test_run_digest_covers_engine_step_and_model_code(packed_root):
    state, loader = build(packed_root)
    files = engine._run_source(classify_step, state, loader).files
    # This test module is outside the package: what it imports from face_pipelines counts.
    for rel in (
        "training/engine.py",
        "training/code_version.py",
        "training/data.py",
        "io/packed.py",
    ):
        assert rel in files
    assert "__init__.py" in files and "training/__init__.py" in files  # run on import
    assert "pipelines/recognizer/nodes.py" not in files


def test_digest_is_the_same_in_another_process():
    modules = ["face_pipelines.training.recognizer", ENGINE]
    here = source_digest(modules)
    code = (
        "import json, sys; from face_pipelines.training.code_version import source_digest; "
        "d = source_digest(sys.argv[1:]); print(json.dumps([d.digest, d.files]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *reversed(modules)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [here.digest, here.files]
    assert all(not rel.startswith("/") and "__pycache__" not in rel for rel in here.files)


def write_package(root):
    files = {
        "__init__.py": '"""pkg."""\n',
        "a/__init__.py": "",
        "a/x.py": "from . import y\nfrom .y import helper\nimport numpy as np\n",
        "a/y.py": "def helper():\n    from face_pipelines.b.z import Z\n    return Z\n",
        "b/__init__.py": "",
        "b/z.py": "from ..errors import E\nZ = 1\n",
        "b/unused.py": "U = 1\n",
        "errors.py": "class E(Exception):\n    pass\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_closure_follows_relative_and_function_level_imports_only(tmp_path, monkeypatch):
    root = write_package(tmp_path / "one" / "face_pipelines")
    monkeypatch.setattr(code_version, "PACKAGE_ROOT", root)
    assert sorted(import_closure(["face_pipelines.a.x"])) == [
        "face_pipelines",
        "face_pipelines.a",
        "face_pipelines.a.x",
        "face_pipelines.a.y",
        "face_pipelines.b",
        "face_pipelines.b.z",
        "face_pipelines.errors",
    ]
    digest = source_digest(["face_pipelines.a.x"])
    assert "b/unused.py" not in digest.files

    # Another checkout, elsewhere, with CRLF line ends and fresh mtimes: the same digest.
    other = tmp_path / "two" / "face_pipelines"
    shutil.copytree(root, other)
    (other / "b" / "z.py").write_bytes(b"from ..errors import E\r\nZ = 1\r\n")
    (other / "b" / "unused.py").write_text("U = 2\n")  # not imported: does not count
    monkeypatch.setattr(code_version, "PACKAGE_ROOT", other)
    assert source_digest(["face_pipelines.a.x"]) == digest

    (other / "b" / "z.py").write_text("from ..errors import E\nZ = 2\n")
    changed = source_digest(["face_pipelines.a.x"])
    assert changed.digest != digest.digest
    assert changed.changed_files(digest.files) == ["b/z.py"]

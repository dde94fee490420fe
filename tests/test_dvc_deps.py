"""dvc.yaml's code deps cover what each stage runs; a plain `dvc repro` plans the default chain only.

A stage `kedro run --pipelines X` runs the node functions of pipeline X: the code it depends on is
the static import closure (`code_version.import_closure`, the same one a training run's source
digest uses) of those functions' modules and of their pipeline folder. Every face_pipelines file in
it must be covered by one of the stage's deps (a folder covers what is under it), or editing it would
leave DVC's cached output standing. Package `__init__.py` files that import and define nothing are
exempt: they cannot change what a stage computes.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from face_pipelines.pipeline_registry import STAGES, register_pipelines
from face_pipelines.training.code_version import PACKAGE_ROOT, source_files

ROOT = Path(__file__).resolve().parents[1]
SRC = "src/face_pipelines"
DVC_FILES = ("dvc.yaml", "opt_in/dvc.yaml")
KEDRO_CMD = re.compile(r"^kedro run --pipelines (\w+)$")


def dvc_stages() -> dict[str, tuple[dict, Path]]:
    """{address as DVC prints it: (stage, the folder its paths are relative to)}."""
    out = {}
    for rel in DVC_FILES:
        path = ROOT / rel
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            address = name if rel == "dvc.yaml" else f"{rel}:{name}"
            out[address] = (stage, (path.parent / stage.get("wdir", ".")).resolve())
    return out


STAGE_DEFS = dvc_stages()


@pytest.fixture(scope="module")
def pipelines():
    return register_pipelines()


def stage_deps(stage: dict, base: Path) -> list[str]:
    """The stage's deps as POSIX paths relative to the repository root."""
    names = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return [(base / d).resolve().relative_to(ROOT).as_posix().rstrip("/") for d in names]


def pipeline_modules(pipeline) -> set[str]:
    """The modules of the pipeline's node functions, plus every module of their pipeline folders
    (pipeline.py decides how nodes are wired)."""
    modules = set()
    for node in pipeline.nodes:
        fn = node.func
        while isinstance(fn, functools.partial):
            fn = fn.func
        modules.add(fn.__module__)
        parts = fn.__module__.split(".")
        if parts[:2] == ["face_pipelines", "pipelines"] and len(parts) > 3:
            package = ".".join(parts[:3])
            folder = PACKAGE_ROOT.joinpath(*parts[1:3])
            modules.update(
                package if f.stem == "__init__" else f"{package}.{f.stem}"
                for f in folder.glob("*.py")
            )
    return modules


def inert_init(path: Path) -> bool:
    """An `__init__.py` that neither imports nor defines anything (docstring, constants)."""
    if path.name != "__init__.py":
        return False
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return not any(isinstance(n, kinds) for n in ast.walk(ast.parse(path.read_text())))


def needed_files(pipeline) -> list[str]:
    files = source_files(pipeline_modules(pipeline))
    return [f"{SRC}/{rel}" for rel, path in files.items() if not inert_init(path)]


def dep_to_add(file: str) -> str:
    """The dep line that covers `file` the way dvc.yaml lists code: a pipeline's folder, a library
    area's folder, or a top-level module."""
    parts = file.removeprefix(f"{SRC}/").split("/")
    keep = 2 if parts[0] == "pipelines" else 1
    return "/".join([SRC, *parts[:keep]])


@pytest.mark.parametrize("address", sorted(STAGE_DEFS))
def test_code_deps_cover_what_the_stage_imports(address, pipelines):
    stage, base = STAGE_DEFS[address]
    match = KEDRO_CMD.match(stage["cmd"])
    assert match, f"{address}: cmd {stage['cmd']!r} is not `kedro run --pipelines <name>`"
    assert match[1] in pipelines, f"{address}: no registered pipeline {match[1]!r}"
    deps = stage_deps(stage, base)
    missing = [
        f
        for f in needed_files(pipelines[match[1]])
        if not any(f == d or f.startswith(d + "/") for d in deps)
    ]
    add = sorted({dep_to_add(f) for f in missing})
    assert not missing, (
        f"{address} runs code its deps do not list: {missing}\nadd to its deps:\n"
        + "\n".join(f"      - {d}" for d in add)
    )


@pytest.mark.parametrize("address", sorted(STAGE_DEFS))
def test_code_deps_exist(address):
    stage, base = STAGE_DEFS[address]
    gone = [d for d in stage_deps(stage, base) if d.startswith(SRC) and not (ROOT / d).exists()]
    assert not gone, f"{address} lists code that is not there (renamed?): {gone}"


def test_the_default_dvc_yaml_is_the_default_chain():
    default = [a for a in STAGE_DEFS if ":" not in a]
    assert default == list(STAGES)


DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


def planned(repo: Path, *args: str) -> list[str]:
    """Stages `dvc repro --dry --force-downstream [args]` would run, in order.

    --force-downstream: with nothing produced yet, a plain dry run stops at the second stage
    (DVC 3.x's run-cache lookup hashes an input the dry-run upstream stage did not write).
    """
    out = subprocess.run(
        [DVC, "repro", "--dry", "--force-downstream", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return re.findall(r"^Running stage '([^']+)':", out.stdout, flags=re.M)


@pytest.mark.skipif(DVC is None, reason="dvc is not installed")
def test_dvc_repro_plans_the_default_chain_and_opt_in_stages_only_when_named(tmp_path):
    repo = tmp_path / "clone"  # what a fresh clone has: code, configuration, no data
    for rel in DVC_FILES:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    (repo / ".dvc").mkdir()
    (repo / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    shutil.copytree(ROOT / "conf" / "base", repo / "conf" / "base")
    shutil.copytree(ROOT / SRC, repo / SRC, ignore=shutil.ignore_patterns("__pycache__"))

    assert sorted(planned(repo)) == sorted(STAGES)  # no ablation, drgan*, elegant*
    drgan_synth = planned(repo, "opt_in/dvc.yaml:drgan_synth")  # and what it needs, only that
    assert drgan_synth[-1] == "opt_in/dvc.yaml:drgan_synth"
    assert sorted(drgan_synth) == [
        "opt_in/dvc.yaml:drgan",
        "opt_in/dvc.yaml:drgan_synth",
        "subset",
        "teacher",
    ]

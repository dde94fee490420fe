"""Dataset lineage (reporting.lineage) and the lineage-aware `face-pipelines diff`.

Two tiny sets are built directly with the library (tiny files, no pipeline run): they differ only
upstream of rendering - in the teacher's recipe, or in a generator re-trained under equal
parameters - and the diff must name the stage, the key or the input, and never say
"Parameters: identical". The last test reads the lineage the real tiny run wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from face_pipelines.commands import main
from face_pipelines.io.packed import PackedWriter
from face_pipelines.params import validate_section
from face_pipelines.reporting import lineage as lineage_mod
from face_pipelines.reporting.dataset_diff import diff_datasets
from face_pipelines.reporting.lineage import (
    STAGE_ORDER,
    add_stage,
    build_lineage,
    code_version,
    content_fingerprint,
    file_input,
    frame_input,
    lineage_parameters,
    lineage_stage,
    lineage_tracking_params,
    upstream_stages,
    weights_fingerprint,
)
from tests.workflows.conftest import DATASET
from tests.workflows.test_dataset_diff import dvc, git

GIT = shutil.which("git")
CODE = {"git_commit": "a" * 40, "git_dirty": False, "package_version": "0.1.0"}
IDENTICAL = "Parameters: identical"
VEC2FACE_STAGES = list(STAGE_ORDER[:7])  # common .. render


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def packed_subset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packed") / "subset_packed"
    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    with PackedWriter(root, image_size=8, shard_size=4) as writer:
        writer.add_batch(images, [0, 0, 1, 1, 2, 2])
    return root


def _file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def tiny_lineage(
    folder: Path, packed: Path, teacher_dim: int = 32, generator_seed: int = 0, code=CODE
) -> dict:
    """The lineage of a tiny Vec2Face set: every file's content follows from the recipe, except
    the generator's, which also follows from `generator_seed` (a re-training under equal
    parameters) - as the render node builds it."""
    recipe = f"teacher dim {teacher_dim}".encode()
    sections = {
        "common": validate_section("common", {"seed": 0, "progress": False}),
        "faceworld": validate_section("faceworld", {"seed": 0}),
        "subset": validate_section("subset", {"n_ids": 3}),
        "teacher": validate_section("teacher", {"recognizer": {"embedding_dim": teacher_dim}}),
    }
    models = folder / "models"
    summaries = {
        "teacher": {"checkpoint": str(_file(models / "teacher.pt", b"teacher " + recipe))},
        "judge": {"checkpoint": str(_file(models / "judge.pt", b"judge"))},
        "pose": {"checkpoint": str(_file(models / "pose.pt", b"pose"))},
    }
    features = np.random.default_rng(teacher_dim).normal(size=(6, teacher_dim)).astype(np.float32)
    stages = upstream_stages(sections, {"config_hash": "c0ffee" * 4}, packed, summaries, features)
    generator = _file(models / "generator.pt", recipe + f" seed {generator_seed}".encode())
    stages["vec2face"] = lineage_stage(
        "vec2face",
        validate_section("vec2face", {}),
        {"generator checkpoint": file_input(generator)},
    )
    plan = pd.DataFrame({"identity": [0, 0, 1, 1], "sigma": [0.0, 0.1, 0.0, 0.1]})
    plan["dim"] = teacher_dim  # a plan sampled from other features is another plan
    stages["sample"] = lineage_stage(
        "sample", validate_section("sample", {}), {"identity plan": frame_input(plan)}
    )
    stages["render"] = lineage_stage("render", validate_section("render", {}))
    return build_lineage(stages, {"render": f"run-{teacher_dim}-{generator_seed}"}, code=code)


def tiny_dataset(root: Path, lineage: dict | None) -> Path:
    """A complete rendered dataset folder (2 identities x 2 images) whose card holds `lineage`."""
    rows = []
    for identity in range(2):
        for index in range(2):
            rel = f"{identity:06d}/{index:03d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (60 * identity, 90 * index, 120)).save(root / rel)
            rows.append({"path": rel, "identity": identity, "index": index})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "_COMPLETE").write_text(json.dumps({"images": 4, "identities": 2}))
    card = {"identities": 2, "images": 4, "separability": 0.9}
    if lineage is not None:
        card["lineage"] = lineage
        card["parameters"] = {
            s: lineage["stages"][s]["parameters"] for s in ("sample", "render", "vec2face")
        }
    (root / "dataset_card.json").write_text(json.dumps(card, indent=2))
    return root


def two_sets(tmp_path: Path, packed: Path, a: dict, b: dict) -> tuple[Path, Path]:
    return (
        tiny_dataset(tmp_path / "A", tiny_lineage(tmp_path / "files_a", packed, **a)),
        tiny_dataset(tmp_path / "B", tiny_lineage(tmp_path / "files_b", packed, **b)),
    )


def verdicts(diff) -> dict[str, str]:
    return {s.stage: s.text for s in diff.lineage.stages}


# ------------------------------------------------------------------------------ the diff, by stage


def test_a_teacher_recipe_change_is_named_by_stage_and_key(tmp_path, packed_subset, capsys):
    a, b = two_sets(tmp_path, packed_subset, {"teacher_dim": 32}, {"teacher_dim": 64})
    diff = diff_datasets(a, b, grids=False)

    assert [(p.stage, p.key, *p.texts()) for p in diff.param_diffs] == [
        ("teacher", "teacher.recognizer.embedding_dim", "32", "64")
    ]
    stages = verdicts(diff)
    assert stages["teacher"] == "1 parameter differs; different teacher checkpoint, features"
    assert stages["vec2face"] == (
        "same parameters, different generator checkpoint (follows from teacher)"
    )
    assert stages["sample"] == "same parameters, different identity plan (follows from teacher)"
    for same in ("common", "faceworld", "subset", "render"):
        assert stages[same] == "identical"
    assert not diff.identical_recipe

    report = tmp_path / "out" / "diff.md"
    assert main(["diff", str(a), str(b), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert IDENTICAL not in out
    assert next(x for x in out.splitlines() if x.startswith("teacher   ")).split()[1:3] == [
        "1",
        "parameter",
    ]
    line = next(x for x in out.splitlines() if x.startswith("teacher.recognizer.embedding_dim"))
    assert line.split()[1:] == ["32", "64"]
    assert "teacher: teacher checkpoint" in out and "vec2face: generator checkpoint" in out
    md = report.read_text()
    assert "## Lineage" in md and "| teacher.recognizer.embedding_dim | 32 | 64 |" in md
    assert IDENTICAL not in md


def test_a_generator_retrained_under_equal_parameters_is_told_apart(
    tmp_path, packed_subset, capsys
):
    a, b = two_sets(tmp_path, packed_subset, {"generator_seed": 0}, {"generator_seed": 1})
    diff = diff_datasets(a, b, grids=False)

    assert diff.param_diffs == []
    assert verdicts(diff)["vec2face"] == "same parameters, different generator checkpoint"
    assert [(d.stage, d.name) for d in diff.lineage.inputs] == [
        ("vec2face", "generator checkpoint")
    ]
    assert {s for s, text in verdicts(diff).items() if text != "identical"} == {"vec2face"}
    text = diff.to_text()
    assert IDENTICAL not in text
    assert "Parameters: the same values in every stage" in text
    assert re.search(r"^vec2face +same parameters, different generator checkpoint$", text, re.M)
    assert main(["diff", str(a), str(b), "--report", str(tmp_path / "r.md")]) == 0
    assert IDENTICAL not in capsys.readouterr().out


def test_identical_only_when_the_whole_lineage_is(tmp_path, packed_subset):
    a, b = two_sets(tmp_path, packed_subset, {}, {})
    diff = diff_datasets(a, b, grids=False)
    assert diff.identical_recipe and diff.param_diffs == [] and not diff.lineage.inputs
    text = diff.to_text()
    assert IDENTICAL in text and "Lineage: identical in all 7 stages; code git aaaaaaaa" in text
    assert "render run-32-0" in text  # the MLflow runs that wrote the cards are named

    # The same sets written by other code are not identical.
    other = {**CODE, "git_commit": "b" * 40, "git_dirty": True}
    c = tiny_dataset(tmp_path / "C", tiny_lineage(tmp_path / "files_c", packed_subset, code=other))
    diff = diff_datasets(a, c, grids=False)
    assert diff.param_diffs == [] and not diff.lineage.code_identical
    text = diff.to_text()
    assert IDENTICAL not in text
    assert re.search(r"^code +A git aaaaaaaa; B git bbbbbbbb \(dirty\)$", text, re.M)


def test_a_card_without_lineage_is_never_called_identical(tmp_path, packed_subset):
    a = tiny_dataset(tmp_path / "A", tiny_lineage(tmp_path / "files", packed_subset))
    old = tiny_dataset(tmp_path / "old", None)
    diff = diff_datasets(old, a, grids=False)
    # Only the card's own parameters are compared (the old card has none), not every lineage key.
    assert {p.stage for p in diff.param_diffs} == {"vec2face", "sample", "render"}
    text = diff.to_text()
    assert IDENTICAL not in text
    assert "A's card has no lineage (written before lineages were recorded)" in text
    both_old = diff_datasets(old, old, grids=False)
    assert both_old.lineage is None and IDENTICAL not in both_old.to_text()


def test_an_editor_stage_extends_the_lineage(tmp_path, packed_subset):
    lin = tiny_lineage(tmp_path / "files", packed_subset)
    editor = _file(tmp_path / "editor.pt", b"elegant")
    edited = add_stage(
        lin,
        "elegant",
        lineage_stage("elegant", {"edit": {"fraction": 0.2}}, {"editor": file_input(editor)}),
        "run-edit",
    )
    assert list(edited["stages"])[-1] == "elegant" and "elegant" not in lin["stages"]
    assert edited["mlflow_runs"] == {"render": "run-32-0", "elegant": "run-edit"}
    assert edited["stages"]["elegant"]["after"] == ["common", "subset", "teacher", "render"]
    diff = diff_datasets(
        tiny_dataset(tmp_path / "A", lin), tiny_dataset(tmp_path / "B", edited), grids=False
    )
    assert verdicts(diff)["elegant"] == "only in B"
    assert [p.key for p in diff.param_diffs] == ["elegant.edit.fraction"]


# ------------------------------------------------------------------------------ building lineages


def test_upstream_stages_record_parameters_and_file_contents(tmp_path, packed_subset):
    lin = tiny_lineage(tmp_path / "files", packed_subset)
    teacher = lin["stages"]["teacher"]["inputs"]
    ckpt = tmp_path / "files" / "models" / "teacher.pt"
    assert teacher["teacher checkpoint"] == {
        "path": str(ckpt),
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    }
    assert set(teacher) == {"teacher checkpoint", "judge checkpoint", "pose checkpoint", "features"}
    assert lin["stages"]["faceworld"]["inputs"] == {"world": {"sha256": "c0ffee" * 4}}
    assert "packed images" in lin["stages"]["subset"]["inputs"]
    flat = lineage_parameters(lin)
    # Validated: defaults are recorded too; display-only settings are not.
    assert flat["teacher.recognizer.embedding_dim"] == 32 and "teacher.judge.source" in flat
    assert "common.progress" not in flat and flat["common.seed"] == 0
    assert list(lin["stages"]) == VEC2FACE_STAGES


def test_a_real_recordio_source_is_fingerprinted_and_a_disabled_world_is_not_recorded(
    tmp_path, packed_subset
):
    rec = _file(tmp_path / "train.rec", b"records")
    idx = _file(tmp_path / "train.idx", b"0\t0\n")
    sections = {
        "common": {},
        "faceworld": {"enabled": False, "seed": 3},
        "subset": {"source": "recordio", "path": str(rec), "n_ids": 2},
        "teacher": {},
    }
    ckpt = {"teacher": {"checkpoint": str(_file(tmp_path / "t.pt", b"t"))}}
    stages = upstream_stages(sections, {"enabled": False}, packed_subset, ckpt, np.zeros((6, 2)))
    assert stages["faceworld"]["parameters"] == {"enabled": False}
    assert stages["faceworld"]["inputs"] == {}
    inputs = stages["subset"]["inputs"]
    assert inputs["source .rec"]["sha256"] == hashlib.sha256(b"records").hexdigest()
    assert inputs["source .idx"]["path"] == str(idx)


def test_content_fingerprints_are_cached_next_to_the_file_keyed_on_size_and_mtime(tmp_path):
    f = _file(tmp_path / "model.pt", b"weights v1")
    assert content_fingerprint(f) == hashlib.sha256(b"weights v1").hexdigest()
    sidecar = tmp_path / "model.pt.sha256"
    cached = json.loads(sidecar.read_text())
    assert cached["size"] == 10 and cached["mtime_ns"] == f.stat().st_mtime_ns
    # A matching key is trusted without reading the file...
    sidecar.write_text(json.dumps({**cached, "bytes": "from-cache"}))
    assert content_fingerprint(f) == "from-cache"
    # ...a rewrite (other size or mtime) is hashed again.
    f.write_bytes(b"weights v2")
    os.utime(f, ns=(cached["mtime_ns"] + 10**9, cached["mtime_ns"] + 10**9))
    assert content_fingerprint(f) == hashlib.sha256(b"weights v2").hexdigest()


def test_checkpoints_are_fingerprinted_by_their_weights_not_their_bytes(tmp_path):
    import torch

    from face_pipelines.io.checkpoint import save_checkpoint

    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)}
    a = save_checkpoint(tmp_path / "a" / "model.pt", "small", {"d": 3}, weights, {"at": "/x"})
    b = save_checkpoint(tmp_path / "b" / "model.pt", "small", {"d": 3}, weights, {"at": "/y"})
    assert content_fingerprint(a) != content_fingerprint(b)  # meta and zip layout differ
    assert weights_fingerprint(a) == weights_fingerprint(b)  # the same model
    retrained = {**weights, "w": weights["w"] + 1e-3}
    c = save_checkpoint(tmp_path / "c" / "model.pt", "small", {"d": 3}, retrained)
    assert weights_fingerprint(c) != weights_fingerprint(a)
    both = json.loads((tmp_path / "a" / "model.pt.sha256").read_text())
    assert {"bytes", "weights"} <= set(both)  # one cache file holds both kinds
    # Not a checkpoint: its bytes.
    other = _file(tmp_path / "released.pth", b"not a torch file")
    assert weights_fingerprint(other) == hashlib.sha256(b"not a torch file").hexdigest()


def test_a_read_only_folder_only_loses_the_cache(tmp_path, monkeypatch):
    def read_only(path, text):
        raise PermissionError(f"{path}: read-only file system")

    monkeypatch.setattr(lineage_mod, "write_text_atomic", read_only)
    f = _file(tmp_path / "backbone.pth", b"released")
    assert content_fingerprint(f) == hashlib.sha256(b"released").hexdigest()
    assert not (tmp_path / "backbone.pth.sha256").exists()


def test_large_files_are_fingerprinted_from_spread_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(lineage_mod, "SAMPLED_ABOVE", 1 << 20)
    data = bytearray(np.random.default_rng(0).integers(0, 255, 3 << 20, dtype=np.uint8))
    f = _file(tmp_path / "big.rec", bytes(data))
    first = content_fingerprint(f)
    assert first.startswith("sampled:")
    data[-1] ^= 1  # the last chunk ends at the end of the file
    f.write_bytes(bytes(data))
    os.utime(f, ns=(1, 1))
    assert content_fingerprint(f) not in (first, None)


def test_code_version_of_this_checkout():
    code = code_version()
    assert code["package_version"] and len(code["source_digest"]) == 16
    if GIT and (Path(__file__).resolve().parents[2] / ".git").exists():
        assert len(code["git_commit"]) == 40 and isinstance(code["git_dirty"], bool)


# ----------------------------------------------------------------- evaluate's MLflow dataset.* keys


def test_tracking_params_name_the_upstream_change(tmp_path, packed_subset):
    pa = lineage_tracking_params(tiny_lineage(tmp_path / "a", packed_subset, teacher_dim=32))
    pb = lineage_tracking_params(tiny_lineage(tmp_path / "b", packed_subset, teacher_dim=64))
    assert lineage_tracking_params(None) == {}
    assert all(k.startswith("dataset.") and isinstance(v, str) for k, v in pa.items())
    differ = {k for k in pa if pa[k] != pb.get(k)}
    assert {
        "dataset.teacher.params",
        "dataset.teacher.recognizer.embedding_dim",
        "dataset.teacher.teacher_checkpoint",
        "dataset.vec2face.generator_checkpoint",
    } <= differ
    assert not any(k.startswith(("dataset.subset.", "dataset.faceworld.")) for k in differ)
    assert pa["dataset.teacher.recognizer.embedding_dim"] == "32"
    assert pa["dataset.code"] == "git aaaaaaaa"


def test_evaluate_logs_the_lineage_keys_as_mlflow_params(tmp_path, packed_subset, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store is quicker to set up

    from face_pipelines.pipelines.evaluate.nodes import log_dataset_lineage

    card = {"lineage": tiny_lineage(tmp_path / "a", packed_subset)}
    assert log_dataset_lineage({}) == {}  # no lineage: nothing to log
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            logged = log_dataset_lineage(card)
        params = mlflow.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri(None)
    assert logged and {k: params[k] for k in logged} == logged
    assert params["dataset.teacher.recognizer.embedding_dim"] == "32"


# ------------------------------------------------------------------------------------ revisions


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_revisions_compare_lineages_the_same_way(tmp_path, packed_subset):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    for dim in (32, 64):
        target = repo / DATASET
        shutil.rmtree(target, ignore_errors=True)
        tiny_dataset(target, tiny_lineage(tmp_path / f"files{dim}", packed_subset, teacher_dim=dim))
        dvc(repo, "add", "-q", DATASET)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"teacher dim {dim}")
    diff = diff_datasets("rev:HEAD~1", "rev:HEAD", repo=repo, grids=False)
    assert [p.key for p in diff.param_diffs] == ["teacher.recognizer.embedding_dim"]
    assert verdicts(diff)["vec2face"].startswith("same parameters, different generator checkpoint")
    assert IDENTICAL not in diff.to_text()


# ------------------------------------------------------------------------- the real tiny pipeline


def test_the_render_card_carries_the_lineage_of_the_tiny_run(tiny_project):
    card = json.loads((tiny_project.dataset / "dataset_card.json").read_text())
    lin = card["lineage"]
    assert list(lin["stages"]) == VEC2FACE_STAGES
    flat = lineage_parameters(lin)
    assert flat["subset.n_ids"] == 6 and flat["teacher.recognizer.embedding_dim"] == 32
    for name, entry in lin["stages"]["teacher"]["inputs"].items():
        if "path" in entry:  # the checkpoints, by their weights, cached next to them
            path = Path(entry["path"])
            assert entry["sha256"] == weights_fingerprint(path), name
            assert path.with_name(path.name + ".sha256").is_file()
    gen = lin["stages"]["vec2face"]["inputs"]["generator checkpoint"]
    assert Path(gen["path"]).is_file() and lin["mlflow_runs"]["render"]
    assert lin["code"]["package_version"]
    diff = diff_datasets(tiny_project.dataset, tiny_project.dataset, grids=False)
    assert diff.identical_recipe and IDENTICAL in diff.to_text()

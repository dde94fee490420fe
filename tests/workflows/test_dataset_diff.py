"""`face-pipelines diff` / `diff_datasets` on real tiny datasets: folders, DVC revisions, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_pipelines.commands import main
from face_pipelines.reporting.dataset_diff import diff_datasets, flatten_parameters, yaw_sparkline
from tests.workflows.conftest import BIN, DATASET, clean_env

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def edited_copy(src: Path, dst: Path) -> tuple[Path, dict]:
    """Copy a dataset, change two parameters, add one and change a measure of its card.

    Returns the copy and {flattened key: (old text or None when absent, new text)}.
    """
    shutil.copytree(src, dst)
    card = json.loads((dst / "dataset_card.json").read_text())
    sample, render = card["parameters"]["sample"], card["parameters"]["render"]
    old_n = sample["config"]["images_per_identity"]
    sample["config"]["images_per_identity"] = old_n + 2
    old_q = render["jpeg_quality"]
    render["jpeg_quality"] = new_q = 70 if old_q != 70 else 71
    render["note"] = "edited"
    old_sep = card["separability"]  # any other value (s / 2 + 0.25 left s = 0.5 unchanged)
    card["separability"] = 0.25 if abs(old_sep - 0.25) > 1e-3 else 0.75
    (dst / "dataset_card.json").write_text(json.dumps(card, indent=2))
    return dst, {
        "sample.config.images_per_identity": (str(old_n), str(old_n + 2)),
        "render.jpeg_quality": (str(old_q), str(new_q)),
        "render.note": (None, "edited"),
    }


def test_card_carries_parameters(tiny_project):
    card = json.loads((tiny_project.dataset / "dataset_card.json").read_text())
    flat = flatten_parameters(card["parameters"])
    assert flat["sample.config.images_per_identity"] == 3  # from tests/fixtures/conf_tiny
    assert {k.split(".")[0] for k in flat} == {"sample", "render", "vec2face"}


def test_diff_of_a_dataset_with_itself_changes_nothing(tiny_project):
    diff = diff_datasets(tiny_project.dataset, tiny_project.dataset, grids=False)
    assert diff.param_diffs == []
    assert not any(r.changed for r in diff.rows)
    assert (
        diff.row("identities").a
        == json.loads((tiny_project.dataset / "dataset_card.json").read_text())["identities"]
    )


def test_diff_shows_changed_parameters_values_and_grids(tiny_project, tmp_path, capsys):
    b, edits = edited_copy(tiny_project.dataset, tmp_path / "b")
    report = tmp_path / "out" / "diff.md"
    assert main(["diff", str(tiny_project.dataset), str(b), "--report", str(report)]) == 0
    out = capsys.readouterr().out

    diff = diff_datasets(tiny_project.dataset, b)
    assert {p.key for p in diff.param_diffs} == set(edits)
    for p in diff.param_diffs:
        old, new = edits[p.key]
        assert p.texts() == (old or "(absent)", new)
        line = next(x for x in out.splitlines() if x.startswith(p.key))
        assert line.split()[1:] == [old or "(absent)", new]
    sep = diff.row("separability @ t")
    assert sep.changed and sep.delta == f"{sep.b - sep.a:+.3f}"
    assert not diff.row("images").changed and diff.row("images").delta == "="
    for name in (
        "identities",
        "separability_real @ t",
        "intra-class cos mean",
        "feature_fd",
        "AttrOP yaw success",
        "leaked identities",
        "images/s (render)",
        "|yaw| mean (deg)",
    ):
        assert name in out

    md = report.read_text()
    assert "| sample.config.images_per_identity |" in md and "![A samples](diff_a.png)" in md
    manifest = diff_datasets(tiny_project.dataset, b, grids=False)
    assert manifest.row("images").a == 18
    for side in ("a", "b"):
        grid = np.asarray(Image.open(report.with_name(f"diff_{side}.png")))
        # tiny run: 6 identities x 3 images of 32 px, 2 px padding
        assert grid.shape == (6 * 34 + 2, 3 * 34 + 2, 3)
    assert np.array_equal(diff.grid_a, diff.grid_b)  # same images, only the card was edited


def test_yaw_sparkline_marks_empty_bins_and_scales_jointly():
    assert yaw_sparkline([0, 1, 3]) == "·▃█"
    assert yaw_sparkline([0, 1, 3], scale=1.0) == "·▂▆"
    assert yaw_sparkline([0, 0]) == ""


# -------------------------------------------------------------------------------------- revisions


def git(repo: Path, *args: str) -> None:
    env = clean_env(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    subprocess.run([GIT, *args], cwd=repo, check=True, capture_output=True, env=env)


def dvc(repo: Path, *args: str) -> None:
    result = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=clean_env()
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def dvc_repo(tiny_project, tmp_path_factory) -> tuple[Path, dict]:
    """A git + DVC repo with two commits of the dataset (`dvc add`): the run's, then an edit."""
    repo = tmp_path_factory.mktemp("dvc_repo")
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    target = repo / DATASET
    target.parent.mkdir(parents=True)
    shutil.copytree(tiny_project.dataset, target)
    dvc(repo, "add", "-q", DATASET)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dataset v1")
    shutil.rmtree(target)
    _, edits = edited_copy(tiny_project.dataset, target)
    dvc(repo, "add", "-q", DATASET)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dataset v2")
    git(repo, "tag", "v2")
    return repo, edits


@needs_git
def test_diff_between_dvc_revisions_through_the_console_script(dvc_repo, tmp_path):
    repo, edits = dvc_repo
    shutil.rmtree(repo / DATASET)  # the revisions must come from git + the DVC cache
    result = subprocess.run(
        [
            str(BIN / "face-pipelines"),
            "diff",
            "rev:HEAD~1",
            "rev:v2",
            "--repo",
            str(repo),
            "--report",
            "r/diff.md",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.splitlines()[0]
    assert "A: rev:HEAD~1 (" in header and "B: rev:v2 (" in header
    for key, (old, new) in edits.items():
        line = next(x for x in result.stdout.splitlines() if x.startswith(key))
        assert line.split()[1:] == [old or "(absent)", new]
    assert (tmp_path / "r" / "diff_a.png").stat().st_size > 0
    assert "rev:v2" in (tmp_path / "r" / "diff.md").read_text()


@needs_git
def test_revision_against_folder_in_library(dvc_repo, tiny_project):
    repo, edits = dvc_repo
    diff = diff_datasets("rev:HEAD~1", tiny_project.dataset, repo=repo, grids=False)
    assert diff.param_diffs == []  # HEAD~1 holds the run's dataset unchanged
    diff = diff_datasets("rev:HEAD", tiny_project.dataset, repo=repo, grids=False)
    assert {p.key for p in diff.param_diffs} == set(edits)


# -------------------------------------------------------------------------------------- bad input


@pytest.fixture
def git_only_repo(tmp_path) -> Path:
    repo = tmp_path / "git_only"
    (repo / DATASET).mkdir(parents=True)
    (repo / DATASET / "dataset_card.json").write_text("{}")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "card only")
    return repo


def _bad(case: str, tiny_project, dvc_repo, tmp_path, git_only_repo) -> tuple[list[str], str]:
    ds = tiny_project.dataset
    if case == "missing folder":
        return [str(tmp_path / "nope"), str(ds)], "no such folder"
    if case == "not a dataset":
        return [str(ds), str(tmp_path)], "missing manifest.parquet, _COMPLETE, dataset_card.json"
    if case == "interrupted render":
        shutil.copytree(ds, tmp_path / "partial")
        (tmp_path / "partial" / "_COMPLETE").unlink()
        return [str(ds), str(tmp_path / "partial")], "missing _COMPLETE"
    if case == "corrupt card":
        shutil.copytree(ds, tmp_path / "corrupt")
        (tmp_path / "corrupt" / "dataset_card.json").write_text("{not json")
        return [str(ds), str(tmp_path / "corrupt")], "dataset_card.json: not valid JSON"
    if case == "unknown revision":
        return ["rev:no-such-tag", str(ds), "--repo", str(dvc_repo[0])], "unknown git revision"
    if case == "dvc not initialised":
        return ["rev:HEAD", str(ds), "--repo", str(git_only_repo)], "DVC is not initialised"
    if case == "not a git repo":
        return ["rev:HEAD", str(ds), "--repo", str(tmp_path)], "not a git repository"
    raise AssertionError(case)


@needs_git
@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "not a dataset",
        "interrupted render",
        "corrupt card",
        "unknown revision",
        "dvc not initialised",
        "not a git repo",
    ],
)
def test_bad_input_exits_2_with_one_clear_message(
    case, tiny_project, dvc_repo, tmp_path, git_only_repo, capsys
):
    args, expected = _bad(case, tiny_project, dvc_repo, tmp_path, git_only_repo)
    assert main(["diff", *args, "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("face-pipelines diff: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.md").exists()


def test_bad_input_exit_code_of_the_console_script(tmp_path):
    result = subprocess.run(
        [str(BIN / "face-pipelines"), "diff", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert "not a complete rendered dataset" in result.stderr and "Traceback" not in result.stderr

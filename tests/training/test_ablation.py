"""Recognizer ablation runner: recipe merging/validation, caching, resume-by-folder, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from face_pipelines.errors import ParameterError
from face_pipelines.io.verification_bin import write_verification_bin
from face_pipelines.params import validate_section
from face_pipelines.training.ablation import (
    ablation_markdown,
    ablation_metrics,
    deep_merge,
    run_ablation,
    variant_configs,
)

from .helpers import make_packed

BASE = {
    "arch": "small",
    "embedding_dim": 16,
    "backbone_kwargs": {"widths": [4, 4, 8, 8], "stem_width": 4},
    "s": 16.0,
    "m": 0.3,
    "epochs": 1,
    "batch_size": 16,
    "lr": 0.05,
    "num_workers": 0,
    "log_every": 1,
}


def test_deep_merge_overrides_nested_keys_without_touching_inputs():
    base = {"method": "arcface", "topofr": {"sde": True, "alpha": 0.1}, "epochs": 3}
    over = {"method": "topofr", "topofr": {"sde": False}}
    merged = deep_merge(base, over)
    assert merged == {"method": "topofr", "topofr": {"sde": False, "alpha": 0.1}, "epochs": 3}
    assert base["topofr"]["sde"] is True and over == {"method": "topofr", "topofr": {"sde": False}}


def test_variant_errors_name_the_variant_and_key():
    with pytest.raises(ParameterError, match=r"ablation\.variants\.bad\.topofr\.sdee"):
        variant_configs(BASE, {"ok": {}, "bad": {"topofr": {"sdee": False}}})
    with pytest.raises(ParameterError, match=r"ablation\.variants\.neg\.epochs"):
        variant_configs(BASE, {"neg": {"epochs": 0}})
    with pytest.raises(ParameterError, match=r"ablation\.variants\.x: expected a mapping"):
        variant_configs(BASE, {"x": "topofr"})
    with pytest.raises(ParameterError, match="at least one variant"):
        variant_configs(BASE, {})
    # The parameter schema catches the same typo before any node runs.
    with pytest.raises(ParameterError, match=r"variants\.t\.methd"):
        validate_section("ablation", {"variants": {"t": {"methd": "topofr"}}})
    with pytest.raises(ParameterError, match=r"ablation\.datasets"):
        validate_section("ablation", {"datasets": ["webface"]})


def test_default_variants_are_the_papers_ablation():
    p = validate_section("ablation", {})
    cfgs = variant_configs(BASE, p.variants)
    assert [(c.method, c.topofr.sde) for c in cfgs.values()] == [
        ("arcface", True),
        ("topofr", True),
        ("topofr", False),
    ]
    assert p.datasets == ["real", "synthetic"]


@pytest.fixture
def bench(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    issame = np.arange(20) % 2 == 0
    path = tmp_path / "bench.bin"
    write_verification_bin(path, images, issame)
    return path


def test_runs_every_variant_on_every_set_and_caches(tmp_path, bench):
    sets = {
        "real": make_packed(tmp_path / "real", n=32, size=32, classes=4, seed=0),
        "synthetic": make_packed(tmp_path / "syn", n=32, size=32, classes=4, seed=1),
    }
    variants = variant_configs(
        BASE, {"arcface": {}, "topofr_no_sde": {"method": "topofr", "topofr": {"sde": False}}}
    )
    logged: list[str] = []
    table = run_ablation(
        sets,
        variants,
        {"b": bench},
        tmp_path / "runs",
        device="cpu",
        progress=False,
        log=lambda m, s: logged.extend(m),
    )
    rows = table["rows"]
    assert [(r["variant"], r["dataset"]) for r in rows] == [
        ("arcface", "real"),
        ("arcface", "synthetic"),
        ("topofr_no_sde", "real"),
        ("topofr_no_sde", "synthetic"),
    ]
    for r in rows:
        assert not r["reused"] and r["images"] == 32
        assert 0.0 <= r["accuracy"]["b"]["mean"] <= 1.0
        assert r["mean_accuracy"] == r["accuracy"]["b"]["mean"]
    # TopoFR diagnostics reach the table only for TopoFR runs; SDE's only when SDE is on.
    assert rows[0]["diagnostics"] == {}
    assert {"l_sa", "topology_discrepancy"} <= set(rows[2]["diagnostics"])
    assert "sde_mean_weight" not in rows[2]["diagnostics"]
    assert any(k.startswith("topofr_no_sde.real.epoch/l_sa") for k in logged)
    md = ablation_markdown(table)
    assert md.count("\n") == 2 + len(rows) and "topofr_no_sde" in md
    flat = ablation_metrics(table)
    assert flat["arcface.synthetic.b"] == rows[1]["accuracy"]["b"]["mean"]
    assert "topofr_no_sde.real.l_sa" in flat

    ckpt = rows[0]["checkpoint"]
    mtime = (tmp_path / "runs").joinpath(ckpt).stat().st_mtime_ns
    again = run_ablation(sets, variants, {"b": bench}, tmp_path / "runs", "cpu", False)
    assert all(r["reused"] for r in again["rows"])
    assert (tmp_path / "runs").joinpath(ckpt).stat().st_mtime_ns == mtime
    assert [r["mean_accuracy"] for r in again["rows"]] == [r["mean_accuracy"] for r in rows]

    # A changed recipe is a new run in a new folder; the old result stays.
    changed = variant_configs(BASE, {"arcface": {"m": 0.2}})
    third = run_ablation(
        {"real": sets["real"]}, changed, {"b": bench}, tmp_path / "runs", "cpu", False
    )
    assert not third["rows"][0]["reused"]
    assert third["rows"][0]["checkpoint"] != ckpt
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs" / "arcface").iterdir()) == [
        "real",
        "real",
        "synthetic",
    ]
    saved = json.loads((tmp_path / "runs").joinpath(ckpt).with_name("run.json").read_text())
    assert saved["config"]["m"] == 0.3


def test_missing_training_set_is_named(tmp_path, bench):
    variants = variant_configs(BASE, {"arcface": {}})
    with pytest.raises(FileNotFoundError, match="training set 'real'.*index.json"):
        run_ablation(
            {"real": tmp_path / "nope"}, variants, {"b": bench}, tmp_path / "r", "cpu", False
        )

"""materialise_faceworld: layout, labels, pool disjointness, .bin protocols, caching, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from face_pipelines.faceworld import (
    IDENTITY_FIELDS,
    NUISANCE_FIELDS,
    PROTOCOLS,
    config_hash,
    faceworld_grid,
    load_faceworld_config,
    materialise_faceworld,
)
from face_pipelines.faceworld import materialise as mat
from face_pipelines.io.verification_bin import read_verification_bin

TINY = {
    "seed": 3,
    "image_size": 32,
    "chunk_identities": 3,
    "pretrain": {
        "n_ids": 4,
        "images_per_identity": {"min": 3, "max": 3, "median": 3, "log_std": 0},
    },
    "train": {"n_ids": 7, "images_per_identity": {"min": 2, "max": 9, "median": 4, "log_std": 0.8}},
    "eval": {
        "n_ids": 8,
        "fw_lfw": {"folds": 2, "pairs_per_fold": 4},
        "fw_cfp": {"folds": 2, "pairs_per_fold": 3},
        "fw_age": {"folds": 2, "pairs_per_fold": 3, "min_age_gap_years": 30},
    },
}


def tiny(**changes):
    raw = json.loads(json.dumps(TINY))
    raw.update(changes)
    return load_faceworld_config(raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fw") / "faceworld"
    info = materialise_faceworld(tiny(), root, num_workers=0, progress=False)
    return root, info


def test_summary_and_marker(world):
    root, info = world
    assert info["cached"] is False
    assert info["pools"]["pretrain"] == {
        "identities": 4,
        "images": 12,
        "labels": "pretrain/labels.parquet",
    }
    marker = json.loads((root / "faceworld.json").read_text())
    assert marker["complete"] is True and marker["config_hash"] == config_hash(tiny())
    assert not (root.parent / "faceworld.partial").exists()


@pytest.mark.parametrize("pool", ["pretrain", "train"])
def test_labels_match_the_files_written(world, pool):
    root, info = world
    labels = pd.read_parquet(root / pool / "labels.parquet")
    on_disk = sorted(str(p.relative_to(root / pool)) for p in (root / pool).glob("*/*.jpg"))
    assert sorted(labels["path"]) == on_disk
    assert len(labels) == info["pools"][pool]["images"]
    for col in ("path", "identity", *NUISANCE_FIELDS):
        assert col in labels.columns
    # identity folders are contiguous from 0 and every path sits in its identity's folder
    assert sorted(labels["identity"].unique()) == list(range(info["pools"][pool]["identities"]))
    assert (labels["path"].str.slice(0, 6).astype(int) == labels["identity"]).all()
    from PIL import Image

    with Image.open(root / pool / labels["path"].iloc[0]) as im:
        assert im.size == (32, 32) and im.format == "JPEG"


def test_pools_are_disjoint(world):
    root, _ = world
    frames = {
        p: pd.read_parquet(root / p / "identities.parquet") for p in ("pretrain", "train", "eval")
    }
    params = {p: f[list(IDENTITY_FIELDS)].to_numpy() for p, f in frames.items()}
    gids = {p: set(f["global_identity"]) for p, f in frames.items()}
    for a, b in (("pretrain", "train"), ("pretrain", "eval"), ("train", "eval")):
        assert not gids[a] & gids[b]
        # no person appears in two pools: nearest cross-pool parameter vector is far from identical
        d = np.abs(params[a][:, None, :] - params[b][None, :, :]).max(axis=2)
        assert d.min() > 1e-3
    # the pool streams are independent: growing one pool does not change another
    bigger = tiny(train={"n_ids": 12})
    np.testing.assert_array_equal(
        mat.pool_identities(bigger, "pretrain"), params["pretrain"].astype(np.float32)
    )


def test_bin_protocols(world):
    root, info = world
    for name in PROTOCOLS:
        imgs, issame = read_verification_bin(root / "eval" / f"{name}.bin")
        pairs = pd.read_parquet(root / "eval" / f"{name}_pairs.parquet")
        proto = getattr(tiny().eval, name)
        n = proto.folds * 2 * proto.pairs_per_fold
        assert imgs.shape == (2 * n, 32, 32, 3) and len(issame) == n == len(pairs)
        assert info["eval"][name]["n_pairs"] == n
        np.testing.assert_array_equal(issame, pairs["issame"].to_numpy())
        # contiguous folds, each n same pairs then n different pairs (insightface LFW layout)
        block = np.r_[np.ones(proto.pairs_per_fold, bool), np.zeros(proto.pairs_per_fold, bool)]
        np.testing.assert_array_equal(issame, np.tile(block, proto.folds))
        np.testing.assert_array_equal(
            pairs["fold"], np.repeat(np.arange(proto.folds), 2 * proto.pairs_per_fold)
        )
        same = pairs[pairs.issame]
        diff = pairs[~pairs.issame]
        assert (same.identity_a == same.identity_b).all() and (
            diff.identity_a != diff.identity_b
        ).all()
        # folds are identity-disjoint
        fold_ids = [set(g.identity_a) | set(g.identity_b) for _, g in pairs.groupby("fold")]
        assert not set.intersection(*fold_ids)
    cfp = pd.read_parquet(root / "eval" / "fw_cfp_pairs.parquet")
    assert (
        (cfp.yaw_a.abs() <= 10).all()
        and (cfp.yaw_b.abs() >= 55).all()
        and (cfp.yaw_b.abs() <= 75).all()
    )
    age = pd.read_parquet(root / "eval" / "fw_age_pairs.parquet")
    assert ((age.age_a - age.age_b).abs() >= 30 - 1e-4).all()


def test_second_call_is_cached_and_renders_nothing(world, monkeypatch):
    root, _ = world
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise AssertionError("rendered although the world is cached")

    monkeypatch.setattr(mat, "render_identity_images", boom)
    info = materialise_faceworld(tiny(), root, num_workers=0, progress=False)
    assert info["cached"] is True
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_changed_config_regenerates(tmp_path):
    root = tmp_path / "fw"
    first = materialise_faceworld(tiny(), root, progress=False)
    second = materialise_faceworld(tiny(seed=4), root, progress=False)
    assert second["cached"] is False and second["config_hash"] != first["config_hash"]
    assert json.loads((root / "faceworld.json").read_text())["config_hash"] == second["config_hash"]


def test_interrupted_run_never_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "fw"
    calls = {"n": 0}
    real = mat._render_pair_chunk

    def fail_in_eval(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(task)

    monkeypatch.setattr(mat, "_render_pair_chunk", fail_in_eval)
    with pytest.raises(KeyboardInterrupt):
        materialise_faceworld(tiny(), root, progress=False)
    assert not root.exists()  # nothing at the final path; the work lies in an obvious .partial
    partial = root.with_name(root.name + ".partial")
    assert partial.is_dir() and not (partial / "faceworld.json").exists()

    # an interrupted rebuild with a new config keeps the previous complete world as it was
    monkeypatch.setattr(mat, "_render_pair_chunk", real)
    done = materialise_faceworld(tiny(), root, progress=False)
    assert done["cached"] is False and not partial.exists()
    calls["n"] = 0
    monkeypatch.setattr(mat, "_render_pair_chunk", fail_in_eval)
    with pytest.raises(KeyboardInterrupt):
        materialise_faceworld(tiny(seed=9), root, progress=False)
    assert json.loads((root / "faceworld.json").read_text())["config_hash"] == done["config_hash"]
    assert materialise_faceworld(tiny(), root, progress=False)["cached"] is True


def test_worker_processes_give_identical_files(world, tmp_path):
    root0, _ = world
    root2 = tmp_path / "fw2"
    materialise_faceworld(tiny(), root2, num_workers=2, progress=False)
    files0 = sorted(p.relative_to(root0) for p in root0.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(root2) for p in root2.rglob("*") if p.is_file())
    assert files0 == files2
    for rel in files0:
        if rel.name != "faceworld.json":  # holds the root path and timings
            assert (root0 / rel).read_bytes() == (root2 / rel).read_bytes(), rel


def test_grid_shape():
    g = faceworld_grid(tiny(), n_ids=3, n_variants=4)
    assert g.dtype == np.uint8 and g.shape == (3 * 34 - 2, 4 * 34 - 2, 3)
    assert g[:32, :32].std() > 5  # a rendered face, not a blank tile

"""Sharded, resumable rendering: completeness, crash recovery, worker-count invariance, stale shards."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from face_pipelines.errors import DataError
from face_pipelines.io.images import decode_image, encode_jpeg
from face_pipelines.io.recordio import read_recordio
from face_pipelines.synthesis.attrop import AttrOPBatchEditor, AttrOPModels
from face_pipelines.synthesis.dataset_writer import (
    COMPLETE_MARKER,
    MANIFEST_NAME,
    SHARDS_DIR,
    export_recordio,
    image_relpath,
    is_complete,
    load_rendered_manifest,
    render_dataset,
)

REPO = Path(__file__).resolve().parents[2]
DIM = 8
SIZE = 16
N_IDS = 5
PER_ID = 3
SHARD = 2  # 3 shards: identities {0,1}, {2,3}, {4}
BATCH = 2  # shards of 6 rows take 3 generator calls


class ToyGenerator(nn.Module):
    """Linear -> reshape -> conv -> tanh with noise from the caller's torch.Generator (stands in
    for Vec2Face's random masking). Optional fault injection on the Nth generate() call."""

    def __init__(self, seed: int = 0, crash_at: int | None = None, kill_at: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_size = SIZE
        self.fc = nn.Linear(DIM, 3 * 8 * 8)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.crash_at = crash_at
        self.kill_at = kill_at
        self.calls = 0

    def generate(self, vectors, generator=None):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.calls == self.crash_at:
            raise RuntimeError("injected crash")
        x = self.fc(vectors).view(-1, 3, 8, 8)
        x = x + 0.2 * torch.randn(x.shape, generator=generator)
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return torch.tanh(self.conv(x))


def make_toy_generator(seed: int = 0, crash_at: int | None = None, kill_at: int | None = None):
    """Module level, so functools.partial of it pickles into spawned workers."""
    return ToyGenerator(seed, crash_at, kill_at)


class ToyTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("w", torch.randn(3 * SIZE * SIZE, DIM, generator=g) / SIZE)

    def forward(self, images):
        return images.flatten(1) @ self.w


class ToyPose(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, images):
        return 20.0 * self.teacher(images)[:, :2]


def make_toy_models() -> AttrOPModels:
    teacher = ToyTeacher()
    return AttrOPModels(teacher, ToyPose(teacher), None)


def make_plan(n_ids: int = N_IDS, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    plan = pd.DataFrame(
        {
            "identity": np.repeat(np.arange(n_ids), PER_ID),
            "index": np.tile(np.arange(PER_ID), n_ids),
            "sigma": np.tile([0.3, 0.5, 0.7], n_ids),
            "yaw_target": rng.uniform(0, 40, n_ids * PER_ID),
        }
    )
    vectors = rng.standard_normal((len(plan), DIM)).astype(np.float32)
    # Shuffle the rows: the renderer must not depend on the plan's row order.
    perm = rng.permutation(len(plan))
    return plan.iloc[perm].reset_index(drop=True), vectors[perm]


def render(root, plan, vectors, make=None, **kw):
    kw = {"shard_identities": SHARD, "batch_size": BATCH, "progress": False, "seed": 7, **kw}
    return render_dataset(plan, vectors, make or functools.partial(make_toy_generator), root, **kw)


def planned_files(plan: pd.DataFrame) -> set[str]:
    return {image_relpath(i, j) for i, j in zip(plan["identity"], plan["index"], strict=True)}


def files_on_disk(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not p.relative_to(root).as_posix().startswith(SHARDS_DIR)
        and p.name not in (MANIFEST_NAME, COMPLETE_MARKER)
    }


def read_pixels(root: Path, files) -> dict[str, np.ndarray]:
    return {f: decode_image((root / f).read_bytes(), f) for f in sorted(files)}


def assert_same_images(root_a: Path, root_b: Path, files) -> None:
    a, b = read_pixels(root_a, files), read_pixels(root_b, files)
    for f in files:
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, _one_thread):
    """An uninterrupted in-process render of the default plan."""
    root = tmp_path_factory.mktemp("reference")
    plan, vectors = make_plan()
    manifest, report = render(root, plan, vectors)
    return root, plan, vectors, manifest, report


def test_complete_render_writes_exactly_the_plan(reference):
    root, plan, _, manifest, report = reference
    assert files_on_disk(root) == planned_files(plan)
    assert is_complete(root)
    assert report["complete"] and report["shards"] == 3 and report["shards_rendered"] == 3
    assert report["images"] == report["images_rendered"] == len(plan)
    assert report["identities"] == N_IDS and report["images_per_second"] > 0
    assert sorted((root / SHARDS_DIR).iterdir()) == [
        root / SHARDS_DIR / f"shard_{k:05d}.json" for k in range(3)
    ]
    # Manifest: one row per file, in (identity, index) order, plan columns carried through.
    loaded = load_rendered_manifest(root)
    pd.testing.assert_frame_equal(loaded, manifest)
    assert set(manifest["path"]) == planned_files(plan)
    assert list(manifest[["identity", "index"]].itertuples(index=False)) == sorted(
        zip(plan["identity"], plan["index"], strict=True)
    )
    for col in ("path", "identity", "index", "sigma", "yaw_target", "attrop_steps", "attrop_met"):
        assert col in manifest.columns
    merged = manifest.merge(plan, on=["identity", "index"], suffixes=("", "_plan"))
    np.testing.assert_array_equal(merged["yaw_target"], merged["yaw_target_plan"])
    assert (manifest["attrop_steps"] == 0).all() and manifest["attrop_met"].isna().all()
    for f, img in read_pixels(root, manifest["path"]).items():
        assert img.shape == (SIZE, SIZE, 3), f
    marker = json.loads((root / COMPLETE_MARKER).read_text())
    assert marker["images"] == len(plan) and marker["identities"] == N_IDS


def test_same_images_as_direct_generation(reference):
    """Shard 0's images are the generator's output for its rows, with the shard's seed."""
    from face_pipelines.synthesis.attrop import generate_images
    from face_pipelines.synthesis.dataset_writer import shard_seed

    root, plan, vectors, manifest, _ = reference
    rows = manifest[manifest["identity"] < SHARD]
    lookup = {
        (i, j): k for k, (i, j) in enumerate(zip(plan["identity"], plan["index"], strict=True))
    }
    v = vectors[[lookup[(i, j)] for i, j in zip(rows["identity"], rows["index"], strict=True)]]
    gen = make_toy_generator().eval()
    g = torch.Generator().manual_seed(shard_seed(7, 0))
    direct = np.concatenate(
        [generate_images(gen, v[a : a + BATCH], BATCH, g) for a in range(0, len(v), BATCH)]
    )
    for k, p in enumerate(rows["path"]):
        assert (root / p).read_bytes() == encode_jpeg(direct[k], 95), p


def test_crash_midway_then_resume(reference, tmp_path):
    ref_root, plan, vectors, ref_manifest, _ = reference
    root = tmp_path / "ds"
    # Call 5 = second batch of shard 1: shard 0 is complete, shard 1 has 2 images written.
    with pytest.raises(RuntimeError, match="injected crash"):
        render(root, plan, vectors, functools.partial(make_toy_generator, crash_at=5))
    assert not (root / COMPLETE_MARKER).exists() and not is_complete(root)
    assert not (root / MANIFEST_NAME).exists()
    with pytest.raises(DataError, match="incomplete"):
        load_rendered_manifest(root)
    assert (root / SHARDS_DIR / "shard_00000.json").exists()
    assert not (root / SHARDS_DIR / "shard_00001.json").exists()
    assert len(list((root / "000002").glob("*.jpg"))) == 2  # the partial shard
    shard0 = sorted(p for p in root.rglob("*.jpg") if p.parent.name in ("000000", "000001"))
    mtimes = {p: p.stat().st_mtime_ns for p in shard0}

    manifest, report = render(root, plan, vectors)
    assert report["shards_skipped"] == 1 and report["shards_rendered"] == 2
    assert report["images_rendered"] == len(plan) - 2 * PER_ID
    assert {p: p.stat().st_mtime_ns for p in shard0} == mtimes  # untouched
    assert is_complete(root)
    assert files_on_disk(root) == planned_files(plan)  # no duplicate, missing or stray file
    pd.testing.assert_frame_equal(manifest, ref_manifest)
    assert_same_images(root, ref_root, planned_files(plan))


def test_sigkill_midway_then_resume(reference, tmp_path):
    ref_root, plan, vectors, _, _ = reference
    root = tmp_path / "ds"
    np.save(tmp_path / "vectors.npy", vectors)
    plan.to_parquet(tmp_path / "plan.parquet")
    script = textwrap.dedent(
        f"""
        import functools, numpy as np, pandas as pd, torch
        torch.set_num_threads(1)
        from tests.synthesis.test_dataset_writer import make_toy_generator, render
        plan = pd.read_parquet({str(tmp_path / "plan.parquet")!r})
        vectors = np.load({str(tmp_path / "vectors.npy")!r})
        render({str(root)!r}, plan, vectors, functools.partial(make_toy_generator, kill_at=8))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not is_complete(root)
    # Shards 0 and 1 finished (6 calls); shard 2 died on its second batch.
    assert sorted(p.name for p in (root / SHARDS_DIR).glob("*.json")) == [
        "shard_00000.json",
        "shard_00001.json",
    ]
    assert len(list((root / "000004").glob("*.jpg"))) == BATCH

    _, report = render(root, plan, vectors)
    assert report["shards_skipped"] == 2 and report["shards_rendered"] == 1
    assert is_complete(root)
    assert files_on_disk(root) == planned_files(plan)
    assert_same_images(root, ref_root, planned_files(plan))


@pytest.mark.timeout(240)
def test_two_workers_match_in_process(reference, tmp_path):
    ref_root, plan, vectors, ref_manifest, _ = reference
    manifest, report = render(tmp_path / "ds", plan, vectors, num_workers=2, threads_per_worker=1)
    assert report["num_workers"] == 2 and report["shards_rendered"] == 3 and report["complete"]
    pd.testing.assert_frame_equal(manifest, ref_manifest)
    assert files_on_disk(tmp_path / "ds") == planned_files(plan)
    for f in planned_files(plan):  # byte-identical JPEGs
        assert (tmp_path / "ds" / f).read_bytes() == (ref_root / f).read_bytes(), f


def test_changed_plan_invalidates_stale_shards(reference, tmp_path):
    ref_root, plan, vectors, _, _ = reference
    root = tmp_path / "ds"
    render(root, plan, vectors)
    # New vectors for identity 3 (shard 1) only.
    changed = vectors.copy()
    changed[plan["identity"].to_numpy() == 3] += 1.0
    manifest, report = render(root, plan, changed)
    assert report["shards_rendered"] == 1 and report["shards_skipped"] == 2
    fresh = tmp_path / "fresh"
    render(fresh, plan, changed)
    assert_same_images(root, fresh, planned_files(plan))
    id3 = {f for f in planned_files(plan) if f.startswith("000003/")}
    before, after = read_pixels(ref_root, id3), read_pixels(root, id3)
    assert all(not np.array_equal(before[f], after[f]) for f in id3)
    # A changed target column or seed also re-renders.
    plan2 = plan.copy()
    plan2.loc[plan2["identity"] == 4, "yaw_target"] = 1.0
    _, report = render(root, plan2, changed)
    assert report["shards_rendered"] == 1
    _, report = render(root, plan2, changed, seed=8)
    assert report["shards_rendered"] == 3
    # A plan that shrank: identity 4, its folder and shard 2's marker disappear.
    keep = plan2["identity"].to_numpy() < 4
    manifest, report = render(root, plan2[keep], changed[keep], seed=8)
    assert report["shards"] == 2 and report["shards_skipped"] == 2
    assert not (root / "000004").exists()
    assert not (root / SHARDS_DIR / "shard_00002.json").exists()
    assert files_on_disk(root) == planned_files(plan2[keep]) == set(manifest["path"])


def test_deleted_image_is_rerendered(reference, tmp_path):
    _, plan, vectors, _, _ = reference
    root = tmp_path / "ds"
    render(root, plan, vectors)
    (root / "000004" / "001.jpg").unlink()
    _, report = render(root, plan, vectors)
    assert report["shards_rendered"] == 1 and files_on_disk(root) == planned_files(plan)


def test_attrop_editor_columns(tmp_path):
    plan, vectors = make_plan(n_ids=2)
    plan["attrop"] = plan["index"] != 0
    centres = np.stack([vectors[plan["identity"].to_numpy() == i].mean(0) for i in range(2)])
    editor = AttrOPBatchEditor(centres, make_toy_models, {"steps_max": 5, "lr": 0.05})
    manifest, report = render(tmp_path / "ds", plan, vectors, attrop=editor)
    assert report["complete"] and report["attrop_rows"] == 4
    opt = manifest["attrop"].to_numpy(bool)
    assert manifest.loc[opt, "attrop_met"].notna().all()
    assert manifest.loc[~opt, "attrop_met"].isna().all()
    assert (manifest.loc[~opt, "attrop_steps"] == 0).all()
    assert manifest["attrop_steps"].between(0, 5).all()
    for col in ("id_cos_to_centre", "yaw_pred", "quality_pred", "attrop_converged"):
        assert col in manifest.columns
    assert np.isfinite(manifest["id_cos_to_centre"]).all()
    # The manifest round-trips through parquet with its nullable booleans.
    pd.testing.assert_frame_equal(load_rendered_manifest(tmp_path / "ds"), manifest)
    # A different AttrOP config is part of the shard hash.
    editor2 = AttrOPBatchEditor(centres, make_toy_models, {"steps_max": 6, "lr": 0.05})
    _, report = render(tmp_path / "ds", plan, vectors, attrop=editor2)
    assert report["shards_rendered"] == 1


def test_export_recordio(reference, tmp_path):
    root, plan, _, manifest, _ = reference
    rec = tmp_path / "train.rec"
    assert export_recordio(root, rec) == len(plan)
    items = list(read_recordio(rec, tmp_path / "train.idx"))
    assert [label for label, _ in items] == manifest["identity"].tolist()
    assert [data for _, data in items] == [(root / p).read_bytes() for p in manifest["path"]]
    assert (tmp_path / "property").read_text() == f"{N_IDS},{SIZE},{SIZE}"


def test_bad_plans_are_rejected(tmp_path):
    plan, vectors = make_plan()
    with pytest.raises(DataError, match="contiguous"):
        render(tmp_path / "a", plan[plan["identity"] != 2], vectors[plan["identity"] != 2])
    dup = pd.concat([plan, plan.iloc[:1]], ignore_index=True)
    with pytest.raises(DataError, match="more than once"):
        render(tmp_path / "b", dup, np.concatenate([vectors, vectors[:1]]))
    with pytest.raises(DataError, match="one row per plan row"):
        render(tmp_path / "c", plan, vectors[:-1])
    with pytest.raises(DataError, match="path"):
        render(tmp_path / "d", plan.assign(path="x"), vectors)
    assert not is_complete(tmp_path / "a")


def test_unpicklable_generator_factory_is_refused_for_workers(tmp_path):
    from face_pipelines.errors import ParameterError

    plan, vectors = make_plan()
    with pytest.raises(ParameterError, match="picklable"):
        render(tmp_path / "ds", plan, vectors, make=lambda: make_toy_generator(), num_workers=2)
    assert not is_complete(tmp_path / "ds")


def test_ranks_split_shards_and_the_last_one_finishes(reference, tmp_path):
    ref_root, plan, vectors, ref_manifest, _ = reference
    root = tmp_path / "ds"
    manifest, report = render(root, plan, vectors, rank=1, world_size=2)
    assert report["shards_rendered"] == 1 and not report["complete"] and manifest.empty
    assert not is_complete(root)
    manifest, report = render(root, plan, vectors, rank=0, world_size=2)
    assert report["shards_rendered"] == 2 and report["complete"] and is_complete(root)
    pd.testing.assert_frame_equal(manifest, ref_manifest)
    assert_same_images(root, ref_root, planned_files(plan))

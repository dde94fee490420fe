"""The one seed policy: every stage runs with its own `seed` plus common.seed
(CommonParams.stage_seed), so common.seed 0 keeps today's seeds exactly and any other value re-seeds
every stage but FaceWorld (the benchmark world)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from pydantic import BaseModel

from face_pipelines.params import CommonParams, validate_all, validate_section


@pytest.fixture
def params(project_copy: Path) -> dict:
    """The project's own parameters (conf/base, no local overrides)."""
    from face_pipelines import settings

    loader = OmegaConfigLoader(
        conf_source=str(project_copy / "conf"), env="local", **settings.CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def _with_seed(params: dict, seed: int) -> dict:
    return {**params["common"], "seed": seed, "progress": False, "device": "cpu"}


def _seeded_models(model: BaseModel, where: str):
    """(path, model) of every model in a validated section that has a `seed` field."""
    if "seed" in type(model).model_fields:
        yield where, model
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _seeded_models(value, f"{where}.{name}")


def test_the_default_common_seed_keeps_every_stage_seed_as_its_file_gives_it(params):
    com = validate_section("common", params["common"])
    assert com.seed == 0
    sections = validate_all({k: v for k, v in params.items() if k != "faceworld"})
    seeded = [pair for name, model in sections.items() for pair in _seeded_models(model, name)]
    paths = {path for path, _ in seeded}
    # The seeds the nodes pass through the policy (trainer recipes, plans, draws).
    assert {
        "subset",
        "teacher.recognizer",
        "teacher.judge.recognizer",
        "teacher.pose.train",
        "vec2face.train",
        "sample.config",
        "render",
        "recognizer",
        "recognizer.train",
        "drgan.train",
        "drgan.synth.plan",
        "drgan.synth.render",
        "elegant.classifier",
        "elegant.train",
        "elegant.edit",
    } <= paths
    for path, model in seeded:
        assert com.stage_seed(model.seed) == model.seed, path
        assert com.seeded(model) == model, path


def test_common_seed_offsets_every_stage_seed_and_keeps_them_apart():
    com = CommonParams(seed=7)
    assert [com.stage_seed(s) for s in (0, 1, 4)] == [7, 8, 11]
    with pytest.raises(ValueError):
        CommonParams(seed=-1)


def test_the_seeds_reaching_the_trainers_follow_common_seed(params, tmp_path, monkeypatch):
    from face_pipelines.pipelines.ablation import nodes as ablation
    from face_pipelines.pipelines.recognizer import nodes as recognizer
    from face_pipelines.pipelines.sample import nodes as sample
    from face_pipelines.pipelines.teacher import nodes as teacher

    got: dict[str, int] = {}

    def trainer(key):
        def fake(*args, **kwargs):
            cfg = next(a for a in args if isinstance(a, BaseModel))
            got[key] = cfg.seed
            return {"checkpoint": None}

        return fake

    monkeypatch.setattr(recognizer, "train_recognizer", trainer("recognizer"))
    monkeypatch.setattr(teacher, "train_recognizer", trainer("teacher"))
    monkeypatch.setattr(teacher, "train_pose_regressor", trainer("pose"))
    monkeypatch.setattr(sample, "make_identity_plan", trainer("sample"))

    def fake_ablation(datasets, variants, *args, **kwargs):
        got.update({f"ablation.{n}": c.seed for n, c in variants.items()})
        raise StopIteration  # what the node does with the table is not under test

    monkeypatch.setattr(ablation, "run_ablation", fake_ablation)
    monkeypatch.setattr(ablation, "benchmark_paths", lambda *a: {})

    t = {**params["teacher"], "source": "train"}
    t["judge"] = {**t["judge"], "source": "train"}
    t["pose"] = {**t["pose"], "source": "train"}
    file_seeds = {
        "recognizer": params["recognizer"]["train"]["seed"],
        "judge": t["judge"]["recognizer"]["seed"],
        "pose": t["pose"]["train"]["seed"],
        "sample": params["sample"]["config"]["seed"],
        "plan": params["recognizer"]["seed"],
    }
    info = {"images": 10}
    manifest = pd.DataFrame({"identity": [0, 1], "yaw": [0.0, 1.0], "pitch": [0.0, 0.0]})
    for k in (0, 5):
        common = _with_seed(params, k)
        got.clear()
        recognizer.train_instance({"packed_dir": "x"}, tmp_path, params["recognizer"], common)
        teacher.train_judge(None, tmp_path, tmp_path, t, common)
        got["judge"] = got.pop("teacher")
        teacher.train_pose_model(manifest, tmp_path, tmp_path, t, common)
        with pytest.raises(StopIteration):
            ablation.run_recognizer_ablation(
                {"packed_dir": "r"},
                {"packed_dir": "s"},
                {},
                tmp_path,
                params["ablation"],
                params["recognizer"],
                params["evaluate"],
                common,
            )
        with pytest.raises(ValueError):  # the fake plan returns no 4-tuple
            sample.sample_identities(np.zeros((2, 4)), manifest, params["sample"], common)
        got["plan"] = recognizer.plan_training_sets(info, manifest, params["recognizer"], common)[
            "seed"
        ]
        matched = recognizer.plan_matched_training_set(
            info, {"training_set": {"images": 4}}, params["recognizer"], True, common
        )
        assert matched["seed"] == got["plan"]
        for key, seed in file_seeds.items():
            assert got[key] == seed + k, (key, k)
        variants = [v for key, v in got.items() if key.startswith("ablation.")]
        assert variants and all(v == params["recognizer"]["train"]["seed"] + k for v in variants)


def _world(root: Path) -> dict:
    """A tiny FaceWorld-shaped train pool: 12 identities x 6 images."""
    train = root / "train"
    train.mkdir(parents=True)
    ids = np.repeat(np.arange(12), 6)
    paths = [f"{i:03d}/{j}.jpg" for i, j in zip(ids, np.tile(np.arange(6), 12), strict=True)]
    pd.DataFrame({"path": paths, "identity": ids}).to_parquet(train / "labels.parquet")
    return {"enabled": True, "root": str(root)}


def test_a_subset_selection_is_reproducible_per_common_seed_and_moves_with_it(params, tmp_path):
    from face_pipelines.pipelines.subset.nodes import select_subset

    info = _world(tmp_path)
    subset = {**params["subset"], "n_ids": 4, "min_images": 2, "max_images": 3}

    def chosen(k: int) -> pd.DataFrame:
        return select_subset(info, subset, _with_seed(params, k))[0]

    pd.testing.assert_frame_equal(chosen(0), chosen(0))
    pd.testing.assert_frame_equal(chosen(3), chosen(3))
    assert not chosen(0)["path"].equals(chosen(3)["path"])
    # common.seed 3 with the file's subset seed is the file seed + 3 with common.seed 0.
    shifted = {**subset, "seed": subset["seed"] + 3}
    pd.testing.assert_frame_equal(chosen(3), select_subset(info, shifted, _with_seed(params, 0))[0])

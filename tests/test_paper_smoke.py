"""`kedro run --env paper` over the whole chain on CPU at miniature counts.

The paper configuration runs unchanged except for counts, step budgets and the files a user gives
(runtime --params, as a user overrides it): a few FaceWorld identities rendered at 112 px as a
WebFace-style folder, and files in the upstream layouts with random weights - insightface IResNet
state dicts (teacher, judge, MagFace), the released Vec2Face generator file (small), a 6DRepNet
deploy-form file (small RepVGG). It proves the stages read those layouts, the recognizer builds and
trains the configured model, evaluation reads insightface .bin files, and every output is written.

The IResNet-100 of the released teacher / MagFace files and the recognizer's IResNet-50 cost 1-2 s
per 112-px image on a 2-core CPU; those archs are overridden to IResNet-18 here (same insightface
names and loading path). test_paper_config.py builds the paper-sized models from the same merged
configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from face_pipelines.faceworld import materialise_faceworld
from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.models.registry import build_backbone
from face_pipelines.models.repvgg import RepVGGLayout
from face_pipelines.models.sixdrepnet import SixDRepNet
from tests.models_vec2face.test_release_loader import (
    random_weights,
    released_shapes,
    save_like_upstream,
)
from tests.test_pipelines_e2e import _kedro

pytestmark = pytest.mark.slow

SMALL_IRESNET = "iresnet18"
# The released generator's layout at 112 px (7x7 grid, five decoder levels), narrow.
GENERATOR = dict(
    feat_dim=512, width=48, depth=2, decoder_depth=1, grid=7, z=8, ch=32, ch_mult=(1, 1, 2, 2, 4)
)
POSE = RepVGGLayout(
    stem_width=8, stage_blocks=(1, 2, 1, 1), stage_widths=(8, 8, 16, 16), groups=(1, 1, 1, 2, 1, 1)
)
WORLD = {
    "image_size": 112,
    "pretrain": {"n_ids": 1, "images_per_identity": {"min": 1, "max": 1, "median": 1}},
    "train": {"n_ids": 4, "images_per_identity": {"min": 3, "max": 3, "median": 3, "log_std": 0}},
    "eval": {
        "n_ids": 10,
        "fw_lfw": {"folds": 5, "pairs_per_fold": 1},
        "fw_cfp": {"folds": 5, "pairs_per_fold": 1},
        "fw_age": {"folds": 5, "pairs_per_fold": 1},
    },
}


def _user_files(root: Path) -> dict[str, str]:
    """What a paper user brings, in the published layouts, with random weights."""
    torch.manual_seed(0)
    world = materialise_faceworld(WORLD, root / "faceworld", progress=False)
    bins = {k: str(root / "faceworld" / v["bin"]) for k, v in world["eval"].items()}
    files = {"webface": str(root / "faceworld" / "train"), **bins}
    for name in ("arcface", "magface"):  # bare insightface state dicts
        net = build_backbone(SMALL_IRESNET, num_features=512, input_size=112)
        files[name] = str(root / f"{name}-{SMALL_IRESNET}.pth")
        torch.save(net.state_dict(), files[name])
    files["sixdrepnet"] = str(root / "6DRepNet_deploy.pth")
    torch.save(SixDRepNet(POSE, deploy=True).state_dict(), files["sixdrepnet"])
    gen = random_weights(released_shapes(**GENERATOR))
    files["vec2face"] = str(save_like_upstream(root / "vec2face_generator.pth", gen))
    # Another set's identity centres in the teacher's space (here: random directions).
    files["centres"] = str(root / "other_centres.npy")
    np.save(files["centres"], np.random.default_rng(0).normal(size=(16, 512)).astype(np.float32))
    return files


def _runtime_params(f: dict[str, str]) -> str:
    params = {
        "common.num_workers": 0,
        "common.progress": "false",
        "subset.path": f["webface"],
        "subset.n_ids": 4,
        "teacher.checkpoint": f["arcface"],
        "teacher.checkpoint_arch": SMALL_IRESNET,
        "teacher.judge.checkpoint": f["magface"],
        "teacher.judge.checkpoint_arch": SMALL_IRESNET,
        "teacher.pose.checkpoint": f["sixdrepnet"],
        "vec2face.source": "checkpoint",
        "vec2face.checkpoint": f["vec2face"],
        "sample.distribution_centres": f["centres"],
        "sample.config.n_ids": 3,
        "sample.config.images_per_identity": 3,
        "sample.config.attrop.fraction": 0.34,  # one AttrOP image per identity
        "render.batch_size": 16,
        "render.attrop.steps_max": 1,
        "render.attrop.quality_model.checkpoint": f["magface"],
        "render.attrop.quality_model.checkpoint_arch": SMALL_IRESNET,
        "render.attrop.pose_model.checkpoint": f["sixdrepnet"],
        "recognizer.train.arch": SMALL_IRESNET,
        "recognizer.train.epochs": 1,
        "recognizer.train.batch_size": 4,
        "recognizer.train.num_workers": 0,
        "evaluate.benchmarks.lfw": f["fw_lfw"],
        "evaluate.benchmarks.cfp_fp": f["fw_cfp"],
        "evaluate.benchmarks.agedb_30": f["fw_age"],
        "evaluate.benchmarks.calfw": f["fw_age"],
        "evaluate.benchmarks.cplfw": f["fw_lfw"],
    }
    return ",".join(f"{k}={v}" for k, v in params.items())


def test_paper_chain_runs_at_miniature_counts(project_copy, tmp_path):
    files = _user_files(tmp_path / "user")
    t0 = time.perf_counter()
    run = _kedro(project_copy, "run", "--env", "paper", "--params", _runtime_params(files))
    wall = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = project_copy / "data"

    def report(name: str) -> dict:
        return json.loads((data / "08_reporting" / f"{name}.json").read_text())

    # subset: the WebFace-style folder at 112 px; teacher: the insightface file's raw 512-d features
    assert report("subset_scan_report")["source"] == "folder"
    assert np.load(data / "04_feature/teacher_features.npy").shape == (12, 512)
    teacher = report("teacher_report")
    assert teacher["teacher"] == {"checkpoint": files["arcface"], "source": "checkpoint"}
    assert teacher["pose"]["checkpoint"] == files["sixdrepnet"]
    # vec2face: the released file, loaded (nothing trained), at 112 px
    v2f = report("vec2face_report")
    assert (v2f["source"], v2f["image_size"]) == ("checkpoint", 112)
    assert v2f["config"]["shortcut_on_branch"] and v2f["config"]["fp32_transformer"]
    # sample: the paper's fixed 0.4 with the calibrated value beside it, fitted on the other set
    s = report("sample_report")
    assert (s["threshold"], s["threshold_calibrated"]) == (0.4, False)
    assert -1 <= s["calibrated_threshold"] <= 1
    assert (s["distribution_fitted_on"], s["distribution_identities"]) == ("other set", 16)
    assert s["distribution_centres"] == files["centres"]
    # render: 112-px JPEGs, AttrOP rows steered by MagFace quality 27 and 6DRepNet yaw
    root = data / "07_model_output/synthetic_dataset"
    manifest = pd.read_parquet(root / "manifest.parquet")
    assert len(manifest) == len(list(root.glob("*/*.jpg"))) == 9 and (root / "_COMPLETE").exists()
    assert int(manifest["attrop_steps"].gt(0).sum()) == 3
    card = report("dataset_card")
    assert card["images"] == 9 and card["parameters"]["render"]["attrop"]["quality_model"]["target"]
    # recognizer: the paper's ArcFace recipe, 512-d at 112 px, trained on both sets
    for instance in ("synthetic", "real"):
        summary = json.loads((data / f"06_models/recognizers/{instance}_summary.json").read_text())
        ckpt = load_checkpoint(summary["checkpoint"])
        assert (ckpt["arch"], ckpt["meta"]["method"]) == (SMALL_IRESNET, "arcface")
        assert ckpt["config"] == {"num_features": 512, "input_size": 112}
    # evaluate: the five insightface benchmarks by path, flip TTA
    table = report("verification")
    assert set(table["benchmarks"]) == {"lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"}
    assert set(table["results"]) == {"synthetic", "real"}
    print(f"paper chain smoke: kedro run {wall:.0f} s")

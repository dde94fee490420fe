"""The generator trainer's quality-versus-compute curve and its pose agreement measure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from face_pipelines.models.registry import build_backbone
from face_pipelines.training.vec2face import (
    CurveLog,
    Vec2FaceTrainConfig,
    teacher_view,
    train_vec2face,
    yaw_agreement,
)
from tests.cards import minimal_card

from .helpers import TINY_VEC2FACE, make_packed


class MeanBrightnessPose(nn.Module):
    """A stand-in pose model: yaw = 90 x the image's mean value in [-1, 1], pitch 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        yaw = 90.0 * x.mean(dim=(1, 2, 3))
        return torch.stack([yaw, torch.zeros_like(yaw)], dim=1)


def _tiny_config(**kw) -> Vec2FaceTrainConfig:
    base = {
        "model": TINY_VEC2FACE,
        "epochs": 3,
        "batch_size": 16,
        "gan_start_epoch": 2,
        "eval_images": 16,
        "grid_identities": 2,
        "heldout_identities": 0.25,
        "discriminator_scales": 1,
        "teacher_view_jitter": 2,
    }
    return Vec2FaceTrainConfig(**(base | kw))


def test_yaw_agreement_compares_generated_and_real_pose():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    same = yaw_agreement(MeanBrightnessPose(), real, real, "cpu")
    assert same["yaw_corr"] == pytest.approx(1.0)
    assert same["yaw_mae"] == pytest.approx(0.0, abs=1e-5)
    assert same["yaw_abs_mean_generated"] == pytest.approx(same["yaw_abs_mean_real"])
    # A generator that draws one frontal average: no agreement, no turned heads.
    grey = np.full_like(real, 128)
    flat = yaw_agreement(MeanBrightnessPose(), grey, real, "cpu")
    assert flat["yaw_corr"] == 0.0
    assert flat["yaw_abs_mean_generated"] < 1.0
    assert flat["yaw_gt30_generated"] == 0.0


def test_curve_log_counts_training_time_and_survives_a_restart(tmp_path):
    path = tmp_path / "curve.jsonl"
    log = CurveLog(path)
    first = log.add(1, 10.0, {"ssim_mean": 0.3, "note": "ignored"})
    assert first == [{"epoch": 1, "train_seconds": 10.0, "ssim_mean": 0.3}]
    again = CurveLog(path)  # a resumed run continues from the last point's seconds
    assert again.points == first
    assert again.seconds() >= 10.0
    pts = again.add(1, 99.0, {"ssim_mean": 0.9})  # a point for an epoch already there is kept
    assert pts == first
    again.reset()
    assert not path.exists() and CurveLog(path).points == []


def test_training_writes_curve_points_with_pose_metrics(tmp_path):
    torch.manual_seed(0)
    packed = make_packed(tmp_path / "packed", n=64, size=32, classes=8)
    labels = np.arange(64) % 8
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(8, 24))[labels] + 0.1 * rng.normal(size=(64, 24))).astype(
        np.float32
    )
    kw = {"widths": (4, 4, 8, 8), "stem_width": 4, "input_size": 32, "embedding_dim": 24}
    teacher = build_backbone("small", **kw)
    judge = build_backbone("small", **(kw | {"embedding_dim": 8}))
    cfg = _tiny_config(curve_epochs=[1, 2, 7])  # 7 > epochs: ignored; the last is always a point
    out = tmp_path / "gen"
    report = train_vec2face(
        packed,
        features,
        teacher,
        judge,
        out,
        tmp_path / "grids",
        cfg,
        progress=False,
        pose_model=MeanBrightnessPose(),
    )
    curve = report["curve"]
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    seconds = [p["train_seconds"] for p in curve]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    for p in curve:
        for key in ("ssim_mean", "judge_identity_cos_mean", "pixel_spread_generated", "yaw_corr"):
            assert np.isfinite(p[key]), key
    assert report["yaw_abs_mean_real"] == pytest.approx(curve[-1]["yaw_abs_mean_real"])
    lines = (out / "curve.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]

    # The finished run is reused: its curve is kept as trained, not re-timed.
    again = train_vec2face(
        packed, features, teacher, judge, out, tmp_path / "grids", cfg, progress=False
    )
    assert [p["train_seconds"] for p in again["curve"]] == seconds


def test_teacher_view_moves_fake_and_real_together():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    same = teacher_view(x, x, 0, step=3)
    assert same[0] is x and same[1] is x  # off: the published loss, untouched
    for step in (0, 1, 2, 3):
        fake, real = teacher_view(x, x.clone(), 4, step)
        assert fake.shape == real.shape == x.shape
        assert torch.equal(fake, real)  # one transform for both
    moved = [not torch.equal(teacher_view(x, x, 4, s)[0], x) for s in range(8)]
    assert any(moved)
    assert torch.equal(teacher_view(x, x, 4, 5)[0], teacher_view(x, x, 4, 5)[0])  # by step


def test_card_carries_the_generator_heldout_measures():
    from face_pipelines.reporting.dataset_card import add_generator_quality, card_summary

    card = minimal_card()
    assert add_generator_quality(card, {"checkpoint": "x"}) is card  # nothing measured: unchanged
    report = {"ssim_mean": 0.41, "judge_identity_cos_mean": 0.7, "yaw_corr": 0.55, "grid": "g"}
    report |= {"pixel_spread_generated": 0.08, "pixel_spread_real": 0.22}
    out = add_generator_quality(card, report)
    assert out["generator_heldout"]["yaw_corr"] == 0.55 and "grid" not in out["generator_heldout"]
    line = [x for x in card_summary(out).splitlines() if "generator on held-out" in x][0]
    assert "SSIM 0.410" in line and "yaw corr 0.550" in line and "(real 0.220)" in line


def test_pose_term_needs_a_pose_model_and_the_report_names_its_yaw_judge(tmp_path):
    torch.manual_seed(0)
    packed = make_packed(tmp_path / "packed", n=64, size=32, classes=8)
    labels = np.arange(64) % 8
    features = np.random.default_rng(0).normal(size=(8, 24))[labels].astype(np.float32)
    kw = {"widths": (4, 4, 8, 8), "stem_width": 4, "input_size": 32, "embedding_dim": 24}
    teacher, judge = build_backbone("small", **kw), build_backbone("small", **kw)
    weights = {"pose": 1.0}
    cfg = _tiny_config(epochs=1, weights=weights)
    args = (packed, features, teacher, judge)
    with pytest.raises(ValueError, match="weights.pose"):
        train_vec2face(*args, tmp_path / "a", tmp_path / "ga", cfg, progress=False)
    steps = {}
    rep = train_vec2face(
        *args,
        tmp_path / "b",
        tmp_path / "gb",
        cfg,
        progress=False,
        pose_model=MeanBrightnessPose(),
        log=lambda m, s: steps.update({s: m}) if "epoch/pose" in m else None,
    )
    assert "not independent" in rep["yaw_measured_by"]
    assert steps and all(np.isfinite(m["epoch/pose"]) for m in steps.values())
    rep = train_vec2face(
        *args,
        tmp_path / "c",
        tmp_path / "gc",
        cfg,
        progress=False,
        pose_model=MeanBrightnessPose(),
        pose_judge=MeanBrightnessPose(),
    )
    assert rep["yaw_measured_by"] == "independent pose judge"

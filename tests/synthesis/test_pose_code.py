"""DR-GAN as a synthetic-set generator: pose codes spread over the bins, identities sampled with the
plan's separation and leakage rules, rendering through the one renderer (layout, determinism,
resume after a crash), pose-bin success, and the encoder loaded as a recognizer."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.models.drgan import DRGANConfig, DRGANGenerator
from face_pipelines.models.inference import DRGAN_ARCH, embed_images, load_recognizer
from face_pipelines.params import validate_section
from face_pipelines.reporting.dataset_card import add_pose_code_measures
from face_pipelines.reporting.rendered import decode_rendered
from face_pipelines.synthesis.dataset_writer import (
    COMPLETE_MARKER,
    MANIFEST_NAME,
    load_rendered_manifest,
    render_dataset,
)
from face_pipelines.synthesis.factory import load_generator
from face_pipelines.synthesis.pose_code import (
    PoseCodeGenerator,
    PoseCodePlanConfig,
    make_pose_code_plan,
    pose_bin_success,
    spread_pose_bins,
)
from face_pipelines.training.drgan import save_encoder_checkpoint

CENTRES_DEG = np.array([-60.0, 0.0, 60.0])
MODEL = DRGANConfig(
    image_size=16, channels=(8, 16), feat_dim=8, noise_dim=4, num_pose_bins=3, convs_per_stage=1
)


def _drgan(seed: int = 0) -> DRGANGenerator:
    torch.manual_seed(seed)
    return DRGANGenerator(MODEL).eval()


@pytest.fixture(scope="module")
def drgan_ckpt(tmp_path_factory):
    gen = _drgan()
    path = tmp_path_factory.mktemp("drgan") / "model.pt"
    save_checkpoint(path, arch=DRGAN_ARCH, config=MODEL.model_dump(), state_dict=gen.state_dict())
    return path


def _real_f(n_ids: int = 12, per_id: int = 4, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim)) * 3
    f = np.repeat(centres, per_id, axis=0) + rng.normal(size=(n_ids * per_id, dim)) * 0.3
    return f.astype(np.float32), np.repeat(np.arange(n_ids), per_id)


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_pose_bins_are_spread_over_every_bin_per_identity():
    bins = spread_pose_bins(50, 7, [0, 1, 2], np.random.default_rng(0)).reshape(50, 7)
    counts = np.stack([np.bincount(row, minlength=3) for row in bins])
    assert (counts.max(1) - counts.min(1) <= 1).all()  # 7 images over 3 bins: 3/2/2
    assert (counts.min(1) >= 2).all()
    total = counts.sum(0)
    assert total.max() - total.min() <= 50 // 3  # offsets differ by identity: near uniform
    # fewer images than bins: an identity never repeats a bin, and the offsets cover every bin
    short = spread_pose_bins(30, 2, [0, 1, 2, 3], np.random.default_rng(1)).reshape(30, 2)
    assert (short[:, 0] != short[:, 1]).all() and set(short.ravel()) == {0, 1, 2, 3}


def test_plan_samples_separated_non_leaking_identities_with_pose_codes():
    f, labels = _real_f()
    cfg = PoseCodePlanConfig(n_ids=20, images_per_identity=5, calibration_quantile=1.0)
    plan, vectors, centres, report = make_pose_code_plan(
        f, labels, cfg, CENTRES_DEG, progress=False
    )
    assert len(plan) == len(vectors) == 100 and vectors.shape[1] == 8
    assert list(plan.groupby("identity").size()) == [5] * 20
    cos = _cos(centres, centres)
    np.fill_diagonal(cos, -1)
    assert cos.max() < report["threshold"]  # the plan's separation rule
    real = np.stack([f[labels == i].mean(0) for i in range(12)])
    assert _cos(centres, real).max() < report["leakage_threshold"]  # the leakage guard
    assert set(plan["pose_bin"]) == {0, 1, 2}
    np.testing.assert_array_equal(plan["pose_yaw_deg"], CENTRES_DEG[plan["pose_bin"]])
    assert report["images_per_pose_bin"] == np.bincount(plan["pose_bin"], minlength=3).tolist()
    # sigma 0: every image of an identity is decoded from the same f (variation = pose code + z)
    np.testing.assert_allclose(vectors[:5], np.repeat(vectors[:1], 5, 0), rtol=1e-5)
    # the same seed gives the same plan
    plan2, vectors2, _, _ = make_pose_code_plan(f, labels, cfg, CENTRES_DEG, progress=False)
    pd.testing.assert_frame_equal(plan, plan2)
    np.testing.assert_array_equal(vectors, vectors2)


def test_plan_restricted_bins_and_bad_bins():
    f, labels = _real_f()
    cfg = PoseCodePlanConfig(images_per_identity=4, calibration_quantile=1.0, pose_bins=[0, 2])
    plan, _, _, _ = make_pose_code_plan(f, labels, cfg, CENTRES_DEG, progress=False)
    assert set(plan["pose_bin"]) == {0, 2}
    with pytest.raises(ParameterError, match=r"drgan\.synth\.plan\.pose_bins"):
        make_pose_code_plan(
            f, labels, cfg.model_copy(update={"pose_bins": [5]}), CENTRES_DEG, progress=False
        )
    with pytest.raises(ValidationError, match="distinct"):
        PoseCodePlanConfig(pose_bins=[1, 1])
    with pytest.raises(ParameterError, match=r"drgan\.synth\.plan\.pose_bin"):
        validate_section("drgan", {"synth": {"plan": {"pose_bin": [0]}}})


def _plan_for_render(n_ids: int = 5, k: int = 3):
    f, labels = _real_f()
    cfg = PoseCodePlanConfig(n_ids=n_ids, images_per_identity=k, calibration_quantile=1.0)
    plan, vectors, _, _ = make_pose_code_plan(f, labels, cfg, CENTRES_DEG, progress=False)
    return plan, vectors


class CrashingPoseCodeGenerator(PoseCodeGenerator):
    """Raises on its Nth generate() call (a crash in the middle of a render)."""

    def __init__(self, drgan, crash_at: int):
        super().__init__(drgan)
        self.calls, self.crash_at = 0, crash_at

    def generate(self, vectors, generator=None, targets=None):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("injected crash")
        return super().generate(vectors, generator, targets)


def _images(root, manifest):
    return decode_rendered(root, manifest["path"].tolist(), 16)


def test_render_with_the_drgan_generator_writes_the_layout_and_resumes(drgan_ckpt, tmp_path):
    plan, vectors = _plan_for_render()
    make = functools.partial(load_generator, str(drgan_ckpt), "cpu", "drgan")
    ref = tmp_path / "ref"
    manifest, report = render_dataset(
        plan, vectors, make, ref, shard_identities=2, batch_size=2, progress=False
    )
    assert report["complete"] and (ref / COMPLETE_MARKER).is_file()
    assert (ref / MANIFEST_NAME).is_file()
    expected = {
        f"{i:06d}/{j:03d}.jpg" for i, j in zip(plan["identity"], plan["index"], strict=True)
    }
    assert {p.relative_to(ref).as_posix() for p in ref.glob("*/*.jpg")} == expected
    assert set(manifest["path"]) == expected
    loaded = load_rendered_manifest(ref)
    np.testing.assert_array_equal(
        loaded.sort_values("path")["pose_bin"], plan.sort_values(["identity", "index"])["pose_bin"]
    )
    # A crash in the second shard, then a re-run: the same images as the uninterrupted render.
    out = tmp_path / "crashed"
    crashing = functools.partial(CrashingPoseCodeGenerator, _drgan(), 4)
    with pytest.raises(RuntimeError, match="injected crash"):
        render_dataset(
            plan, vectors, crashing, out, shard_identities=2, batch_size=2, progress=False
        )
    assert not (out / COMPLETE_MARKER).exists()
    fingerprint_free = functools.partial(PoseCodeGenerator, _drgan())
    _, again = render_dataset(
        plan, vectors, fingerprint_free, out, shard_identities=2, batch_size=2, progress=False
    )
    assert again["complete"] and again["shards_skipped"] == 1 and again["shards_rendered"] == 2
    done = load_rendered_manifest(out)
    np.testing.assert_array_equal(_images(out, done), _images(ref, load_rendered_manifest(ref)))


def test_pose_code_reaches_the_decoder_and_z_comes_from_the_shard_generator():
    gen = PoseCodeGenerator(_drgan())
    f = torch.randn(1, 8).repeat(3, 1)
    a = gen.generate(f, torch.Generator().manual_seed(0), {"pose_bin": np.array([0, 1, 2])})
    b = gen.generate(f, torch.Generator().manual_seed(0), {"pose_bin": np.array([0, 1, 2])})
    assert torch.equal(a, b)  # z drawn from the given generator
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a[1], a[2])
    with pytest.raises(DataError, match="pose_bin"):
        gen.generate(f, None, {})


def test_render_plan_without_pose_bins_is_refused(drgan_ckpt, tmp_path):
    plan, vectors = _plan_for_render()
    make = functools.partial(load_generator, str(drgan_ckpt), "cpu", "drgan")
    with pytest.raises(DataError, match="pose_bin"):
        render_dataset(plan.drop(columns="pose_bin"), vectors, make, tmp_path, progress=False)
    assert not (tmp_path / COMPLETE_MARKER).exists()
    with pytest.raises(ParameterError, match="unknown generator 'stylegan'"):
        load_generator(str(drgan_ckpt), "cpu", "stylegan")


def test_pose_bin_success_counts_hits_per_bin():
    target = np.array([0, 0, 1, 1, 2, 2])
    yaw = np.array([-58.0, -20.0, 5.0, 35.0, 75.0, 20.0])  # hits: -58 -> 0, 5 -> 1, 75 -> 2
    s = pose_bin_success(target, yaw, CENTRES_DEG)
    assert s["pose_bin_hit_rate"] == pytest.approx(0.5)
    assert s["pose_bin_hit_rate_per_bin"] == [0.5, 0.5, 0.5]
    assert s["pose_bin_within_one_rate"] == 1.0
    assert s["pose_bin_images"] == [2, 2, 2]
    empty_bin = pose_bin_success(np.array([0, 0]), np.array([-60.0, 0.0]), CENTRES_DEG)
    assert empty_bin["pose_bin_hit_rate_per_bin"] == [0.5, None, None]
    with pytest.raises(DataError):
        pose_bin_success(np.array([0]), np.array([1.0, 2.0]), CENTRES_DEG)


def test_encoder_loads_as_a_recognizer(drgan_ckpt, tmp_path):
    summary = save_encoder_checkpoint(drgan_ckpt, tmp_path / "encoder.pt")
    model, size = load_recognizer(summary["checkpoint"])
    assert size == 16 and model.num_features == 8
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        embed_images(model, images, "cpu"), embed_images(_drgan().encoder, images, "cpu"), atol=1e-6
    )


def test_card_replaces_the_attrop_check_with_the_pose_bin_check_and_reports_the_ceiling():
    card = {"checks": {"attrop_yaw_success_at_least_0_9": False, "images_on_disk_equal_card": True}}
    generated = pose_bin_success(np.array([0, 1, 2, 2]), np.array([-60, 0, 60, 0.0]), CENTRES_DEG)
    real = pose_bin_success(np.array([0, 1, 1, 2]), np.array([-60, 0, 0, 0.0]), CENTRES_DEG)
    out = add_pose_code_measures(card, generated, {"judge_identity_cos_mean": 0.5}, real)
    assert out["checks"] == {
        "images_on_disk_equal_card": True,
        "pose_bin_hit_rate_at_least_0_8": False,  # 3 of 4
    }
    assert out["pose_bin_hit_rate"] == 0.75 and out["judge_identity_cos_mean"] == 0.5
    assert out["pose_bin_hit_rate_real"] == 0.75  # real images weighted by how common a bin is
    assert out["pose_bin_hit_rate_real_uniform"] == pytest.approx(2 / 3)  # bins weighted equally
    assert "attrop_yaw_success_at_least_0_9" in card["checks"]  # the input card is not modified

"""Pose retention: a teacher trained with the pose term keeps a pose model's output linearly
readable from its raw embedding, which a plain margin-loss teacher does not need to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import ParameterError
from face_pipelines.io.packed import PackedWriter
from face_pipelines.models.inference import (
    extract_features,
    load_pose_regressor,
    load_recognizer,
    predict_pose,
)
from face_pipelines.training.attributes import PoseConfig, train_pose_regressor
from face_pipelines.training.recognizer import (
    RecognizerConfig,
    appearance_target,
    train_recognizer,
)

from .helpers import recorder

CFG = RecognizerConfig(
    arch="small",
    embedding_dim=3,  # narrow: a plain margin loss spends it on identity and drops the ramp
    backbone_kwargs={"widths": [8, 8, 16, 16], "stem_width": 8},
    method="arcface",
    s=16.0,
    m=0.3,
    epochs=8,
    batch_size=32,
    lr=0.05,
    warmup_epochs=0.5,
    num_workers=0,
    log_every=1,
    augment={"flip_prob": 0.0},
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four identities (a colour each) seen at a continuous 'yaw' (the slope of a left-to-right
    shading ramp), and a pose model trained to read that yaw; returns (root, its yaw, labels,
    the pose model's checkpoint)."""
    root = tmp_path_factory.mktemp("pose_retention")
    rng = np.random.default_rng(0)
    n, size, classes = 192, 32, 4
    labels = np.arange(n) % classes
    base = rng.integers(40, 200, (classes, 1, 1, 3))
    slope = rng.uniform(-1.0, 1.0, n)
    ramp = np.linspace(-1.0, 1.0, size)[None, None, :, None] * slope[:, None, None, None]
    noise = rng.integers(-20, 21, (n, size, size, 3))
    images = np.clip(base[labels] * (1.0 + 0.6 * ramp) + noise, 0, 255)
    with PackedWriter(root / "packed", image_size=size, shard_size=64) as writer:
        writer.add_batch(images.astype(np.uint8), labels)
    yaw = slope * 45.0
    summary = train_pose_regressor(
        root / "packed",
        np.stack([yaw, np.zeros_like(yaw)], 1),
        root / "pose",
        PoseConfig(widths=[8, 16], epochs=8, batch_size=32, lr=5e-3),
        device="cpu",
        progress=False,
    )
    pose = load_pose_regressor(summary["checkpoint"])
    target = predict_pose(pose, images.astype(np.uint8), "cpu")
    assert np.corrcoef(target[:, 0], yaw)[0, 1] > 0.8  # the pose model reads the ramp
    return root, target, labels, summary["checkpoint"]


def _within_identity(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for c in np.unique(labels):
        out[labels == c] -= out[labels == c].mean(0)
    return out


def _probe_r2(features: np.ndarray, target: np.ndarray, labels: np.ndarray) -> float:
    """R^2 of a least-squares linear read-out of the target's first column within identities
    (per-identity means removed from both), so colour - which is identity - cannot explain it."""
    x = _within_identity(features, labels)
    y = _within_identity(target[:, :1], labels)[:, 0]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return 1.0 - float(np.sum((x @ coef - y) ** 2) / np.sum(y**2))


def _features(summary: dict, packed_root) -> np.ndarray:
    model, _ = load_recognizer(summary["checkpoint"])
    return extract_features(model, packed_root, device="cpu", progress=False)


def test_the_pose_term_keeps_pose_readable_from_the_raw_embedding(world, tmp_path):
    root, target, labels, pose_ckpt = world
    assert target[:, 0].std() > 0  # the pose model's output varies across the set
    plain = train_recognizer(root / "packed", tmp_path / "plain", CFG, "cpu", False)
    cfg = CFG.model_copy(
        update={
            "pose_retention": CFG.pose_retention.model_copy(
                update={"weight": 3.0, "checkpoint": str(pose_ckpt)}
            )
        }
    )
    log: dict = {}
    kept = train_recognizer(root / "packed", tmp_path / "kept", cfg, "cpu", False, recorder(log))
    losses = [log[f"epoch{e}"]["epoch/pose_loss"] for e in range(1, CFG.epochs + 1)]
    assert losses[-1] < losses[0]  # the pose head learns the pose model's output
    r2_plain = _probe_r2(_features(plain, root / "packed"), target, labels)
    r2_kept = _probe_r2(_features(kept, root / "packed"), target, labels)
    assert r2_kept > r2_plain + 0.3, (r2_plain, r2_kept)
    assert r2_kept > 0.8, r2_kept


def test_the_pose_term_needs_a_pose_model(world, tmp_path):
    root = world[0]
    cfg = CFG.model_copy(
        update={"pose_retention": CFG.pose_retention.model_copy(update={"weight": 1.0})}
    )
    with pytest.raises(ParameterError, match="pose_retention.checkpoint"):
        train_recognizer(root / "packed", tmp_path / "x", cfg, "cpu", False)


def test_the_appearance_term_keeps_the_thumbnail_readable_without_a_pose_model(world, tmp_path):
    """The shading ramp is also coarse appearance: a 2x2 thumbnail of each image sees it (left
    cells darker or brighter than right ones), so regressing the thumbnail keeps it in the raw
    embedding with no pose model and no label."""
    root, target, labels, _ = world
    # 6-d: room for the identity colours the thumbnail also holds, and for the ramp.
    base = RecognizerConfig.model_validate({**CFG.model_dump(), "embedding_dim": 6})
    plain = train_recognizer(root / "packed", tmp_path / "plain", base, "cpu", False)
    cfg = RecognizerConfig.model_validate(
        {**base.model_dump(), "appearance_retention": {"weight": 3.0, "grid": 2}}
    )
    log: dict = {}
    kept = train_recognizer(root / "packed", tmp_path / "kept", cfg, "cpu", False, recorder(log))
    losses = [log[f"epoch{e}"]["epoch/appearance_loss"] for e in range(1, CFG.epochs + 1)]
    assert losses[-1] < losses[0]
    r2_plain = _probe_r2(_features(plain, root / "packed"), target, labels)
    r2_kept = _probe_r2(_features(kept, root / "packed"), target, labels)
    assert r2_kept > r2_plain + 0.3, (r2_plain, r2_kept)
    print(f"ramp R^2 plain {r2_plain:.3f}, appearance-kept {r2_kept:.3f}")


def test_appearance_target_is_the_cell_mean_colour():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, :, :2] = 1.0  # left half red
    t = appearance_target(x, 2).view(1, 3, 2, 2)
    assert torch.allclose(t[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.count_nonzero(t[0, 1:]) == 0

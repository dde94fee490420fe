"""DR-GAN training: loss directions, learning on a tiny packed set, exact resume after a kill,
multi-image batches, generation helpers, checkpoint loading, and clear errors (config, yaw labels,
the node's manifest checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.checkpoint import load_checkpoint, save_checkpoint
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.drgan import DRGANConfig, DRGANGenerator
from face_pipelines.models.inference import load_drgan
from face_pipelines.params import validate_section
from face_pipelines.pipelines.drgan.nodes import subset_yaw_labels, train_pose_generator
from face_pipelines.training.drgan import (
    DRGANTrainConfig,
    PackedPoseDataset,
    discriminator_loss,
    encode_images,
    generate_images,
    generator_loss,
    pose_grid,
    train_drgan,
)

from .helpers import Stop, make_packed, recorder

MODEL = {"channels": [8, 16], "feat_dim": 8, "noise_dim": 4, "num_pose_bins": 3}
CFG = DRGANTrainConfig(
    model=MODEL,
    epochs=3,
    batch_size=8,
    lr=2e-3,
    lr_d=5e-3,
    log_every=1,
    eval_images=8,
    grid_identities=2,
    balance_pose_bins=True,
)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 16 px, 4 identities whose mean colour differs; 48 images -> 6 batches of 8 per epoch.
    return make_packed(tmp_path_factory.mktemp("drgan") / "packed", n=48, size=16, classes=4)


@pytest.fixture(scope="module")
def yaw(packed):
    # Yaw tied to the image (its class) so that D can learn the pose of real images.
    return np.array([-60.0, -10.0, 10.0, 60.0])[PackedImages(packed).labels]


def test_loss_directions():
    y_id, y_pose = torch.tensor([0, 1]), torch.tensor([2, 0])
    right = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])  # 2 identities + the "generated" class
    fake_as_fake = torch.tensor([[0, 0, 9.0], [0, 0, 9.0]])
    fake_as_real = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])
    pose_right = torch.tensor([[0, 0, 9.0], [9.0, 0, 0]])
    pose_wrong = torch.tensor([[9.0, 0, 0], [0, 0, 9.0]])
    good_d = discriminator_loss(right, pose_right, fake_as_fake, y_id, y_pose)
    fooled_d = discriminator_loss(right, pose_right, fake_as_real, y_id, y_pose)
    assert good_d["d_fake"] < 0.01 < 8 < fooled_d["d_fake"]  # fakes belong to the last class
    assert good_d["d_real_identity"] < 0.01 and good_d["d_real_pose"] < 0.01
    wrong_pose_d = discriminator_loss(right, pose_wrong, fake_as_fake, y_id, y_pose)
    assert wrong_pose_d["d_real_pose"] > 8
    assert wrong_pose_d["d_loss"] == pytest.approx(
        sum(wrong_pose_d[k] for k in ("d_real_identity", "d_real_pose", "d_fake"))
    )
    # G wins when its fakes pass as the source identity at the target pose.
    winning_g = generator_loss(fake_as_real, pose_right, y_id, y_pose)
    losing_g = generator_loss(fake_as_fake, pose_wrong, y_id, y_pose)
    assert winning_g["g_loss"] < 0.02 and losing_g["g_identity"] > 8 and losing_g["g_pose"] > 8
    half = generator_loss(fake_as_fake, pose_wrong, y_id, y_pose, pose_weight=0.5)
    assert half["g_loss"] == pytest.approx(float(losing_g["g_identity"] + 0.5 * losing_g["g_pose"]))
    # Pose-bin weights: a miss on a rare bin (weight 3) costs three times a common one's (1).
    one_wrong = torch.tensor([[9.0, 0, 0], [9.0, 0, 0]])  # image 0 (bin 2) wrong, image 1 right
    plain = discriminator_loss(right, one_wrong, fake_as_fake, y_id, y_pose)
    w = torch.tensor([1.0, 1.0, 3.0])
    weighted = discriminator_loss(right, one_wrong, fake_as_fake, y_id, y_pose, 1.0, w)
    # weighted mean: (3 * ce_0 + 1 * ce_1) / (3 + 1) vs (ce_0 + ce_1) / 2, with ce_1 ~ 0
    assert float(weighted["d_real_pose"]) == pytest.approx(
        1.5 * float(plain["d_real_pose"]), rel=1e-3
    )


def test_training_learns_and_resumes_exactly(packed, yaw, tmp_path):
    ref: dict = {}
    report = train_drgan(packed, yaw, tmp_path / "a", CFG, "cpu", False, recorder(ref))
    steps = sorted(k for k in ref if isinstance(k, int))
    assert steps == list(range(1, 19))  # 3 epochs x 6 batches
    assert all(np.isfinite(v) for s in steps for v in ref[s].values())
    # D learns who and which pose the real faces are; it spots the generated ones.
    first, last = ref["epoch1"], ref["epoch3"]
    assert last["epoch/d_real_identity"] < first["epoch/d_real_identity"]
    assert last["epoch/d_real_pose"] < first["epoch/d_real_pose"]
    assert last["epoch/d_loss"] < first["epoch/d_loss"]
    for key in ("eval/generated_pose_acc", "eval/generated_identity_acc"):
        assert 0 <= last[key] <= 1
    assert report["pose_bin_centres_deg"] == [-60.0, 0.0, 60.0]
    assert report["train_images_per_pose_bin"] == [12, 24, 12]
    assert len(report["epoch_grids"]) == 3
    # Grid: 1 row (identity 0) x (real + 3 pose codes) per epoch; final: 2 rows; 16 px + 2 px pad.
    from PIL import Image

    assert Image.open(report["epoch_grids"][0]).size == (2 + 4 * 18, 2 + 18)
    assert Image.open(report["grid"]).size == (2 + 4 * 18, 2 + 2 * 18)

    # Die at step 9 (inside epoch 2); the epoch-1 checkpoint survives; resume replays 7..18.
    partial: dict = {}
    with pytest.raises(Stop):
        train_drgan(packed, yaw, tmp_path / "b", CFG, "cpu", False, recorder(partial, 9))
    assert not (tmp_path / "b" / "model.pt").exists()  # an interrupted run never looks finished
    assert load_checkpoint(tmp_path / "b" / "train_state" / "last.pt")["meta"]["step"] == 6
    resumed: dict = {}
    train_drgan(packed, yaw, tmp_path / "b", CFG, "cpu", False, recorder(resumed))
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(7, 19))
    for step in range(7, 19):
        for key in ("d_loss", "g_loss", "generated_pose_acc"):
            assert resumed[step][key] == pytest.approx(ref[step][key], abs=1e-5), (step, key)

    # The saved generator reproduces the same images as the one trained without interruption.
    gen_a, gen_b = load_drgan(tmp_path / "a" / "model.pt"), load_drgan(tmp_path / "b" / "model.pt")
    images, _ = PackedImages(packed).get_batch([0, 1, 2])
    f = encode_images(gen_a, images)
    np.testing.assert_allclose(f, encode_images(gen_b, images), atol=1e-5)
    out = generate_images(gen_a, f, [0, 1, 2], seed=3)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, generate_images(gen_a, f, [0, 1, 2], seed=3))
    assert not np.array_equal(out, generate_images(gen_a, f, [0, 1, 2], seed=4))  # z matters
    with pytest.raises(DataError, match="pose bins of shape"):
        generate_images(gen_a, f, [0, 1])


def test_multi_image_items_are_one_identity_and_train(packed, yaw, tmp_path):
    p = PackedImages(packed)
    bins = np.arange(len(p)) % 3
    ds = PackedPoseDataset(p, bins, images_per_identity=3)
    items = ds.__getitems__([(0, 11), (5, 12)])
    for (images, label, pose), first in zip(items, (0, 5), strict=True):
        assert images.shape == (3, 3, 16, 16) and pose.shape == (3,)
        assert label == p.labels[first]
        rows = [
            i
            for i in range(len(p))
            if any(np.array_equal(images[k].permute(1, 2, 0).numpy(), p[i][0]) for k in range(3))
        ]
        assert {int(p.labels[r]) for r in rows} == {label}  # all n images are of that identity
    assert ds.__getitems__([(0, 11)])[0][0].equal(items[0][0])  # same sample seed, same group

    cfg = CFG.model_copy(update={"model": {**MODEL, "multi_image": True}, "epochs": 1})
    log: dict = {}
    report = train_drgan(packed, yaw, tmp_path / "m", cfg, "cpu", False, recorder(log))
    assert report["multi_image"] and np.isfinite(log["epoch1"]["epoch/g_loss"])
    assert load_drgan(report["checkpoint"]).config.multi_image


def test_pose_grid_keeps_noise_along_a_row():
    torch.manual_seed(0)
    gen = DRGANGenerator(DRGANConfig(image_size=16, **MODEL))
    real = np.full((2, 16, 16, 3), 100, np.uint8)
    grid = pose_grid(gen, real)
    assert grid.shape == (2 + 2 * 18, 2 + 4 * 18, 3)
    np.testing.assert_array_equal(grid[2:18, 2:18], real[0])  # first column: the real image


def test_bad_parameters_are_refused_with_the_key():
    with pytest.raises(ParameterError, match=r"drgan\.train: .*model\.chanels: Extra inputs"):
        validate_section("drgan", {"train": {"model": {"chanels": [8]}}})
    with pytest.raises(ParameterError, match="image_size is set from the packed images"):
        validate_section("drgan", {"train": {"model": {"image_size": 64}}})
    with pytest.raises(ParameterError, match="yaw_max > yaw_min"):
        validate_section("drgan", {"train": {"yaw_min_deg": 30, "yaw_max_deg": -30}})
    with pytest.raises(ParameterError, match=r"drgan\.train\.epochs"):
        validate_section("drgan", {"train": {"epochs": 0}})
    with pytest.raises(ParameterError, match=r"drgan\.train\.images_per_identity"):
        validate_section("drgan", {"train": {"images_per_identity": 1}})
    with pytest.raises(ValidationError, match="model.num_pose_bins"):
        DRGANTrainConfig(model={"num_pose_bins": 1})


def test_bad_data_is_refused(packed, yaw, tmp_path):
    with pytest.raises(DataError, match="47 yaw labels for 48 packed images"):
        train_drgan(packed, yaw[:-1], tmp_path, CFG, "cpu", False)
    bad = yaw.copy()
    bad[5] = np.nan
    with pytest.raises(DataError, match="position 5"):
        train_drgan(packed, bad, tmp_path, CFG, "cpu", False)
    deep = CFG.model_copy(update={"model": {**MODEL, "channels": [8, 8, 8, 8, 8]}})
    with pytest.raises(DataError, match="16 px packed images.*not divisible"):
        train_drgan(packed, yaw, tmp_path, deep, "cpu", False)
    save_checkpoint(tmp_path / "other.pt", arch="vec2face", config={}, state_dict={})
    with pytest.raises(DataError, match="expected a drgan checkpoint"):
        load_drgan(tmp_path / "other.pt")


def test_node_reads_yaw_from_the_manifest_and_names_what_is_missing(packed, yaw, tmp_path):
    p = PackedImages(packed)
    manifest = pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(p))], "identity": p.labels})
    with pytest.raises(DataError, match="no 'yaw' column"):
        subset_yaw_labels(manifest, p)
    with pytest.raises(DataError, match="47 rows"):
        subset_yaw_labels(manifest.iloc[:-1].assign(yaw=yaw[:-1]), p)
    shuffled = manifest.assign(yaw=yaw, identity=np.roll(p.labels, 1))
    with pytest.raises(DataError, match="not aligned"):
        subset_yaw_labels(shuffled, p)
    holes = manifest.assign(yaw=yaw)
    holes.loc[3, "yaw"] = None
    with pytest.raises(DataError, match=r"'yaw' is missing for 1 image.*row 3, 3.jpg"):
        subset_yaw_labels(holes, p)

    params = {"train": {**CFG.model_dump(), "epochs": 1}}
    report, fig, metrics = train_pose_generator(
        packed,
        manifest.assign(yaw=yaw),
        tmp_path / "drgan",
        params,
        {"progress": False, "device": "cpu"},
    )
    assert (tmp_path / "drgan" / "model.pt").exists()
    assert "epoch/d_loss" in metrics and "final.generated_pose_acc" in metrics
    assert fig.get_axes()  # the grid figure the catalog logs to MLflow

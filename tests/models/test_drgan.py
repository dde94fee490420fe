"""DR-GAN model: shapes at 32/64/112 px, pose binning edges, pose code and noise in the decoder,
confidence fusion, and clear errors for impossible architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.drgan import (
    DRGANConfig,
    DRGANDiscriminator,
    DRGANGenerator,
    fuse_by_confidence,
    pose_bin_centres,
    yaw_to_pose_bin,
)

TINY = {"channels": (8, 16, 16, 16), "feat_dim": 12, "noise_dim": 5, "num_pose_bins": 9}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("size", "start"), [(32, 2), (64, 4), (112, 7)])
@pytest.mark.parametrize("convs_per_stage", [1, 2])
def test_shapes_at_every_image_size(size, start, convs_per_stage):
    cfg = DRGANConfig(image_size=size, convs_per_stage=convs_per_stage, **TINY)
    assert cfg.start_size == start
    torch.manual_seed(0)
    gen, disc = DRGANGenerator(cfg), DRGANDiscriminator(cfg, num_identities=7)
    x = torch.rand(3, 3, size, size) * 2 - 1
    f, confidence = gen.encode(x)
    assert f.shape == (3, 12) and confidence is None
    assert torch.equal(gen.encoder(x), f)  # the encoder alone is an image -> embedding model
    fake = gen(x, torch.tensor([0, 4, 8]))
    assert fake.shape == x.shape
    assert fake.min() >= -1 and fake.max() <= 1  # tanh output, same range as normalised images
    identity_logits, pose_logits = disc(fake)
    assert identity_logits.shape == (3, 8)  # Nd + 1: the last class stands for "generated"
    assert pose_logits.shape == (3, 9)
    assert disc.fake_class == 7


def test_decoder_uses_pose_code_and_noise():
    torch.manual_seed(0)
    gen = DRGANGenerator(DRGANConfig(image_size=32, **TINY)).eval()
    f = torch.randn(2, 12)
    z = gen.sample_noise(2, "cpu", torch.Generator().manual_seed(1))
    assert z.min() >= -1 and z.max() <= 1 and z.shape == (2, 5)
    a = gen.decode(f, torch.tensor([0, 0]), z)
    assert torch.equal(a, gen.decode(f, torch.tensor([0, 0]), z))  # deterministic in eval mode
    assert not torch.allclose(a, gen.decode(f, torch.tensor([8, 8]), z))
    assert not torch.allclose(a, gen.decode(f, torch.tensor([0, 0]), -z))
    with pytest.raises(ParameterError, match=r"pose bins must be in \[0, 8\]"):
        gen.decode(f, torch.tensor([0, 9]), z)


def test_pose_bins_follow_the_paper_and_clamp_at_the_ends():
    np.testing.assert_allclose(pose_bin_centres(), np.arange(-60, 61, 15))
    yaw = np.array([-90, -60, -52.51, -52.5, -7.5, 0.0, 7.49, 7.5, 37.49, 44.9, 60, 74.97])
    np.testing.assert_array_equal(yaw_to_pose_bin(yaw), [0, 0, 0, 1, 4, 4, 4, 5, 6, 7, 8, 8])
    np.testing.assert_array_equal(
        yaw_to_pose_bin([-30, 0, 30], num_bins=3, yaw_min=-30, yaw_max=30), [0, 1, 2]
    )
    assert yaw_to_pose_bin(np.zeros(0)).shape == (0,)


def test_pose_binning_refuses_missing_yaw_and_bad_ranges():
    with pytest.raises(DataError, match=r"1 yaw value.*position 2"):
        yaw_to_pose_bin([0.0, 10.0, np.nan])
    with pytest.raises(ParameterError, match="yaw_max > yaw_min"):
        pose_bin_centres(9, 60, -60)
    with pytest.raises(ParameterError, match="num_bins >= 2"):
        pose_bin_centres(1)


def test_fusion_weights_images_by_confidence():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]])
    fused = fuse_by_confidence(f, torch.tensor([1.0, 0.0, 0.5, 0.5]), n=2)
    torch.testing.assert_close(fused, torch.tensor([[1.0, 0.0], [3.0, 1.0]]))
    fused = fuse_by_confidence(f, torch.tensor([0.25, 0.75, 1.0, 1.0]), n=2)
    torch.testing.assert_close(fused[0], torch.tensor([0.25, 0.75]))
    with pytest.raises(ParameterError, match="groups of n=3"):
        fuse_by_confidence(f, torch.ones(4), n=3)


def test_multi_image_encoder_outputs_a_confidence_per_image():
    torch.manual_seed(0)
    gen = DRGANGenerator(DRGANConfig(image_size=32, multi_image=True, **TINY))
    f, confidence = gen.encode(torch.rand(4, 3, 32, 32))
    assert f.shape == (4, 12) and confidence.shape == (4,)
    assert ((confidence > 0) & (confidence < 1)).all()
    fused = fuse_by_confidence(f, confidence, n=2)
    assert fused.shape == (2, 12)
    confidence.sum().backward()  # the confidence is learned through the encoder
    assert gen.encoder.fc.weight.grad[-1].abs().sum() > 0


def test_impossible_architectures_are_refused_with_the_key():
    with pytest.raises(
        ValidationError, match=r"image_size 48 is not divisible by 2\*\*len\(channels\) = 32"
    ):
        DRGANConfig(image_size=48, channels=(8, 8, 8, 8, 8))
    with pytest.raises(ValidationError, match="channels must all be > 0"):
        DRGANConfig(channels=(8, 0))
    with pytest.raises(ValidationError, match="num_pose_bins"):
        DRGANConfig(num_pose_bins=1)
    with pytest.raises(ValidationError, match="extra"):
        DRGANConfig(chanels=(8,))
    with pytest.raises(ParameterError, match="num_identities >= 1"):
        DRGANDiscriminator(DRGANConfig(), num_identities=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_forward_on_cuda():
    cfg = DRGANConfig(image_size=64, **TINY)
    gen, disc = DRGANGenerator(cfg).cuda(), DRGANDiscriminator(cfg, 5).cuda()
    x = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        identity_logits, pose_logits = disc(gen(x, torch.arange(4, device="cuda")))
    assert torch.isfinite(identity_logits.float()).all() and pose_logits.shape == (4, 9)

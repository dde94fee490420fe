"""ELEGANT model: shapes, batch-independent l2 normalisation (no BatchNorm), latent slot swapping,
residual reconstruction, two-scale conditional discriminators, and config errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from face_pipelines.errors import ParameterError
from face_pipelines.models.elegant import (
    ELEGANTConfig,
    ELEGANTDiscriminator,
    ELEGANTGenerator,
    L2Norm,
    swap_slot,
)

CFG = ELEGANTConfig(
    image_size=32, num_attributes=3, channels=(8, 16, 24), slot_channels=4, disc_channels=(8, 16)
)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return ELEGANTGenerator(CFG), ELEGANTDiscriminator(CFG)


def test_shapes(nets):
    gen, disc = nets
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = gen.encode(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4)]
    assert gen.decode(feats[-1], feats).shape == x.shape  # a residual image
    assert gen(x).shape == x.shape
    scores = disc(x, torch.tensor([[1.0, 0, 1], [0, 0, 0]]))
    # Full resolution 32 px and half resolution 16 px, two stride-2 stages each: patch maps.
    assert [tuple(s.shape) for s in scores] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    with pytest.raises(ParameterError, match="labels of shape"):
        disc(x, torch.zeros(2, 2))


def test_no_batchnorm_and_outputs_do_not_depend_on_the_batch(nets):
    gen, disc = nets
    for net in nets:
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert any(isinstance(m, L2Norm) for m in net.modules())
    gen.train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    alone = gen(x[:1])
    together = gen(x)[:1]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)
    y = torch.zeros(4, 3)
    torch.testing.assert_close(disc(x[:1], y[:1])[1], disc(x, y)[1][:1], atol=1e-5, rtol=1e-5)


def test_l2norm_is_scale_invariant_per_sample():
    torch.manual_seed(1)
    norm = L2Norm(5)
    x = torch.randn(3, 5, 4, 4)
    scaled = x * torch.tensor([1.0, 10.0, 0.5])[:, None, None, None]
    torch.testing.assert_close(norm(x), norm(scaled), atol=1e-5, rtol=1e-4)
    # Unit root-mean-square per sample before the (identity-initialised) affine part.
    assert norm(x).pow(2).mean(dim=(1, 2, 3)).sub(1).abs().max() < 1e-3


def test_slot_swap_exchanges_only_that_slot(nets):
    gen, _ = nets
    z_a, z_b = torch.randn(2, 24, 4, 4), torch.randn(2, 24, 4, 4)
    z_c, z_d = swap_slot(z_a, z_b, 1, CFG.slot_channels)
    assert torch.equal(z_c[:, 4:8], z_b[:, 4:8]) and torch.equal(z_d[:, 4:8], z_a[:, 4:8])
    rest = [c for c in range(24) if not 4 <= c < 8]
    assert torch.equal(z_c[:, rest], z_a[:, rest]) and torch.equal(z_d[:, rest], z_b[:, rest])
    back, _ = swap_slot(z_c, z_d, 1, CFG.slot_channels)
    assert torch.equal(back, z_a)  # swapping twice restores A
    assert torch.equal(gen.slot(z_c, 1), gen.slot(z_b, 1))
    assert torch.equal(gen.with_slot(z_a, 1, gen.slot(z_b, 1)), z_c)
    with pytest.raises(ParameterError, match="attribute index 3"):
        gen.slot(z_a, 3)


def test_forward_is_input_plus_residual_of_its_own_latent(nets):
    gen, _ = nets
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = gen.encode(x)
    torch.testing.assert_close(gen(x), x + gen.decode(feats[-1], feats))
    other = torch.randn_like(feats[-1])
    assert not torch.allclose(gen(x, other), gen(x))  # the new latent drives the residual


def test_config_errors():
    with pytest.raises(ValidationError, match="leaves no 'rest' channels"):
        ELEGANTConfig(num_attributes=4, channels=(8, 16), slot_channels=4, image_size=16)
    with pytest.raises(ValidationError, match="not divisible"):
        ELEGANTConfig(image_size=36, channels=(8, 16, 24), slot_channels=2, num_attributes=2)
    with pytest.raises(ValidationError, match="half-resolution discriminator"):
        ELEGANTConfig(
            image_size=8, num_attributes=1, channels=(4, 8), slot_channels=2, disc_channels=(4,) * 3
        )

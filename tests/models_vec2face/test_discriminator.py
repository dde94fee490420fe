"""Patch and multi-scale discriminators: logit-map shapes, sizes, input checks."""

from __future__ import annotations

import pytest
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.discriminator import (
    DISCRIMINATOR_PRESETS,
    CrossEmbed,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    build_discriminator,
)


def test_default_discriminator_patch_maps_at_64px():
    torch.manual_seed(0)
    disc = build_discriminator("default")
    logits = disc(torch.randn(2, 3, 64, 64))
    assert isinstance(logits, list) and len(logits) == 2
    assert logits[0].shape == (2, 1, 13, 13)  # 64 -> 32 -> 16, head 4x4 conv -> 13
    assert logits[1].shape == (2, 1, 5, 5)  # half scale: 32 -> 16 -> 8 -> 5
    assert all(torch.isfinite(t).all() for t in logits)


def test_paper_discriminator_gives_11x11_patches_at_112px_and_has_about_6m_parameters():
    torch.manual_seed(0)
    disc = PatchDiscriminator(dims=DISCRIMINATOR_PRESETS["paper"]["dims"])
    n_params = sum(p.numel() for p in disc.parameters())
    assert 5e6 <= n_params <= 7e6, n_params
    with torch.no_grad():
        assert disc(torch.randn(1, 3, 112, 112)).shape == (1, 1, 11, 11)
        assert disc(torch.randn(1, 3, 64, 64)).shape == (1, 1, 5, 5)


def test_multiscale_discriminator_on_112px_returns_two_maps():
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(num_scales=2, dims=(16, 32, 64, 64))
    with torch.no_grad():
        logits = disc(torch.randn(1, 3, 112, 112))
    assert [t.shape[-1] for t in logits] == [11, 4]  # 112 -> 11x11, 56 -> 4x4
    assert disc.discriminators[0] is not disc.discriminators[1]


def test_scales_see_different_resolutions():
    # the second scale must see the downsampled image, not the full one
    torch.manual_seed(0)
    disc = MultiScaleDiscriminator(num_scales=2, dims=(8, 16))
    disc.discriminators[1].load_state_dict(disc.discriminators[0].state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full, half = disc(x)
        direct = disc.discriminators[0](x)
    assert torch.equal(full, direct)
    assert half.shape[-1] < full.shape[-1]


def test_cross_embed_splits_channels_over_kernel_sizes():
    layer = CrossEmbed(3, 64, (15, 3, 7))
    assert [c.kernel_size[0] for c in layer.convs] == [3, 7, 15]
    assert sum(c.out_channels for c in layer.convs) == 64
    assert layer.convs[1].out_channels > layer.convs[2].out_channels  # big kernels stay narrow
    assert layer(torch.randn(1, 3, 20, 20)).shape == (1, 64, 20, 20)
    with pytest.raises(ParameterError):
        CrossEmbed(3, 4, (3, 7, 15))


def test_gradients_reach_every_discriminator_parameter_and_the_image():
    torch.manual_seed(0)
    disc = build_discriminator("default")
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    sum(t.mean() for t in disc(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_inputs_and_parameters_give_clear_errors():
    disc = PatchDiscriminator(dims=(8, 16, 32))
    with pytest.raises(DataError, match="at least 16 px"):
        disc(torch.randn(1, 3, 8, 8))
    with pytest.raises(DataError, match=r"\[B, C, H, W\]"):
        disc(torch.randn(3, 16, 16))
    with pytest.raises(ParameterError, match="norm_groups"):
        PatchDiscriminator(dims=(12, 16))
    with pytest.raises(ParameterError, match="num_scales"):
        MultiScaleDiscriminator(num_scales=0)
    with pytest.raises(ParameterError, match="preset"):
        build_discriminator("huge")

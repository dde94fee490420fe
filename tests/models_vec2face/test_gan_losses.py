"""GAN losses: the formulas, multi-scale averaging, and that G and D objectives stay separate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.losses.gan import (
    discriminator_loss,
    frozen_parameters,
    generator_adversarial_loss,
)

REAL = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
FAKE = torch.tensor([[-2.0, 0.0], [3.0, -0.5]])


def test_hinge_matches_its_definition():
    # D: mean(relu(1 - real)) + mean(relu(1 + fake))
    d_real = (0.0 + 0.5 + 2.0 + 0.0) / 4
    d_fake = (0.0 + 1.0 + 4.0 + 0.5) / 4
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(d_real + d_fake)
    # G: -mean(fake)
    assert generator_adversarial_loss(FAKE, "hinge").item() == pytest.approx(-0.5 / 4 * 1.0)


def test_lsgan_matches_its_definition():
    # D: 0.5 * mean((real - 1)^2) + 0.5 * mean(fake^2)
    d_real = (1.0 + 0.25 + 4.0 + 0.0) / 4
    d_fake = (4.0 + 0.0 + 9.0 + 0.25) / 4
    assert discriminator_loss(REAL, FAKE, "lsgan").item() == pytest.approx(0.5 * (d_real + d_fake))
    # G: 0.5 * mean((fake - 1)^2)
    g = (9.0 + 1.0 + 4.0 + 2.25) / 4
    assert generator_adversarial_loss(FAKE, "lsgan").item() == pytest.approx(0.5 * g)


@pytest.mark.parametrize("kind", ["hinge", "lsgan"])
def test_losses_are_minimal_where_each_player_wins(kind):
    confident_real, confident_fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert discriminator_loss(confident_real, confident_fake, kind) < discriminator_loss(
        confident_fake, confident_real, kind
    )
    assert generator_adversarial_loss(confident_real, kind) < generator_adversarial_loss(
        confident_fake, kind
    )


@pytest.mark.parametrize("kind", ["hinge", "lsgan"])
def test_multiscale_lists_average_the_per_scale_losses(kind):
    real2, fake2 = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    d = discriminator_loss([REAL, real2], [FAKE, fake2], kind)
    expected = (discriminator_loss(REAL, FAKE, kind) + discriminator_loss(real2, fake2, kind)) / 2
    torch.testing.assert_close(d, expected)
    g = generator_adversarial_loss([FAKE, fake2], kind)
    expected_g = generator_adversarial_loss(FAKE, kind) + generator_adversarial_loss(fake2, kind)
    torch.testing.assert_close(g, expected_g / 2)


@pytest.mark.parametrize("kind", ["hinge", "lsgan"])
def test_used_as_intended_g_and_d_objectives_do_not_leak_into_each_other(kind):
    torch.manual_seed(0)
    gen = nn.Linear(4, 8)
    disc = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 1))
    fake, real = gen(torch.randn(6, 4)), torch.randn(6, 8)

    # discriminator step on detached fakes: D gets gradients, G none
    discriminator_loss(disc(real), disc(fake.detach()), kind).backward()
    # (with every hinge term active the last bias gradient cancels exactly: -1 + 1)
    assert all(p.grad is not None for p in disc.parameters())
    assert disc[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.parameters())

    # generator step with D frozen: G gets gradients, D's grads stay exactly as they were
    d_grads = [p.grad.clone() for p in disc.parameters()]
    with frozen_parameters(disc):
        generator_adversarial_loss(disc(fake), kind).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(disc.parameters(), d_grads, strict=True))
    assert all(p.requires_grad for p in disc.parameters()), "requires_grad must be restored"


def test_frozen_parameters_restores_only_what_it_froze():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].weight.requires_grad_(False)
    with frozen_parameters(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert not net[0].weight.requires_grad
    assert net[0].bias.requires_grad and net[1].weight.requires_grad


def test_bad_kind_and_mismatched_scales_are_rejected():
    with pytest.raises(ParameterError, match="hinge"):
        discriminator_loss(REAL, FAKE, "wgan")
    with pytest.raises(ParameterError):
        generator_adversarial_loss(FAKE, "vanilla")
    with pytest.raises(DataError, match="scales"):
        discriminator_loss([REAL, REAL], [FAKE], "hinge")
    with pytest.raises(DataError):
        generator_adversarial_loss([], "hinge")

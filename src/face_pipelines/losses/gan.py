"""Adversarial losses with one formulation shared by generator and discriminator.

Upstream Vec2Face trained D with a least-squares loss but G with a hinge-style term, and let D pick up
gradients from G's loss. Here one `kind` picks a matching pair and the two objectives stay separate:

- 'hinge':  L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))      L_G = -mean(D(G(z)))
- 'lsgan':  L_D = 0.5 * mean((D(x) - 1)^2) + 0.5 * mean(D(G(z))^2)     L_G = 0.5 * mean((D(G(z)) - 1)^2)
  (Mao et al., a=0, b=c=1)

Multi-scale discriminators return a list of logit maps; every function accepts a tensor or such a
list and averages the per-scale losses (so the loss scale does not grow with the number of scales).

Intended use in a training step (what keeps the objectives separate):

    # discriminator step: fakes detached, so the loss reaches D only
    d_loss = discriminator_loss(disc(real), disc(fake.detach()), kind)
    # generator step: D frozen, so the loss reaches G only
    with frozen_parameters(disc):
        g_loss = generator_adversarial_loss(disc(fake), kind)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.errors import DataError, ParameterError

__all__ = [
    "GAN_LOSS_KINDS",
    "discriminator_loss",
    "frozen_parameters",
    "generator_adversarial_loss",
]

GanLossKind = Literal["hinge", "lsgan"]
GAN_LOSS_KINDS: tuple[str, ...] = ("hinge", "lsgan")

Logits = torch.Tensor | Sequence[torch.Tensor]


def _as_list(logits: Logits, name: str) -> list[torch.Tensor]:
    items = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise DataError(f"{name} must be a tensor or a non-empty list of tensors, got {logits!r}")
    return items


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSS_KINDS:
        raise ParameterError(f"GAN loss kind must be one of {GAN_LOSS_KINDS}, got {kind!r}")


def _d_loss_one_scale(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return 0.5 * (real - 1.0).pow(2).mean() + 0.5 * fake.pow(2).mean()


def _g_loss_one_scale(fake: torch.Tensor, kind: str) -> torch.Tensor:
    fake = fake.float()
    if kind == "hinge":
        return -fake.mean()
    return 0.5 * (fake - 1.0).pow(2).mean()


def discriminator_loss(real_logits: Logits, fake_logits: Logits, kind: GanLossKind) -> torch.Tensor:
    """The discriminator's loss (see the module docstring for the formulas).

    fake_logits must be D applied to *detached* generator output (``disc(fake.detach())``): this
    loss trains D only and must not push gradients into the generator.
    Lists (multi-scale) must pair up scale by scale; the per-scale losses are averaged.
    """
    _check_kind(kind)
    reals, fakes = _as_list(real_logits, "real_logits"), _as_list(fake_logits, "fake_logits")
    if len(reals) != len(fakes):
        raise DataError(f"real_logits has {len(reals)} scales but fake_logits has {len(fakes)}")
    losses = [_d_loss_one_scale(r, f, kind) for r, f in zip(reals, fakes, strict=True)]
    return torch.stack(losses).mean()


def generator_adversarial_loss(fake_logits: Logits, kind: GanLossKind) -> torch.Tensor:
    """The generator's adversarial term for the same `kind` as `discriminator_loss`.

    Compute D's logits inside ``with frozen_parameters(disc):`` so this loss gives D no gradient.
    """
    _check_kind(kind)
    losses = [_g_loss_one_scale(f, kind) for f in _as_list(fake_logits, "fake_logits")]
    return torch.stack(losses).mean()


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set requires_grad=False on the module's parameters (restored on exit).

    Gradients still flow through the module to its inputs, so a generator loss computed on
    ``disc(fake)`` inside this block trains the generator and leaves D's .grad untouched.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)

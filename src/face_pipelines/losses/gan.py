"""Adversarial losses with one formulation shared by generator and discriminator.

Upstream Vec2Face trained D with a least-squares loss but G with a hinge-style term, and let D pick up
gradients from G's loss. Here one `kind` picks a matching pair and the two objectives stay separate:

- 'hinge':  L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))      L_G = -mean(D(G(z)))
- 'lsgan':  L_D = 0.5 * mean((D(x) - 1)^2) + 0.5 * mean(D(G(z))^2)     L_G = 0.5 * mean((D(G(z)) - 1)^2)
  (Mao et al., a=0, b=c=1)

Multi-scale discriminators return a list of logit maps; every function accepts a tensor or such a
list and averages the per-scale losses (so the loss scale does not grow with the number of scales).

The other trainers' adversarial terms come from here too:
- `least_squares_term`: one least-squares term (logits -> target), for discriminators that score
  several (image, label) pairs per step (ELEGANT composes its D and G losses from it).
- `fake_class_discriminator_terms` / `fake_class_generator_term`: a (K + 1)-way classifier D whose
  last class is "generated" (DR-GAN): D learns real -> its class, generated -> the fake class; G
  wants its output taken for the source class (the non-saturating form).

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
    "fake_class_discriminator_terms",
    "fake_class_generator_term",
    "frozen_parameters",
    "generator_adversarial_loss",
    "least_squares_term",
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


def least_squares_term(logits: Logits, target: float) -> torch.Tensor:
    """mean((D - target)^2), averaged over the scales of a multi-scale D (lsgan's building block)."""
    scores = _as_list(logits, "logits")
    return sum(((s.float() - target) ** 2).mean() for s in scores) / len(scores)


def fake_class_discriminator_terms(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_class: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real term, fake term) of a classifier D with a last "generated" class: cross-entropy of the
    real images against their class and of the (detached) generated ones against the fake class."""
    fake_class = torch.full(
        (fake_logits.shape[0],), fake_logits.shape[1] - 1, device=fake_logits.device
    )
    return (
        F.cross_entropy(real_logits.float(), real_class),
        F.cross_entropy(fake_logits.float(), fake_class),
    )


def fake_class_generator_term(
    fake_logits: torch.Tensor, source_class: torch.Tensor
) -> torch.Tensor:
    """G's term against a classifier D with a "generated" class: its output taken for the source
    class (computed inside ``frozen_parameters(disc)``)."""
    return F.cross_entropy(fake_logits.float(), source_class)


@contextlib.contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set requires_grad=False on the modules' parameters (restored on exit; parameters
    that were already frozen stay so).

    Gradients still flow through the modules to their inputs, so a generator loss computed on
    ``disc(fake)`` inside this block trains the generator and leaves D's .grad untouched.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)

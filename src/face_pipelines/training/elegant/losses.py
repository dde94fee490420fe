"""ELEGANT's losses: least-squares GAN terms on (image, labels) pairs at both scales, the attribute
critic, and the swap forward pass they are computed on (see the package docstring for the formulas).
The least-squares term itself is `face_pipelines.losses.gan.least_squares_term`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.losses.gan import least_squares_term as _ls
from face_pipelines.models.elegant import (
    ELEGANTGenerator,
    swap_slot,
)


def discriminator_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    fake_c: torch.Tensor,
    fake_d: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    attribute: int,
    mismatch_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """D's terms: real pairs with their labels -> 1; edits with their target labels -> 0; real
    images with attribute i's label flipped -> 0 (weighted by mismatch_weight)."""
    y_c, y_d = edited_labels(y_a, y_b, attribute)
    terms = {
        "d_real": 0.5 * (_ls(disc(real_a, y_a), 1.0) + _ls(disc(real_b, y_b), 1.0)),
        "d_fake": 0.5 * (_ls(disc(fake_c, y_c), 0.0) + _ls(disc(fake_d, y_d), 0.0)),
    }
    loss = terms["d_real"] + terms["d_fake"]
    if mismatch_weight > 0:
        # A real image labelled like its edit (A without i, B with i) is a wrong pair.
        terms["d_mismatch"] = 0.5 * (_ls(disc(real_a, y_c), 0.0) + _ls(disc(real_b, y_d), 0.0))
        loss = loss + mismatch_weight * terms["d_mismatch"]
    terms["d_loss"] = loss
    return terms


def critic_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    fake_c: torch.Tensor | None = None,
    fake_d: torch.Tensor | None = None,
    attribute: int = 0,
    fake_weight: float = 0.0,
) -> torch.Tensor:
    """BCE of the attribute critic on a real pair batch and all its labels; with fakes and
    fake_weight > 0, plus BCE on the edits' attribute i against their *source's* label (C keeps
    A's, D keeps B's), so an edit only convinces the critic when it looks like the real thing -
    without it G learns a pattern that fools the critic without drawing the attribute."""
    logits = disc.attribute_logits(torch.cat([real_a, real_b])).float()
    loss = F.binary_cross_entropy_with_logits(logits, torch.cat([y_a, y_b]))
    if fake_weight > 0 and fake_c is not None and fake_d is not None:
        fake_logits = disc.attribute_logits(torch.cat([fake_c, fake_d]))[:, attribute].float()
        source = torch.cat([y_a[:, attribute], y_b[:, attribute]])
        loss = loss + fake_weight * F.binary_cross_entropy_with_logits(fake_logits, source)
    return loss


def generator_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    recon_a: torch.Tensor,
    recon_b: torch.Tensor,
    fake_c: torch.Tensor,
    fake_d: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    attribute: int,
    recon_weight: float = 5.0,
    attribute_weight: float = 0.0,
    change_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """G's terms: L1 reconstruction of A and B; the edits taken for real with their target labels;
    the critic finding the edits' target labels (weighted by attribute_weight); the L1 size of
    each edit's change to its source image (weighted by change_weight: edits stay local)."""
    y_c, y_d = edited_labels(y_a, y_b, attribute)
    terms = {
        "g_recon": 0.5 * (F.l1_loss(recon_a.float(), real_a) + F.l1_loss(recon_b.float(), real_b)),
        "g_adv": 0.5 * (_ls(disc(fake_c, y_c), 1.0) + _ls(disc(fake_d, y_d), 1.0)),
    }
    terms["g_loss"] = recon_weight * terms["g_recon"] + terms["g_adv"]
    if attribute_weight > 0:
        # Only the edited attribute: the others are unchanged, and the critic's errors on them
        # would otherwise dilute the one gradient that matters here.
        logits = disc.attribute_logits(torch.cat([fake_c, fake_d]))[:, attribute].float()
        target = torch.cat([y_c[:, attribute], y_d[:, attribute]])
        terms["g_attribute"] = F.binary_cross_entropy_with_logits(logits, target)
        terms["g_loss"] = terms["g_loss"] + attribute_weight * terms["g_attribute"]
    if change_weight > 0:
        terms["g_change"] = 0.5 * (
            F.l1_loss(fake_c.float(), real_a) + F.l1_loss(fake_d.float(), real_b)
        )
        terms["g_loss"] = terms["g_loss"] + change_weight * terms["g_change"]
    return terms


def edited_labels(y_a: torch.Tensor, y_b: torch.Tensor, attribute: int):
    """(y_C, y_D): A's labels without attribute i, B's labels with it."""
    y_c, y_d = y_a.clone(), y_b.clone()
    y_c[:, attribute], y_d[:, attribute] = 0.0, 1.0
    return y_c, y_d


def swap_forward(gen: ELEGANTGenerator, x_a: torch.Tensor, x_b: torch.Tensor, attribute: int):
    """(A', B', C, D) of one training pair batch (see the module docstring)."""
    feats_a, feats_b = gen.encode(x_a), gen.encode(x_b)
    z_a, z_b = feats_a[-1], feats_b[-1]
    z_c, z_d = swap_slot(z_a, z_b, attribute, gen.config.slot_channels)
    # One decoder pass per source image: [reconstruction, edit] share the skips.
    out_a = x_a.repeat(2, 1, 1, 1) + gen.decode(
        torch.cat([z_a, z_c]), [torch.cat([f, f]) for f in feats_a]
    )
    out_b = x_b.repeat(2, 1, 1, 1) + gen.decode(
        torch.cat([z_b, z_d]), [torch.cat([f, f]) for f in feats_b]
    )
    n = len(x_a)
    return out_a[:n], out_b[:n], out_a[n:], out_b[n:]

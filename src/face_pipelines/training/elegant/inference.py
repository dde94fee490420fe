"""Using a trained ELEGANT: exemplar attribute transfer, interpolation grids, attribute classification
and the scores of edits (attribute met, identity kept by the judge, pixels changed)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from face_pipelines.errors import DataError
from face_pipelines.image_tensors import hwc_to_input, image_grid, images_to_uint8
from face_pipelines.models.elegant import (
    ELEGANTGenerator,
)
from face_pipelines.models.inference import embed_images


def _to_input(images_u8: np.ndarray, device) -> torch.Tensor:
    return hwc_to_input(np.ascontiguousarray(images_u8), device)


@torch.no_grad()
def transfer_attribute(
    gen: ELEGANTGenerator,
    images_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    strength: float = 1.0,
) -> np.ndarray:
    """Images [N, H, W, 3] with slot `attribute` replaced by that of exemplar j (one per image, or
    one exemplar for all); `strength` < 1 blends the slot between the image's and the exemplar's."""
    if len(exemplars_u8) not in (1, len(images_u8)):
        raise DataError(f"{len(exemplars_u8)} exemplars for {len(images_u8)} images (1 or same)")
    gen.eval()
    out = []
    for s in range(0, len(images_u8), batch_size):
        x = _to_input(images_u8[s : s + batch_size], device)
        e = exemplars_u8 if len(exemplars_u8) == 1 else exemplars_u8[s : s + batch_size]
        feats = gen.encode(x)
        slot_x = gen.slot(feats[-1], attribute)
        slot_e = gen.slot(gen.encode(_to_input(e, device))[-1], attribute)
        z_new = gen.with_slot(feats[-1], attribute, slot_x + strength * (slot_e - slot_x))
        out.append(images_to_uint8(x + gen.decode(z_new, feats)))
    return np.concatenate(out) if out else np.zeros_like(images_u8)


@torch.no_grad()
def interpolation_grid(
    gen: ELEGANTGenerator,
    source_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    steps: int = 4,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The paper's exemplar interpolation grid for one source and three exemplars of one attribute.

    uint8 image: a header row [source, exemplar 1, 2, 3], then a steps x steps grid whose corners
    take slot `attribute` from the source (top left), exemplar 1 (top right), 2 (bottom left) and
    3 (bottom right), bilinear blends of the four slots in between.
    """
    if len(exemplars_u8) != 3:
        raise DataError(f"an interpolation grid needs 3 exemplars, got {len(exemplars_u8)}")
    gen.eval()
    x = _to_input(source_u8[:1], device)
    feats = gen.encode(x)
    slots = gen.slot(
        torch.cat([feats[-1], gen.encode(_to_input(exemplars_u8, device))[-1]]), attribute
    )
    t = torch.linspace(0, 1, steps, device=x.device)
    u, v = torch.meshgrid(t, t, indexing="ij")  # u down, v right
    w = torch.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], -1).reshape(-1, 4)
    blended = torch.einsum("kc,cshw->kshw", w, slots)
    z = gen.with_slot(feats[-1].expand(len(w), -1, -1, -1), attribute, blended)
    images = images_to_uint8(x + gen.decode(z, [f.expand(len(w), -1, -1, -1) for f in feats]))
    header = np.concatenate([source_u8[:1], exemplars_u8])
    width = max(steps, 4)
    pad_h = np.full((width - 4, *header.shape[1:]), 255, np.uint8)
    rows = [np.concatenate([header, pad_h])]
    for r in range(steps):
        row = images[r * steps : (r + 1) * steps]
        rows.append(np.concatenate([row, np.full((width - steps, *row.shape[1:]), 255, np.uint8)]))
    return image_grid(np.concatenate(rows), ncols=width)


@torch.no_grad()
def classify_attributes(
    classifier: nn.Module, images_u8: np.ndarray, device="cpu", batch_size: int = 256
) -> np.ndarray:
    """Probabilities float32 [N, n] that each image has each attribute (eval mode)."""
    classifier.eval()
    out = [
        torch.sigmoid(classifier(_to_input(images_u8[s : s + batch_size], device)).float()).cpu()
        for s in range(0, len(images_u8), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def score_edits(
    gen: ELEGANTGenerator,
    classifier: nn.Module | None,
    judge: nn.Module | None,
    sources_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    device="cpu",
) -> dict[str, float]:
    """Transfer `attribute` from exemplars into sources (which lack it) and score the result:
    success = classifier says the attribute is present; judge_cos = judge cos(before, after)."""
    edited = transfer_attribute(gen, sources_u8, exemplars_u8, attribute, device)
    out = {"pixel_change": float(np.abs(edited.astype(np.float32) - sources_u8).mean() / 255)}
    if classifier is not None:
        out["success"] = float(
            (classify_attributes(classifier, edited, device)[:, attribute] >= 0.5).mean()
        )
    if judge is not None:
        cos = _cos(embed_images(judge, sources_u8, device), embed_images(judge, edited, device))
        out["judge_cos"] = float(cos.mean())
    return out

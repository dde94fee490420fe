"""Attribute models that AttrOP steers with: a differentiable head-pose regressor, and quality as
the MagFace feature norm of a recognizer (face_pipelines.models.heads.magface_quality) - the
teacher's own, or a separate recognizer's through `EmbeddingNormQuality`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.models.heads import magface_quality

POSE_SCALE_DEG = 90.0  # outputs are regressed in units of 90 degrees, reported in degrees


class PoseRegressor(nn.Module):
    """Small CNN: aligned face [B,3,H,W] in [-1,1] -> (yaw, pitch) in degrees [B,2].

    Args:
        widths: channels of the stride-2 conv stages.
        input_size: input side in pixels (recorded for checkpoints; the net is size-agnostic).
    """

    def __init__(
        self, widths: tuple[int, ...] | list[int] = (24, 48, 96, 128), input_size: int = 64
    ):
        super().__init__()
        self.input_size = int(input_size)
        layers, in_ch = [], 3
        for w in widths:
            # One strided conv per stage: pose is a coarse, global property of the face.
            layers += [
                nn.Conv2d(in_ch, int(w), 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(int(w)),
                nn.SiLU(inplace=True),
            ]
            in_ch = int(w)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(in_ch, 64), nn.SiLU(inplace=True), nn.Linear(64, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.head(h) * POSE_SCALE_DEG


class AttributeClassifier(nn.Module):
    """Small CNN: aligned face [B,3,H,W] in [-1,1] -> one logit per binary attribute [B, n].

    Measures whether an attribute edit worked (ELEGANT), so it is trained on ground-truth labels
    only and never enters an editor's loss. Two 3x3 convs per stage (the second strided): glasses
    or a beard are local, finer details than head pose.

    Args:
        num_attributes: n, the number of logits.
        widths: channels of the conv stages.
        norm: "group" (GroupNorm) or "batch" (BatchNorm, which trains faster here).
        head: "pool" = a linear layer on mean- and max-pooled features (position-free);
            "spatial" = a linear layer on the whole last feature map, so each attribute is read
            where it sits on an aligned face (glasses at the eyes, a smile at the mouth).
        input_size: side of the input images; the "spatial" head's size depends on it (other
            sizes are pooled to the trained map).
    """

    def __init__(
        self,
        num_attributes: int,
        widths: tuple[int, ...] | list[int] = (24, 48, 96),
        norm: str = "group",
        head: str = "pool",
        input_size: int = 64,
    ):
        super().__init__()
        if norm not in ("group", "batch") or head not in ("pool", "spatial"):
            raise ValueError(f"norm must be group|batch and head pool|spatial: {norm!r}, {head!r}")
        self.head_kind = head
        layers, in_ch = [], 3
        for w in widths:
            w = int(w)
            for stride in (1, 2):
                layers += [
                    nn.Conv2d(in_ch, w, 3, stride=stride, padding=1),
                    nn.GroupNorm(min(8, w), w) if norm == "group" else nn.BatchNorm2d(w),
                    nn.SiLU(inplace=True),
                ]
                in_ch = w
        self.features = nn.Sequential(*layers)
        self.map_side = max(1, int(input_size) // 2 ** len(widths))
        n_in = 2 * in_ch if head == "pool" else in_ch * self.map_side**2
        self.head = nn.Linear(n_in, int(num_attributes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.head_kind == "spatial":
            if h.shape[-1] != self.map_side or h.shape[-2] != self.map_side:
                h = F.adaptive_avg_pool2d(h, self.map_side)
            return self.head(h.flatten(1))
        # Mean and max pooling: a small accessory shows up in the max long before the mean.
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


class EmbeddingNormQuality(nn.Module):
    """Quality of images [B, 3, H, W] in [-1, 1] = the L2 norm of a recognizer's raw embedding [B].

    For a MagFace-trained recognizer (e.g. the released MagFace IResNet-100) the norm is its
    quality score. Images of another size than `input_size` are resized bilinearly.
    """

    def __init__(self, recognizer: nn.Module, input_size: int) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.input_size = int(input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return magface_quality(self.recognizer(images))

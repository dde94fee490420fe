"""Patch discriminators for the Vec2Face GAN term.

`PatchDiscriminator` is the Vec2Face one: a cross-embedding first conv (3/7/15 kernels side by side),
a few stride-2 stages with a residual block each, and a conv head that gives one logit per patch
(11x11 at 112 px with the paper dims). `MultiScaleDiscriminator` runs independent copies on the full
and the half-resolution image (ELEGANT / pix2pixHD style) and returns a list of logit maps.

The losses that go with them live in `face_pipelines.losses.gan`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.errors import DataError, ParameterError

__all__ = [
    "DISCRIMINATOR_PRESETS",
    "CrossEmbed",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "build_discriminator",
]

DISCRIMINATOR_PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: two stages, 64 px -> 13x13 patch logits (5x5 on the half-scale copy).
    # Narrow and without the 15x15 cross-embedding kernel: a D pass costs ~0.25 s per 64 images on
    # a 2-core CPU instead of ~1 s, which decides whether the GAN phase fits the laptop budget.
    "default": {"dims": (16, 32, 64), "cross_embed_kernels": (3, 7), "num_scales": 2},
    # The Vec2Face discriminator: three stages, 112 px -> 11x11 patch logits (~6M parameters).
    "paper": {"dims": (64, 128, 256, 512), "num_scales": 2},
}


class CrossEmbed(nn.Module):
    """Convolutions of several kernel sizes on the same input, concatenated along channels.

    Kernels sorted by size; kernel i >= 1 gets out_channels // 2**(i+1) channels and the smallest
    kernel the rest (64 -> 40/16/8 for 3/7/15), so the expensive large kernels stay narrow.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] = (3, 7, 15)
    ) -> None:
        super().__init__()
        kernel_sizes = tuple(sorted(kernel_sizes))
        splits = [out_channels // 2 ** (i + 1) for i in range(1, len(kernel_sizes))]
        splits = [out_channels - sum(splits), *splits]
        if min(splits) < 1:
            raise ParameterError(
                f"discriminator dims[0]={out_channels} is too small to split over kernels "
                f"{kernel_sizes}; use at least {2 ** len(kernel_sizes)}"
            )
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, c, k, padding=k // 2)
            for k, c in zip(kernel_sizes, splits, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, out_channels, H, W]."""
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class _ResidualBlock(nn.Module):
    """x + conv3x3(LeakyReLU(GroupNorm(x))): one pre-activation conv on a residual path."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape in and out."""
        return x + self.body(x)


class PatchDiscriminator(nn.Module):
    """Image -> per-patch real/fake logits.

    Args:
        dims: channels after the cross-embedding and after each stride-2 stage; len(dims) - 1
            stages. (64, 128, 256, 512) is the paper size; every dim must be divisible by
            norm_groups.
        in_channels: image channels (3).
        cross_embed_kernels: kernel sizes of the first, cross-embedding conv.
        norm_groups: GroupNorm groups inside the stages (8).

    Output: [B, 1, h, w] logits with h = H / 2**(len(dims)-1) - 3 (11x11 at 112 px for the paper
    dims; 13x13 at 64 px for the default dims).
    """

    def __init__(
        self,
        dims: tuple[int, ...] = DISCRIMINATOR_PRESETS["default"]["dims"],
        in_channels: int = 3,
        cross_embed_kernels: tuple[int, ...] = (3, 7, 15),
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        dims = tuple(dims)
        if len(dims) < 2:
            raise ParameterError(f"discriminator dims needs at least 2 entries, got {dims}")
        if any(d % norm_groups for d in dims):
            raise ParameterError(
                f"discriminator dims {dims} must all be divisible by norm_groups={norm_groups}"
            )
        self.dims = dims
        self.stem = nn.Sequential(
            CrossEmbed(in_channels, dims[0], cross_embed_kernels), nn.LeakyReLU(0.1)
        )
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                    nn.LeakyReLU(0.1),
                    nn.GroupNorm(norm_groups, c_out),
                    _ResidualBlock(c_out, norm_groups),
                )
                for c_in, c_out in zip(dims[:-1], dims[1:], strict=True)
            )
        )
        self.head = nn.Sequential(
            nn.Conv2d(dims[-1], dims[-1], 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(dims[-1], 1, 4),
        )

    def min_input_size(self) -> int:
        """Smallest image side that still gives a 1x1 logit map."""
        return 4 * 2 ** (len(self.dims) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [-1, 1] -> logits [B, 1, h, w]."""
        if images.ndim != 4:
            raise DataError(f"discriminator expects images [B, C, H, W], got {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.min_input_size():
            raise DataError(
                f"discriminator with dims {self.dims} needs images of at least "
                f"{self.min_input_size()} px, got {tuple(images.shape[-2:])}"
            )
        return self.head(self.stages(self.stem(images)))


class MultiScaleDiscriminator(nn.Module):
    """Independent PatchDiscriminators on the image at full, 1/2, ... resolution.

    Args:
        num_scales: how many scales (2: full and half resolution).
        dims, in_channels, cross_embed_kernels, norm_groups: passed to every PatchDiscriminator.

    forward returns a list of logit maps, full resolution first; the GAN losses in
    `face_pipelines.losses.gan` take that list directly.
    """

    def __init__(
        self,
        num_scales: int = 2,
        dims: tuple[int, ...] = DISCRIMINATOR_PRESETS["default"]["dims"],
        in_channels: int = 3,
        cross_embed_kernels: tuple[int, ...] = (3, 7, 15),
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        if num_scales < 1:
            raise ParameterError(f"discriminator num_scales must be >= 1, got {num_scales}")
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(dims, in_channels, cross_embed_kernels, norm_groups)
            for _ in range(num_scales)
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, C, H, W] -> [logits at H, logits at H/2, ...]."""
        logits = []
        for i, disc in enumerate(self.discriminators):
            if i > 0:
                # 3x3 average pool, stride 2, edges not diluted by padding (pix2pixHD's downsampler)
                images = F.avg_pool2d(images, 3, stride=2, padding=1, count_include_pad=False)
            logits.append(disc(images))
        return logits


def build_discriminator(preset: str = "default", **overrides: Any) -> MultiScaleDiscriminator:
    """A MultiScaleDiscriminator from a named preset ('default' or 'paper') with overrides."""
    if preset not in DISCRIMINATOR_PRESETS:
        raise ParameterError(
            f"unknown discriminator preset {preset!r}; known: {sorted(DISCRIMINATOR_PRESETS)}"
        )
    return MultiScaleDiscriminator(**{**DISCRIMINATOR_PRESETS[preset], **overrides})

"""ELEGANT: exemplar-based face attribute transfer by exchanging latent encodings (seed 004).

The whole model in one file:

    encoder     image x -> feature maps of every stride-2 stage; the last one is the latent z
                [B, C, s, s], split along channels into n attribute slots of `slot_channels` each
                (slot i encodes attribute i) plus the rest (everything else about the face)
    swap        for attribute i and a pair (A has it, B lacks it): z_C = z_A with slot i of z_B
                (A without the attribute), z_D = z_B with slot i of z_A (B with A's attribute)
    decoder     [z_new, z_original] (concatenated along channels) -> transposed-conv stack with
                U-Net skips from the original image's encoder stages -> a residual image R;
                the output is x + R, so an edit only has to paint what changes (glasses, beard)
                and the identity comes through untouched. With z_new = z_original it learns R ~ 0.
    discriminators  two identical conditional nets: D1 sees the image at full resolution (detail),
                D2 at half resolution (a wider view). Both get the attribute labels as constant
                extra input channels and output a patch map of real/fake scores.
    attribute critic  an unconditioned conv net beside them -> one logit per attribute. It is
                trained on real images with their labels and asks G's edits to carry their target
                labels (the attribute-classification term of AttGAN-style editors). The paper's
                label-conditioned D alone gives a weak signal at small scale: after a few CPU
                epochs G had learnt to change almost nothing (mean pixel change 0.5%); the
                critic's direct per-attribute gradient is what makes edits appear early.
                Its weight is a training parameter (0 = the paper's losses only).

Normalisation is `L2Norm`, no BatchNorm: every training batch holds one set of images with the
attribute and one without, whose activation statistics differ a lot, so BatchNorm's running means
would keep oscillating and inference (which uses them) would suffer. L2Norm divides each sample's
feature map by its own root-mean-square and applies a learnable per-channel scale and shift: it
depends on nothing but the sample itself.

Training (losses, iterative attribute cycling) lives in `face_pipelines.training.elegant`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from face_pipelines.errors import ParameterError

__all__ = [
    "AttributeCritic",
    "ELEGANTConfig",
    "ELEGANTDiscriminator",
    "ELEGANTGenerator",
    "L2Norm",
    "swap_slot",
]


class ELEGANTConfig(BaseModel):
    """Architecture of the ELEGANT generator (encoder + decoder) and its two discriminators."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, gt=0, description="Side of the square images in pixels.")
    num_attributes: int = Field(4, ge=1, description="n, the number of latent attribute slots.")
    channels: tuple[int, ...] = Field(
        (32, 64, 128, 192),
        min_length=2,
        description="Widths of the encoder's stride-2 stages (the decoder mirrors them); the last "
        "is the latent's channel count.",
    )
    slot_channels: int = Field(
        32,
        gt=0,
        description="Channels of each attribute slot; n * slot_channels must stay below the "
        "latent's channels (the rest encodes everything else).",
    )
    disc_channels: tuple[int, ...] = Field(
        (32, 64, 128),
        min_length=1,
        description="Widths of each discriminator's stride-2 stages.",
    )

    @model_validator(mode="after")
    def _check(self):
        if any(c <= 0 for c in (*self.channels, *self.disc_channels)):
            raise ValueError("channels and disc_channels must all be > 0")
        factor = 2 ** len(self.channels)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**len(channels) = {factor}; "
                "use fewer stages (channels) or another image size"
            )
        if self.num_attributes * self.slot_channels >= self.channels[-1]:
            raise ValueError(
                f"num_attributes * slot_channels = {self.num_attributes * self.slot_channels} "
                f"leaves no 'rest' channels in a latent of {self.channels[-1]} (channels[-1]); "
                "lower slot_channels or widen the last stage"
            )
        if self.image_size // 2 < 2 ** len(self.disc_channels):
            raise ValueError(
                f"the half-resolution discriminator sees {self.image_size // 2} px images: too "
                f"small for {len(self.disc_channels)} stride-2 stages (disc_channels)"
            )
        return self


# -- building blocks -------------------------------------------------------------------------------
class L2Norm(nn.Module):
    """x / rms(x) per sample (over channels and space), then a learnable per-channel scale and shift.

    The root-mean-square is the l2 norm divided by sqrt(C*H*W), so activations keep unit scale
    whatever the layer size; no running statistics, no dependence on the rest of the batch.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.float().pow(2).mean(dim=(1, 2, 3), keepdim=True).add(self.eps).rsqrt()
        return (x * rms.to(x.dtype)) * self.alpha + self.beta


def _down(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), L2Norm(out_ch), nn.LeakyReLU(0.2)
    )


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1), L2Norm(out_ch), nn.LeakyReLU(0.2)
    )


def swap_slot(z_a: torch.Tensor, z_b: torch.Tensor, attribute: int, slot_channels: int):
    """(z_C, z_D): z_a with slot `attribute` taken from z_b, and z_b with it taken from z_a."""
    lo, hi = attribute * slot_channels, (attribute + 1) * slot_channels
    z_c, z_d = z_a.clone(), z_b.clone()
    z_c[:, lo:hi], z_d[:, lo:hi] = z_b[:, lo:hi], z_a[:, lo:hi]
    return z_c, z_d


# -- generator -------------------------------------------------------------------------------------
class ELEGANTGenerator(nn.Module):
    """Encoder + residual U-Net decoder; see the module docstring."""

    def __init__(self, config: ELEGANTConfig):
        super().__init__()
        self.config = config
        chs = config.channels
        self.encoder = nn.ModuleList(
            _down(c_in, c_out) for c_in, c_out in zip((3, *chs[:-1]), chs, strict=True)
        )
        # Decoder stage k upsamples to the resolution of encoder stage k-1 and concatenates that
        # stage's features (the skip) before the next upsampling; the first input is [z_new, z].
        self.decoder = nn.ModuleList()
        in_ch = 2 * chs[-1]
        for skip_ch in reversed(chs[:-1]):
            self.decoder.append(_up(in_ch, skip_ch))
            in_ch = 2 * skip_ch
        self.to_residual = nn.ConvTranspose2d(in_ch, 3, 4, stride=2, padding=1)

    def slot(self, z: torch.Tensor, attribute: int) -> torch.Tensor:
        """Slot `attribute` of latents z [B, C, s, s] -> [B, slot_channels, s, s]."""
        k = self.config.slot_channels
        self._check_attribute(attribute)
        return z[:, attribute * k : (attribute + 1) * k]

    def with_slot(self, z: torch.Tensor, attribute: int, value: torch.Tensor) -> torch.Tensor:
        """A copy of latents z whose slot `attribute` is `value` (broadcast over the batch)."""
        k = self.config.slot_channels
        self._check_attribute(attribute)
        out = z.clone()
        out[:, attribute * k : (attribute + 1) * k] = value
        return out

    def _check_attribute(self, attribute: int) -> None:
        if not 0 <= int(attribute) < self.config.num_attributes:
            raise ParameterError(
                f"attribute index {attribute} outside the model's {self.config.num_attributes} slots"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> features of every stage; the last is the latent z."""
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        return feats

    def decode(self, z_new: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Residual image [B, 3, H, W] from the new latent and the original image's features."""
        h = torch.cat([z_new, feats[-1]], dim=1)
        for stage, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            h = torch.cat([stage(h), skip], dim=1)
        return self.to_residual(h)

    def forward(self, x: torch.Tensor, z_new: torch.Tensor | None = None) -> torch.Tensor:
        """x + decode([z_new, z_x]); with z_new None (z_new = z_x) a reconstruction of x."""
        feats = self.encode(x)
        return x + self.decode(feats[-1] if z_new is None else z_new, feats)


# -- discriminators --------------------------------------------------------------------------------
class ConditionalPatchDiscriminator(nn.Module):
    """Image + attribute labels (as constant channels) -> patch map of real/fake scores."""

    def __init__(self, num_attributes: int, channels: tuple[int, ...]):
        super().__init__()
        layers, in_ch = [], 3 + num_attributes
        for c in channels:
            layers.append(_down(in_ch, c))
            in_ch = c
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(in_ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = labels.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.score(self.features(torch.cat([x, maps], dim=1)))


class AttributeCritic(nn.Module):
    """Image -> one logit per attribute (no label input); mean + max pooled, like the scorer."""

    def __init__(self, num_attributes: int, channels: tuple[int, ...]):
        super().__init__()
        layers, in_ch = [], 3
        for c in channels:
            layers.append(_down(in_ch, c))
            in_ch = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * in_ch, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


class ELEGANTDiscriminator(nn.Module):
    """The two-scale discriminator pair: returns [D1(x, y), D2(half-resolution x, y)]; `critic`
    holds the attribute critic (`attribute_logits`)."""

    def __init__(self, config: ELEGANTConfig):
        super().__init__()
        self.config = config
        self.d_full = ConditionalPatchDiscriminator(config.num_attributes, config.disc_channels)
        self.d_half = ConditionalPatchDiscriminator(config.num_attributes, config.disc_channels)
        self.critic = AttributeCritic(config.num_attributes, config.disc_channels)

    def attribute_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> attribute logits [B, n] of the critic."""
        return self.critic(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        if labels.shape != (x.shape[0], self.config.num_attributes):
            raise ParameterError(
                f"labels of shape {tuple(labels.shape)} for {x.shape[0]} images and "
                f"{self.config.num_attributes} attributes"
            )
        return [self.d_full(x, labels), self.d_half(F.avg_pool2d(x, 2), labels)]

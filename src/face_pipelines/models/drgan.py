"""DR-GAN: a pose-code face generator whose encoder learns a pose-invariant identity representation.

Disentangled Representation learning GAN (seed 002), the whole model in one file:

    generator  = encoder + decoder
      encoder:  image x -> identity representation f (feat_dim; with multi_image, one more output:
                the confidence w of that image, used to fuse n images of one identity into one f)
      decoder:  [f, c, z] -> FC -> C x s x s map -> transposed-conv stack -> image
                c: one-hot pose code over Np yaw bins (default 9 bins, -60..+60 deg, step 15)
                z: noise, Nz = 50 values drawn from U(-1, 1)
    discriminator: a conv trunk shaped like the encoder with two heads on its pooled output:
                identity over Nd + 1 classes (the last one = "generated") and pose over Np classes.

The paper's decoder starts from a 6 x 6 map at 96 px: the start map here is image_size / 2**stages
(4 x 4 at 64 px, 7 x 7 at 112 px, 2 x 2 at 32 px). The generator uses BatchNorm + ELU as the paper's
CASIA-Net-style layers; the discriminator uses GroupNorm instead, so its outputs never depend on which
other images (real or generated) share its batch.

The losses that train these live in `face_pipelines.training.drgan`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from face_pipelines.errors import DataError, ParameterError

__all__ = [
    "DRGANConfig",
    "DRGANDiscriminator",
    "DRGANGenerator",
    "drgan_encoder_backbone",
    "fuse_by_confidence",
    "pose_bin_centres",
    "yaw_to_pose_bin",
]


class DRGANConfig(BaseModel):
    """Every architecture argument shared by the DR-GAN generator and discriminator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(
        64, gt=0, description="Side of the square images in pixels; divisible by 2**len(channels)."
    )
    channels: tuple[int, ...] = Field(
        (32, 64, 96, 128),
        min_length=1,
        description="Widths of the stride-2 stages of encoder and discriminator (the decoder "
        "mirrors them); the paper's CASIA-Net goes up to 320.",
    )
    feat_dim: int = Field(
        128, gt=0, description="Length of the identity representation f (paper: 320)."
    )
    convs_per_stage: int = Field(
        2,
        ge=1,
        description="3x3 convs per stage: one stride-2 (decoder: a x2 transposed conv) plus "
        "convs_per_stage - 1 stride-1 ones; 1 keeps a CPU run cheap.",
    )
    noise_dim: int = Field(50, ge=0, description="Length of the noise z ~ U(-1, 1) (paper: 50).")
    num_pose_bins: int = Field(
        9, ge=2, description="Np, number of yaw bins of the one-hot pose code (paper: 9)."
    )
    multi_image: bool = Field(
        False,
        description="Encoder also outputs a confidence per image so that n images of one "
        "identity can be fused into one f (multi-image DR-GAN).",
    )

    @model_validator(mode="after")
    def _check_size(self):
        if any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must all be > 0, got {list(self.channels)}")
        factor = 2 ** len(self.channels)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**len(channels) = {factor}; "
                "use fewer stages (channels) or another image size"
            )
        return self

    @property
    def start_size(self) -> int:
        """Side of the decoder's first feature map (image_size / 2**stages)."""
        return self.image_size // 2 ** len(self.channels)


# -- pose codes ------------------------------------------------------------------------------------
def pose_bin_centres(
    num_bins: int = 9, yaw_min: float = -60.0, yaw_max: float = 60.0
) -> np.ndarray:
    """Yaw (degrees) of each pose bin: `num_bins` evenly spaced values from yaw_min to yaw_max."""
    if num_bins < 2 or not yaw_max > yaw_min:
        raise ParameterError(
            f"pose bins need num_bins >= 2 and yaw_max > yaw_min, got {num_bins}, "
            f"[{yaw_min}, {yaw_max}]"
        )
    return np.linspace(yaw_min, yaw_max, num_bins)


def yaw_to_pose_bin(
    yaw_deg: np.ndarray, num_bins: int = 9, yaw_min: float = -60.0, yaw_max: float = 60.0
) -> np.ndarray:
    """int64 pose bin of each yaw angle: the nearest bin centre, clamped to the end bins.

    A yaw exactly half-way between two centres goes to the higher bin (e.g. -52.5 -> bin 1 of the
    default -60..+60 step 15); yaws beyond the range belong to the first / last bin (profile faces
    at 75 deg are shown as the 60 deg bin, as the paper's 9 bins do).

    Raises:
        DataError: a yaw is NaN or infinite (names how many and the first position).
    """
    yaw = np.asarray(yaw_deg, dtype=np.float64)
    bad = ~np.isfinite(yaw)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} yaw value(s) are missing or not finite (first at position "
            f"{int(np.flatnonzero(bad)[0])}); every training image needs a yaw label"
        )
    centres = pose_bin_centres(num_bins, yaw_min, yaw_max)
    step = centres[1] - centres[0]
    bins = np.floor((yaw - yaw_min) / step + 0.5).astype(np.int64)
    return np.clip(bins, 0, num_bins - 1)


def fuse_by_confidence(f: torch.Tensor, confidence: torch.Tensor, n: int) -> torch.Tensor:
    """Multi-image DR-GAN fusion: [B*n, D] representations with [B*n] confidences -> [B, D].

    Rows come in groups of n consecutive images of one identity; each group's f is the average of
    its rows weighted by their confidences (a learned score in (0, 1), not a plain 1/n mean).
    """
    if n < 1 or f.shape[0] % n:
        raise ParameterError(f"{f.shape[0]} representations do not split into groups of n={n}")
    f = f.view(-1, n, f.shape[1])
    w = confidence.view(-1, n, 1).float()
    return (w * f).sum(1) / w.sum(1).clamp_min(1e-6)


# -- building blocks -------------------------------------------------------------------------------
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(8, channels), channels)


def _conv_block(c_in: int, c_out: int, stride: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        _norm(norm, c_out),
        nn.ELU(inplace=True),
    )


class ConvTrunk(nn.Module):
    """Per stage: a stride-2 conv then convs_per_stage - 1 stride-1 convs (3x3, norm, ELU); then
    global average pooling.

    [B, 3, H, W] -> [B, channels[-1]]. Shared by the encoder (BatchNorm) and D (GroupNorm).
    """

    def __init__(self, channels: tuple[int, ...], norm: str, convs_per_stage: int = 2) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers.append(_conv_block(c_in, c, 2, norm))
            layers += [_conv_block(c, c, 1, norm) for _ in range(convs_per_stage - 1)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


class DRGANEncoder(nn.Module):
    """Image -> identity representation f [B, feat_dim] and confidence [B] (None unless multi_image)."""

    def __init__(self, cfg: DRGANConfig) -> None:
        super().__init__()
        self.trunk = ConvTrunk(cfg.channels, "batch", cfg.convs_per_stage)
        self.multi_image = cfg.multi_image
        self.fc = nn.Linear(self.trunk.out_channels, cfg.feat_dim + int(cfg.multi_image))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(f [B, feat_dim], confidence in (0, 1) [B] or None)."""
        out = self.fc(self.trunk(x))
        if not self.multi_image:
            return out, None
        return out[:, :-1], torch.sigmoid(out[:, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f only: the encoder is a recognizer (image -> embedding) wherever one is expected."""
        return self.encode(x)[0]


def drgan_encoder_backbone(input_size: int = 64, num_features: int = 128, **model) -> DRGANEncoder:
    """The DR-GAN encoder as a recognizer backbone (image -> f), built by name ('drgan_encoder')
    from a recognizer-style checkpoint, so verification and evaluation load it like any other.

    `model`: the remaining DRGANConfig fields (channels, convs_per_stage, multi_image, ...).
    """
    encoder = DRGANEncoder(DRGANConfig(image_size=input_size, feat_dim=num_features, **model))
    encoder.num_features, encoder.input_size = num_features, input_size
    return encoder


class DRGANDecoder(nn.Module):
    """[f, one-hot pose code, z] -> FC -> [C, s, s] -> x2 upsampling stages -> tanh image."""

    def __init__(self, cfg: DRGANConfig) -> None:
        super().__init__()
        widths = list(cfg.channels[::-1])
        self.start_channels, self.start_size = widths[0], cfg.start_size
        in_dim = cfg.feat_dim + cfg.num_pose_bins + cfg.noise_dim
        self.fc = nn.Linear(in_dim, widths[0] * self.start_size**2)
        self.start = nn.Sequential(nn.BatchNorm2d(widths[0]), nn.ELU(inplace=True))
        stages, c_in = [], widths[0]
        for c in [*widths[1:], widths[-1]]:
            stages += [
                nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1, bias=False),  # exactly x2
                nn.BatchNorm2d(c),
                nn.ELU(inplace=True),
                *[_conv_block(c, c, 1, "batch") for _ in range(cfg.convs_per_stage - 1)],
            ]
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.to_rgb = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        h = self.fc(code).view(-1, self.start_channels, self.start_size, self.start_size)
        return torch.tanh(self.to_rgb(self.stages(self.start(h))))


class DRGANGenerator(nn.Module):
    """Encoder + decoder. `forward(x, pose_bins, z)` re-renders the faces of x at the target poses."""

    def __init__(self, config: DRGANConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config or DRGANConfig(**kwargs)
        self.encoder = DRGANEncoder(self.config)
        self.decoder = DRGANDecoder(self.config)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [-1, 1] [B, 3, H, W] -> (f [B, feat_dim], confidence [B] or None)."""
        return self.encoder.encode(x)

    def sample_noise(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z ~ U(-1, 1) [n, noise_dim] (from the global RNG unless a generator is given)."""
        # Drawn on the CPU: the same z for a seed whatever the device, and resumable (CPU RNG state).
        u = torch.rand(n, self.config.noise_dim, generator=generator)
        return (u * 2 - 1).to(device)

    def decode(self, f: torch.Tensor, pose_bins: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from f [B, feat_dim], int pose bins [B] and noise z [B, noise_dim]."""
        np_ = self.config.num_pose_bins
        if pose_bins.numel() and (int(pose_bins.min()) < 0 or int(pose_bins.max()) >= np_):
            raise ParameterError(
                f"pose bins must be in [0, {np_ - 1}], got [{int(pose_bins.min())}, "
                f"{int(pose_bins.max())}]"
            )
        c = F.one_hot(pose_bins.long(), np_).to(f.dtype)
        return self.decoder(torch.cat([f, c, z.to(f.dtype)], dim=1))

    def forward(
        self, x: torch.Tensor, pose_bins: torch.Tensor, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Single-image DR-GAN: G(x, c, z) = decode(encode(x), c, z) (z drawn if not given)."""
        f, _ = self.encode(x)
        if z is None:
            z = self.sample_noise(x.shape[0], x.device)
        return self.decode(f, pose_bins, z)


class DRGANDiscriminator(nn.Module):
    """Conv trunk + identity head (Nd + 1 logits; index Nd = generated) + pose head (Np logits)."""

    def __init__(self, config: DRGANConfig, num_identities: int) -> None:
        super().__init__()
        if num_identities < 1:
            raise ParameterError(
                f"the discriminator needs num_identities >= 1, got {num_identities}"
            )
        self.config = config
        self.num_identities = int(num_identities)
        self.trunk = ConvTrunk(config.channels, "group", config.convs_per_stage)
        self.identity_head = nn.Linear(self.trunk.out_channels, num_identities + 1)
        self.pose_head = nn.Linear(self.trunk.out_channels, config.num_pose_bins)

    @property
    def fake_class(self) -> int:
        """Index of the extra identity class that stands for generated images."""
        return self.num_identities

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] -> (identity logits [B, Nd + 1], pose logits [B, Np])."""
        h = self.trunk(x)
        return self.identity_head(h), self.pose_head(h)

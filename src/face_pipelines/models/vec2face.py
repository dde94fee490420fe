"""Vec2Face generator: a face-feature vector in, a face image out.

Three stages, each a method named by what it does (the layout of MAE's models_mae.py):

1. ``forward_encoder``: the vector becomes a grid of tokens (Linear feat_dim -> width gives ``e``; a
   per-channel Linear(1 -> G) spreads ``e`` over the G = grid*grid positions; ``e`` is prepended as
   token 0), rows of the grid are masked/dropped, and a ViT encoder runs over what is left.
2. ``forward_decoder``: every masked or dropped position is filled with the encoder's token-0 output
   (there is no learned mask token), and a ViT decoder predicts the full token grid.
3. ``forward_image``: a VQGAN-style convolutional decoder (no attention) turns the grid into RGB.

Row masking is the feature-masked autoencoder (fMAE) of the Vec2Face paper: a "row" is one grid token
(one row of the [G, width] token matrix). For a mask ratio r drawn from a truncated normal on
[min, max], ceil(G*min) rows are dropped from the encoder input and ceil(G*r) rows (a superset) are
masked: masked rows that are still fed to the encoder carry ``e`` instead of their own content.
Masking stays random at inference (with milder ratios): it is a source of intra-class variation
besides noise on the vector.

Differences from the upstream implementation, on purpose:
- ResBlocks that change channels apply their 1x1 shortcut to the block input x (upstream applied
  it to the residual branch h, losing the identity path). The released weights were trained with
  upstream's block, so `load_vec2face` builds them with ``shortcut_on_branch=True``, which computes
  exactly that; the project's own models keep the normal residual.
- The mask ratio is drawn per sample (upstream: one ratio per batch), so the images of a batch do
  not share one masking strength; the number of dropped rows is fixed (ceil(G*min)) so the encoder
  input keeps a rectangular shape.
- Randomness comes from an optional ``torch.Generator``, so a seeded render is reproducible.
- No unused modules (upstream carried a patch embedding and a centre-token layer it never called).
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from timm.models.vision_transformer import Block
from torch import nn

from face_pipelines.errors import DataError, MissingInputError, ParameterError

__all__ = [
    "INFERENCE_MASKING",
    "TRAIN_MASKING",
    "VEC2FACE_PRESETS",
    "ImageDecoder",
    "MaskingParams",
    "ResBlock",
    "RowMask",
    "Vec2Face",
    "Vec2FaceConfig",
    "build_vec2face",
    "load_vec2face",
    "released_config",
    "released_state_dict",
    "sample_mask_ratios",
    "sample_row_mask",
]


# --------------------------------------------------------------------------------------------------
# configuration
class MaskingParams(BaseModel):
    """Truncated-normal distribution of the row-mask ratio r (fraction of grid rows masked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float = Field(
        ...,
        ge=0.0,
        le=1.0,
        description="Lower bound of r; ceil(G*min) rows are always dropped from the encoder input.",
    )
    max: float = Field(..., ge=0.0, le=1.0, description="Upper bound of r.")
    mu: float = Field(..., description="Mean of the normal before truncation to [min, max].")
    sigma: float = Field(
        ..., gt=0.0, description="Standard deviation of the normal before truncation."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> MaskingParams:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


TRAIN_MASKING = MaskingParams(min=0.5, max=1.0, mu=0.75, sigma=0.25)
INFERENCE_MASKING = MaskingParams(min=0.1, max=1.0, mu=0.15, sigma=0.25)


class Vec2FaceConfig(BaseModel):
    """Every constructor argument of `Vec2Face`; defaults are the CPU (64 px) model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feat_dim: int = Field(512, gt=0, description="Length of the input face-feature vector.")
    image_size: int = Field(
        64,
        gt=0,
        description="Side of the square output image in pixels; "
        "must equal grid_size * 2**(len(ch_mult)-1).",
    )
    grid_size: int = Field(
        4,
        gt=0,
        description="Side of the token grid (G = grid_size**2 tokens; 7 at 112 px, 4 at 64 px).",
    )
    width: int = Field(
        128, gt=0, description="Token width of the vector embedding and the ViT encoder."
    )
    depth: int = Field(4, ge=0, description="Number of ViT encoder blocks (0: none).")
    num_heads: int = Field(
        4, ge=1, description="Attention heads per encoder block (divides width)."
    )
    decoder_width: int = Field(128, gt=0, description="Token width of the ViT decoder.")
    decoder_depth: int = Field(2, ge=0, description="Number of ViT decoder blocks (0: none).")
    decoder_num_heads: int = Field(
        4, ge=1, description="Attention heads per decoder block (divides decoder_width)."
    )
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of a block's MLP / its width.")
    qkv_bias: bool = Field(True, description="Bias on the attention qkv projection.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the token embedding and "
        "inside the transformer blocks (attention and projections); the paper "
        "uses 0.1, the CPU default 0 (row masking already regularises and "
        "dropout costs ~30% of the small transformer's CPU time).",
    )
    z_channels: int = Field(
        64,
        gt=0,
        description="Channels of the latent map handed to the image "
        "decoder (decoder tokens are projected to it).",
    )
    grid_embed: Literal["channel_scale", "per_token"] = Field(
        "channel_scale",
        description="How the vector's embedding e becomes the token grid. channel_scale (the "
        "paper's): token g = w_g * e + b_g, one scalar per position, so after the LayerNorm every "
        "token is +-e and positions differ only by the position embedding - the transformer must "
        "learn the face layout from scratch. per_token: a Linear(width -> G * width), each "
        "position its own projection of e, so the layout is there from the first step "
        "(docs/study.md (h); cheap on CPU, not loadable into the released weights).",
    )
    ch: int = Field(8, gt=0, description="Base channel count of the image decoder.")
    ch_mult: tuple[int, ...] = Field(
        (1, 1, 2, 4, 8),
        min_length=1,
        description="Channel "
        "multiplier per resolution level, finest first; each level "
        "but the finest ends with a x2 upsample.",
    )
    num_res_blocks: int | tuple[int, ...] = Field(
        (0, 1, 1, 1, 1),
        description="ResBlocks per resolution level: one count for all levels or "
        "one per level (finest first, like ch_mult). A level with 0 blocks only upsamples into it "
        "and keeps the channels of the level above, so its ch_mult entry must equal that level's "
        "(the CPU default skips the 64 px ResBlock: full-resolution convs dominate CPU time).",
    )
    mid_blocks: int = Field(
        1, ge=0, description="ResBlocks at the coarsest resolution before the upsampling levels."
    )
    norm_groups: int = Field(
        8,
        ge=1,
        description="GroupNorm groups in the image decoder (reduced "
        "to the largest divisor of a layer's channels for narrow layers).",
    )
    res_conv_bias: bool = Field(
        True,
        description="Bias on the image decoder's ResBlock convolutions (the release has none).",
    )
    shortcut_on_branch: bool = Field(
        False,
        description="Upstream's ResBlock: where a block changes channels, out = shortcut(h) + h "
        "with h the branch output (the block input never reaches the output). Only for the "
        "released weights, which were trained that way; False is the normal residual.",
    )
    linear_base: bool = Field(
        False,
        description="Add a linear path from the vector straight to the image: image = "
        "image_decoder(tokens) + Linear(f) reshaped to [3, H, W], so the decoder learns a residual "
        "on top of a linear reconstruction. Vec2FaceTrainConfig.linear_base_init fits it in closed "
        "form (ridge regression of the training images on their features) before the first step; "
        "on CPU budgets the transformer path starts from the mean face and a closed-form linear map "
        "of f renders identity better than 10 trained epochs of it (docs/study.md (h4)). Not in the "
        "released weights.",
    )
    fp32_transformer: bool = Field(
        False,
        description="Run the transformer blocks outside autocast "
        "in fp32 (upstream's fp16 stability measure; slower).",
    )
    train_masking: MaskingParams = Field(
        TRAIN_MASKING, description="Mask-ratio distribution used with masking=True / 'train'."
    )
    inference_masking: MaskingParams = Field(
        INFERENCE_MASKING, description="Mask-ratio distribution used with masking='inference'."
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> Vec2FaceConfig:
        upsampled = self.grid_size * 2 ** (len(self.ch_mult) - 1)
        if upsampled != self.image_size:
            raise ValueError(
                f"image_size ({self.image_size}) must equal grid_size * 2**(len(ch_mult)-1) "
                f"= {self.grid_size} * 2**{len(self.ch_mult) - 1} = {upsampled}"
            )
        if self.width % self.num_heads:
            raise ValueError(
                f"width ({self.width}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.decoder_width % self.decoder_num_heads:
            raise ValueError(
                f"decoder_width ({self.decoder_width}) must be divisible by "
                f"decoder_num_heads ({self.decoder_num_heads})"
            )
        if any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult entries must be >= 1, got {self.ch_mult}")
        blocks = self.res_blocks_per_level()
        if len(blocks) != len(self.ch_mult) or any(n < 0 for n in blocks):
            raise ValueError(
                f"num_res_blocks must be an int or one count >= 0 per ch_mult level "
                f"({len(self.ch_mult)}), got {self.num_res_blocks}"
            )
        for level in range(len(self.ch_mult) - 1):
            if blocks[level] == 0 and self.ch_mult[level] != self.ch_mult[level + 1]:
                raise ValueError(
                    f"level {level} has 0 ResBlocks, so it cannot change channels: "
                    f"ch_mult[{level}] must equal ch_mult[{level + 1}] "
                    f"({self.ch_mult[level + 1]}), got {self.ch_mult[level]}"
                )
        return self

    def res_blocks_per_level(self) -> tuple[int, ...]:
        """num_res_blocks as one count per level, finest first."""
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * len(self.ch_mult)
        return tuple(self.num_res_blocks)


VEC2FACE_PRESETS: dict[str, dict[str, Any]] = {
    # CPU default: 64 px from a 4x4 grid, 1.56M parameters, small enough to train on 2 CPU cores.
    "default": Vec2FaceConfig().model_dump(),
    # The published ViT-B model: 112 px from a 7x7 grid; 173.6M parameters (encoder 85.1M,
    # decoder 56.7M, image decoder 30.8M), as upstream's ~174M.
    "paper": Vec2FaceConfig(
        feat_dim=512,
        image_size=112,
        grid_size=7,
        width=768,
        depth=12,
        num_heads=12,
        decoder_width=768,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=4.0,
        qkv_bias=True,
        dropout=0.1,
        z_channels=256,
        ch=128,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        mid_blocks=2,
        norm_groups=32,
    ).model_dump(),
}


def _parse_config(params: Mapping[str, Any]) -> Vec2FaceConfig:
    try:
        return Vec2FaceConfig.model_validate(dict(params))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
        raise ParameterError(f"invalid Vec2Face parameters: {problems}") from None


def _parse_masking_params(value: MaskingParams | Mapping[str, Any]) -> MaskingParams:
    if isinstance(value, MaskingParams):
        return value
    try:
        return MaskingParams.model_validate(dict(value))
    except ValidationError as err:
        raise ParameterError(f"invalid masking parameters {dict(value)!r}: {err}") from None


# --------------------------------------------------------------------------------------------------
# row masking
@dataclass(frozen=True)
class RowMask:
    """Which grid rows are dropped from / masked in the encoder input, per sample.

    Attributes:
        keep_index: [B, G - n_drop] long, grid positions (0..G-1) fed to the encoder.
        dropped: [B, G] bool, rows removed from the encoder input (exactly n_drop per sample).
        masked: [B, G] bool, rows whose content is hidden (dropped rows included); the decoder fills
            them with the encoder's token-0 output.
        ratio: [B] float64, the sampled mask ratio r of each sample (0 for an unmasked forward).
    """

    keep_index: torch.Tensor
    dropped: torch.Tensor
    masked: torch.Tensor
    ratio: torch.Tensor

    def to(self, device: torch.device | str) -> RowMask:
        """The same mask on another device."""
        return RowMask(
            *(t.to(device) for t in (self.keep_index, self.dropped, self.masked, self.ratio))
        )


def sample_mask_ratios(
    n: int, params: MaskingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw n mask ratios from N(mu, sigma^2) truncated to [min, max] ([n] float64 on CPU).

    Inverse-CDF sampling; the random numbers come from `generator` (on its own device).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()
    a = (params.min - params.mu) / params.sigma
    b = (params.max - params.mu) / params.sigma
    # The normal CDF loses all precision far in the upper tail (it rounds to 1), so an interval
    # above the mean is sampled as its mirror image below the mean and flipped back.
    flip = a > 0
    if flip:
        a, b = -b, -a
    cdf_a, cdf_b = torch.special.ndtr(torch.tensor([a, b], dtype=torch.float64))
    if cdf_b > cdf_a:
        x = torch.special.ndtri(cdf_a + u * (cdf_b - cdf_a))
    else:  # interval so far in the tail that its CDF mass underflows: all mass sits at b
        x = torch.full_like(u, b)
    if flip:
        x = -x
    return (params.mu + params.sigma * x).clamp(params.min, params.max)


def _row_count(n_rows: int, ratio: float | torch.Tensor) -> Any:
    # Rounded to 9 decimals first so binary floating point cannot add a row: 100 * 0.7 is
    # 70.00000000000001 in float64 and must give 70 rows, not 71.
    if isinstance(ratio, torch.Tensor):
        return torch.ceil(torch.round(n_rows * ratio, decimals=9)).long()
    return math.ceil(round(n_rows * ratio, 9))


def sample_row_mask(
    batch_size: int,
    n_rows: int,
    params: MaskingParams | None,
    generator: torch.Generator | None = None,
) -> RowMask:
    """Sample a RowMask on CPU (params None: nothing dropped or masked).

    Rows are ranked by uniform noise; the first ceil(G*min) are dropped and the first ceil(G*r)
    masked, so dropped rows are always masked too.
    """
    if params is None:
        index = torch.arange(n_rows).expand(batch_size, n_rows).contiguous()
        none = torch.zeros(batch_size, n_rows, dtype=torch.bool)
        return RowMask(index, none, none.clone(), torch.zeros(batch_size, dtype=torch.float64))
    device = generator.device if generator is not None else torch.device("cpu")
    ratio = sample_mask_ratios(batch_size, params, generator)
    n_drop = _row_count(n_rows, params.min)
    n_mask = _row_count(n_rows, ratio).clamp(n_drop, n_rows)
    noise = torch.rand(batch_size, n_rows, generator=generator, device=device).cpu()
    order = torch.argsort(noise, dim=1)  # order[:, k] = the row ranked k-th
    rank = torch.argsort(order, dim=1)  # rank[:, j] = rank of row j
    dropped = rank < n_drop
    masked = rank < n_mask[:, None]
    keep_index = torch.sort(order[:, n_drop:], dim=1).values  # kept rows in raster order
    return RowMask(keep_index, dropped, masked, ratio)


# --------------------------------------------------------------------------------------------------
# image decoder
def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    groups = math.gcd(groups, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus a shortcut of the input (1x1 conv when channels change).

    With ``shortcut_on_branch`` a channel-changing block computes upstream's out = shortcut(h) + h
    instead (h: the branch output, shortcut: a Cout -> Cout 1x1 conv); see the module docstring.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_groups: int = 32,
        conv_bias: bool = True,
        shortcut_on_branch: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=conv_bias)
        self.norm2 = _group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=conv_bias)
        self.shortcut_on_branch = shortcut_on_branch and in_channels != out_channels
        shortcut_in = out_channels if self.shortcut_on_branch else in_channels
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(shortcut_in, out_channels, 1, bias=conv_bias)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, Cin, H, W] -> [B, Cout, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(h if self.shortcut_on_branch else x) + h


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ImageDecoder(nn.Module):
    """Token grid -> RGB image: a taming-VQGAN decoder without attention.

    tokens [B, G, in_dim] -> Linear to z_channels -> [B, z, g, g] -> conv_in -> mid ResBlocks ->
    per level (coarsest first) num_res_blocks[level] ResBlocks then a x2 upsample (not after the
    finest) -> GroupNorm, SiLU, conv3x3 -> [B, 3, g*2**(L-1), ...]. No output activation: the range
    [-1, 1] is learnt and only clamped at inference.
    """

    def __init__(
        self,
        in_dim: int,
        grid_size: int,
        z_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: tuple[int, ...],
        mid_blocks: int,
        norm_groups: int,
        res_conv_bias: bool = True,
        shortcut_on_branch: bool = False,
    ) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.to_latent = nn.Linear(in_dim, z_channels)
        channels = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, channels, 3, padding=1)
        res_block = partial(
            ResBlock,
            norm_groups=norm_groups,
            conv_bias=res_conv_bias,
            shortcut_on_branch=shortcut_on_branch,
        )
        self.mid = nn.Sequential(*(res_block(channels, channels) for _ in range(mid_blocks)))
        levels = []
        for level in reversed(range(len(ch_mult))):
            out_channels = ch * ch_mult[level]
            layers: list[nn.Module] = []
            for _ in range(num_res_blocks[level]):
                layers.append(res_block(channels, out_channels))
                channels = out_channels
            if level != 0:
                layers.append(Upsample(channels))
            levels.append(nn.Sequential(*layers))
        self.levels = nn.Sequential(*levels)
        self.norm_out = _group_norm(channels, norm_groups)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, G, in_dim] in raster order -> image [B, 3, H, W] (unbounded)."""
        b, g, _ = tokens.shape
        z = self.to_latent(tokens).transpose(1, 2).reshape(b, -1, self.grid_size, self.grid_size)
        # The reshape leaves z channels-last in memory, and that layout would propagate through
        # every conv. Follow the weights' layout instead: NCHW unless the model was converted with
        # .to(memory_format=torch.channels_last) (good on CUDA; on CPU GroupNorm's backward is
        # about 10x slower channels-last).
        w = self.conv_in.weight
        channels_last = w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        z = z.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        h = self.mid(self.conv_in(z))
        h = self.levels(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------------
# the generator
class Vec2Face(nn.Module):
    """Feature vector -> face image (see the module docstring for the architecture).

    Build it from a parameters mapping: ``Vec2Face(**params)``; the arguments and their defaults
    (the 64 px CPU model) are the fields of `Vec2FaceConfig`:

    - feat_dim: length of the input feature vector (512).
    - image_size: output side in pixels (64); must equal grid_size * 2**(len(ch_mult)-1).
    - grid_size: token-grid side (4; 7 for the 112 px paper model).
    - width / depth / num_heads: ViT encoder token width, blocks, heads (128 / 4 / 4).
    - decoder_width / decoder_depth / decoder_num_heads: ViT decoder (128 / 2 / 4).
    - mlp_ratio: block MLP hidden width / token width (4).
    - qkv_bias: bias on the qkv projection (True).
    - dropout: embedding, attention and projection dropout (0; the paper uses 0.1).
    - z_channels: latent channels fed to the image decoder (64).
    - ch / ch_mult / num_res_blocks / mid_blocks: image-decoder base channels, per-level
      multipliers (finest first), ResBlocks per level (an int or one per level) and at the
      coarsest level (8 / (1,1,2,4,8) / (0,1,1,1,1) / 1).
    - norm_groups: GroupNorm groups of the image decoder (8, reduced for narrow layers).
    - res_conv_bias: bias on the ResBlock convolutions (True; the release has none).
    - shortcut_on_branch: upstream's channel-changing ResBlock, out = shortcut(h) + h (False; set
      by `load_vec2face` for the released weights only).
    - fp32_transformer: run transformer blocks in fp32 outside autocast (False).
    - train_masking / inference_masking: mask-ratio distributions ({min, max, mu, sigma};
      0.5/1/0.75/0.25 and 0.1/1/0.15/0.25).

    ``VEC2FACE_PRESETS["paper"]`` holds the published ViT-B, 112 px size. The config is kept as
    ``self.config`` and ``self.config.model_dump()`` rebuilds the same model.
    """

    def __init__(self, **params: Any) -> None:
        super().__init__()
        cfg = _parse_config(params)
        self.config = cfg
        self.num_rows = cfg.grid_size**2

        # vector -> token grid
        self.vector_embed = nn.Linear(cfg.feat_dim, cfg.width)
        if cfg.grid_embed == "channel_scale":
            self.grid_expand = nn.Linear(1, self.num_rows)  # shared over channels: e_c -> G values
        else:
            self.grid_expand = nn.Linear(cfg.width, self.num_rows * cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_rows, cfg.width))
        self.embed_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.embed_drop = nn.Dropout(cfg.dropout)

        # ViT encoder
        self.blocks = nn.ModuleList(self._block(cfg.width, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

        # ViT decoder
        self.decoder_embed = nn.Linear(cfg.width, cfg.decoder_width)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_rows, cfg.decoder_width))
        self.decoder_blocks = nn.ModuleList(
            self._block(cfg.decoder_width, cfg.decoder_num_heads) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_width, eps=1e-6)
        # Predicted tokens are compared with the width-sized target map; a projection is only
        # needed when the decoder is narrower/wider than the encoder.
        self.token_head = (
            nn.Identity()
            if cfg.decoder_width == cfg.width
            else nn.Linear(cfg.decoder_width, cfg.width)
        )

        self.image_decoder = ImageDecoder(
            in_dim=cfg.decoder_width,
            grid_size=cfg.grid_size,
            z_channels=cfg.z_channels,
            ch=cfg.ch,
            ch_mult=cfg.ch_mult,
            num_res_blocks=cfg.res_blocks_per_level(),
            mid_blocks=cfg.mid_blocks,
            norm_groups=cfg.norm_groups,
            res_conv_bias=cfg.res_conv_bias,
            shortcut_on_branch=cfg.shortcut_on_branch,
        )
        self.initialize_weights()
        # Created after the ViT initialisation (which draws random numbers), zero-initialised: the
        # other modules' initial weights are the same with or without it.
        self.linear_base = None
        if cfg.linear_base:
            self.linear_base = nn.Linear(cfg.feat_dim, 3 * cfg.image_size**2)
            nn.init.zeros_(self.linear_base.weight)
            nn.init.zeros_(self.linear_base.bias)

    def _block(self, dim: int, heads: int) -> Block:
        cfg = self.config
        return Block(
            dim,
            heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            proj_drop=cfg.dropout,
            attn_drop=cfg.dropout,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )

    def initialize_weights(self) -> None:
        """Xavier-uniform linears with zero bias, N(0, .02) position embeddings, unit LayerNorms
        (ViT/MAE initialisation); convolutions keep PyTorch's default."""
        if self.pos_embed.is_meta:
            return
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.decoder_pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the generated images in pixels."""
        return self.config.image_size

    def resolve_masking(self, masking: Any) -> MaskingParams | None:
        """Map a `masking` argument to a ratio distribution (None = no masking)."""
        if masking is None or masking is False:
            return None
        if masking is True or masking == "train":
            return self.config.train_masking
        if masking == "inference":
            return self.config.inference_masking
        if isinstance(masking, MaskingParams | Mapping):
            return _parse_masking_params(masking)
        raise ParameterError(
            f"masking must be True/'train', 'inference', None/False, a MaskingParams/mapping "
            f"{{min, max, mu, sigma}} or a RowMask, got {masking!r}"
        )

    def sample_row_mask(
        self, batch_size: int, masking: Any = True, generator: torch.Generator | None = None
    ) -> RowMask:
        """A RowMask for this model's grid (CPU; `forward` moves it to the input's device)."""
        return sample_row_mask(batch_size, self.num_rows, self.resolve_masking(masking), generator)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        if self.config.fp32_transformer and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = x.float()
                for blk in blocks:
                    x = blk(x)
            return x
        for blk in blocks:
            x = blk(x)
        return x

    # ----------------------------------------------------------------------------------------------
    def embed_vector(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, D] -> (e [B, W], grid tokens [B, G, W]) before masking."""
        e = self.vector_embed(features)
        if self.config.grid_embed == "channel_scale":
            return e, self.grid_expand(e.unsqueeze(-1)).transpose(1, 2)
        return e, self.grid_expand(e).view(e.shape[0], self.num_rows, e.shape[1])

    def forward_encoder(
        self, features: torch.Tensor, row_mask: RowMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed, mask and encode.

        Returns (latent [B, 1 + G - n_drop, W] with token 0 first, target grid [B, G, W] detached:
        the unmasked token map the decoder learns to reproduce).
        """
        e, grid = self.embed_vector(features)
        target = grid.detach()
        grid = torch.where(row_mask.masked.unsqueeze(-1), e.unsqueeze(1), grid)
        x = torch.cat([e.unsqueeze(1), grid], dim=1) + self.pos_embed
        x = self.embed_drop(self.embed_norm(x))
        width = x.shape[-1]
        kept = torch.gather(x[:, 1:], 1, row_mask.keep_index.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :1], kept], dim=1)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), target

    def forward_decoder(self, latent: torch.Tensor, row_mask: RowMask) -> torch.Tensor:
        """Fill dropped/masked rows with the token-0 output and decode: -> tokens [B, G, Wd]."""
        y = self.decoder_embed(latent)
        b, _, width = y.shape
        fill = y[:, :1].expand(b, self.num_rows, width)
        index = row_mask.keep_index.unsqueeze(-1).expand(-1, -1, width)
        grid = fill.scatter(1, index, y[:, 1:])
        grid = torch.where(row_mask.masked.unsqueeze(-1), fill, grid)
        x = torch.cat([y[:, :1], grid], dim=1) + self.decoder_pos_embed
        x = self._run_blocks(self.decoder_blocks, x)
        return self.decoder_norm(x)[:, 1:]

    def forward_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder tokens [B, G, Wd] -> image [B, 3, H, W] (unbounded; trained towards [-1, 1])."""
        return self.image_decoder(tokens)

    def forward(
        self,
        features: torch.Tensor,
        masking: Any = True,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Generate images and everything the training losses need.

        Args:
            features: [B, feat_dim] float, raw (un-normalised) face features.
            masking: True or 'train' (training ratios), 'inference', None/False (no masking),
                a MaskingParams / mapping {min, max, mu, sigma}, or a RowMask (an exact mask, e.g.
                to keep it fixed over AttrOP steps).
            generator: torch.Generator for the mask draw (CPU or the features' device);
                None uses the global CPU RNG.

        Returns:
            dict with image [B, 3, H, W] (unclamped), tokens_pred [B, G, W], tokens_target
            [B, G, W] (detached), mask [B, G] bool (masked rows, dropped ones included),
            dropped [B, G] bool.
        """
        self._check_features(features)
        if isinstance(masking, RowMask):
            row_mask = masking
            if row_mask.masked.shape != (features.shape[0], self.num_rows):
                raise DataError(
                    f"RowMask is for shape {tuple(row_mask.masked.shape)}, expected "
                    f"({features.shape[0]}, {self.num_rows})"
                )
        else:
            row_mask = self.sample_row_mask(features.shape[0], masking, generator)
        row_mask = row_mask.to(features.device)
        latent, target = self.forward_encoder(features, row_mask)
        tokens = self.forward_decoder(latent, row_mask)
        image = self.forward_image(tokens)
        if self.linear_base is not None:
            size = self.config.image_size
            image = image + self.linear_base(features).view(-1, 3, size, size).to(image.dtype)
        return {
            "image": image,
            "tokens_pred": self.token_head(tokens),
            "tokens_target": target,
            "mask": row_mask.masked,
            "dropped": row_mask.dropped,
        }

    def generate(
        self,
        features: torch.Tensor,
        masking: Any = "inference",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] clamped to [-1, 1] for rendering and AttrOP.

        `masking` as in `forward`: 'inference' (default) draws random rows, a second source of
        intra-class variation; None renders deterministically with no row masked or dropped.
        Autograd stays on (AttrOP optimises the input vector through this); wrap in
        torch.no_grad() for plain rendering, and call .eval() first to switch dropout off.
        """
        return self.forward(features, masking=masking, generator=generator)["image"].clamp(-1, 1)

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.config.feat_dim:
            raise DataError(
                f"Vec2Face expects features of shape [B, {self.config.feat_dim}], "
                f"got {tuple(features.shape)}"
            )
        if not features.is_floating_point():
            raise DataError(f"Vec2Face expects float features, got {features.dtype}")


def build_vec2face(
    preset: str = "default", device: torch.device | str | None = None, **overrides: Any
) -> Vec2Face:
    """A Vec2Face from a named preset ('default' or 'paper') with keyword overrides.

    device='meta' builds the structure without allocating weights (parameter counting).
    """
    if preset not in VEC2FACE_PRESETS:
        raise ParameterError(
            f"unknown Vec2Face preset {preset!r}; known: {sorted(VEC2FACE_PRESETS)}"
        )
    params = {**VEC2FACE_PRESETS[preset], **overrides}
    if device is None:
        return Vec2Face(**params)
    with torch.device(device):
        return Vec2Face(**params)


# --------------------------------------------------------------------------------------------------
# loading: the project's checkpoints and upstream's released generator (vec2face_generator.pth)
# Attention heads are not in the weights' shapes: these are the published vec2face_vit_base_patch16
# (encoder, decoder).
RELEASE_NUM_HEADS = (12, 16)
# In the released file but never called by upstream's forward.
_RELEASE_UNUSED = ("center_token.", "patch_embed.")
_EXPECTED_FILE = (
    "expected the project's vec2face checkpoint {arch: 'vec2face', config, state_dict, meta} or "
    "upstream's released vec2face_generator.pth (a dict whose 'model_vec2face' entry is the "
    "generator's state dict)"
)
# Released names that only change prefix: (pattern, project name).
_RELEASE_RENAMES = (
    (r"latent_prior_proj_f\.(.+)", "vector_embed.{}"),
    (r"feature_token\.(.+)", "grid_expand.{}"),
    (r"token_emb\.LayerNorm\.(.+)", "embed_norm.{}"),
    (r"((?:decoder_)?blocks\.\d+\..+|(?:decoder_)?norm\..+|decoder_embed\..+)", "{}"),
    (r"decoder_pos_embed_learned", "decoder_pos_embed"),
    (r"im_decoder_proj\.(.+)", "image_decoder.to_latent.{}"),
    (r"im_decoder\.((?:conv_in|conv_out|norm_out)\..+)", "image_decoder.{}"),
)


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state.items()}


def _indices(keys: Any, prefix: str) -> list[int]:
    """The distinct N of keys `<prefix>N.<rest>`, sorted."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for k in keys if (m := pattern.match(k))})


def released_config(state: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The Vec2Face config of a released-layout generator state dict, read off its shapes.

    `state` maps upstream's key names to tensors or shapes (so a key -> shape listing works too).
    Widths, depths, grid, feature dimension and the image decoder's channels come from the shapes;
    the heads (not in any shape) are the published ones unless `overrides` set them. The result
    computes upstream's function: bias-free ResBlock convs, the shortcut on the branch, GroupNorm
    with 32 groups, transformer blocks in fp32 under autocast.
    """
    shape = _shapes(state)

    def need(key: str) -> tuple[int, ...]:
        if key not in shape:
            raise DataError(f"released Vec2Face state dict has no {key!r}; {_EXPECTED_FILE}")
        return shape[key]

    width, feat_dim = need("latent_prior_proj_f.weight")
    decoder_width = need("decoder_embed.weight")[0]
    if decoder_width != width:
        raise DataError(
            f"released Vec2Face state dict: decoder width {decoder_width} != encoder width {width} "
            "(upstream regresses decoder tokens onto encoder-width targets, so they are equal)"
        )
    n_rows = need("feature_token.weight")[0]
    grid = math.isqrt(n_rows)
    if grid * grid != n_rows:
        raise DataError(f"released Vec2Face feature_token has {n_rows} rows, not a square grid")
    mlp_ratio = need("blocks.0.mlp.fc1.weight")[0] / width
    if need("decoder_blocks.0.mlp.fc1.weight")[0] != mlp_ratio * decoder_width:
        raise DataError("released Vec2Face encoder and decoder blocks have different MLP ratios")
    levels = _indices(shape, "im_decoder.up.")
    blocks = [len(_indices(shape, f"im_decoder.up.{n}.block.")) for n in levels]
    if levels != list(range(len(levels))) or not all(blocks):
        raise DataError(
            f"released Vec2Face image decoder: expected up.0..up.N each with ResBlocks, got levels "
            f"{levels} with {blocks} blocks"
        )
    channels = [need(f"im_decoder.up.{n}.block.0.conv2.weight")[0] for n in levels]
    ch = math.gcd(*channels)
    config = {
        "feat_dim": feat_dim,
        "image_size": grid * 2 ** (len(levels) - 1),
        "grid_size": grid,
        "width": width,
        "depth": len(_indices(shape, "blocks.")),
        "num_heads": RELEASE_NUM_HEADS[0],
        "decoder_width": decoder_width,
        "decoder_depth": len(_indices(shape, "decoder_blocks.")),
        "decoder_num_heads": RELEASE_NUM_HEADS[1],
        "mlp_ratio": mlp_ratio,
        "qkv_bias": "blocks.0.attn.qkv.bias" in shape,
        "dropout": 0.1,
        "z_channels": need("im_decoder_proj.weight")[0],
        "ch": ch,
        "ch_mult": tuple(c // ch for c in channels),
        "num_res_blocks": tuple(blocks),
        "mid_blocks": len(_indices(shape, "im_decoder.mid.block_")),
        "norm_groups": 32,
        "res_conv_bias": "im_decoder.up.0.block.0.conv1.bias" in shape,
        "shortcut_on_branch": True,
        "fp32_transformer": True,
        **overrides,
    }
    try:
        return _parse_config(config).model_dump()
    except ParameterError as err:
        raise ParameterError(
            f"{err} (config read off the released weights' shapes, heads {RELEASE_NUM_HEADS} from "
            "the published model; a scaled-down file may need num_heads/decoder_num_heads set)"
        ) from None


def _project_name(key: str, num_res_blocks: Sequence[int]) -> str | None:
    """This module's name for a released key (None: not a key of the released layout)."""
    for pattern, name in _RELEASE_RENAMES:
        if m := re.fullmatch(pattern, key):
            return name.format(*m.groups())
    if m := re.fullmatch(r"im_decoder\.mid\.block_(\d+)\.(.+)", key):  # taming counts from 1
        return f"image_decoder.mid.{int(m[1]) - 1}.{m[2]}"
    # up.N is level N, finest first; this module keeps the levels coarsest first.
    last = len(num_res_blocks) - 1
    if m := re.fullmatch(r"im_decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", key):
        param = m[3].replace("nin_shortcut.", "shortcut.")
        return f"image_decoder.levels.{last - int(m[1])}.{m[2]}.{param}"
    if m := re.fullmatch(r"im_decoder\.up\.(\d+)\.upsample\.(.+)", key):
        level = int(m[1])
        if level < len(num_res_blocks):
            return f"image_decoder.levels.{last - level}.{num_res_blocks[level]}.{m[2]}"
    return None


def released_state_dict(
    state: Mapping[str, torch.Tensor], num_res_blocks: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Upstream's generator state dict under this module's names (config from `released_config`).

    The position embedding is upstream's nn.Embedding looked up at its `position_ids` buffer;
    center_token.* and patch_embed.* are dropped (upstream's forward never calls them). A key of
    no known role is an error, so nothing in the file is silently ignored.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(_RELEASE_UNUSED) or key.startswith("token_emb.position_"):
            continue
        name = _project_name(key, num_res_blocks)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        raise DataError(
            f"released Vec2Face state dict has {len(unknown)} keys of no known role, e.g. "
            f"{unknown[:5]}; {_EXPECTED_FILE}"
        )
    for key in ("token_emb.position_embeddings.weight", "token_emb.position_ids"):
        if key not in state:
            raise DataError(f"released Vec2Face state dict has no {key!r}; {_EXPECTED_FILE}")
    table = state["token_emb.position_embeddings.weight"]
    ids = state["token_emb.position_ids"].reshape(-1).long()
    if not ids.is_meta and len(ids) and (ids.min() < 0 or ids.max() >= len(table)):
        raise DataError(
            f"released Vec2Face position_ids {ids.tolist()} index outside the {len(table)} "
            "position embeddings"
        )
    out["pos_embed"] = table.index_select(0, ids).unsqueeze(0)
    return out


def _read_generator_file(path: Path) -> Any:
    # weights_only refuses every pickled object but tensors and plain containers; upstream's saver
    # adds its argparse.Namespace, which holds only plain values, so that one class is allowed.
    if not path.is_file():
        raise MissingInputError(f"Vec2Face checkpoint {path} does not exist; {_EXPECTED_FILE}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = found[1] if found else str(exc).splitlines()[0]
        raise DataError(
            f"Vec2Face checkpoint {path} was refused: it pickles {what}, and only tensors, plain "
            f"containers and argparse.Namespace are loaded (weights_only); {_EXPECTED_FILE}"
        ) from exc
    except Exception as exc:  # zip/EOF/runtime errors of a truncated or foreign file
        raise DataError(
            f"Vec2Face checkpoint {path} is corrupt or not a torch file "
            f"({type(exc).__name__}: {exc}); {_EXPECTED_FILE}"
        ) from exc


def _weights_and_config(
    obj: Any, path: Path, overrides: Mapping[str, Any]
) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    if isinstance(obj, Mapping) and obj.get("arch") == "vec2face":
        if not isinstance(obj.get("state_dict"), Mapping):
            raise DataError(f"Vec2Face checkpoint {path} has no state_dict; {_EXPECTED_FILE}")
        return obj["state_dict"], dict(obj.get("config") or {})
    if isinstance(obj, Mapping) and isinstance(obj.get("model_vec2face"), Mapping):
        released = obj["model_vec2face"]
    elif isinstance(obj, Mapping) and "latent_prior_proj_f.weight" in obj:  # a bare generator
        released = obj
    else:
        kind = (
            f"a dict with keys {sorted(map(str, obj))[:8]} (arch {obj.get('arch')!r})"
            if isinstance(obj, Mapping)
            else f"a {type(obj).__name__}"
        )
        raise DataError(f"Vec2Face checkpoint {path} is {kind}; {_EXPECTED_FILE}")
    bad = [k for k, v in released.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(
            f"Vec2Face checkpoint {path}: 'model_vec2face' entries {bad[:5]} are no tensors"
        )
    config = released_config(released, **overrides)
    return released_state_dict(released, config["num_res_blocks"]), config


def load_vec2face(
    path: str | Path,
    device: torch.device | str = "cpu",
    config_overrides: Mapping[str, Any] | None = None,
) -> Vec2Face:
    """A Vec2Face in eval mode from the project's checkpoint or upstream's released generator.

    The project's checkpoint ({arch: 'vec2face', config, state_dict, ...}, see
    face_pipelines.io.checkpoint) rebuilds from its config. Upstream's file (its `model_vec2face`
    entry; the other training entries are ignored) is built from `released_config` - which
    `config_overrides` amends, e.g. the heads of a scaled-down file - and computes upstream's
    forward. The file is read with weights_only=True; only argparse.Namespace is allowed besides
    tensors and plain containers.

    Raises:
        MissingInputError: `path` does not exist.
        DataError: the file is corrupt, pickles other objects, or is neither layout, or its
            weights do not fit the config (the message names the file and what was expected).
    """
    path = Path(path)
    state, config = _weights_and_config(
        _read_generator_file(path), path, dict(config_overrides or {})
    )
    with torch.device("meta"):  # the weights replace every parameter: skip a random init
        model = Vec2Face(**config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise DataError(
            f"Vec2Face checkpoint {path}: weights do not fit its config: {exc}"
        ) from exc
    return model.to(device).eval()

"""RepVGG backbones (Ding et al., 2021) in train and deploy form, with the re-parameterisation between.

Train form: every block sums three branches - a 3x3 conv + BN (`rbr_dense.conv/bn`), a 1x1 conv + BN
(`rbr_1x1.conv/bn`) and, where input and output have the same shape, a bare BN (`rbr_identity`) -
then applies ReLU. Deploy form: the same function as one 3x3 conv with bias (`rbr_reparam`). In
eval mode the three branches are linear, so `switch_to_deploy` folds them into that conv exactly
(up to float rounding).

Layout (the names published RepVGG / 6DRepNet state dicts use): `layer0` is the stem block (3 ->
stem_width, stride 2); `layer1`..`layer4` are nn.Sequential stages whose first block has stride 2.
Some variants (the g2/g4 ones) use grouped convs on every other block; a block's groups show in its
3x3 weight, whose second dimension is in_channels / groups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.errors import DataError, ParameterError

__all__ = ["REPVGG_B1G2", "RepVGG", "RepVGGBlock", "RepVGGLayout"]

NUM_STAGES = 4


@dataclass(frozen=True)
class RepVGGLayout:
    """Channels, depth and groups of a RepVGG.

    Attributes:
        stem_width: output channels of layer0.
        stage_blocks: blocks in layer1..layer4.
        stage_widths: output channels of layer1..layer4.
        groups: conv groups of every block in forward order (layer0 first; 1 + sum(stage_blocks)).
    """

    stem_width: int
    stage_blocks: tuple[int, ...]
    stage_widths: tuple[int, ...]
    groups: tuple[int, ...]

    def block_specs(self) -> list[tuple[int, int, int, int]]:
        """(in_channels, out_channels, stride, groups) of every block, layer0 first."""
        if len(self.stage_blocks) != NUM_STAGES or len(self.stage_widths) != NUM_STAGES:
            raise ParameterError(
                f"RepVGG needs {NUM_STAGES} stages, got blocks {self.stage_blocks} and widths "
                f"{self.stage_widths}"
            )
        if any(n < 1 for n in self.stage_blocks) or len(self.groups) != 1 + sum(self.stage_blocks):
            raise ParameterError(
                f"RepVGG layout: {len(self.groups)} groups for 1 + {sum(self.stage_blocks)} blocks "
                f"(stage blocks {self.stage_blocks} must be >= 1)"
            )
        specs = [(3, self.stem_width, 2, self.groups[0])]
        in_ch, i = self.stem_width, 1
        for n, width in zip(self.stage_blocks, self.stage_widths, strict=True):
            for j in range(n):
                specs.append((in_ch, width, 2 if j == 0 else 1, self.groups[i]))
                in_ch, i = width, i + 1
        for cin, cout, _, g in specs:
            if g < 1 or cin % g or cout % g:
                raise ParameterError(f"RepVGG block {cin} -> {cout} channels cannot use {g} groups")
        return specs

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, torch.Tensor], deploy: bool, source: str = "state_dict"
    ) -> RepVGGLayout:
        """Read the layout from a state dict's block names and 3x3 weight shapes.

        Raises DataError (naming `source`) when the blocks are not numbered 0..n-1 per stage or a
        weight shape does not chain onto the previous block.
        """
        suffix = "rbr_reparam.weight" if deploy else "rbr_dense.conv.weight"
        form = "deploy" if deploy else "train"

        def weight(prefix: str) -> torch.Tensor:
            w = state_dict.get(f"{prefix}.{suffix}")
            if not isinstance(w, torch.Tensor) or w.ndim != 4 or tuple(w.shape[2:]) != (3, 3):
                raise DataError(
                    f"{source}: RepVGG {form} form needs a 3x3 conv weight {prefix}.{suffix} "
                    f"[out, in/groups, 3, 3]; got {getattr(w, 'shape', None)}"
                )
            return w

        blocks = []
        for s in range(1, NUM_STAGES + 1):
            names = {k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}
            idx = {int(n) for n in names if n.isdigit()}
            if not idx or len(idx) != len(names) or idx != set(range(len(idx))):
                raise DataError(
                    f"{source}: RepVGG stage layer{s} must have blocks numbered 0..n-1, found "
                    f"{sorted(names)}"
                )
            blocks.append(len(idx))
        prefixes = ["layer0"] + [
            f"layer{s}.{j}" for s in range(1, NUM_STAGES + 1) for j in range(blocks[s - 1])
        ]
        widths, groups, in_ch = [], [], 3
        for prefix in prefixes:
            w = weight(prefix)
            out_ch, per_group = int(w.shape[0]), int(w.shape[1])
            if per_group < 1 or in_ch % per_group:
                raise DataError(
                    f"{source}: {prefix}.{suffix} has {per_group} input channels per group, which "
                    f"does not divide the {in_ch} channels of the block before"
                )
            widths.append(out_ch)
            groups.append(in_ch // per_group)
            in_ch = out_ch
        ends = [sum(blocks[: s + 1]) for s in range(NUM_STAGES)]
        return cls(
            stem_width=widths[0],
            stage_blocks=tuple(blocks),
            stage_widths=tuple(widths[e] for e in ends),
            groups=tuple(groups),
        )


# RepVGG-B1g2, the backbone of the published 6DRepNet: width multipliers (2, 2, 2, 4) on
# (64, 128, 256, 512), and groups=2 on blocks 2, 4, ..., 26 counted from layer0 = 0 (in the
# published shapes: the blocks whose 3x3 weight has half of its input channels).
REPVGG_B1G2 = RepVGGLayout(
    stem_width=64,
    stage_blocks=(4, 6, 16, 1),
    stage_widths=(128, 256, 512, 2048),
    groups=tuple(2 if i > 0 and i % 2 == 0 else 1 for i in range(28)),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(cout),
        )
    )


def _fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """kernel (of a bias-free conv) followed by `bn` in eval mode -> (kernel, bias) of one conv."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """ReLU(3x3 conv-BN + 1x1 conv-BN + BN identity) in train form; ReLU(3x3 conv) in deploy form."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, deploy=False
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.stride, self.groups = int(stride), int(groups)
        self.deploy = bool(deploy)
        if self.deploy:
            self.rbr_reparam = nn.Conv2d(
                in_channels, out_channels, 3, stride, 1, groups=groups, bias=True
            )
        else:
            has_identity = in_channels == out_channels and stride == 1
            self.rbr_identity = nn.BatchNorm2d(in_channels) if has_identity else None
            self.rbr_dense = _conv_bn(in_channels, out_channels, 3, stride, groups)
            self.rbr_1x1 = _conv_bn(in_channels, out_channels, 1, stride, groups)
        self.nonlinearity = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""
        if self.deploy:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 conv (kernel, bias) equal to this block's branches in eval mode."""
        if self.deploy:
            return self.rbr_reparam.weight.clone(), self.rbr_reparam.bias.clone()
        k3, b3 = _fuse_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = _fuse_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            # Identity as a 3x3 grouped conv: a 1 at the centre, from channel i to itself (its
            # position inside its group is i % channels-per-group).
            per_group = self.in_channels // self.groups
            eye = torch.zeros_like(kernel)
            rows = torch.arange(self.in_channels, device=kernel.device)
            eye[rows, rows % per_group, 1, 1] = 1.0
            ki, bi = _fuse_bn(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    def switch_to_deploy(self) -> None:
        """Replace the branches by the one equivalent 3x3 conv (uses BN running statistics)."""
        if self.deploy:
            return
        kernel, bias = self.fused_kernel_bias()
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, 3, self.stride, 1, groups=self.groups, bias=True
        ).to(device=kernel.device, dtype=kernel.dtype)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            conv.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_reparam = conv
        self.deploy = True


class RepVGG(nn.Module):
    """RepVGG feature extractor: layer0 (stem) and layer1..layer4; no classifier.

    Args:
        layout: channels / depth / groups (default RepVGG-B1g2).
        deploy: build the deploy form (one conv per block) instead of the train form.
    """

    def __init__(self, layout: RepVGGLayout = REPVGG_B1G2, deploy: bool = False) -> None:
        super().__init__()
        self.layout = layout
        specs = layout.block_specs()
        self.layer0 = RepVGGBlock(*specs[0], deploy=deploy)
        i = 1
        for s, n in enumerate(layout.stage_blocks, 1):
            stage = [RepVGGBlock(*specs[i + j], deploy=deploy) for j in range(n)]
            setattr(self, f"layer{s}", nn.Sequential(*stage))
            i += n
        self.out_channels = int(layout.stage_widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, out_channels, H/32, W/32] (rounded up)."""
        for layer in (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return x

    def switch_to_deploy(self) -> RepVGG:
        """Re-parameterise every block into deploy form in place (call in eval mode)."""
        for m in self.modules():
            if isinstance(m, RepVGGBlock):
                m.switch_to_deploy()
        return self

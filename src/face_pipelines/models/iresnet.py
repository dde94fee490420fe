"""IResNet face recognizers whose parameter names match insightface arcface_torch.

Publicly distributed `backbone.pth` files (insightface arcface_torch) are bare state_dicts of
`backbones/iresnet.py`; these modules use the same attribute names, nesting and shapes, so such a
file loads with `load_state_dict(strict=True)` unchanged.

Layout: stem conv3x3(3->64) + BN + PReLU; four stages of `IBasicBlock` (64/128/256/512 channels),
each starting with a stride-2 block (112 px -> 7x7, 64 px -> 4x4); head BN2d -> flatten -> dropout
-> Linear -> BatchNorm1d whose weight is frozen at 1. The output is the raw (un-normalised)
embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from face_pipelines.errors import ParameterError

STAGE_WIDTHS = (64, 128, 256, 512)
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def final_map_size(input_size: int, num_stride2: int = 4) -> int:
    """Side of the last map after `num_stride2` stride-2 3x3 convs (padding 1) on `input_size`."""
    size = input_size
    for _ in range(num_stride2):
        size = math.ceil(size / 2)
    return size


class IBasicBlock(nn.Module):
    """Residual block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            # Sequential indices 0/1 are what insightface checkpoints name downsample.0 / .1.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for a [B, C_in, H, W] input."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet backbone (insightface arcface_torch names) giving a raw `num_features`-d embedding.

    Args:
        layers: blocks per stage, e.g. (3, 4, 14, 3) for IResNet-50.
        num_features: embedding dimension.
        input_size: input side in pixels (112 for insightface crops, 64 for the CPU default); sets
            the FC input (512 * s * s with s the final map side: 7 at 112 px, 4 at 64 px).
        dropout: dropout probability before the FC layer.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] | list[int],
        num_features: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ParameterError(f"IResNet layers must be 4 positive block counts, got {layers!r}")
        if input_size < 16:
            raise ParameterError(f"IResNet input_size must be >= 16 pixels, got {input_size}")
        if num_features < 1:
            raise ParameterError(f"IResNet num_features must be >= 1, got {num_features}")
        self.input_size = int(input_size)
        self.num_features = int(num_features)
        self.map_size = final_map_size(self.input_size)

        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_ch = 64
        stages = []
        for width, n_blocks in zip(STAGE_WIDTHS, layers, strict=True):
            blocks = [IBasicBlock(in_ch, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(int(n_blocks) - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.map_size * self.map_size, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as arcface_torch so training recipes transfer (conv N(0, 0.1), BN (1, 0)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward_features(
        self, x: torch.Tensor, return_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed a [B, 3, H, W] batch normalised as (x/255 - 0.5)/0.5.

        Returns the raw embedding [B, num_features]; with `return_maps=True` returns
        `(embedding, [layer1, layer2, layer3, layer4 output maps])` (strides 2, 4, 8, 16), e.g. for
        a perceptual/identity loss on intermediate features.
        """
        x = self.prelu(self.bn1(self.conv1(x)))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        embedding = self.features(self.fc(x))
        if return_maps:
            return embedding, maps
        return embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw embedding [B, num_features] of a [B, 3, H, W] batch."""
        return self.forward_features(x, return_maps=False)


def _build(arch: str, **kwargs) -> IResNet:
    return IResNet(IRESNET_LAYERS[arch], **kwargs)


def iresnet18(**kwargs) -> IResNet:
    """IResNet-18 (2, 2, 2, 2 blocks; 24.0M params at 112 px). kwargs: see `IResNet`."""
    return _build("iresnet18", **kwargs)


def iresnet34(**kwargs) -> IResNet:
    """IResNet-34 (3, 4, 6, 3 blocks; 34.1M params at 112 px). kwargs: see `IResNet`."""
    return _build("iresnet34", **kwargs)


def iresnet50(**kwargs) -> IResNet:
    """IResNet-50 (3, 4, 14, 3 blocks; 43.6M params at 112 px). kwargs: see `IResNet`."""
    return _build("iresnet50", **kwargs)


def iresnet100(**kwargs) -> IResNet:
    """IResNet-100 (3, 13, 30, 3 blocks; 65.2M params at 112 px). kwargs: see `IResNet`."""
    return _build("iresnet100", **kwargs)

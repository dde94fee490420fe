"""A small, fast residual face recognizer for the CPU default (64 px, ~0.9M parameters, ~9M MACs).

Same ingredients and head as IResNet (BN/PReLU residual blocks; BN2d -> flatten -> dropout -> Linear
-> BatchNorm1d with frozen weight) at a fraction of the cost: a stride-2 stem and four stages that
each start with a stride-2 block take 64 px to a 2x2 map. Train with channels_last on CPU too:
oneDNN convolutions are faster in that layout.
"""

from __future__ import annotations

import torch
from torch import nn

from face_pipelines.errors import ParameterError
from face_pipelines.models.iresnet import final_map_size


class SmallBlock(nn.Module):
    """Residual block with the stride on the first conv (cheaper than IBasicBlock's stride-last).

    conv3x3(stride) -> BN -> PReLU -> conv3x3 -> BN, plus a conv1x1+BN shortcut if the shape
    changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for a [B, C_in, H, W] input."""
        out = self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))
        return out + (x if self.downsample is None else self.downsample(x))


class SmallFaceNet(nn.Module):
    """Four-stage residual CNN producing a raw `num_features`-d embedding.

    Args:
        num_features: embedding dimension (default 256).
        input_size: input side in pixels (default 64); sets the FC input size.
        widths: channels of the four stages.
        blocks: residual blocks per stage (the first of each stage has stride 2).
        stem_width: channels of the stride-2 stem convolution.
        dropout: dropout probability before the FC layer.
    """

    def __init__(
        self,
        num_features: int = 256,
        input_size: int = 64,
        widths: tuple[int, int, int, int] | list[int] = (24, 48, 96, 192),
        blocks: tuple[int, int, int, int] | list[int] = (1, 1, 1, 1),
        stem_width: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ParameterError(
                f"SmallFaceNet widths and blocks need 4 entries each, got {widths!r}, {blocks!r}"
            )
        if any(int(b) < 1 for b in blocks) or any(int(w) < 1 for w in widths):
            raise ParameterError(
                f"SmallFaceNet widths/blocks must be positive: {widths!r}, {blocks!r}"
            )
        if num_features < 1:
            raise ParameterError(f"SmallFaceNet num_features must be >= 1, got {num_features}")
        if input_size < 32:
            raise ParameterError(f"SmallFaceNet input_size must be >= 32 pixels, got {input_size}")
        self.input_size = int(input_size)
        self.num_features = int(num_features)
        self.map_size = final_map_size(self.input_size, num_stride2=5)

        self.conv1 = nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.prelu = nn.PReLU(stem_width)
        in_ch = stem_width
        stages = []
        for width, n_blocks in zip(widths, blocks, strict=True):
            stage = [SmallBlock(in_ch, int(width), stride=2)]
            stage += [SmallBlock(int(width), int(width)) for _ in range(int(n_blocks) - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = int(width)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(in_ch)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * self.map_size * self.map_size, num_features)
        self.features = nn.BatchNorm1d(num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
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
        `(embedding, [layer1, layer2, layer3, layer4 output maps])` (strides 4, 8, 16, 32).
        """
        x = self.prelu(self.bn1(self.conv1(x)))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        x = torch.flatten(self.bn2(x), 1)
        embedding = self.features(self.fc(self.dropout(x)))
        if return_maps:
            return embedding, maps
        return embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw embedding [B, num_features] of a [B, 3, H, W] batch."""
        return self.forward_features(x, return_maps=False)

"""LPIPS-VGG perceptual distance (Zhang et al. 2018, v0.1) with weights loaded from paths.

Nothing downloads: the VGG-16 trunk comes from a torchvision `vgg16` state dict (e.g. the file
torchvision caches as `vgg16-397923af.pth`; full model or `features` only) and the five 1x1 linear
layers from the LPIPS v0.1 `vgg.pth` (keys `lin<k>.model.1.weight`, shape [1, C_k, 1, 1]).

    d(x, y) = sum_k mean_hw( w_k . (n(phi_k(x)) - n(phi_k(y)))^2 )

with phi_k the VGG activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of inputs
shifted and scaled by LPIPS's constants, n() unit length along channels, w_k >= 0 per channel.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

from face_pipelines.errors import DataError

__all__ = ["LPIPS_CHANNELS", "LPIPSVGG"]

# Feature indices of torchvision's vgg16().features that end each LPIPS stage (after the ReLU).
_STAGE_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# Input normalisation of LPIPS v0.1 for images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise DataError(f"{what} weights file {path} is unreadable: {exc}") from exc
    if not isinstance(state, dict):
        raise DataError(
            f"{what} weights file {path} holds a {type(state).__name__}, not a state dict"
        )
    return state


class LPIPSVGG(nn.Module):
    """Frozen LPIPS-VGG: forward(x, y) with images [B, 3, H, W] in [-1, 1] -> distances [B].

    Build it with `LPIPSVGG.from_paths(vgg_path, linear_path)`; the bare constructor leaves the
    weights random (for shape checks only).
    """

    def __init__(self):
        super().__init__()
        features = vgg16(weights=None).features
        starts = (0, *_STAGE_ENDS[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(*[features[i] for i in range(a, b)])
            for a, b in zip(starts, _STAGE_ENDS, strict=True)
        )
        self.linear = nn.ParameterList(
            nn.Parameter(torch.ones(1, c, 1, 1) / c) for c in LPIPS_CHANNELS
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def from_paths(cls, vgg_path: str | Path, linear_path: str | Path) -> LPIPSVGG:
        """The network with a torchvision vgg16 state dict and LPIPS v0.1 linear weights."""
        net = cls()
        vgg = _load(vgg_path, "LPIPS VGG-16")
        if any(k.startswith("features.") for k in vgg):
            vgg = {
                k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")
            }
        trunk = {}
        for s, (a, b) in enumerate(zip((0, *_STAGE_ENDS[:-1]), _STAGE_ENDS, strict=True)):
            for i in range(a, b):
                for name in ("weight", "bias"):
                    if f"{i}.{name}" in vgg:
                        trunk[f"{s}.{i - a}.{name}"] = vgg[f"{i}.{name}"]
        try:
            net.stages.load_state_dict(trunk, strict=True)
        except RuntimeError as exc:
            raise DataError(
                f"{vgg_path} is not a torchvision vgg16 state dict (features.<i>.weight/bias): "
                f"{str(exc).splitlines()[0]}"
            ) from None
        lin = _load(linear_path, "LPIPS linear-layer")
        for k, c in enumerate(LPIPS_CHANNELS):
            key = f"lin{k}.model.1.weight"
            if key not in lin or tuple(lin[key].shape) != (1, c, 1, 1):
                raise DataError(
                    f"{linear_path} is not an LPIPS v0.1 vgg.pth: expected {key} of shape "
                    f"(1, {c}, 1, 1), found {tuple(lin[key].shape) if key in lin else 'nothing'}"
                )
            net.linear[k].data.copy_(lin[key].float())
        return net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (torch.cat([x, y]).float() - self.shift) / self.scale
        total = torch.zeros(len(x), device=x.device)
        for stage, w in zip(self.stages, self.linear, strict=True):
            h = stage(h)
            n = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            a, b = n[: len(x)], n[len(x) :]
            total = total + ((a - b).pow(2) * w).sum(1).mean(dim=(1, 2))
        return total

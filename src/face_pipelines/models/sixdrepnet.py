"""6DRepNet head pose (Hempel et al., 2022): a RepVGG regressing a 6-D rotation, read as Euler angles.

The published model (6DRepNet_300W_LP_AFLW2000.pth) is RepVGG-B1g2 -> global average pool ->
`linear_reg` (2048 -> 6). Its 6-D output is two 3-vectors a1, a2; Gram-Schmidt makes them a
rotation matrix with columns x = a1/|a1|, z = (x cross a2)/|.|, y = z cross x. Euler angles
(degrees) are read from R as (pitch, yaw, roll):

    pitch = atan2(R21, R22),  yaw = atan2(-R20, sqrt(R00^2 + R10^2)),  roll = atan2(R10, R00)

(near the singularity sqrt(R00^2 + R10^2) < 1e-6: pitch = atan2(-R12, R11), roll = 0).
Sign convention: a rotation by +t about the vertical (y) axis, R = [[cos t, 0, sin t], [0, 1, 0],
[-sin t, 0, cos t]], reads as yaw = +t; a rotation by +t about the horizontal (x) axis reads as
pitch = +t. Which way a face turns for positive yaw is whatever 6DRepNet's training labels say;
AttrOP uses |yaw|, so it does not depend on it.

`SixDRepNetPose` feeds the model the way the released Vec2Face pipeline does (generator image in
[-1, 1], channels reversed to BGR, (x + 1) / 2, 112 px, no other normalisation) and returns
(yaw, pitch) in degrees clipped to [-90, 90] - the pose-model interface of synthesis.attrop. It is
differentiable (AttrOP backpropagates through it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from face_pipelines.errors import DataError
from face_pipelines.models.registry import load_backbone_weights
from face_pipelines.models.repvgg import REPVGG_B1G2, RepVGG, RepVGGLayout

__all__ = [
    "SixDRepNet",
    "SixDRepNetPose",
    "euler_deg_from_rotation",
    "rotation_from_6d",
    "sixdrepnet_from_state_dict",
]

POSE_INPUT_SIZE = 112  # what the released Vec2Face pipeline feeds 6DRepNet
_SINGULAR = 1e-6


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)


def rotation_from_6d(x6: torch.Tensor) -> torch.Tensor:
    """[B, 6] -> rotation matrices [B, 3, 3] by Gram-Schmidt (columns x, y, z; see module doc)."""
    if x6.ndim != 2 or x6.shape[1] != 6:
        raise DataError(f"expected a 6-D rotation representation [B, 6], got {tuple(x6.shape)}")
    x = _unit(x6[:, 0:3])
    z = _unit(torch.linalg.cross(x, x6[:, 3:6], dim=1))
    y = torch.linalg.cross(z, x, dim=1)
    return torch.stack([x, y, z], dim=2)


def euler_deg_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [B, 3, 3] -> Euler angles [B, 3] (pitch, yaw, roll) in degrees."""
    r = rotation
    sy = torch.sqrt(r[:, 0, 0] ** 2 + r[:, 1, 0] ** 2)
    singular = sy < _SINGULAR
    pitch = torch.where(
        singular, torch.atan2(-r[:, 1, 2], r[:, 1, 1]), torch.atan2(r[:, 2, 1], r[:, 2, 2])
    )
    yaw = torch.atan2(-r[:, 2, 0], sy)
    roll = torch.where(singular, torch.zeros_like(sy), torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    return torch.stack([pitch, yaw, roll], dim=1) * (180.0 / math.pi)


class SixDRepNet(RepVGG):
    """RepVGG (layer0..layer4) -> global average pool -> linear_reg -> 6-D rotation [B, 6].

    The published state dicts name the backbone's layers at the top level (layer0.*, ...,
    linear_reg.*), hence a subclass of the backbone rather than a wrapper.

    Args:
        layout: the backbone (RepVGG-B1g2 for the published weights).
        deploy: deploy form (one conv per block, as published) or train form.
    """

    def __init__(self, layout: RepVGGLayout = REPVGG_B1G2, deploy: bool = True) -> None:
        super().__init__(layout, deploy=deploy)
        self.linear_reg = nn.Linear(self.out_channels, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 6]."""
        return self.linear_reg(super().forward(x).mean(dim=(2, 3)))


class SixDRepNetPose(nn.Module):
    """Generator images [B, 3, H, W] RGB in [-1, 1] -> (yaw, pitch) [B, 2] degrees in [-90, 90].

    Fed as the released Vec2Face pipeline feeds 6DRepNet: channels reversed to BGR, mapped to
    [0, 1] by (x + 1) / 2, at `input_size` px (images of another size are resized bilinearly), no
    other normalisation. Differentiable w.r.t. the images.
    """

    def __init__(self, net: SixDRepNet, input_size: int = POSE_INPUT_SIZE) -> None:
        super().__init__()
        self.net = net
        self.input_size = int(input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.flip(1) + 1.0) / 2.0
        if x.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        euler = euler_deg_from_rotation(rotation_from_6d(self.net(x).float()))
        return torch.stack([euler[:, 1], euler[:, 0]], dim=1).clamp(-90.0, 90.0)


_FORMS = (
    "the deploy form (layer0.rbr_reparam.weight/bias, layer1.0.rbr_reparam.*, ..., "
    "linear_reg.weight/bias; 58 keys for the published RepVGG-B1g2) or the train form "
    "(rbr_dense.conv/bn, rbr_1x1.conv/bn and rbr_identity per block; 453 keys)"
)


def sixdrepnet_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "state_dict"
) -> SixDRepNet:
    """A SixDRepNet in deploy form and eval mode from a deploy- or train-form state dict.

    The backbone's layout (blocks per stage, widths, grouped blocks) is read from the weight
    shapes, so RepVGG-B1g2 (published) and other RepVGG variants load alike; a train-form file is
    re-parameterised into deploy form after loading.

    Raises:
        DataError: naming `source`, when the keys or shapes fit neither form.
    """
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    deploy = any(".rbr_reparam." in k for k in sd)
    train = any(".rbr_dense." in k for k in sd)
    if deploy == train:
        found = ", ".join(sorted(sd)[:4]) or "no keys"
        what = "both forms mixed" if deploy else f"{len(sd)} keys ({found}, ...)"
        raise DataError(f"{source} is not a 6DRepNet state dict: expected {_FORMS}; found {what}")
    layout = RepVGGLayout.from_state_dict(sd, deploy=deploy, source=source)
    model = SixDRepNet(layout, deploy=deploy)
    model.arch = f"sixdrepnet ({'deploy' if deploy else 'train'} form)"
    load_backbone_weights(model, sd, strict=True, source=source)
    return model.eval().switch_to_deploy()

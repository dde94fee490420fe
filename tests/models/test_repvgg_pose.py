"""6DRepNet (RepVGG-B1g2): published key names and shapes, train -> deploy re-parameterisation,
6-D -> rotation -> Euler angles, the released pipeline's input feeding, and load errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from face_pipelines.errors import DataError
from face_pipelines.models.repvgg import REPVGG_B1G2, RepVGGBlock, RepVGGLayout
from face_pipelines.models.sixdrepnet import (
    SixDRepNet,
    SixDRepNetPose,
    euler_deg_from_rotation,
    rotation_from_6d,
    sixdrepnet_from_state_dict,
)

# Key -> shape of the published files (deploy: 6DRepNet_300W_LP_AFLW2000.pth; train: the same
# model before re-parameterisation).
PUBLISHED = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "sixdrepnet_repvgg_b1g2_keys.json").read_text()
)
TINY = RepVGGLayout(
    stem_width=8,
    stage_blocks=(2, 2, 2, 1),
    stage_widths=(8, 16, 16, 32),
    groups=(1, 1, 2, 1, 2, 1, 2, 1),
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _with_trained_statistics(model: SixDRepNet, x: torch.Tensor, seed: int = 0) -> SixDRepNet:
    """Random BN affine parameters and running statistics of real activations, then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass sets the running stats exactly
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _rot_y(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def _rot_x(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _six_d(rotation: torch.Tensor) -> torch.Tensor:
    """The 6-D representation of rotations [B, 3, 3]: their first two columns."""
    return torch.cat([rotation[:, :, 0], rotation[:, :, 1]], dim=1)


# ------------------------------------------------------------------------------------------------
# published layout


@pytest.mark.parametrize("form", ["deploy", "train"])
def test_b1g2_has_every_published_key_and_shape(form):
    model = SixDRepNet(REPVGG_B1G2, deploy=form == "deploy")
    assert _shapes(model) == PUBLISHED[form]
    if form == "deploy":
        n = sum(p.numel() for p in model.parameters())
        assert abs(n / 1e6 - 39.3) < 0.05  # ~39.3M parameters, as published


@pytest.mark.parametrize("form", ["deploy", "train"])
def test_layout_is_read_back_from_the_published_shapes(form):
    sd = {k: torch.empty(v, device="meta") for k, v in PUBLISHED[form].items()}
    assert RepVGGLayout.from_state_dict(sd, deploy=form == "deploy") == REPVGG_B1G2


def test_full_size_deploy_state_dict_loads(tmp_path):
    net = SixDRepNet(REPVGG_B1G2, deploy=True).eval()
    path = tmp_path / "6DRepNet_300W_LP_AFLW2000.pth"
    torch.save(net.state_dict(), path)
    loaded = sixdrepnet_from_state_dict(torch.load(path, weights_only=True), source=str(path))
    assert _shapes(loaded) == PUBLISHED["deploy"]
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


# ------------------------------------------------------------------------------------------------
# re-parameterisation


@pytest.mark.parametrize("groups", [1, 2])
def test_block_fuses_its_three_branches(groups):
    torch.manual_seed(0)
    block = RepVGGBlock(8, 8, stride=1, groups=groups)  # has the identity branch
    x = torch.randn(4, 8, 9, 9)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    block.train()
    with torch.no_grad():
        block(x)
    block.eval()
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        got = block(x)
    assert not hasattr(block, "rbr_dense") and block.deploy
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_train_form_reparameterises_to_the_same_function():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    train = _with_trained_statistics(
        SixDRepNet(REPVGG_B1G2, deploy=False), torch.randn(4, 3, 64, 64)
    )
    with torch.no_grad():
        expected = train(x)
        deploy = sixdrepnet_from_state_dict(train.state_dict(), source="train form")
        got = deploy(x)
    assert _shapes(deploy) == PUBLISHED["deploy"]
    assert expected.abs().max() > 1e-2  # a non-trivial output
    assert (got - expected).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------------
# 6-D -> rotation -> Euler


def test_yaw_pitch_roll_of_constructed_rotations():
    rotations = torch.stack([_rot_y(30), _rot_y(-30), _rot_x(20), _rot_z(15), _rot_y(75)])
    x6 = _six_d(rotations)
    torch.testing.assert_close(rotation_from_6d(x6), rotations)
    euler = euler_deg_from_rotation(rotation_from_6d(x6))  # (pitch, yaw, roll)
    expected = torch.tensor(
        [[0, 30, 0], [0, -30, 0], [20, 0, 0], [0, 0, 15], [0, 75, 0]], dtype=torch.float64
    )
    assert (euler - expected).abs().max().item() < 1e-3


def test_gram_schmidt_ignores_scale_and_skew_of_the_6d_output():
    r = _rot_y(30)[None]
    a1, a2 = r[:, :, 0], r[:, :, 1]
    skewed = torch.cat([3.0 * a1, 0.5 * a2 + 2.0 * a1], dim=1)  # same plane, same orientation
    torch.testing.assert_close(rotation_from_6d(skewed), r)


class _Fixed6D(torch.nn.Module):
    """Records its input and answers a fixed rotation."""

    def __init__(self, rotation: torch.Tensor):
        super().__init__()
        self.register_buffer("x6", _six_d(rotation[None]).float())
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x.detach()
        return self.x6.expand(len(x), 6)


def test_pose_model_is_fed_bgr_in_unit_range_at_112():
    net = _Fixed6D(_rot_y(-40) @ _rot_x(10))
    pose = SixDRepNetPose(net)
    images = torch.zeros(2, 3, 64, 64)
    images[:, 0] = -1.0  # R
    images[:, 2] = 1.0  # B
    out = pose(images)
    assert net.seen.shape == (2, 3, 112, 112)
    torch.testing.assert_close(net.seen[:, 0], torch.ones(2, 112, 112))  # B first, (1+1)/2
    torch.testing.assert_close(net.seen[:, 1], torch.full((2, 112, 112), 0.5))
    torch.testing.assert_close(net.seen[:, 2], torch.zeros(2, 112, 112))
    assert out.shape == (2, 2)
    assert abs(out[0, 0].item() + 40) < 1e-3  # yaw = Euler index 1
    assert abs(out[0, 1].item() - 10) < 1e-3  # pitch = Euler index 0


def test_pose_model_is_differentiable():
    torch.manual_seed(0)
    pose = SixDRepNetPose(SixDRepNet(TINY, deploy=True)).eval()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    yaw = pose(images * 2 - 1)[:, 0]
    assert ((yaw >= -90) & (yaw <= 90)).all()
    (grad,) = torch.autograd.grad(yaw.abs().sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# loading


def test_tiny_train_form_loads_in_deploy_form():
    torch.manual_seed(0)
    train = _with_trained_statistics(SixDRepNet(TINY, deploy=False), torch.randn(4, 3, 32, 32))
    loaded = sixdrepnet_from_state_dict(
        {f"module.{k}": v for k, v in train.state_dict().items()}, source="ddp.pth"
    )
    assert loaded.layout == TINY
    assert all(b.deploy for b in loaded.modules() if isinstance(b, RepVGGBlock))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (loaded(x) - train(x)).abs().max().item() <= 1e-4


def test_load_errors_name_the_file():
    sd = SixDRepNet(TINY, deploy=True).state_dict()
    with pytest.raises(DataError, match=r"pose\.pth is not a 6DRepNet state dict.*deploy form"):
        sixdrepnet_from_state_dict({"conv1.weight": torch.zeros(64, 3, 3, 3)}, "pose.pth")
    missing = {k: v for k, v in sd.items() if not k.startswith("linear_reg.")}
    with pytest.raises(DataError, match=r"pose\.pth.*missing keys.*linear_reg"):
        sixdrepnet_from_state_dict(missing, "pose.pth")
    bad_head = {**sd, "linear_reg.weight": torch.zeros(3, 32)}
    with pytest.raises(DataError, match=r"pose\.pth.*linear_reg\.weight"):
        sixdrepnet_from_state_dict(bad_head, "pose.pth")
    gap = {k: v for k, v in sd.items() if not k.startswith("layer2.1.")}
    gap.update({k.replace("layer2.1.", "layer2.2."): v for k, v in sd.items() if "layer2.1." in k})
    with pytest.raises(DataError, match=r"pose\.pth.*layer2.*numbered"):
        sixdrepnet_from_state_dict(gap, "pose.pth")
    mixed = {**sd, "layer0.rbr_dense.conv.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(DataError, match="both forms"):
        sixdrepnet_from_state_dict(mixed, "pose.pth")

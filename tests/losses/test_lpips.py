"""LPIPS-VGG loaded from weight files by path: the torchvision / LPIPS key layouts, the distance's
properties, gradients for the generator, and clear errors for wrong files. Random weights stand in
for the real ones (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import vgg16

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.losses.lpips import LPIPS_CHANNELS, LPIPSVGG
from face_pipelines.params import validate_section


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    features = vgg16(weights=None).features
    state = features.state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, root / "vgg16_full.pth")
    torch.save(state, root / "vgg16_features.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(lin, root / "lin.pth")
    return root, features.eval(), lin


def _images(n=3, seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_distance_properties_and_frozen_weights(weight_files):
    root, _, _ = weight_files
    net = LPIPSVGG.from_paths(root / "vgg16_full.pth", root / "lin.pth")
    x, y = _images(seed=1), _images(seed=2)
    assert torch.allclose(net(x, x), torch.zeros(3), atol=1e-6)
    d = net(x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(d, net(y, x))
    assert not any(p.requires_grad for p in net.parameters())
    # Gradients reach the generated image (the generator's loss), not the frozen net.
    fake = x.clone().requires_grad_(True)
    net(fake, y).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_loads_the_files_weights_in_both_vgg_layouts(weight_files):
    root, features, lin = weight_files
    full = LPIPSVGG.from_paths(root / "vgg16_full.pth", root / "lin.pth")
    bare = LPIPSVGG.from_paths(root / "vgg16_features.pth", root / "lin.pth")
    x, y = _images(seed=3), _images(seed=4)
    torch.testing.assert_close(full(x, y), bare(x, y))
    # Stage 1 is torchvision's relu1_2 output (features[0:4]) of the LPIPS-normalised input.
    h = (x - full.shift) / full.scale
    torch.testing.assert_close(full.stages[0](h), features[:4](h))
    torch.testing.assert_close(
        full.stages[4](full.stages[3](full.stages[2](full.stages[1](full.stages[0](h))))),
        features[:30](h),
    )
    for k in range(5):
        torch.testing.assert_close(full.linear[k].data, lin[f"lin{k}.model.1.weight"])


def test_linear_weights_scale_the_distance(weight_files, tmp_path):
    root, _, lin = weight_files
    torch.save({k: 2 * v for k, v in lin.items()}, tmp_path / "lin2.pth")
    one = LPIPSVGG.from_paths(root / "vgg16_features.pth", root / "lin.pth")
    two = LPIPSVGG.from_paths(root / "vgg16_features.pth", tmp_path / "lin2.pth")
    x, y = _images(seed=5), _images(seed=6)
    torch.testing.assert_close(two(x, y), 2 * one(x, y))


def test_wrong_files_are_named(weight_files, tmp_path):
    root, _, lin = weight_files
    with pytest.raises(DataError, match=r"nope.pth does not exist"):
        LPIPSVGG.from_paths(tmp_path / "nope.pth", root / "lin.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match=r"other.pth is not a torchvision vgg16 state dict"):
        LPIPSVGG.from_paths(tmp_path / "other.pth", root / "lin.pth")
    bad = dict(lin)
    bad["lin2.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(bad, tmp_path / "bad_lin.pth")
    with pytest.raises(DataError, match=r"expected lin2.model.1.weight of shape \(1, 256, 1, 1\)"):
        LPIPSVGG.from_paths(root / "vgg16_features.pth", tmp_path / "bad_lin.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"junk.pth is unreadable"):
        LPIPSVGG.from_paths(root / "vgg16_features.pth", tmp_path / "junk.pth")


def test_vec2face_lpips_option_needs_both_paths():
    with pytest.raises(ParameterError, match=r"lpips_vgg_path and lpips_linear_path is not set"):
        validate_section("vec2face", {"train": {"perceptual_net": "lpips"}})
    with pytest.raises(ParameterError, match=r"lpips_linear_path is not set"):
        validate_section(
            "vec2face", {"train": {"perceptual_net": "lpips", "lpips_vgg_path": "/w/vgg16.pth"}}
        )
    ok = validate_section(
        "vec2face",
        {"train": {"perceptual_net": "lpips", "lpips_vgg_path": "a", "lpips_linear_path": "b"}},
    )
    assert ok.train.perceptual_net == "lpips"

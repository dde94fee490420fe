"""IResNet names/shapes match insightface checkpoints; small backbone; registry; weight loading."""

from __future__ import annotations

import functools

import pytest
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.registry import build_backbone, load_backbone_weights

# Written from the architecture spec (insightface arcface_torch backbones/iresnet.py), independently
# of the model code, so a renamed attribute or a changed shape shows up here.
SPEC_LAYERS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
}
PUBLISHED_PARAMS_M = {"iresnet18": 24.0, "iresnet34": 34.1, "iresnet50": 43.6, "iresnet100": 65.2}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors run faster on one thread, and a shared CPU stalls two-thread OpenMP loops."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def insightface_keys(layers, map_side=7, num_features=512) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of an insightface IResNet state_dict."""
    keys = [("conv1.weight", (64, 3, 3, 3)), *_bn("bn1", 64), ("prelu.weight", (64,))]
    in_ch = 64
    for stage, (planes, n_blocks) in enumerate(zip([64, 128, 256, 512], layers, strict=True), 1):
        for b in range(n_blocks):
            p = f"layer{stage}.{b}"
            cin = in_ch if b == 0 else planes
            keys += _bn(f"{p}.bn1", cin)
            keys.append((f"{p}.conv1.weight", (planes, cin, 3, 3)))
            keys += _bn(f"{p}.bn2", planes)
            keys.append((f"{p}.prelu.weight", (planes,)))
            keys.append((f"{p}.conv2.weight", (planes, planes, 3, 3)))
            keys += _bn(f"{p}.bn3", planes)
            if b == 0:
                keys.append((f"{p}.downsample.0.weight", (planes, cin, 1, 1)))
                keys += _bn(f"{p}.downsample.1", planes)
        in_ch = planes
    keys += _bn("bn2", 512)
    keys += [("fc.weight", (num_features, 512 * map_side * map_side)), ("fc.bias", (num_features,))]
    keys += _bn("features", num_features)
    return keys


def random_state_dict(keys, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in keys:
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7, dtype=torch.long)
        else:
            out[name] = torch.rand(shape, generator=g) + 0.5
    return out


@functools.cache
def _built(arch: str) -> torch.nn.Module:
    """One default-built model per arch for this module (building IResNet-100 takes a while)."""
    return build_backbone(arch)


@pytest.mark.parametrize("arch", ["iresnet18", "iresnet50", "iresnet100"])
def test_insightface_state_dict_loads_strict(arch):
    keys = insightface_keys(SPEC_LAYERS[arch])
    model = _built(arch)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == keys
    sd = random_state_dict(keys)
    model.load_state_dict(sd, strict=True)
    loaded = model.state_dict()
    for name in ("conv1.weight", "layer4.1.conv2.weight", "fc.weight", "features.running_var"):
        assert torch.equal(loaded[name], sd[name])
    # Through the project loader too, as a DDP save ("module." prefix).
    sd2 = random_state_dict(keys, seed=1)
    load_backbone_weights(model, {f"module.{k}": v for k, v in sd2.items()})
    name = "layer3.1.bn2.running_mean"
    assert torch.equal(model.state_dict()[name], sd2[name])
    assert model.features.weight.requires_grad is False


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS_M))
def test_param_counts_match_published(arch):
    n = sum(p.numel() for p in _built(arch).parameters()) / 1e6
    assert abs(n - PUBLISHED_PARAMS_M[arch]) / PUBLISHED_PARAMS_M[arch] < 0.01


def test_iresnet_forward_shapes_64_and_112():
    torch.manual_seed(0)
    m112 = build_backbone("iresnet18").eval()
    m64 = build_backbone("iresnet18", input_size=64, num_features=128).eval()
    assert m64.fc.in_features == 512 * 4 * 4 and m112.fc.in_features == 512 * 7 * 7
    with torch.no_grad():
        assert m112(torch.randn(2, 3, 112, 112)).shape == (2, 512)
        emb, maps = m64.forward_features(torch.randn(2, 3, 64, 64), return_maps=True)
    assert emb.shape == (2, 128)
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 32, 32),
        (2, 128, 16, 16),
        (2, 256, 8, 8),
        (2, 512, 4, 4),
    ]
    # A 64 px model's weights do not fit the 112 px head: clear error naming fc.weight.
    with pytest.raises(DataError, match="fc.weight"):
        load_backbone_weights(m112, m64.state_dict())


def test_iresnet18_macs_match_published():
    # Counting multiply-accumulates checks strides and widths (published: 2.61 GMACs at 112 px).
    model = build_backbone("iresnet18").eval()
    macs = []

    def count(module, _inp, out):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(out[0].numel() * module.in_channels * k)
        elif isinstance(module, torch.nn.Linear):
            macs.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
    for h in hooks:
        h.remove()
    assert sum(macs) / 1e9 == pytest.approx(2.61, rel=0.01)


def test_features_bn_weight_stays_frozen_in_training():
    model = build_backbone("small")
    loss = model(torch.randn(8, 3, 64, 64)).pow(2).mean()
    loss.backward()
    with torch.no_grad():  # a plain SGD step (building torch.optim.SGD costs seconds on first use)
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    assert model.features.weight.grad is None
    assert model.features.bias.grad is not None
    assert torch.all(model.features.weight == 1.0)


def test_small_backbone_shapes_and_size():
    model = build_backbone("small", embedding_dim=96)  # alias of num_features
    n = sum(p.numel() for p in build_backbone("small").parameters())
    assert 0.5e6 <= n <= 3e6
    emb, maps = model.forward_features(torch.randn(3, 3, 64, 64), return_maps=True)
    assert emb.shape == (3, 96)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    emb.sum().backward()  # the maps feed a perceptual loss: gradients reach the input path
    assert model.conv1.weight.grad is not None
    # channels_last (used for speed) gives the same result.
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)


def test_registry_errors_and_checkpoint_dict():
    with pytest.raises(ParameterError, match="iresnet50"):
        build_backbone("resnet50")
    with pytest.raises(ParameterError, match="small"):
        build_backbone("small", num_layers=3)
    src = build_backbone("small", num_features=32)
    ckpt = {
        "arch": "small",
        "config": {"num_features": 32},
        "state_dict": src.state_dict(),
        "meta": {},
    }
    dst = build_backbone("small", num_features=32)
    load_backbone_weights(dst, ckpt)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    # Wrong arch in a project checkpoint.
    with pytest.raises(DataError, match="iresnet18"):
        load_backbone_weights(dst, {**ckpt, "arch": "iresnet18"})
    # Missing and unexpected keys are listed.
    broken = dict(src.state_dict())
    broken.pop("layer2.0.conv1.weight")
    broken["head.extra"] = torch.zeros(1)
    with pytest.raises(DataError, match=r"missing keys 1: layer2\.0\.conv1\.weight") as err:
        load_backbone_weights(dst, broken, source="my.pth")
    assert "unexpected keys 1: head.extra" in str(err.value) and "my.pth" in str(err.value)
    # strict=False tolerates them and reports.
    result = load_backbone_weights(dst, broken, strict=False)
    assert result.missing_keys == ["layer2.0.conv1.weight"]
    assert result.unexpected_keys == ["head.extra"]
    with pytest.raises(DataError, match="tensors"):
        load_backbone_weights(dst, {"conv1.weight": [1, 2]})

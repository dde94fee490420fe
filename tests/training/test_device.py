"""Device resolution and precision policy."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from face_pipelines.device import (
    PrecisionPolicy,
    autocast_context,
    channels_last_supported,
    maybe_channels_last,
    maybe_compile,
    resolve_device,
    seed_everything,
    unwrap_model,
)
from face_pipelines.errors import ParameterError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_resolution_and_policy():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    policy = PrecisionPolicy.resolve("cpu")
    assert policy.name == "fp32" and not policy.use_grad_scaler
    assert not policy.make_grad_scaler().is_enabled()
    with autocast_context("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    bf16 = PrecisionPolicy.resolve("cpu", "bf16")
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ParameterError, match="fp16"):
        PrecisionPolicy.resolve("cpu", "fp16")
    with pytest.raises(ParameterError, match="precision"):
        PrecisionPolicy.resolve("cpu", "fp8")


def test_bad_device_specs():
    with pytest.raises(ParameterError, match="unknown"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(ParameterError, match="'auto' or 'cpu'"):
            resolve_device("cuda")


@needs_cuda
def test_cuda_policy_and_channels_last():
    device = resolve_device("auto")
    assert device.type == "cuda"
    policy = PrecisionPolicy.resolve(device)
    assert policy.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    conv = nn.Conv2d(3, 4, 3).to(device)
    assert maybe_channels_last(conv, device) is True  # any width on CUDA
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ParameterError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_helpers_on_cpu():
    conv = nn.Conv2d(3, 8, 3)
    assert maybe_channels_last(conv, "cpu") is True
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Fewer than 8 output channels anywhere: oneDNN's channels_last backward corrupts the heap on
    # CPU, so the model stays contiguous.
    thin = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3))
    assert channels_last_supported(thin, "cpu") is False
    assert maybe_channels_last(thin, "cpu") is False
    assert thin[0].weight.is_contiguous() and not thin[0].weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert channels_last_supported(thin, "meta") is False
    assert maybe_compile(conv, False) is conv
    assert unwrap_model(nn.DataParallel(conv)) is conv
    seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(5)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())

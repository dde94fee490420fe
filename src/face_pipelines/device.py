"""Device and precision policy: one place that decides where and in which precision things run.

`device: auto` means CUDA when available, else CPU. On CUDA, autocast runs in bf16 where the GPU
supports it and in fp16 with a GradScaler otherwise; on CPU everything stays fp32 (deterministic).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from face_pipelines.errors import ParameterError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device spec ('auto', 'cpu', 'cuda', 'cuda:N') into a torch.device.

    'auto' and 'cuda' pick the GPU of this process's LOCAL_RANK when running under torchrun.

    Raises:
        ParameterError: CUDA (or GPU N) was asked for but is not available, or the spec is unknown.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = str(spec).strip().lower()
    cuda_ok = torch.cuda.is_available()
    if spec == "auto":
        spec = "cuda" if cuda_ok else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not cuda_ok:
            raise ParameterError(
                f"device {spec!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}, no visible GPU); "
                "set device to 'auto' or 'cpu'"
            )
        if spec == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        index = spec[5:]
        if not index.isdigit():
            raise ParameterError(f"device {spec!r}: expected 'cuda:N' with an integer N")
        if int(index) >= torch.cuda.device_count():
            raise ParameterError(
                f"device {spec!r} was requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", int(index))
    raise ParameterError(f"device {spec!r} is unknown; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class PrecisionPolicy:
    """How forward passes run on a device.

    Attributes:
        device_type: "cuda" or "cpu" (the autocast device type).
        dtype: autocast dtype (torch.bfloat16 / torch.float16) or None for plain fp32.
        use_grad_scaler: True for fp16, where gradients need loss scaling.
    """

    device_type: str
    dtype: torch.dtype | None
    use_grad_scaler: bool

    @classmethod
    def resolve(cls, device: torch.device | str, precision: Precision = "auto") -> PrecisionPolicy:
        """Pick the policy for `device`: 'auto' = bf16 on CUDA if supported, else fp16; fp32 on CPU.

        Raises:
            ParameterError: unknown precision, or fp16 on CPU (use fp32 or bf16 there).
        """
        device = torch.device(device)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ParameterError(
                f"precision {precision!r} is unknown; use 'auto', 'fp32', 'bf16' or 'fp16'"
            )
        if precision == "auto":
            if device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "fp32"
        if precision == "fp16" and device.type != "cuda":
            raise ParameterError(f"precision 'fp16' needs a CUDA device, got {device}; use fp32")
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return cls(device_type=device.type, dtype=dtype, use_grad_scaler=precision == "fp16")

    @property
    def name(self) -> str:
        """'fp32', 'bf16' or 'fp16'."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context manager for forward passes (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (disabled ones pass losses through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_grad_scaler)


def autocast_context(
    device: torch.device | str, precision: Precision = "auto"
) -> contextlib.AbstractContextManager:
    """Autocast context for `device` under `precision` (see PrecisionPolicy.resolve)."""
    return PrecisionPolicy.resolve(device, precision).autocast()


def inference_autocast(
    device: torch.device | str, precision: Precision = "auto"
) -> contextlib.AbstractContextManager:
    """Autocast for generation and scoring without gradients: bf16 on CUDA where supported, fp32
    otherwise - including on CUDA GPUs without bf16, where training would fall back to fp16.

    Inference has no GradScaler to catch fp16 overflows, and AttrOP's pose/quality targets are
    thresholds a half-precision forward can flip, so 'auto' never picks fp16 here; an explicit
    'fp16' runs fp32 for the same reason.

    Raises:
        ParameterError: 'bf16' asked for on a CUDA device that does not support it.
    """
    device = torch.device(device)
    use_bf16 = (
        device.type == "cuda"
        and precision in ("auto", "bf16")
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    )
    if precision == "bf16" and device.type == "cuda" and not use_bf16:
        raise ParameterError(f"precision 'bf16' was requested but {device} does not support bf16")
    if use_bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


# oneDNN's CPU channels_last convolution backward corrupts the heap (munmap_chunk / double-free
# aborts, torch 2.14) when a convolution has fewer than 8 output channels; such nets stay contiguous.
_CPU_CHANNELS_LAST_MIN_CHANNELS = 8


def channels_last_supported(model: nn.Module, device: torch.device | str) -> bool:
    """Whether `maybe_channels_last` will switch this model: always on CUDA; on CPU only when every
    Conv2d has >= 8 output channels (see above); never on other devices."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    return all(
        m.out_channels >= _CPU_CHANNELS_LAST_MIN_CHANNELS
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    )


def maybe_channels_last(model: nn.Module, device: torch.device | str) -> bool:
    """Put a convnet's weights in channels_last (in place) on CUDA and CPU - faster cuDNN / oneDNN
    convolutions: measured ~1.8x for the small backbone's training step on a 2-core CPU.

    Returns whether it did (`channels_last_supported`); feed inputs in channels_last only then.
    """
    if not channels_last_supported(model, device):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(model)` when enabled, else the model unchanged.

    The compiled module shares parameters with `model`; save `unwrap_model(m).state_dict()` so that
    checkpoint keys carry no `_orig_mod.` prefix.
    """
    return torch.compile(model) if enabled else model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU).

    Args:
        seed: the seed.
        deterministic: also ask torch/cuDNN for deterministic kernels (slower on GPU; CPU training
            is deterministic without it).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)

"""TopoFR random structure perturbation (RSP), batched on the images' device.

Each sample of a batch is, independently with probability p, perturbed by one operation drawn
uniformly from `ops`:
- "erase": random erasing of one rectangle (area fraction U[erase_scale], aspect ratio log-uniform in
  [0.3, 3.3], as torchvision's RandomErasing) filled with 0, i.e. mid-grey in [-1, 1] space (what
  RandomErasing's default value=0 gives after the usual (x - 0.5) / 0.5 normalisation);
- "blur": Gaussian blur, odd kernel size uniform in [blur_kernel[0], blur_kernel[1]], sigma U[blur_sigma],
  reflect padding (torchvision's gaussian_blur);
- "gray": ITU-R 601 luma (0.299, 0.587, 0.114) copied to the three channels;
- "jitter": brightness, contrast and saturation factors each U[1 - jitter, 1 + jitter], applied in
  that fixed order in [0, 1] space with clamping after each step (torchvision's ColorJitter draws a
  random order and also jitters hue; neither matters for the purpose - perturbing the input
  structure - and a fixed order keeps the batch vectorised).

All random numbers are drawn up front from `generator` (on the generator's device, CPU by default)
for every sample and every op, whatever gets selected, so the result is a deterministic function of
the generator state and the batch, independent of which device runs the ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from face_pipelines.errors import DataError, ParameterError

RSP_OPS = ("erase", "blur", "gray", "jitter")
_LUMA = (0.299, 0.587, 0.114)


def _check_range(name: str, pair: tuple[float, float], low: float, high: float) -> None:
    """Raise ParameterError unless pair = (a, b) with low <= a <= b <= high."""
    if len(pair) != 2 or not (low <= pair[0] <= pair[1] <= high):
        raise ParameterError(
            f"rsp {name}: expected (a, b) with {low} <= a <= b <= {high}, got {pair}"
        )


def _luma(x01: Tensor) -> Tensor:
    """[N, 1, H, W] luma of [N, 3, H, W] images (linear, so valid in [0, 1] or [-1, 1] space)."""
    r, g, b = x01[:, 0:1], x01[:, 1:2], x01[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _gaussian_blur(x: Tensor, kernel_size: Tensor, sigma: Tensor, max_kernel: int) -> Tensor:
    """Per-sample separable Gaussian blur of [N, C, H, W] with per-sample odd kernel sizes.

    Every sample's kernel is laid out in a common width max_kernel with zeros outside its own
    half-width, which is the same as convolving with the smaller kernel; one grouped convolution
    then blurs the whole sub-batch.
    """
    n, c, h, w = x.shape
    half = max_kernel // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    k = k * (offsets[None, :].abs() <= (kernel_size[:, None] // 2)).to(x.dtype)
    k = k / k.sum(dim=1, keepdim=True)
    k = k.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) group
    mode = "reflect" if min(h, w) > half else "replicate"
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (half, half, 0, 0), mode=mode), k.view(n * c, 1, 1, max_kernel), groups=n * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, half, half), mode=mode), k.view(n * c, 1, max_kernel, 1), groups=n * c
    )
    return y.reshape(n, c, h, w)


def _erase_mask(
    b: int, h: int, w: int, area: Tensor, log_ratio: Tensor, u_top: Tensor, u_left: Tensor
) -> Tensor:
    """[B, 1, H, W] bool rectangles of area fraction `area` and aspect exp(log_ratio)."""
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * h * w * ratio).round().clamp(1, h)
    ew = torch.sqrt(area * h * w / ratio).round().clamp(1, w)
    top = torch.floor(u_top * (h - eh + 1)).clamp(max=h - eh)
    left = torch.floor(u_left * (w - ew + 1)).clamp(max=w - ew)
    rows = torch.arange(h, device=area.device, dtype=area.dtype)[None, :]
    cols = torch.arange(w, device=area.device, dtype=area.dtype)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _color_jitter(x01: Tensor, bright: Tensor, contrast: Tensor, sat: Tensor) -> Tensor:
    """Brightness, contrast, saturation (in that order) of [N, 3, H, W] images in [0, 1]."""
    x = (x01 * bright[:, None, None, None]).clamp(0.0, 1.0)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast[:, None, None, None] + mean).clamp(0.0, 1.0)
    gray = _luma(x)
    return ((x - gray) * sat[:, None, None, None] + gray).clamp(0.0, 1.0)


def random_structure_perturbation(
    images: Tensor,
    p: float = 0.2,
    generator: torch.Generator | None = None,
    ops: tuple[str, ...] = RSP_OPS,
    blur_kernel: tuple[int, int] = (5, 9),
    blur_sigma: tuple[float, float] = (0.1, 5.0),
    jitter: float = 0.4,
    erase_scale: tuple[float, float] = (0.02, 0.33),
) -> tuple[Tensor, Tensor]:
    """TopoFR RSP: perturb each sample with probability p by one randomly chosen operation.

    Args:
        images: [B, 3, H, W] float images in [-1, 1] (any device).
        p: probability that a sample is perturbed (TopoFR: 0.2).
        generator: torch.Generator for all random draws (its device is where they are drawn);
            None uses torch's global CPU generator.
        ops: which operations to choose from, a non-empty subset of ("erase", "blur", "gray",
            "jitter"); a perturbed sample gets one of them uniformly at random.
        blur_kernel: inclusive range of odd Gaussian kernel sizes.
        blur_sigma: range of the Gaussian's sigma (pixels).
        jitter: brightness/contrast/saturation factors are drawn from U[1 - jitter, 1 + jitter].
        erase_scale: range of the erased rectangle's area as a fraction of the image.

    Returns:
        (perturbed, which_op): perturbed has the images' shape, dtype and device, values in
        [-1, 1]; which_op is a LongTensor [B] on the images' device holding the index into `ops`
        of the operation applied to each sample, or -1 for an untouched sample.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"random_structure_perturbation: expected images [B, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise DataError(
            f"random_structure_perturbation: expected float images in [-1, 1], got {images.dtype}"
        )
    if not 0.0 <= p <= 1.0:
        raise ParameterError(f"rsp p: expected a probability in [0, 1], got {p}")
    ops = tuple(ops)
    unknown = [op for op in ops if op not in RSP_OPS]
    if not ops or unknown or len(set(ops)) != len(ops):
        raise ParameterError(
            f"rsp ops: expected a non-empty subset of {RSP_OPS} without repeats, got {ops}"
        )
    k_lo, k_hi = blur_kernel
    if k_lo < 1 or k_lo > k_hi or k_lo % 2 == 0 or k_hi % 2 == 0:
        raise ParameterError(
            f"rsp blur_kernel: expected odd sizes (a, b), 1 <= a <= b, got {blur_kernel}"
        )
    _check_range("blur_sigma", blur_sigma, 1e-6, math.inf)
    _check_range("erase_scale", erase_scale, 0.0, 1.0)
    if not 0.0 <= jitter < 1.0:
        raise ParameterError(f"rsp jitter: expected a value in [0, 1), got {jitter}")

    b, _, h, w = images.shape
    device = images.device
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def draw(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=gen_device).to(device)

    # Fixed draw order, all samples, all ops: the output depends on the generator state only.
    selected = draw(b) < p
    choice = torch.floor(draw(b) * len(ops)).long().clamp(max=len(ops) - 1)
    u_erase, u_blur, u_jitter = draw(b, 4), draw(b, 2), draw(b, 3)
    which = torch.where(selected, choice, torch.full_like(choice, -1))

    x = images.float() if images.dtype != torch.float64 else images
    out = x.clone()
    for op_index, op in enumerate(ops):
        mask = which == op_index
        if op == "gray":
            gray = _luma(x).expand_as(x)
            out = torch.where(mask[:, None, None, None], gray, out)
        elif op == "erase":
            lo, hi = erase_scale
            area = lo + (hi - lo) * u_erase[:, 0]
            log_ratio = math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u_erase[:, 1]
            rect = _erase_mask(b, h, w, area, log_ratio, u_erase[:, 2], u_erase[:, 3])
            out = torch.where(mask[:, None, None, None] & rect, torch.zeros_like(out), out)
        elif op == "jitter":
            factors = 1.0 - jitter + 2.0 * jitter * u_jitter
            x01 = (x + 1.0) * 0.5
            jittered = _color_jitter(x01, factors[:, 0], factors[:, 1], factors[:, 2]) * 2.0 - 1.0
            out = torch.where(mask[:, None, None, None], jittered, out)
        elif op == "blur":
            # only the selected samples are blurred (a convolution is the one costly op)
            idx = mask.nonzero().squeeze(1)
            if idx.numel():
                n_sizes = (k_hi - k_lo) // 2 + 1
                size_index = torch.floor(u_blur[:, 0] * n_sizes).clamp(max=n_sizes - 1)
                sizes = (k_lo + 2 * size_index).to(x.dtype)
                sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u_blur[:, 1]
                blurred = _gaussian_blur(x[idx], sizes[idx], sigma[idx].to(x.dtype), k_hi)
                out = out.index_copy(0, idx, blurred)
    # clamp only what was perturbed: an untouched sample is returned bit for bit
    out = torch.where(selected[:, None, None, None], out.clamp(-1.0, 1.0), x)
    return out.to(images.dtype), which

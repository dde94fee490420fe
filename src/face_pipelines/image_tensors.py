"""Image tensors in and out of models: the one place that fixes how pixels become model inputs.

Every model in the project (recognizers, generators, pose and attribute models, discriminators)
takes RGB in [-1, 1] as float [B, 3, H, W]: uint8 pixels x become (x / 255 - 0.5) / 0.5. In
float32 that is bit-for-bit the same as x / 127.5 - 1 for every uint8 value, so code that wrote
either form reads the same numbers through `normalise`. Generated images go back with
`images_to_uint8`; `image_grid` tiles uint8 images for sample sheets without matplotlib, so
trainers can write grids without a plotting dependency.
"""

from __future__ import annotations

import numpy as np
import torch

from face_pipelines.errors import DataError


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any layout, any device) -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return images.float().div_(255.0).sub_(0.5).div_(0.5)


def to_device_normalised(
    images: torch.Tensor, device: torch.device | str, channels_last: bool = False
) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 on `device`, (x / 255 - 0.5) / 0.5, optionally channels_last."""
    x = normalise(images.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def hwc_to_input(
    images_u8: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] (array or tensor) -> float32 [B, 3, H, W] in [-1, 1] on `device`.

    The result is a channels-last view turned to float (permute first), the layout the callers have
    always fed their models.
    """
    x = torch.as_tensor(images_u8)
    if device is not None:
        x = x.to(device)
    return normalise(x.permute(0, 3, 1, 2))


def images_to_uint8(images: torch.Tensor, contiguous: bool = True) -> np.ndarray:
    """[B, 3, H, W] float in [-1, 1] -> [B, H, W, 3] uint8 (clipped, rounded), on the CPU.

    contiguous=False returns the [B, H, W, 3] view of the channels-first buffer instead of a copy:
    turned back with `hwc_to_input` it is a contiguous NCHW tensor again, the memory layout Vec2Face's
    held-out evaluation has always fed its SSIM and pose convolutions (another layout picks other
    kernels and moves those measures in the last float bits).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1)
    return (x.contiguous() if contiguous else x).cpu().numpy()


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 images [N,H,W,3] into one uint8 grid image (row-major) on a white background."""
    n, h, w, c = images.shape
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid

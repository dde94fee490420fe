"""Tiny packed datasets and models shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from face_pipelines.io.packed import PackedWriter

# A Vec2Face small enough for unit tests (32 px from a 2x2 grid).
TINY_VEC2FACE = {
    "image_size": 32,
    "grid_size": 2,
    "width": 16,
    "depth": 1,
    "num_heads": 2,
    "decoder_width": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "z_channels": 8,
    "ch": 4,
    "ch_mult": (1, 1, 1, 2, 2),
    "num_res_blocks": (0, 1, 1, 1, 1),
}


def make_packed(root: Path, n: int = 48, size: int = 8, classes: int = 4, seed: int = 0) -> Path:
    """A packed folder of `n` images whose mean colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = rng.integers(0, 256, (classes, 1, 1, 3))
    noise = rng.integers(-40, 41, (n, size, size, 3))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    with PackedWriter(root, image_size=size, shard_size=16) as writer:
        writer.add_batch(images, labels)
    return root


class TinyNet(nn.Module):
    """Conv + dropout + linear: enough to exercise RNG, optimizer state and BN-free DDP."""

    def __init__(self, classes: int = 4, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(self.drop(x.flatten(1)))


class Stop(Exception):
    """Simulates the process dying mid-epoch (raised from the log callback)."""


def recorder(store: dict, stop_at: int | None = None):
    """A `log(metrics, step)` callback keeping per-step metrics by step and epoch metrics as
    "epoch<n>"; raises Stop after logging step `stop_at`."""

    def log(metrics, step):
        if "loss" in metrics:
            store[step] = dict(metrics)
            if step == stop_at:
                raise Stop
        else:
            store[f"epoch{step}"] = dict(metrics)

    return log

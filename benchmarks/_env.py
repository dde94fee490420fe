"""Shared by the benchmark scripts: the machine they ran on, and synthetic packed data."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
from PIL import Image

from face_pipelines.io.packed import PackedImages, PackedWriter


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo where available."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def smooth_face_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise upsampled to `size` (photo-like content for resizes/jitter)."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def make_packed(root: Path, n: int, size: int, seed: int) -> PackedImages:
    """Pack `n` images of `size` px in 100 classes; returns the reader."""
    rng = np.random.default_rng(seed)
    with PackedWriter(root, image_size=size, shard_size=512) as writer:
        for i in range(n):
            writer.add(smooth_face_like(rng, size), i % 100)
    return PackedImages(root)

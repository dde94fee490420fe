"""Shared by the benchmark scripts: the machine they ran on, synthetic packed data, epoch timing."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
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


def machine() -> dict:
    """CPU, torch threads, Python, torch and platform: the "machine" entry of a results file."""
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def cpu_device(load_before: float | None) -> dict:
    """The "device" entry of a CPU benchmark's results; `load_before`: the 1-minute load average
    when it started (other processes compete for a shared CPU: read the figures against it)."""
    return {
        "kind": "cpu",
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1min_at_start": load_before,
    }


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


def time_epochs(loader, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process) seconds per full pass over a `make_loader` loader of uint8
    batches, after one untimed pass (worker start, page cache)."""
    wall, cpu = [], []
    for epoch in range(repeats + 1):
        loader.sampler.set_epoch(epoch)
        t0, c0 = time.perf_counter(), time.process_time()
        for images, labels in loader:
            assert images.dtype == torch.uint8 and len(images) == len(labels)
        if epoch:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu

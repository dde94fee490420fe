"""Cost of TopoFR's structure alignment (ISA) per batch, against a small CNN's forward/backward.

For B in {128, 512} and inputs 3x64x64 / 3x112x112 (embedding 512) it times, per MST backend:
- input_dist: `input_space_distances` of the un-perturbed batch;
- isa: `latent_space_distances` + both MSTs + the loss + backward to the embeddings;
- mst: one `mst_edges` call alone;
and a forward + backward of a tiny conv net on the same batch (defined here, so the comparison does
not depend on the project's models). Prints a table, writes benchmarks/results/topofr.json.

    python benchmarks/bench_topofr.py [--device cpu|cuda] [--repeats 5] [--threads 1]

Median of `repeats` timed runs after one warm-up. On CPU the whole script takes well under a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch
from torch import nn

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.losses.topofr import (
    input_space_distances,
    latent_space_distances,
    mst_edges,
    structure_alignment_loss,
)

BATCHES = (128, 512)
IMAGE_SIZES = (64, 112)
EMBEDDING_DIM = 512
BACKENDS = ("boruvka", "prim", "scipy")
RESULTS = Path(__file__).parent / "results" / "topofr.json"


class TinyConvNet(nn.Module):
    """Four stride-2 conv-BN-ReLU stages (16-32-64-128 channels), global pool, linear to 512."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (16, 32, 64, 128):
            layers += [
                nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images -> [B, embedding_dim] embeddings."""
        return self.head(self.features(x))


def median_ms(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of fn in milliseconds, after one warm-up run."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def device_description(device: torch.device) -> str:
    """Human-readable name of the device the benchmark ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} torch threads)"


def run(device: torch.device, repeats: int, cnn_repeats: int) -> list[dict]:
    """Time every (batch, image size) configuration; one row per MST backend."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for b in BATCHES:
        for size in IMAGE_SIZES:
            images = (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device)
            embeddings = torch.randn(b, EMBEDDING_DIM, generator=g).to(device).requires_grad_(True)
            input_ms = median_ms(
                lambda images=images: input_space_distances(images), repeats, device
            )
            x_dist = input_space_distances(images)

            net = TinyConvNet().to(device)
            if device.type == "cuda":
                net = net.to(memory_format=torch.channels_last)

            def cnn_step(net=net, images=images) -> None:
                net.zero_grad(set_to_none=True)
                net(images).square().mean().backward()

            cnn_ms = median_ms(cnn_step, cnn_repeats, device)
            for backend in BACKENDS:

                def isa_step(backend=backend, x_dist=x_dist, embeddings=embeddings) -> None:
                    embeddings.grad = None
                    z_dist = latent_space_distances(embeddings, reference_dist=x_dist)
                    structure_alignment_loss(x_dist, z_dist, backend=backend).backward()

                isa_ms = median_ms(isa_step, repeats, device)
                mst_ms = median_ms(
                    lambda backend=backend, x=x_dist: mst_edges(x, backend), repeats, device
                )
                rows.append(
                    {
                        "batch": b,
                        "input_shape": [3, size, size],
                        "backend": backend,
                        "mst_ms": round(mst_ms, 3),
                        "isa_ms": round(isa_ms, 3),
                        "input_dist_ms": round(input_ms, 3),
                        "cnn_fwd_bwd_ms": round(cnn_ms, 3),
                        "isa_total_over_cnn": round((isa_ms + input_ms) / cnn_ms, 4),
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    """Print the results as a fixed-width table."""
    header = (
        f"{'B':>4} {'input':>10} {'backend':>8} {'mst ms':>9} {'isa ms':>9} "
        f"{'in-dist ms':>10} {'cnn f+b ms':>10} {'(isa+dist)/cnn':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(str(s) for s in r["input_shape"])
        print(
            f"{r['batch']:>4} {shape:>10} {r['backend']:>8} {r['mst_ms']:>9.2f} {r['isa_ms']:>9.2f} "
            f"{r['input_dist_ms']:>10.2f} {r['cnn_fwd_bwd_ms']:>10.1f} {r['isa_total_over_cnn']:>14.3f}"
        )


def main() -> None:
    """Parse arguments, run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per ISA measurement")
    parser.add_argument("--cnn-repeats", type=int, default=3, help="timed runs of the CNN step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    rows = run(device, args.repeats, args.cnn_repeats)
    print_table(rows)
    result = {
        "benchmark": "topofr_isa",
        "device": device_description(device),
        "device_type": device.type,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
        },
        "config": {
            "batches": list(BATCHES),
            "image_sizes": list(IMAGE_SIZES),
            "embedding_dim": EMBEDDING_DIM,
            "backends": list(BACKENDS),
            "repeats": args.repeats,
            "cnn_repeats": args.cnn_repeats,
            "threads": torch.get_num_threads(),
            "statistic": "median wall-clock ms after one warm-up",
            "isa_ms": "latent distances + MST(x) + MST(z) + loss + backward to embeddings",
        },
        "results": rows,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['total_s']} s)")


if __name__ == "__main__":
    main()

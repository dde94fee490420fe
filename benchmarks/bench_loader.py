"""Benchmark: training data path throughput (images/s) from packed shards to uint8 batches.

Packs a small synthetic set at 64 px and 112 px, then times full epochs of
PackedImages -> PackedFaceDataset -> make_loader (EpochSampler, batched shard gather) with no
augmentation and with the HSFace recipe (crop / low-res / jitter at p=0.3, flip, erasing), in-process
and with 2 worker processes. Workers are started and the page cache warmed by one untimed epoch; the
median of the timed epochs is reported and written to benchmarks/results/loader.json.

    python benchmarks/bench_loader.py [--images 2048] [--batch-size 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch

from _env import (  # benchmarks/_env.py (scripts run from benchmarks/)
    cpu_device,
    make_packed,
    time_epochs,
)
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.training.data import AugmentationConfig, PackedFaceDataset, make_loader

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"


def main() -> None:
    """Run the benchmark, print a table and write benchmarks/results/loader.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker count of the parallel runs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    augmentations = {"none": AugmentationConfig.none(), "hsface": AugmentationConfig.hsface()}
    rows = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        for size in (64, 112):
            packed = make_packed(Path(tmp) / f"px{size}", args.images, size, seed=size)
            for aug_name, aug in augmentations.items():
                for workers in (0, args.workers):
                    loader = make_loader(
                        PackedFaceDataset(packed, augmentation=aug),
                        batch_size=args.batch_size,
                        seed=0,
                        num_workers=workers,
                    )
                    times, _ = time_epochs(loader, args.repeats)
                    del loader  # stop persistent workers before the next configuration
                    images = (args.images // args.batch_size) * args.batch_size
                    median = statistics.median(times)
                    rows.append(
                        {
                            "image_px": size,
                            "augmentation": aug_name,
                            "num_workers": workers,
                            "images_per_epoch": images,
                            "median_s": round(median, 4),
                            "images_per_s": round(images / median, 1),
                            "times_s": [round(t, 4) for t in times],
                        }
                    )
                    r = rows[-1]
                    print(
                        f"{size:>4} px  aug={aug_name:<7} workers={workers}  "
                        f"{r['images_per_s']:>9.1f} img/s  (median {r['median_s']:.3f} s)"
                    )
    total = time.perf_counter() - started

    result = {
        "benchmark": "PackedImages -> PackedFaceDataset -> make_loader, uint8 CHW batches",
        "device": cpu_device(load_before),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "config": {
            "images": args.images,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "statistic": "median",
            "torch_threads": 1,
            "augmentations": {k: v.__dict__ for k, v in augmentations.items()},
            "note": "shards in the OS page cache (one untimed epoch first); normalisation to float "
            "happens on the training device and is not part of this timing",
        },
        "results": rows,
        "total_s": round(total, 1),
    }
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"total {total:.1f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Benchmark: identity-folder scan with full JPEG verification (images/s).

Generates a small synthetic WebFace-style folder set (smooth random images, 64 px and 112 px), times
`scan_identity_folders(verify=True)` serially and with a process pool, and writes the median of 3
repeats to benchmarks/results/scan.json.

    python benchmarks/bench_scan.py [--identities 200] [--per-identity 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
from PIL import Image

from _env import cpu_name  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.folders import scan_identity_folders

RESULTS = Path(__file__).resolve().parent / "results" / "scan.json"


def smooth_face_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise upsampled to `size`: compresses and decodes like a photo."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_dataset(root: Path, identities: int, per_identity: int, size: int, seed: int) -> int:
    """Write <root>/<identity:06d>/<index:03d>.jpg; returns the number of images."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        folder = root / f"{i:06d}"
        folder.mkdir(parents=True)
        for j in range(per_identity):
            buf = io.BytesIO()
            Image.fromarray(smooth_face_like(rng, size)).save(buf, "JPEG", quality=95)
            (folder / f"{j:03d}.jpg").write_bytes(buf.getvalue())
    return identities * per_identity


def main() -> None:
    """Run the benchmark, print a table and write benchmarks/results/scan.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--per-identity", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=2, help="process-pool size for the parallel run"
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        for size in (64, 112):
            root = Path(tmp) / f"px{size}"
            n = make_dataset(root, args.identities, args.per_identity, size, seed=size)
            mean_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg")) / n
            for workers in (0, args.workers):
                scan_identity_folders(root, num_workers=workers, progress=False)  # warm-up (cache)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    manifest, report = scan_identity_folders(
                        root, num_workers=workers, progress=False
                    )
                    times.append(time.perf_counter() - t0)
                    assert report["kept"] == n, report["skipped_counts"]
                median = statistics.median(times)
                rows.append(
                    {
                        "image_px": size,
                        "num_workers": workers,
                        "images": n,
                        "mean_jpeg_bytes": round(mean_bytes),
                        "median_s": round(median, 4),
                        "images_per_s": round(n / median, 1),
                        "times_s": [round(t, 4) for t in times],
                    }
                )

    table = pd.DataFrame(rows)[
        ["image_px", "num_workers", "images", "mean_jpeg_bytes", "median_s", "images_per_s"]
    ]
    print(table.to_string(index=False))
    result = {
        "benchmark": "scan_identity_folders(verify=True)",
        "device": {
            "kind": "cpu",
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pillow": PIL.__version__,
        },
        "config": {
            "identities": args.identities,
            "per_identity": args.per_identity,
            "repeats": args.repeats,
            "statistic": "median",
            "jpeg_quality": 95,
            "note": "files are in the OS page cache (warm-up scan first): decode-bound, not disk-bound",
        },
        "results": rows,
    }
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

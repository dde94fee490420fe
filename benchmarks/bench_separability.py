"""Benchmark: blockwise separability (max cosine to every other centre) time vs N at D=512.

Times `separability_curve` (one blockwise pass over the upper-triangular tiles, then all thresholds
0.30..0.90) and `separability_sequential` (the paper's earlier-centres count) on random structured
centres (rotated power-law Gaussian, like bench_sampling). N = 10K, 50K, 100K by default; a size
whose time, extrapolated as O(N^2) from the sizes measured, would exceed --max-seconds is skipped
and recorded (per measure). Wall and process CPU seconds are both reported (on a shared machine
wall time includes waiting for a core). Calls under 5 s are repeated (--repeats) and the median is
reported.
Prints a table and writes benchmarks/results/separability.json.

    python benchmarks/bench_separability.py [--device auto] [--threads 1] [--max-seconds 90]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _env import cpu_name  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.device import resolve_device
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.metrics.separability import separability_curve, separability_sequential

RESULTS = Path(__file__).resolve().parent / "results" / "separability.json"
CHEAP_SECONDS = 5.0


def structured_centres(n: int, dim: int, alpha: float, seed: int) -> np.ndarray:
    """Rotated power-law Gaussian centres (eigenvalue_i ~ i^-alpha), ~0.93 variance per dim."""
    rng = np.random.default_rng(seed)
    eig = (np.arange(dim) + 1.0) ** -alpha
    eig *= 0.93 * dim / eig.sum()
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return ((rng.normal(size=(n, dim)) * np.sqrt(eig)) @ rotation.T).astype(np.float32)


def timed(fn, device: torch.device):
    """(wall seconds, process CPU seconds, result) of one call of `fn` (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - cpu0, result


def main() -> None:
    """Run the benchmark, print a table and write benchmarks/results/separability.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    measures = {
        "curve": lambda c: separability_curve(c, block_size=args.block_size, device=device),
        "sequential": lambda c: separability_sequential(
            c, 0.4, block_size=args.block_size, device=device
        ),
    }
    rows, skipped = [], []
    last: dict[str, tuple[int, float]] = {}
    for n in sizes:
        centres = None
        row: dict = {"n": n}
        for name, fn in measures.items():
            if name in last:
                n0, t0 = last[name]
                estimate = t0 * (n / n0) ** 2
                if estimate > args.max_seconds:
                    reason = (
                        f"{name}: estimated {estimate:.0f} s on {device.type} ({args.threads} "
                        f"thread(s)), O(N^2) from N={n0}, > --max-seconds {args.max_seconds:.0f}"
                    )
                    skipped.append({"n": n, "measure": name, "estimated_seconds": estimate,
                                    "reason": reason})  # fmt: skip
                    print(f"skip N={n} {reason}", flush=True)
                    continue
            if centres is None:
                centres = structured_centres(n, args.dim, args.alpha, seed=n)
            times, cpu_times = [], []
            while True:
                seconds, cpu_seconds, value = timed(lambda c=centres, f=fn: f(c), device)
                times.append(seconds)
                cpu_times.append(cpu_seconds)
                if len(times) >= args.repeats or times[0] >= CHEAP_SECONDS:
                    break
            median = statistics.median(times)
            last[name] = (n, median)
            row[f"{name}_seconds_median"] = median
            row[f"{name}_seconds_all"] = times
            row[f"{name}_cpu_seconds_median"] = statistics.median(cpu_times)
            if name == "curve":
                row["pairs_per_second_curve"] = n * (n - 1) / 2 / median
                row["separability_at_0.4"] = value[0.4]
            else:
                row["sequential_count_at_0.4"] = value
            print(
                f"N={n}: {name} {median:.2f} s wall, {statistics.median(cpu_times):.2f} s CPU "
                f"(median of {len(times)})",
                flush=True,
            )
        if len(row) > 1:
            rows.append(row)

    def cell(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "skipped"

    print(f"{'N':>8} {'curve s':>9} {'seq s':>9} {'Gpair/s':>9} {'sep@0.4':>9} {'seq@0.4':>9}")
    for r in rows:
        gpairs = {"g": r["pairs_per_second_curve"] / 1e9} if "pairs_per_second_curve" in r else {}
        print(
            f"{r['n']:>8} {cell(r, 'curve_seconds_median', '.2f'):>9} "
            f"{cell(r, 'sequential_seconds_median', '.2f'):>9} {cell(gpairs, 'g', '.3f'):>9} "
            f"{cell(r, 'separability_at_0.4', '.4f'):>9} "
            f"{cell(r, 'sequential_count_at_0.4', 'd'):>9}"
        )
    for s in skipped:
        print(f"{s['n']:>8} skipped {s['reason']}")

    result = {
        "benchmark": "separability",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "config": {
            "dim": args.dim,
            "spectrum_alpha": args.alpha,
            "block_size": args.block_size,
            "threads": args.threads,
            "max_seconds": args.max_seconds,
            "curve_thresholds": "0.30..0.90 step 0.05",
        },
        "results": rows,
        "skipped": skipped,
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

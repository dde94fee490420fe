"""Benchmark: time and peak memory of `sample_identity_centres` vs the number of identities.

Identity centres are drawn at D=512 with threshold 0.4 from a PCA distribution fitted to "real"
centres with realistic structure: a randomly rotated Gaussian with a power-law spectrum
(eigenvalue_i ~ i^-alpha, alpha 0.5 by default, total variance ~0.93 per dimension like ArcFace
features) and a small mean offset. N = 10K, 30K, 100K by default, 300K on CUDA or with --full.
The work is O(N^2 * D), so a size whose time, extrapolated from the sizes already measured,
would exceed --max-seconds is skipped and recorded as skipped with the estimate. Sizes that run
in under 10 s are repeated (--repeats) and the median is reported. Wall and process CPU seconds are
both reported (on a shared machine wall time includes waiting for a core; with --threads 1 CPU
seconds are the compute). Peak memory: the process's resident-set high-water mark above its level
before the call (reset through /proc/self/clear_refs) and the tracemalloc peak (NumPy/Python
allocations) on CPU; torch.cuda.max_memory_allocated on CUDA.
Prints a table and writes benchmarks/results/sampling.json.

    python benchmarks/bench_sampling.py [--full] [--device auto] [--threads 1] [--max-seconds 130]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from _env import cpu_name  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.device import resolve_device
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.synthesis.sampling import fit_centre_distribution, sample_identity_centres

RESULTS = Path(__file__).resolve().parent / "results" / "sampling.json"
CHEAP_SECONDS = 10.0


def structured_real_centres(n: int, dim: int, alpha: float, seed: int) -> np.ndarray:
    """'Real' identity centres: rotated power-law Gaussian with ArcFace-like per-dim scale."""
    rng = np.random.default_rng(seed)
    eig = (np.arange(dim) + 1.0) ** -alpha
    eig *= 0.93 * dim / eig.sum()
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    x = (rng.normal(size=(n, dim)) * np.sqrt(eig)) @ rotation.T + 0.0046
    return x.astype(np.float32)


def rss_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB (None where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (Linux clear_refs '5'); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_once(dist, n: int, args, device: torch.device, seed: int) -> dict:
    """One timed call with its memory measurements."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    peak_reset = reset_peak_rss()
    rss_before = rss_kib("VmRSS")
    tracemalloc.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    _, report = sample_identity_centres(
        dist,
        n,
        args.threshold,
        block_size=args.block_size,
        device=device,
        generator=seed,
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = rss_kib("VmHWM")
    out = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "report": report,
        "tracemalloc_peak_mib": traced_peak / 2**20,
        "rss_peak_above_start_mib": (
            (hwm - rss_before) / 1024 if peak_reset and hwm and rss_before else None
        ),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def estimate_seconds(measured: list[tuple[int, float]], n: int) -> float:
    """Extrapolate as O(N^2) from the largest size measured.

    Smaller sizes look sub-quadratic (fixed costs, partly filled tiles), so their empirical exponent
    would under-estimate large sizes; the pairwise work is quadratic.
    """
    n1, t1 = measured[-1]
    return float(t1 * (n / n1) ** 2)


def main() -> None:
    """Run the benchmark, print a table and write benchmarks/results/sampling.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--full", action="store_true", help="also N=300000 (always on CUDA)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--alpha", type=float, default=0.5, help="power-law spectrum exponent")
    parser.add_argument("--real-centres", type=int, default=5000)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=130.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.full or device.type == "cuda":
        sizes.append(300_000)
    sizes = sorted(set(sizes))

    real = structured_real_centres(args.real_centres, args.dim, args.alpha, seed=0)
    t0 = time.perf_counter()
    dist = fit_centre_distribution(real, kind="pca")
    fit_seconds = time.perf_counter() - t0

    rows, skipped, measured = [], [], []
    for n in sizes:
        if measured:
            estimate = estimate_seconds(measured, n)
            if estimate > args.max_seconds:
                reason = (
                    f"estimated {estimate:.0f} s on {device.type} ({args.threads} thread(s)) "
                    f"from the sizes measured (O(N^2) work) > --max-seconds "
                    f"{args.max_seconds:.0f}"
                )
                skipped.append({"n": n, "estimated_seconds": estimate, "reason": reason})
                print(f"skip N={n}: {reason}", flush=True)
                continue
        runs = [run_once(dist, n, args, device, seed=1)]
        while len(runs) < args.repeats and runs[0]["seconds"] < CHEAP_SECONDS:
            runs.append(run_once(dist, n, args, device, seed=1))
        seconds = [r["seconds"] for r in runs]
        median = statistics.median(seconds)
        measured.append((n, median))
        report = runs[0]["report"]
        row = {
            "n": n,
            "seconds_median": median,
            "seconds_all": seconds,
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in runs),
            "repeats": len(runs),
            "kept": report["kept"],
            "drawn": report["drawn"],
            "rejected_by_separation": report["rejected_by_separation"],
            "rounds": report["rounds"],
            "pairs_per_second": report["drawn"] * (report["kept"] - 1) / 2 / median,
            "tracemalloc_peak_mib": max(r["tracemalloc_peak_mib"] for r in runs),
            "rss_peak_above_start_mib": runs[0]["rss_peak_above_start_mib"],
            "kept_set_mib": n * args.dim * 4 / 2**20,
        }
        if device.type == "cuda":
            row["cuda_max_allocated_mib"] = max(r["cuda_max_allocated_mib"] for r in runs)
        rows.append(row)
        print(f"N={n}: {median:.2f} s (median of {len(runs)})", flush=True)

    mem_col = "cuda_max_allocated_mib" if device.type == "cuda" else "rss_peak_above_start_mib"
    header = (
        f"{'N':>8} {'s (median)':>11} {'cpu s':>8} {'kept':>8} {'drawn':>8} {'rej.sep':>8} "
        f"{'Gpair/s':>8} {'peak MiB':>9} {'py MiB':>7}"
    )
    print(header)
    for r in rows:
        peak = r.get(mem_col)
        print(
            f"{r['n']:>8} {r['seconds_median']:>11.2f} {r['cpu_seconds_median']:>8.2f} "
            f"{r['kept']:>8} {r['drawn']:>8} {r['rejected_by_separation']:>8} "
            f"{r['pairs_per_second'] / 1e9:>8.3f} "
            f"{(peak if peak is not None else float('nan')):>9.1f} "
            f"{r['tracemalloc_peak_mib']:>7.1f}"
        )
    for s in skipped:
        print(f"{s['n']:>8} skipped: {s['reason']}")

    result = {
        "benchmark": "sample_identity_centres",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "config": {
            "dim": args.dim,
            "threshold": args.threshold,
            "distribution": "pca",
            "spectrum_alpha": args.alpha,
            "real_centres": args.real_centres,
            "block_size": args.block_size,
            "threads": args.threads,
            "repeats_when_under_s": CHEAP_SECONDS,
            "max_seconds": args.max_seconds,
            "fit_seconds": fit_seconds,
        },
        "memory_note": (
            "peak memory column: " + mem_col + "; tracemalloc sees NumPy/Python allocations only "
            "(torch's CPU allocator is invisible to it)"
        ),
        "results": rows,
        "skipped": skipped,
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

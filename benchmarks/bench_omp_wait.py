"""OpenMP wait policy: small-backbone training images/s with threads that spin or sleep at barriers.

torch's CPU kernels run on OpenMP threads. By default a thread that reaches a barrier spins, which is
fastest on an idle machine and collapses when the cores are shared: the spinning thread burns the
time the descheduled one needs. face_pipelines.settings therefore sets OMP_WAIT_POLICY=PASSIVE for
every `kedro run` (tests/conftest.py does the same). This benchmark measures both policies, each in
a fresh process (the policy is read when torch loads), on an otherwise idle machine and next to
`--competitors` CPU-bound busy-loop processes (another job on the same laptop), and writes
benchmarks/results/omp_wait_policy.json.

    python benchmarks/bench_omp_wait.py [--threads 2] [--competitors 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _env import cpu_name  # benchmarks/_env.py (scripts run from benchmarks/)

RESULTS = Path(__file__).resolve().parent / "results" / "omp_wait_policy.json"
HERE = Path(__file__).resolve().parent

# One child process: the small backbone's training step at 64 px, batch 128 (bench_backbones).
CHILD = """
import json, sys, torch
sys.path.insert(0, {here!r})
from bench_backbones import bench_one
torch.set_num_threads({threads})
row = bench_one("small", 64, 128, torch.device("cpu"), False, True, False, 2, {repeats}, 3)
print(json.dumps({{k: row[k] for k in ("train_img_s", "train_img_s_best", "train_img_per_cpu_s")}}))
"""


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def measure(policy: str, threads: int, repeats: int, competitors: int) -> dict:
    """Train images/s of the small backbone in a fresh process with OMP_WAIT_POLICY=policy."""
    stop = mp.Event()
    busy = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(competitors)]
    for p in busy:
        p.start()
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        code = CHILD.format(here=str(HERE), threads=threads, repeats=repeats)
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        for p in busy:
            p.join(timeout=5)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "policy": policy,
        "threads": threads,
        "competitors": competitors,
        **row,
        "process_wall_s": round(wall, 1),
        "load_avg_1m_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    parser.add_argument("--competitors", type=int, default=1, help="busy-loop processes beside it")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = parser.parse_args()

    import torch

    rows = []
    for competitors in (0, args.competitors):
        for policy in ("ACTIVE", "PASSIVE"):
            row = measure(policy, args.threads, args.repeats, competitors)
            rows.append(row)
            print(
                f"{policy:>8} threads={row['threads']} competitors={competitors} | train "
                f"{row['train_img_s']:7.1f} img/s (best {row['train_img_s_best']:7.1f}) | per "
                f"CPU-s {row['train_img_per_cpu_s']:7.1f} | load {row['load_avg_1m_after']:.1f}",
                flush=True,
            )
    by = {(r["policy"], r["competitors"]): r["train_img_s"] for r in rows}
    result = {
        "benchmark": "OpenMP wait policy, small backbone training (64 px, batch 128)",
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "cuda": False},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "config": vars(args) | {"out": str(args.out)},
        "statistic": "median images/s over repeats, each policy in a fresh process",
        "results": rows,
        "passive_over_active": {
            str(c): round(by[("PASSIVE", c)] / by[("ACTIVE", c)], 3)
            for c in sorted({r["competitors"] for r in rows})
        },
        "note": "load_avg_1m_after above the core count means other jobs shared the machine too",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"passive / active: {result['passive_over_active']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

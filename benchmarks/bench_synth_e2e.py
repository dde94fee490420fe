"""Benchmark: end-to-end wall time of the pipelines, stage by stage, as a user runs them.

Runs `kedro run --pipelines <stage>` for each stage in order (subset, teacher, vec2face, sample,
render by default = the `synth` pipeline; add recognizer/evaluate with --stages) in a project
directory and times each subprocess. With --fresh (the default) the project is a copy of this
repository without data/, mlflow.db or conf/local, so nothing is cached: FaceWorld is materialised
and every model trained from scratch, exactly what `make run` costs on a fresh clone. --in-place runs
in this repository (reusing nothing either: each stage re-runs its nodes, only FaceWorld's cache
is kept).

The 1-minute load average is sampled before and after every stage: on a shared machine a load above
the core count means the wall times are inflated by other jobs, and the JSON says so.

    python benchmarks/bench_synth_e2e.py [--stages subset,teacher,vec2face,sample,render]
        [--env local] [--in-place] [--keep]

Writes benchmarks/results/synth_e2e.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _env import cpu_name  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.io.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "synth_e2e.json"
SYNTH = ["subset", "teacher", "vec2face", "sample", "render"]


def fresh_copy(dest: Path) -> Path:
    """A copy of the repository's project files (no data, no tracking store, no local conf)."""
    project = dest / "project"
    project.mkdir(parents=True)
    for name in ("pyproject.toml", "dvc.yaml"):
        shutil.copy(REPO / name, project / name)
    (project / "src").mkdir()  # the package comes from the installed (editable) project
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    return project


def run_stage(project: Path, stage: str, env_name: str, log_dir: Path) -> dict:
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_dir / f"{stage}.log", "w") as log:
        proc = subprocess.run(
            [str(kedro), "run", "--env", env_name, "--pipelines", stage],
            cwd=project,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (log_dir / f"{stage}.log").read_text()[-3000:]
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}):\n{tail}")
    return {
        "stage": stage,
        "wall_s": round(wall, 1),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", default=",".join(SYNTH), help="comma-separated, run in order")
    ap.add_argument("--env", default="local", help="Kedro config environment")
    ap.add_argument("--in-place", action="store_true", help="run in this repository")
    ap.add_argument("--keep", action="store_true", help="keep the fresh project copy")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    project = REPO if args.in_place else fresh_copy(tmp)
    log_dir = tmp / "logs"
    log_dir.mkdir()
    rows = []
    print(f"project: {project}\nlogs: {log_dir}")
    print(f"{'stage':<12}{'wall s':>9}{'load before':>13}{'load after':>12}")
    try:
        for stage in stages:
            row = run_stage(project, stage, args.env, log_dir)
            rows.append(row)
            print(
                f"{stage:<12}{row['wall_s']:>9.1f}{row['load_avg_1m_before']:>13.2f}"
                f"{row['load_avg_1m_after']:>12.2f}",
                flush=True,
            )
    finally:
        if not args.keep and not args.in_place:
            shutil.rmtree(project.parent / "project", ignore_errors=True)
    total = sum(r["wall_s"] for r in rows)
    cores = os.cpu_count() or 1
    max_load = max(max(r["load_avg_1m_before"], r["load_avg_1m_after"]) for r in rows)
    print(f"{'total':<12}{total:>9.1f}   ({total / 60:.1f} min)")
    result = {
        "benchmark": "end-to-end kedro run, stage by stage",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (face_pipelines.settings)"),
        "device": {"cpu": cpu_name(), "cores": cores, "cuda": torch.cuda.is_available()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": {"env": args.env, "fresh": not args.in_place, "stages": stages},
        "stages": rows,
        "total_s": round(total, 1),
        "synth_s": round(sum(r["wall_s"] for r in rows if r["stage"] in SYNTH), 1),
        "target_synth_s": 15 * 60,
        "contended": max_load > cores,
        "note": (
            "load average above the core count during the run: other jobs inflated these times"
            if max_load > cores
            else "machine otherwise idle"
        ),
    }
    result.update(target_verdict(rows, result["synth_s"], result["target_synth_s"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def target_verdict(rows: list[dict], synth_s: float, target_s: float) -> dict:
    """By how much `synth` misses its target, and which stage bounds it (the largest share)."""
    synth = [r for r in rows if r["stage"] in SYNTH]
    largest = max(synth, key=lambda r: r["wall_s"]) if synth else None
    return {
        "target_met": synth_s <= target_s,
        "target_missed_by_s": round(max(0.0, synth_s - target_s), 1),
        "largest_synth_stage": largest["stage"] if largest else None,
        "largest_synth_stage_share": round(largest["wall_s"] / synth_s, 3) if largest else None,
    }


if __name__ == "__main__":
    main()

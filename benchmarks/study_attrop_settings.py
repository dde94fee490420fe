"""AttrOP settings on the default chain's own generator: how often the yaw target is met, at what
cost in identity and time.

Takes the first 128 AttrOP rows of the chain's identity plan (|yaw| targets 30-75 deg, quality
targets from the teacher's norms) and runs synthesis.attrop.attrop on them with render.attrop's
defaults and one change per row of the sweep. Reports per setting: pose_met (|yaw| within
pose_success_deg of the target - the card's attrop_yaw_success), id_met (1 - cos to the identity
centre within id_tolerance), all targets met, mean steps, mean identity cos, median yaw error and
seconds (one thread).

Run after the default chain (`kedro run --pipelines synth`):

    python benchmarks/study_attrop_settings.py [--data data] [--rows 128] [--sweep newton]

Writes benchmarks/results/attrop_settings.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.synthesis.attrop import AttrOPConfig, attrop
from face_pipelines.synthesis.factory import load_attrop_models, load_generator

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "attrop_settings.json"
SWEEP = [
    {},
    {"w_pose": 3.0},
    {"w_pose": 10.0},
    {"lr": 0.3},
    {"lr": 0.3, "w_pose": 3.0},
    {"lr": 0.03},
    {"steps_max": 40},
    {"w_id": 30.0},
]
NEWTON = [
    {},
    {"pose_newton_steps": 1},
    {"pose_newton_steps": 2},
    {"pose_newton_steps": 3},
    {"pose_newton_steps": 5},
    {"pose_newton_steps": 8},
    {"pose_newton_steps": 20},
    {"pose_newton_steps": 3, "pose_newton_max_step": 1.0},
    {"pose_newton_steps": 2, "steps_max": 10},
    {"pose_newton_steps": 2, "steps_max": 6},
]
SWEEPS = {"settings": SWEEP, "newton": NEWTON}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data"), help="the project's data/ folder")
    ap.add_argument("--rows", type=int, default=128, help="AttrOP rows of the plan to optimise")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--sweep",
        choices=sorted(SWEEPS),
        default="settings",
        help="settings: lr/weights/steps; newton: Gauss-Newton pose steps (pose_newton_steps)",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    plan = pd.read_parquet(data / "05_model_input/identity_plan.parquet")
    vectors = np.load(data / "05_model_input/identity_vectors.npy")
    centres = np.load(data / "05_model_input/identity_centres.npy")
    report = json.loads((data / "08_reporting/vec2face_report.json").read_text())
    teacher_ckpt = json.loads((data / "06_models/teacher/teacher_summary.json").read_text())
    pose_ckpt = json.loads((data / "06_models/teacher/pose_summary.json").read_text())
    generator = load_generator(report["checkpoint"], "cpu", "vec2face")
    teacher, pose, _ = load_attrop_models(teacher_ckpt["checkpoint"], pose_ckpt["checkpoint"])
    base = yaml.safe_load((REPO / "conf/base/parameters_render.yml").read_text())
    base = {k: v for k, v in base["render"]["attrop"].items() if k in AttrOPConfig.model_fields}

    rows = plan[plan["attrop"].fillna(False).astype(bool)].iloc[: args.rows]
    v = torch.from_numpy(vectors[rows.index.to_numpy()]).float()
    c = torch.from_numpy(centres[rows["identity"].to_numpy()]).float()
    yaw_t = rows["yaw_target"].to_numpy(float)
    quality_t = rows["quality_target"].to_numpy(float)
    results = []
    print(
        f"{'change':<28} {'pose met':>8} {'id met':>7} {'all met':>7} {'steps':>6} "
        f"{'id cos':>7} {'yaw err':>7} {'s':>6}"
    )
    for change in SWEEPS[args.sweep]:
        cfg = AttrOPConfig(**{**base, **change})
        t0 = time.perf_counter()
        res = attrop(
            generator,
            v,
            c,
            yaw_t,
            quality_t,
            teacher,
            pose,
            None,
            cfg,
            torch.Generator().manual_seed(0),
        )
        row = {
            "change": change,
            "seconds": round(time.perf_counter() - t0, 1),
            "pose_met": float(res.pose_met.mean()),
            "id_met": float(res.id_met.mean()),
            "met": float(res.met.mean()),
            "quality_met": float(res.quality_met.mean()),
            "steps_mean": float(res.steps_used.mean()),
            "id_cos_mean": float(np.mean(res.id_cos)),
            "yaw_error_median_deg": float(np.median(np.abs(yaw_t - np.abs(res.yaw)))),
        }
        results.append(row)
        label = ", ".join(f"{k}={val}" for k, val in change.items()) or "defaults"
        print(
            f"{label:<28} {row['pose_met']:>8.3f} {row['id_met']:>7.3f} {row['met']:>7.3f} "
            f"{row['steps_mean']:>6.1f} {row['id_cos_mean']:>7.3f} "
            f"{row['yaw_error_median_deg']:>7.1f} {row['seconds']:>6.1f}"
        )
    payload = {"rows": len(rows), "threads": args.threads, "defaults": base, "results": results}
    write_text_atomic(Path(args.out), json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

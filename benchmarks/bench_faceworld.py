"""Benchmark: FaceWorld rendering speed on one CPU core (images/s at 64 and 112 px).

Renders N train-pool images (identities x nuisances as materialise_faceworld draws them) with the
renderer alone and with JPEG encoding at each image's quality, 3 repeats each; prints a table and
writes the medians to benchmarks/results/faceworld.json. Wall-clock images/s depend on what else
runs on the core; images per CPU-second (process time) are what one dedicated core would do.

    python benchmarks/bench_faceworld.py [--n 1024] [--repeats 3] [--sizes 64 112]
"""

from __future__ import annotations

import os

# one core: set before numpy loads its thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from _env import cpu_name  # noqa: E402  (benchmarks/_env.py; scripts run from benchmarks/)
from face_pipelines.faceworld import FaceWorldConfig, plan_pool, render_identity_images  # noqa: E402
from face_pipelines.io.atomic import write_text_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "faceworld.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="images per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    rows = []
    for size in args.sizes:
        config = FaceWorldConfig(image_size=size)
        plan = plan_pool(config, "train")
        ids = plan.identities[plan.image_identity[: args.n]]
        nz = {k: v[: args.n] for k, v in plan.nuisances.items()}
        render_identity_images(
            ids[:32], {k: v[:32] for k, v in nz.items()}, size, config.render_batch_size
        )
        t_render, t_jpeg, c_render = [], [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            imgs = render_identity_images(ids, nz, size=size, batch_size=config.render_batch_size)
            t1, c1 = time.perf_counter(), time.process_time()
            c_render.append(c1 - c0)
            for img, q in zip(imgs, nz["jpeg_quality"], strict=True):
                Image.fromarray(img).save(io.BytesIO(), format="JPEG", quality=int(q))
            t2 = time.perf_counter()
            t_render.append(t1 - t0)
            t_jpeg.append(t2 - t0)
        rows.append(
            {
                "size": size,
                "images": args.n,
                "batch_size": config.render_batch_size,
                "render_s_median": statistics.median(t_render),
                "render_img_per_s": args.n / statistics.median(t_render),
                "render_jpeg_img_per_s": args.n / statistics.median(t_jpeg),
                # CPU time is what the renderer costs on a dedicated core, even on a busy machine
                "render_img_per_cpu_s": args.n / statistics.median(c_render),
                "runs_s": [round(t, 4) for t in t_render],
            }
        )

    print(f"{'size':>5} {'images':>7} {'render img/s':>13} {'+jpeg img/s':>12} {'img/cpu-s':>10}")
    for r in rows:
        print(
            f"{r['size']:>5} {r['images']:>7} {r['render_img_per_s']:>13.0f} "
            f"{r['render_jpeg_img_per_s']:>12.0f} {r['render_img_per_cpu_s']:>10.0f}"
        )
    out = {
        "benchmark": "faceworld render (one core)",
        "device": {"cpu": cpu_name(), "cores_used": 1, "load_avg_1m": os.getloadavg()[0]},
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "config": {"pool": "train", "repeats": args.repeats, "statistic": "median"},
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""AttrOP cost: images/s of plain generation vs AttrOP with N steps (and the full render path).

Uses a stand-in generator the size of the CPU default Vec2Face (512-d vector -> 64 px, ~40M MACs
per image: Linear to a 4x4x128 map, four nearest-x2 + 2x conv3x3 stages, GroupNorm + SiLU), a small
strided-conv teacher (64 px -> 512-d) and a pose head of the same shape. Random weights: the numbers
are costs, not convergence. AttrOP rows use unreachable targets, so every sample takes all N steps
(the worst case; per-sample stopping only makes real runs cheaper).

Rows:
- generate: synthesis.attrop.generate_images (no grad), batch 16 (as AttrOP).
- attrop_N: synthesis.attrop.attrop with steps_max=N (N+1 generator forwards, N backwards through
  generator + teacher + pose model), batch 16.
- render: synthesis.dataset_writer.render_dataset in-process, plain generation + JPEG encode + atomic
  writes + shard markers + manifest.

    .venv/bin/python benchmarks/bench_attrop.py              # CPU, well under a minute
    .venv/bin/python benchmarks/bench_attrop.py --threads 2 --steps 2 5 10

Writes benchmarks/results/attrop.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.synthesis.attrop import AttrOPConfig, attrop, generate_images
from face_pipelines.synthesis.dataset_writer import render_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "attrop.json"
FEAT_DIM = 512
IMAGE_SIZE = 64


class ConvGenerator(nn.Module):
    """512-d vector -> 64 px RGB in [-1, 1]; about the cost of the default Vec2Face decoder."""

    def __init__(self, feat_dim: int = FEAT_DIM, base: int = 128) -> None:
        super().__init__()
        self.image_size = IMAGE_SIZE
        self.base = base
        self.fc = nn.Linear(feat_dim, base * 4 * 4)
        chans = [base, 64, 32, 16, 8]
        stages = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.GroupNorm(min(8, cout), cout),
                nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*stages, nn.Conv2d(chans[-1], 3, 3, padding=1))

    def generate(self, vectors: torch.Tensor, generator: torch.Generator | None = None):
        """vectors [B, 512] -> images [B, 3, 64, 64]."""
        x = self.fc(vectors).view(-1, self.base, 4, 4)
        return torch.tanh(self.body(x))


def small_cnn(out_dim: int) -> nn.Module:
    """Strided conv net 64 px -> out_dim (teacher: 512-d embedding; pose: 2 angles)."""
    layers, cin = [], 3
    for cout in (16, 32, 64, 128):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        cin = cout
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, out_dim))


def make_generator(seed: int = 0) -> ConvGenerator:
    """Picklable factory for render_dataset."""
    torch.manual_seed(seed)
    return ConvGenerator()


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1, 5, 10])
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--attrop-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render-images", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = make_generator().eval().requires_grad_(False)
    torch.manual_seed(1)
    teacher = small_cnn(FEAT_DIM).eval().requires_grad_(False)
    pose = small_cnn(2).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in gen.parameters())

    rng = np.random.default_rng(0)
    results = []

    vecs = torch.from_numpy(rng.standard_normal((args.gen_batch, FEAT_DIM)).astype(np.float32))
    t = timed(lambda: generate_images(gen, vecs, args.gen_batch), args.repeats)
    results.append({"task": "generate", "steps": 0, "batch": args.gen_batch, "times_s": t})

    b = args.attrop_batch
    centres = torch.from_numpy(rng.standard_normal((b, FEAT_DIM)).astype(np.float32))
    start = centres + 0.5 * torch.from_numpy(rng.standard_normal((b, FEAT_DIM)).astype(np.float32))
    unreachable_yaw = np.full(b, 1000.0)
    for steps in args.steps:
        cfg = AttrOPConfig(steps_max=steps, batch_size=b)

        def run(cfg=cfg):
            res = attrop(gen, start, centres, unreachable_yaw, None, teacher, pose, None, cfg)
            assert int(res.steps_used.min()) == cfg.steps_max

        t = timed(run, args.repeats)
        results.append({"task": f"attrop_{steps}", "steps": steps, "batch": b, "times_s": t})

    n = args.render_images
    plan = pd.DataFrame({"identity": np.arange(n) // 8, "index": np.arange(n) % 8})
    vectors = rng.standard_normal((n, FEAT_DIM)).astype(np.float32)
    render_times = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):  # fresh folders: the second run must not skip complete shards
            t0 = time.perf_counter()
            _, report = render_dataset(
                plan,
                vectors,
                functools.partial(make_generator),
                Path(tmp) / f"ds{rep}",
                shard_identities=4,
                batch_size=64,
                progress=False,
            )
            render_times.append(time.perf_counter() - t0)
            assert report["shards_rendered"] == report["shards"]
    results.append(
        {
            "task": "render",
            "steps": 0,
            "batch": 64,
            "times_s": render_times,
            "shards": report["shards"],
        }
    )

    base = None
    for r in results:
        r["median_s"] = statistics.median(r["times_s"])
        r["min_s"] = min(r["times_s"])
        images = n if r["task"] == "render" else r["batch"]
        r["img_per_s"] = images / r["median_s"]
        r["best_img_per_s"] = images / r["min_s"]
        if r["task"] == "generate":
            base = r["best_img_per_s"]
        # Best-of-repeats ratios: the least disturbed by other jobs on a shared machine.
        r["slowdown_vs_generate"] = base / r["best_img_per_s"] if base else None

    print(
        f"{'task':<10} {'steps':>5} {'batch':>5} {'median_s':>9} {'min_s':>8} {'img/s':>8} "
        f"{'best':>8} {'x slower':>9}"
    )
    for r in results:
        print(
            f"{r['task']:<10} {r['steps']:>5} {r['batch']:>5} {r['median_s']:>9.3f} "
            f"{r['min_s']:>8.3f} {r['img_per_s']:>8.1f} {r['best_img_per_s']:>8.1f} "
            f"{r['slowdown_vs_generate']:>9.2f}"
        )

    payload = {
        "benchmark": "attrop",
        "device": {
            "type": "cpu",
            "name": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "load_average": list(os.getloadavg()),
        "generator": {"params": n_params, "feat_dim": FEAT_DIM, "image_size": IMAGE_SIZE},
        "note": "AttrOP rows use unreachable targets: every sample takes all steps (worst case).",
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(payload, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

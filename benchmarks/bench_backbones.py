"""Backbone throughput: training (forward + backward + SGD step) and inference images/s.

Synthetic data, an ArcFace head over 1000 classes. CPU: 'small' at 64 px (channels_last off/on, and
on one thread) and IResNet-50 at 112 px (few iterations). CUDA: both at larger batches, for every
combination of bf16 autocast, channels_last and torch.compile. Rows with `loader` set take every
training batch from the real data path instead of one resident tensor: packed uint8 shards ->
PackedFaceDataset (flip at 64 px as the default recognizer recipe; the HSFace recipe at 112 px) ->
make_loader -> normalise on the device, so `train_img_s` there includes data loading. Prints a table and writes
benchmarks/results/backbones.json (device, versions, config, median images/s over repeats),
rewritten after each row.

On a CPU shared with other jobs the wall-clock median drops sharply (two OpenMP threads wait for
each other whenever one is descheduled); the best repeat, the images per CPU-second and the
one-thread row show what the model does on an idle machine, and `load_avg_1m_after` records how busy
it was.

    python benchmarks/bench_backbones.py              # auto device; the CPU run takes ~1-2 minutes
    python benchmarks/bench_backbones.py --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _env import make_packed  # benchmarks/_env.py (scripts run from benchmarks/)
from face_pipelines.image_tensors import to_device_normalised
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.heads import ArcFaceHead
from face_pipelines.models.registry import build_backbone
from face_pipelines.training.data import (
    AugmentationConfig,
    PackedFaceDataset,
    make_loader,
)

RESULTS = Path(__file__).resolve().parent / "results" / "backbones.json"
NUM_CLASSES = 1000
AUGMENTATIONS = {"flip": AugmentationConfig, "hsface": AugmentationConfig.hsface}


def _endless(loader):
    """Batches from `loader` forever, a new shuffled epoch each time it runs out."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{model_name}, {os.cpu_count()} CPUs"


def _timed(fn, device, warmup: int, repeats: int, iters: int, batch: int):
    """Wall-clock images/s of each repeat (each repeat = `iters` calls of fn), and images per
    CPU-second of this process over all repeats (on a shared CPU the wall-clock rate drops with
    other users' load; the CPU-time rate barely moves, so it shows what an idle machine would
    do)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    rates = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        rates.append(iters * batch / (time.perf_counter() - start))
    per_cpu_s = repeats * iters * batch / max(time.process_time() - cpu_start, 1e-9)
    return rates, per_cpu_s


def bench_one(
    arch: str,
    input_size: int,
    batch: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
    compile_model: bool,
    warmup: int,
    repeats: int,
    iters: int,
    threads: int | None = None,
    loader: dict | None = None,
    packed: PackedImages | None = None,
) -> dict:
    """Train and inference images/s of one backbone configuration.

    `loader` ({"num_workers": int, "augmentation": "flip" | "hsface"}) takes every training batch
    from `packed` through the training data path; None trains on one resident batch.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {"input_size": input_size}
    model = build_backbone(arch, **kwargs).to(device)
    head = ArcFaceHead(model.num_features, NUM_CLASSES).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_model:
        torch._dynamo.reset()  # fresh guards: earlier configs must not exhaust the recompile limit
        run_model = torch.compile(model)
    else:
        run_model = model
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def autocast():
        if bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    batches = None
    if loader is not None:
        dataset = PackedFaceDataset(packed, augmentation=AUGMENTATIONS[loader["augmentation"]]())
        batches = _endless(
            make_loader(dataset, batch, num_workers=loader["num_workers"], device=device, seed=0)
        )

    def train_step():
        xb, yb = x, y
        if batches is not None:
            images, labels = next(batches)
            xb = to_device_normalised(images, device, channels_last)
            yb = labels.to(device, non_blocking=True)
        with autocast():
            emb = run_model(xb)
        loss = head(emb, yb)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), autocast():
            run_model(x)

    model.train()
    train, train_cpu = _timed(train_step, device, warmup, repeats, iters, batch)
    model.eval()
    infer, infer_cpu = _timed(infer_step, device, warmup, repeats, iters, batch)
    return {
        "arch": arch,
        "input_size": input_size,
        "batch": batch,
        "bf16": bf16,
        "channels_last": channels_last,
        "compile": compile_model,
        "loader": loader,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "threads": torch.get_num_threads(),
        "train_img_s": statistics.median(train),
        "infer_img_s": statistics.median(infer),
        "train_img_s_best": max(train),
        "infer_img_s_best": max(infer),
        "train_img_per_cpu_s": train_cpu,
        "infer_img_per_cpu_s": infer_cpu,
        "train_img_s_repeats": train,
        "infer_img_s_repeats": infer,
        "warmup": warmup,
        "iters_per_repeat": iters,
    }


def _loader_text(loader: dict | None) -> str:
    return "-" if not loader else f"{loader['augmentation']}/w{loader['num_workers']}"


def plan(device: torch.device, repeats: int, threads: int) -> list[dict]:
    """Configurations to run on this device."""
    if device.type == "cuda":
        models = {"small": (64, 512, "flip"), "iresnet50": (112, 256, "hsface")}
        timing = dict(warmup=5, repeats=repeats, iters=10)
        runs = [
            dict(arch=a, input_size=size, batch=b, bf16=bf16, channels_last=cl, compile_model=comp)
            for a, (size, b, _) in models.items()
            for bf16, cl, comp in itertools.product([False, True], repeat=3)
        ]
        # the fast configuration again, fed by the data path (8 workers)
        runs += [
            dict(
                arch=a, input_size=size, batch=b, bf16=True, channels_last=True, compile_model=comp
            )
            | {"loader": {"num_workers": 8, "augmentation": aug}}
            for a, (size, b, aug) in models.items()
            for comp in (False, True)
        ]
        return [r | timing for r in runs]
    common = dict(bf16=False, compile_model=False, threads=threads)
    small = dict(arch="small", input_size=64, batch=128, warmup=2, repeats=repeats, iters=3)
    # IResNet-50 takes ~30 s per training step on two cores: one timed step each for training and
    # inference (no warm-up) keeps the whole CPU run under two minutes.
    r50 = dict(arch="iresnet50", input_size=112, batch=32, warmup=0, repeats=1, iters=1)
    runs = [
        {**common, **small, "channels_last": False},
        {**common, **small, "channels_last": True},
    ]
    if threads > 1:  # one thread: the figure that holds up when other jobs share the CPU
        runs.append({**common, **small, "channels_last": True, "threads": 1})
    runs.append({**common, **r50, "channels_last": True})
    # The same with the data path included: in-process loading (the default num_workers: 0) and
    # one worker process (on two cores it competes with the training threads).
    for workers in (0, 1):
        loader = {"num_workers": workers, "augmentation": "flip"}
        runs.append({**common, **small, "channels_last": True, "loader": loader})
    runs.append(
        {
            **common,
            **r50,
            "channels_last": True,
            "loader": {"num_workers": 0, "augmentation": "hsface"},
        }
    )
    return runs


def main() -> None:
    """Run the plan for the chosen device, print a table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--only", default=None, help="run only this arch (e.g. small)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = parser.parse_args()

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    result = {
        "benchmark": "backbones",
        "device": _device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (spinning)"),
        "config": {
            "num_classes_head": NUM_CLASSES,
            "optimizer": "SGD(momentum=0.9, wd=5e-4)",
            "repeats": args.repeats,
            "statistic": "median images/s over repeats (best: the fastest repeat)",
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": [],
    }
    tmp = tempfile.TemporaryDirectory(prefix="bench_backbones_")
    packed: dict[int, PackedImages] = {}
    for cfg in plan(device, args.repeats, args.threads):
        if args.only and cfg["arch"] != args.only:
            continue
        size = cfg["input_size"]
        if cfg.get("loader") and size not in packed:
            # enough images that a repeat rarely wraps around an epoch
            n = max(2048, cfg["batch"] * (cfg["warmup"] + cfg["iters"]) * 2)
            packed[size] = make_packed(Path(tmp.name) / f"px{size}", n, size, seed=size)
        row = bench_one(device=device, packed=packed.get(size), **cfg)
        row["load_avg_1m_after"] = os.getloadavg()[0]
        result["results"].append(row)
        print(
            f"{row['arch']:>10} {row['input_size']:>4}px b{row['batch']:<4} "
            f"thr={row['threads']:<2} "
            f"bf16={int(row['bf16'])} cl={int(row['channels_last'])} compile={int(row['compile'])} "
            f"loader={_loader_text(row['loader']):<9} "
            f"| train {row['train_img_s']:8.1f} (best {row['train_img_s_best']:8.1f}) "
            f"| infer {row['infer_img_s']:8.1f} (best {row['infer_img_s_best']:8.1f}) img/s "
            f"| per CPU-s: train {row['train_img_per_cpu_s']:7.1f} infer "
            f"{row['infer_img_per_cpu_s']:7.1f} | load {row['load_avg_1m_after']:.1f}",
            flush=True,
        )
        # Rewritten after every row: an interrupted run still leaves the rows it finished.
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    tmp.cleanup()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

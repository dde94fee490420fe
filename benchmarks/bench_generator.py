"""Vec2Face generator throughput and memory: images/s for generation (and a training step).

Rows measured:
- generate: ``model.generate`` under torch.no_grad(), inference masking, eval mode; the default (64 px)
  and the paper (112 px, ViT-B) configs. Batch 256 (the paper config on CPU: batch 2, 1 repeat).
- train_step: forward + backward of image MSE + token MSE at batch 64, default config (the
  "can the default train on CPU" number).
- CUDA only: the same generate rows in the optimised mode (bf16 autocast, channels-last image
  decoder) and a naive baseline (fp16 autocast with the transformer blocks in fp32 outside autocast,
  as upstream Vec2Face ran it), with achieved FLOP/s against the device's dense peak.

Timings are the median over repeats after one warm-up (img_per_s; img_per_s_best from the fastest
repeat, the better estimate of the machine when others share it). Peak memory per batch, above what was in use
before it: CUDA torch.cuda.max_memory_allocated; CPU the rise of the process's peak RSS (VmHWM,
reset through /proc/self/clear_refs). img_per_cpu_s divides by process CPU time, which stays
meaningful when other jobs share the cores (with 1 thread; with more, waiting threads add CPU time).
FLOPs: an analytic count of matmuls and convolutions (x2 multiply-adds); torch's FlopCounterMode is
recorded beside it as a cross-check (on CPU it does not see the fused attention kernel, so it
reads a little lower).

    .venv/bin/python benchmarks/bench_generator.py            # CPU: about a minute
    .venv/bin/python benchmarks/bench_generator.py --threads 1 --configs default

Writes benchmarks/results/generator.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.models.vec2face import VEC2FACE_PRESETS, Vec2Face, Vec2FaceConfig

RESULTS = Path(__file__).resolve().parent / "results" / "generator.json"

# Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' datasheets.
DEVICE_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5 ("NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


# --------------------------------------------------------------------------------------------------
# analytic FLOP count (multiply-adds x 2; norms and activations are not counted)
def _block_flops(tokens: int, width: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    linear = 2 * tokens * (3 * width * width + width * width + 2 * width * hidden)
    attention = 2 * 2 * tokens * tokens * width  # q @ k^T and attn @ v
    return linear + attention


def _conv_flops(side: int, c_in: int, c_out: int, kernel: int) -> int:
    return 2 * side * side * c_in * c_out * kernel * kernel


def generator_forward_flops(cfg: Vec2FaceConfig, encoder_rows: int) -> int:
    """FLOPs of one image through Vec2Face.forward with `encoder_rows` grid rows kept."""
    g = cfg.grid_size
    n_rows = g * g
    n_enc = 1 + encoder_rows
    flops = 2 * cfg.feat_dim * cfg.width + 2 * cfg.width * n_rows  # vector embed, grid expand
    flops += cfg.depth * _block_flops(n_enc, cfg.width, cfg.mlp_ratio)
    flops += 2 * n_enc * cfg.width * cfg.decoder_width
    flops += cfg.decoder_depth * _block_flops(1 + n_rows, cfg.decoder_width, cfg.mlp_ratio)
    if cfg.decoder_width != cfg.width:
        flops += 2 * n_rows * cfg.decoder_width * cfg.width
    # image decoder
    flops += 2 * n_rows * cfg.decoder_width * cfg.z_channels
    channels, side = cfg.ch * cfg.ch_mult[-1], g
    flops += _conv_flops(side, cfg.z_channels, channels, 3)
    flops += cfg.mid_blocks * 2 * _conv_flops(side, channels, channels, 3)
    blocks = cfg.res_blocks_per_level()
    for level in reversed(range(len(cfg.ch_mult))):
        out = cfg.ch * cfg.ch_mult[level]
        for _ in range(blocks[level]):
            flops += _conv_flops(side, channels, out, 3) + _conv_flops(side, out, out, 3)
            if channels != out:
                flops += _conv_flops(side, channels, out, 1)
            channels = out
        if level != 0:
            side *= 2
            flops += _conv_flops(side, channels, channels, 3)
    flops += _conv_flops(side, channels, 3, 3)
    return flops


def inference_encoder_rows(cfg: Vec2FaceConfig) -> int:
    """Grid rows the encoder sees under inference masking (ceil(G*min) are dropped)."""
    n_rows = cfg.grid_size**2
    return n_rows - math.ceil(round(n_rows * cfg.inference_masking.min, 9))


def counted_forward_flops(model: Vec2Face) -> int:
    """torch's FlopCounterMode count for one image (cross-check of the analytic count)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.generate(
            torch.zeros(1, model.config.feat_dim, device=_param_device(model)),
            generator=torch.Generator().manual_seed(0),
        )
    return int(counter.get_total_flops())


def _param_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# memory
def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of one measured region above what was in use when it started.

    CUDA: torch.cuda.max_memory_allocated minus memory_allocated at the start (the model's weights
    are not counted; `absolute_peak_bytes` has them). CPU: the rise of the peak RSS (VmHWM, reset
    through /proc/self/clear_refs) over the RSS at the start.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.peak_bytes: int | None = None
        self.absolute_peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - memory_allocated at start"
            return self
        self._start = _read_status_kib("VmRSS")
        try:  # "5" resets the peak-RSS watermark to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset) - VmRSS at start"
        except OSError:
            self.method = "ru_maxrss - VmRSS at start (peak since process start)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute_peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.peak_bytes = self.absolute_peak_bytes - self._start
            return
        if self.method.startswith("VmHWM"):
            peak_kib = _read_status_kib("VmHWM")
        else:
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if peak_kib is not None and self._start is not None:
            self.absolute_peak_bytes = peak_kib * 1024
            self.peak_bytes = max(0, peak_kib - self._start) * 1024


# --------------------------------------------------------------------------------------------------
# measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> dict[str, Any]:
    fn()  # warm-up (allocator, kernels, autotuning)
    _sync(device)
    walls, cpus, peaks, absolute, method = [], [], [], [], ""
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        peaks.append(mem.peak_bytes)
        absolute.append(mem.absolute_peak_bytes)
        method = mem.method
    known = [p for p in peaks if p is not None]
    known_abs = [p for p in absolute if p is not None]
    return {
        "repeats": repeats,
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "median_cpu_s": statistics.median(cpus),
        "peak_mem_bytes": max(known) if known else None,
        "absolute_peak_mem_bytes": max(known_abs) if known_abs else None,
        "peak_mem_method": method,
    }


def bench_generate(
    model: Vec2Face,
    batch: int,
    repeats: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, Any]:
    """Time model.generate on a random batch of raw-scale features."""
    g = torch.Generator().manual_seed(0)
    features = (torch.randn(batch, model.config.feat_dim, generator=g) * 0.97).to(device)
    mask_gen = torch.Generator().manual_seed(1)

    def run() -> None:
        with (
            torch.no_grad(),
            torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ),
        ):
            model.generate(features, generator=mask_gen)

    return _timed(run, device, repeats)


def bench_train_step(
    model: Vec2Face, batch: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Time forward + backward (image MSE + token MSE) with training masking."""
    g = torch.Generator().manual_seed(0)
    size = model.config.image_size
    features = (torch.randn(batch, model.config.feat_dim, generator=g) * 0.97).to(device)
    target = torch.rand(batch, 3, size, size, generator=g).mul(2).sub(1).to(device)
    mask_gen = torch.Generator().manual_seed(1)
    model.train()

    def run() -> None:
        out = model(features, masking="train", generator=mask_gen)
        loss = F.mse_loss(out["image"], target) + F.mse_loss(
            out["tokens_pred"], out["tokens_target"]
        )
        model.zero_grad(set_to_none=True)
        loss.backward()

    result = _timed(run, device, repeats)
    model.eval()
    return result


def _peak_flops(device: torch.device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device)
    for key, peak in DEVICE_PEAK_FLOPS.items():  # most specific names come first
        if key in name:
            return name, peak
    return name, None


def _build(preset: str, device: torch.device, **overrides: Any) -> Vec2Face:
    torch.manual_seed(0)
    model = Vec2Face(**{**VEC2FACE_PRESETS[preset], **overrides}).to(device).eval()
    return model


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every requested row; returns the JSON-ready report."""
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    cuda = device.type == "cuda"
    rows: list[dict[str, Any]] = []
    configs: dict[str, Any] = {}
    for preset in args.configs:
        base = _build(preset, device)
        cfg = base.config
        configs[preset] = cfg.model_dump(mode="json")
        flops_img = generator_forward_flops(cfg, inference_encoder_rows(cfg))
        # the cross-check costs one more paper-size forward, too slow to add on a 2-core CPU
        counted = counted_forward_flops(base) if cuda or preset != "paper" else None
        if cuda:
            batch, repeats = args.batch, args.repeats
        else:
            paper = preset == "paper"
            batch = args.paper_cpu_batch if paper else args.batch
            repeats = args.paper_cpu_repeats if paper else args.repeats
        modes: list[tuple[str, Vec2Face, torch.dtype | None]]
        if cuda:
            fast = base.to(memory_format=torch.channels_last)
            naive = _build(preset, device, fp32_transformer=True)
            modes = [("bf16", fast, torch.bfloat16), ("naive_fp16_fp32attn", naive, torch.float16)]
        else:
            modes = [("fp32", base, None)]
        for mode, model, amp in modes:
            res = bench_generate(model, batch, repeats, device, amp)
            row = {
                "config": preset,
                "task": "generate",
                "mode": mode,
                "batch": batch,
                "image_size": cfg.image_size,
                **res,
                "img_per_s": batch / res["median_s"],
                "img_per_s_best": batch / res["min_s"],
                "img_per_cpu_s": batch / res["median_cpu_s"] if res["median_cpu_s"] else None,
                "peak_mem_per_img_bytes": (
                    res["peak_mem_bytes"] / batch if res["peak_mem_bytes"] is not None else None
                ),
                "flops_per_img_analytic": flops_img,
                "flops_per_img_counted": counted,
                "achieved_flops_per_s": flops_img * batch / res["median_s"],
            }
            if cuda:
                name, peak = _peak_flops(device)
                row["device_peak_flops"] = peak
                row["fraction_of_peak"] = row["achieved_flops_per_s"] / peak if peak else None
            rows.append(row)
            print(
                f"  {preset:8s} generate {mode:20s} batch {batch:4d}: "
                f"{row['img_per_s']:9.1f} img/s",
                flush=True,
            )
        if preset == "default" and not args.skip_train:
            train_model = _build(preset, device)
            res = bench_train_step(train_model, args.train_batch, args.repeats, device)
            rows.append(
                {
                    "config": preset,
                    "task": "train_step",
                    "mode": "fp32",
                    "batch": args.train_batch,
                    "image_size": cfg.image_size,
                    **res,
                    "img_per_s": args.train_batch / res["median_s"],
                    "img_per_s_best": args.train_batch / res["min_s"],
                    "img_per_cpu_s": (
                        args.train_batch / res["median_cpu_s"] if res["median_cpu_s"] else None
                    ),
                    "peak_mem_per_img_bytes": (
                        res["peak_mem_bytes"] / args.train_batch
                        if res["peak_mem_bytes"] is not None
                        else None
                    ),
                }
            )
            print(
                f"  {preset:8s} train_step fp32 batch {args.train_batch:4d}: "
                f"{rows[-1]['img_per_s']:9.1f} img/s",
                flush=True,
            )
        del base
    return {
        "benchmark": "generator",
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device)
            if cuda
            else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "timm": __import__("timm").__version__,
            "cuda": torch.version.cuda,
        },
        "load_average": os.getloadavg(),
        "configs": configs,
        "results": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    """Human-readable summary of the report."""
    head = (
        f"{'config':8s} {'task':10s} {'mode':20s} {'batch':>5s} {'img/s':>9s} {'best':>8s} "
        f"{'img/cpu-s':>9s} {'ms/batch':>9s} {'peak MiB':>9s} {'GFLOP/img':>9s} "
        f"{'TFLOP/s':>8s} {'%peak':>6s}"
    )
    print(
        f"\ndevice: {report['device']['name']} ({report['device']['type']}, "
        f"{report['device']['torch_threads']} threads), torch {report['versions']['torch']}, "
        f"load average {report['load_average'][0]:.1f}"
    )
    print(head)
    print("-" * len(head))
    for r in report["results"]:
        mem = r["peak_mem_bytes"] / 2**20 if r["peak_mem_bytes"] is not None else float("nan")
        gflop = r.get("flops_per_img_analytic", float("nan")) / 1e9
        tflops = r.get("achieved_flops_per_s", float("nan")) / 1e12
        frac = r.get("fraction_of_peak")
        print(
            f"{r['config']:8s} {r['task']:10s} {r['mode']:20s} {r['batch']:5d} "
            f"{r['img_per_s']:9.1f} {r['img_per_s_best']:8.1f} {r['img_per_cpu_s'] or float('nan'):9.1f} "
            f"{r['median_s'] * 1e3:9.1f} {mem:9.1f} {gflop:9.3f} {tflops:8.3f} "
            f"{frac * 100 if frac else float('nan'):6.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--configs",
        nargs="+",
        default=["default", "paper"],
        choices=sorted(VEC2FACE_PRESETS),
        help="presets to measure",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--batch", type=int, default=256, help="generate batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument("--paper-cpu-batch", type=int, default=2, help="paper-config batch on CPU")
    p.add_argument("--paper-cpu-repeats", type=int, default=1, help="paper-config repeats on CPU")
    p.add_argument("--train-batch", type=int, default=64, help="train-step batch size")
    p.add_argument("--skip-train", action="store_true", help="skip the train-step row")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch intra-op threads on CPU (the 2-core target by default)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the table, write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run_benchmarks(args)
    print_table(report)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()

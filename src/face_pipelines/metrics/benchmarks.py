"""Verification benchmarks: every recognizer on every .bin, one table.

The protocol is insightface's (face_pipelines.metrics.verification): flip test-time augmentation,
L2-normalised embeddings, 10 contiguous folds, threshold chosen on the other nine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from face_pipelines.io.subset import require_path
from face_pipelines.io.verification_bin import read_verification_bin
from face_pipelines.metrics.verification import (
    embed_with_flip,
    tar_at_far,
    verification_accuracy,
    verification_curve,
)
from face_pipelines.models.inference import load_recognizer


def evaluate_on_benchmark(
    model: torch.nn.Module,
    bin_path: str | Path,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
) -> dict:
    """Accuracy (mean, std over 10 folds) and TAR@FAR=1e-3 (insightface's 10-fold VAL) of one
    model on one .bin file, with the genuine/impostor pair counts, TAR at FAR 1e-4..1e-1 over all
    pairs (`tar_at_far`, null where too few impostor pairs) and the ROC points (`roc`)."""
    images, issame = read_verification_bin(bin_path, image_size=image_size)
    emb = embed_with_flip(model, images, batch_size=batch_size, device=device)
    a, b = emb[0::2], emb[1::2]
    mean, std = verification_accuracy(a, b, issame, folds=10)
    return {
        "accuracy": float(mean),
        "accuracy_std": float(std),
        "tar_at_far_1e-3": float(tar_at_far(a, b, issame, far=1e-3)),
        "pairs": int(len(issame)),
        **verification_curve(a, b, issame),
    }


def benchmark_paths(
    faceworld_info: Mapping | None, faceworld_benchmarks: bool, extra: Mapping[str, str | None]
) -> dict[str, Path]:
    """The benchmarks to evaluate on: FaceWorld's fw_* .bin files (when enabled) plus `extra`.

    Raises:
        ValueError: FaceWorld benchmarks asked for but FaceWorld is disabled, or no benchmarks.
        FileNotFoundError: an extra .bin path does not exist (named by its parameter key).
    """
    benches: dict[str, Path] = {}
    if faceworld_benchmarks:
        if not (faceworld_info or {}).get("enabled"):
            raise ValueError("evaluate.faceworld_benchmarks is true but faceworld.enabled is false")
        root = Path(faceworld_info["root"])
        benches.update({k: root / v["bin"] for k, v in faceworld_info["eval"].items()})
    for name, path in extra.items():
        benches[name] = require_path(
            path, f"evaluate.benchmarks.{name}", "an insightface .bin file"
        )
    if not benches:
        raise ValueError("no benchmarks: set evaluate.faceworld_benchmarks or evaluate.benchmarks")
    return benches


def verification_table(
    recognizers: Mapping[str, str | Path],
    benchmarks: Mapping[str, str | Path],
    device: torch.device,
    batch_size: int = 256,
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
    roc: bool = False,
) -> dict:
    """Evaluate every recognizer on every benchmark.

    Returns {"results": {recognizer: {benchmark: {...}, "mean_accuracy": x}}, and, when both a
    "synthetic" and a "real" recognizer are present, "synthetic_to_real_ratio" (mean accuracy ratio).
    With `roc`, also {"roc": {recognizer: {benchmark: {"far", "tar", "threshold"}}}} (thousands of
    points: kept out of "results", which is written as a metrics file).
    """
    results: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    jobs = [(r, b) for r in recognizers for b in benchmarks]
    bar = tqdm(jobs, desc="evaluate", unit="bench", disable=not progress)
    models: dict[str, tuple[torch.nn.Module, int]] = {}
    for rec_name, bench_name in bar:
        if rec_name not in models:
            models[rec_name] = load_recognizer(recognizers[rec_name], device)
        model, size = models[rec_name]
        with torch.no_grad():
            res = evaluate_on_benchmark(model, benchmarks[bench_name], size, device, batch_size)
        curves.setdefault(rec_name, {})[bench_name] = res.pop("roc")
        results.setdefault(rec_name, {})[bench_name] = res
        if log is not None:
            log({f"{rec_name}.{bench_name}.accuracy": res["accuracy"]}, 0)
    for per_bench in results.values():
        per_bench["mean_accuracy"] = float(np.mean([v["accuracy"] for v in per_bench.values()]))
    table: dict = {"benchmarks": {k: str(v) for k, v in benchmarks.items()}, "results": results}
    if "synthetic" in results and "real" in results:
        table["synthetic_to_real_ratio"] = (
            results["synthetic"]["mean_accuracy"] / results["real"]["mean_accuracy"]
        )
    if roc:
        table["roc"] = curves
    return table


def table_metrics(table: dict) -> dict[str, float]:
    """Flat metrics of a verification table: `<recognizer>.<benchmark>` accuracies,
    `<recognizer>.mean`, every top-level `*_ratio`, and `tar_at_far_<far>.<recognizer>.<benchmark>`
    where the benchmark has enough impostor pairs for that FAR (named FAR first so that readers
    of `<recognizer>.<benchmark>` columns, e.g. `face-pipelines compare`, see accuracies only)."""
    out = {
        f"{rec}.{b}": r["accuracy"]
        for rec, res in table["results"].items()
        for b, r in res.items()
        if isinstance(r, dict)
    }
    out |= {
        f"tar_at_far_{far}.{rec}.{b}": level["tar"]
        for rec, res in table["results"].items()
        for b, r in res.items()
        if isinstance(r, dict)
        for far, level in r.get("tar_at_far", {}).items()
        if level["reliable"]
    }
    out |= {f"{rec}.mean": res["mean_accuracy"] for rec, res in table["results"].items()}
    out |= {k: float(v) for k, v in table.items() if k.endswith("_ratio")}
    return out


def verification_markdown(table: dict) -> str:
    """The table as markdown: one row per recognizer, accuracy (%) +- std per benchmark."""
    benches = list(table["benchmarks"])
    lines = [
        "| recognizer | " + " | ".join(benches) + " | mean |",
        "|---|" + "---|" * (len(benches) + 1),
    ]
    for rec, res in table["results"].items():
        cells = [
            f"{100 * res[b]['accuracy']:.2f} +- {100 * res[b]['accuracy_std']:.2f}" for b in benches
        ]
        lines.append(f"| {rec} | " + " | ".join(cells) + f" | {100 * res['mean_accuracy']:.2f} |")
    ratios = [k for k in table if k.endswith("_ratio")]
    if ratios:
        lines.append("")
        lines += [f"{k}: {table[k]:.3f}" for k in ratios]
    return "\n".join(lines + tar_at_far_markdown(table)) + "\n"


def tar_at_far_markdown(table: dict) -> list[str]:
    """Lines of a TAR (%) at FAR table, one row per recognizer and benchmark; a FAR that allows
    fewer than one false accept on the benchmark reads "n/a" (no lines for tables without TARs)."""
    rows = [
        (rec, b, r)
        for rec, res in table["results"].items()
        for b, r in res.items()
        if isinstance(r, dict) and "tar_at_far" in r
    ]
    if not rows:
        return []
    fars = list(rows[0][2]["tar_at_far"])
    lines = [
        "",
        "TAR (%) at FAR, over all pairs (n/a: the benchmark has fewer than 1/FAR impostor pairs)",
        "",
        "| recognizer | benchmark | " + " | ".join(fars) + " | impostor pairs |",
        "|---|---|" + "---|" * (len(fars) + 1),
    ]
    for rec, b, r in rows:
        cells = [
            f"{100 * v['tar']:.2f}" if v["reliable"] else "n/a" for v in r["tar_at_far"].values()
        ]
        lines.append(f"| {rec} | {b} | " + " | ".join(cells) + f" | {r['impostor_pairs']} |")
    return lines

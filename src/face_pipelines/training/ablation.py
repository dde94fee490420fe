"""Recognizer ablations: recipe variants x training sets, same seed and budget, one table.

A variant is a partial recipe (keys of `RecognizerConfig`) deep-merged onto the base recipe, e.g.
`{"method": "topofr", "topofr": {"sde": False}}`. Every variant is trained on every named training
set (packed folders) and evaluated on every benchmark with the insightface protocol.

Runs are resumable and cached: each lands in `<out_root>/<variant>/<dataset>-<hash>/`, where the hash
covers the merged recipe and the training set's identity; a finished run (its `run.json` written last)
is reused, an interrupted one resumes from its epoch checkpoint, and changing a variant's recipe
starts a new folder instead of overwriting the old result.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

from face_pipelines.device import resolve_device
from face_pipelines.errors import ParameterError
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.encoded import open_image_set
from face_pipelines.metrics.benchmarks import verification_table
from face_pipelines.training.code_version import source_digest
from face_pipelines.training.history import MetricHistory
from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

DIAGNOSTICS = ("l_sa", "sde_mean_weight", "sde_hard_fraction", "topology_discrepancy")


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """`base` with `override` merged in (nested mappings merged key by key; inputs untouched)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_configs(
    base: Mapping, variants: Mapping[str, Mapping], where: str = "ablation.variants"
) -> dict[str, RecognizerConfig]:
    """Merge each variant onto the base recipe and validate it.

    Raises:
        ParameterError: naming `<where>.<variant>.<key>` and what is wrong.
    """
    if not variants:
        raise ParameterError(f"{where}: at least one variant is needed")
    out = {}
    for name, override in variants.items():
        if not isinstance(override, Mapping):
            raise ParameterError(
                f"{where}.{name}: expected a mapping of recipe keys, got {type(override).__name__}"
            )
        try:
            out[name] = RecognizerConfig.model_validate(deep_merge(base, override))
        except ValidationError as err:
            lines = [f"Invalid recipe variant {where}.{name}:"]
            for e in err.errors():
                key = ".".join([where, name, *[str(p) for p in e["loc"]]])
                msg = (
                    "unknown recipe key (keys of RecognizerConfig)"
                    if e["type"] == "extra_forbidden"
                    else e["msg"]
                )
                lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
            raise ParameterError("\n".join(lines)) from None
    return out


def _run_key(config: RecognizerConfig, packed_dir: Path) -> str:
    # The trainer's source is part of the key: a finished variant trained by other code is not
    # reused (the engine applies the same rule to train_state/last.pt).
    code = source_digest(["face_pipelines.training.recognizer"]).digest
    blob = json.dumps(
        {
            "config": config.model_dump(),
            "data": open_image_set(packed_dir).fingerprint(),
            "code": code,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _final_diagnostics(history: Mapping[str, list[dict]]) -> dict:
    """Last per-epoch value of each TopoFR diagnostic that was logged."""
    out = {}
    for name in DIAGNOSTICS:
        series = history.get(f"epoch/{name}")
        if series:
            out[name] = float(series[-1]["value"])
    return out


def _recorder(
    prefix: str, forward: Callable[[dict, int], None] | None
) -> tuple[MetricHistory, Callable[[dict, int], None]]:
    """A `log(metrics, step)` that keeps the run's history and forwards it with a prefix."""
    history = MetricHistory()

    def log(metrics: Mapping, step: int) -> None:
        history(metrics, step)
        if forward is not None:
            forward({f"{prefix}{k}": v for k, v in metrics.items()}, step)

    return history, log


def run_ablation(
    datasets: Mapping[str, str | Path],
    variants: Mapping[str, RecognizerConfig],
    benchmarks: Mapping[str, str | Path],
    out_root: str | Path,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
    batch_size: int = 256,
) -> dict:
    """Train every variant on every dataset, evaluate all, return the ablation table.

    Args:
        datasets: {name: packed training-set folder}.
        variants: {name: validated recipe} (see `variant_configs`).
        benchmarks: {name: insightface .bin}.
        out_root: where runs live (see the module docstring for caching and resume).
        device: 'auto' | 'cpu' | 'cuda[:N]'.
        log: optional `log(metrics, step)`; per-epoch training metrics are forwarded as
            `<variant>.<dataset>.<metric>`.

    Returns:
        {"benchmarks", "variants" (recipes), "rows": [{variant, dataset, accuracy{bench: (mean, std)},
        mean_accuracy, train_s, images, identities, diagnostics, checkpoint, reused}]}.
    """
    if not datasets:
        raise ParameterError("ablation.datasets: at least one training set is needed")
    if not benchmarks:
        raise ParameterError("ablation: no benchmarks to evaluate on")
    out_root = Path(out_root)
    rows = []
    for vname, cfg in variants.items():
        for dname, packed in datasets.items():
            packed = Path(packed)
            if not (packed / "index.json").exists():
                raise FileNotFoundError(
                    f"training set '{dname}' at {packed}: no packed dataset (index.json) there; "
                    "run the recognizer pipeline first"
                )
            run_dir = out_root / vname / f"{dname}-{_run_key(cfg, packed)}"
            done = run_dir / "run.json"
            if done.exists():
                record = json.loads(done.read_text())
                record["reused"] = True
            else:
                history, run_log = _recorder(f"{vname}.{dname}.", log)
                t0 = time.perf_counter()
                summary = train_recognizer(packed, run_dir, cfg, device, progress, run_log)
                record = {
                    "variant": vname,
                    "dataset": dname,
                    "checkpoint": summary["checkpoint"],
                    "images": summary["images"],
                    "identities": summary["identities"],
                    "epochs": cfg.epochs,
                    "train_s": round(time.perf_counter() - t0, 1),
                    "diagnostics": _final_diagnostics(history.as_mlflow()),
                    "final": summary.get("final", {}),
                    "config": cfg.model_dump(),
                }
                write_text_atomic(done, json.dumps(record, indent=2, default=str))
                record["reused"] = False
            rows.append(record)
    table = verification_table(
        {f"{r['variant']}/{r['dataset']}": r["checkpoint"] for r in rows},
        benchmarks,
        resolve_device(device),
        batch_size,
        progress=progress,
    )
    for r in rows:
        res = table["results"][f"{r['variant']}/{r['dataset']}"]
        r["accuracy"] = {
            b: {"mean": v["accuracy"], "std": v["accuracy_std"]}
            for b, v in res.items()
            if isinstance(v, dict)
        }
        r["mean_accuracy"] = res["mean_accuracy"]
        r.pop("config", None)
    return {
        "benchmarks": {k: str(v) for k, v in benchmarks.items()},
        "variants": {k: v.model_dump() for k, v in variants.items()},
        "datasets": {k: str(v) for k, v in datasets.items()},
        "rows": rows,
    }


def ablation_markdown(table: Mapping) -> str:
    """One row per (variant, training set): accuracy (%) +- std per benchmark, mean, diagnostics."""
    benches = list(table["benchmarks"])
    head = ["variant", "trained on", *benches, "mean", "L_sa", "SDE weight", "hard %", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(diag: Mapping, key: str, scale: float = 1.0, digits: int = 3) -> str:
        return f"{diag[key] * scale:.{digits}f}" if key in diag else "-"

    for r in table["rows"]:
        d = r.get("diagnostics", {})
        cells = [
            r["variant"],
            f"{r['dataset']} ({r['images']} img)",
            *[
                f"{r['accuracy'][b]['mean'] * 100:.2f} +- {r['accuracy'][b]['std'] * 100:.2f}"
                for b in benches
            ],
            f"**{r['mean_accuracy'] * 100:.2f}**",
            fmt(d, "l_sa"),
            fmt(d, "sde_mean_weight"),
            fmt(d, "sde_hard_fraction", 100, 1),
            f"{r['train_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_metrics(table: Mapping) -> dict[str, float]:
    """Flat `<variant>.<dataset>.<benchmark>` accuracies and means for experiment tracking."""
    out: dict[str, float] = {}
    for r in table["rows"]:
        key = f"{r['variant']}.{r['dataset']}"
        for b, v in r["accuracy"].items():
            out[f"{key}.{b}"] = v["mean"]
        out[f"{key}.mean"] = r["mean_accuracy"]
        for name, v in r.get("diagnostics", {}).items():
            out[f"{key}.{name}"] = v
    return out

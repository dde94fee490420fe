"""Metric histories: what library code reports through its `log(metrics, step)` callback.

Library code never imports MLflow. It calls `log(metrics: dict, step: int)`; a `MetricHistory` records
those calls and converts them to the `{name: [{"step": s, "value": v}, ...]}` form that the catalog's
MLflow metrics datasets log, so per-epoch curves land in MLflow without the library knowing about it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from numbers import Number


class MetricHistory:
    """Callable `log(metrics, step)` that keeps every finite numeric value by name."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.history: dict[str, list[dict]] = defaultdict(list)

    def __call__(self, metrics: Mapping[str, object], step: int) -> None:
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, Number):
                continue
            value = float(value)
            if math.isfinite(value):
                key = f"{self.prefix}{name}" if self.prefix else name
                self.history[key].append({"step": int(step), "value": value})

    def as_mlflow(self) -> dict[str, list[dict]]:
        return {k: list(v) for k, v in self.history.items()}


def flat_metrics(values: Mapping[str, object], prefix: str = "", step: int = 0) -> dict:
    """Numeric leaves of a (nested) report as an MLflow metrics dict: `prefix.key.sub` -> value."""
    out: dict[str, list[dict]] = {}

    def walk(obj, key):
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(obj, Number) and not isinstance(obj, bool):
            v = float(obj)
            if math.isfinite(v):
                out[key] = [{"step": step, "value": v}]

    walk(values, prefix)
    return out

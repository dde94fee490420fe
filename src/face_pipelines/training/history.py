"""What library code reports through its `log(metrics, step)` callback, kept in memory.

Library code never imports MLflow. It calls `log(metrics: dict, step: int)`; a `MetricHistory` records
those calls and converts them to the `{name: [{"step": s, "value": v}, ...]}` form that the catalog's
MLflow metrics datasets log (face_pipelines.reporting.metrics), so per-epoch curves land in MLflow
without the library knowing about it. It lives below reporting because trainers and the ablation
runner keep histories too.
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

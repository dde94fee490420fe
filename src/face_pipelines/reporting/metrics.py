"""Metric histories for MLflow: what library code reports through its `log(metrics, step)` callback.

Library code never imports MLflow. It calls `log(metrics: dict, step: int)`; a `MetricHistory`
(defined in face_pipelines.training.history, re-exported here for the nodes) records those calls and
converts them to the `{name: [{"step": s, "value": v}, ...]}` form that the catalog's MLflow metrics
datasets log; `flat_metrics` turns a nested report into the same form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Number

from face_pipelines.training.history import MetricHistory

__all__ = ["MetricHistory", "flat_metrics"]


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

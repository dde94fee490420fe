"""Nodes of the sample pipeline: synthetic identity centres and the per-image vector plan."""

from __future__ import annotations

import numpy as np
import pandas as pd

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError
from face_pipelines.io.subset import require_path
from face_pipelines.params import validate_section
from face_pipelines.reporting.metrics import flat_metrics
from face_pipelines.synthesis.plan import make_identity_plan


def sample_identities(
    teacher_features: np.ndarray, subset_packed_manifest: pd.DataFrame, sample: dict, common: dict
):
    """Centres from a Gaussian fitted to the real identity centres (or to another set's, by path),
    kept only if well separated (and not too close to any real identity), plus intra-class vectors
    and AttrOP targets."""
    p = validate_section("sample", sample)
    com = validate_section("common", common)
    device = str(resolve_device(com.device))
    labels = subset_packed_manifest["identity"].to_numpy()
    fit_centres = None
    if p.distribution_centres is not None:
        path = require_path(
            p.distribution_centres,
            "sample.distribution_centres",
            "a .npy of another set's identity centres [C, D] in the teacher's feature space",
        )
        try:
            fit_centres = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"sample.distribution_centres {path} is not a .npy array: {exc}"
            ) from exc
    plan, vectors, centres, report = make_identity_plan(
        np.asarray(teacher_features),
        labels,
        com.seeded(p.config),
        device=device,
        progress=com.progress,
        fit_centres=fit_centres,
    )
    if fit_centres is not None:
        report["distribution_centres"] = str(path)
    metrics = flat_metrics(
        {k: v for k, v in report.items() if k != "sampling"}
        | {"sampling": {k: v for k, v in report["sampling"].items() if isinstance(v, int | float)}}
    )
    return plan, vectors, centres, report, metrics

"""Nodes of the subset pipeline: thin wrappers that validate parameters and call the library."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from face_pipelines.io.folders import scan_identity_folders
from face_pipelines.io.subset import (
    manifest_from_recordio,
    pack_subset,
    require_path,
    select_identities,
)
from face_pipelines.params import validate_section
from face_pipelines.reporting.figures import images_per_identity_figure
from face_pipelines.reporting.metrics import flat_metrics


def materialise_faceworld_pools(faceworld_dir: Path, faceworld: dict, common: dict) -> dict:
    """Generate (or reuse the cached) FaceWorld pools and benchmarks; return where they are."""
    from face_pipelines.faceworld import materialise_faceworld

    cfg = validate_section("faceworld", faceworld)
    com = validate_section("common", common)
    if not cfg.enabled:
        return {"enabled": False, "root": str(faceworld_dir)}
    info = materialise_faceworld(
        cfg.world(), faceworld_dir, num_workers=com.num_workers, progress=com.progress
    )
    return {"enabled": True, "root": str(faceworld_dir), **info}


def _source(subset, faceworld_info: dict) -> tuple[str, Path | None, Path | None]:
    if subset.source == "faceworld":
        if not faceworld_info.get("enabled", False):
            raise ValueError("subset.source is 'faceworld' but faceworld.enabled is false")
        return "folder", Path(faceworld_info["root"]) / "train", None
    if subset.source == "folder":
        return (
            "folder",
            require_path(subset.path, "subset.path", "a WebFace-style identity-folder root"),
            None,
        )
    rec = require_path(subset.path, "subset.path", "an insightface .rec file")
    idx = (
        require_path(subset.idx_path, "subset.idx_path", "the .idx next to the .rec")
        if subset.idx_path
        else None
    )
    return "recordio", rec, idx


def select_subset(faceworld_info: dict, subset: dict, common: dict) -> tuple[pd.DataFrame, dict]:
    """Manifest of the chosen identities (+ a scan report of what was skipped and why)."""
    p = validate_section("subset", subset)
    com = validate_section("common", common)
    kind, root, idx = _source(p, faceworld_info)
    if p.source == "faceworld":
        raw = pd.read_parquet(root / "labels.parquet")
        report = {
            "source": "faceworld",
            "root": str(root),
            "scanned": len(raw),
            "kept": len(raw),
            "skipped": {},
        }
    elif kind == "folder":
        raw, report = scan_identity_folders(
            root, num_workers=com.num_workers, verify=True, progress=com.progress
        )
        report = {"source": "folder", **report}
    else:
        raw = manifest_from_recordio(root, idx)
        report = {
            "source": "recordio",
            "root": str(root),
            "scanned": len(raw),
            "kept": len(raw),
            "skipped": {},
        }
    manifest = select_identities(raw, p.n_ids, p.min_images, p.max_images, com.stage_seed(p.seed))
    report["source_identities"] = int(raw["identity"].nunique())
    report["selected_identities"] = int(manifest["identity"].nunique())
    report["selected_images"] = int(len(manifest))
    return manifest, report


def pack_selected(
    manifest: pd.DataFrame, faceworld_info: dict, packed_dir: Path, subset: dict, common: dict
) -> tuple[pd.DataFrame, dict]:
    """Decode and pack the selected images for the trainers."""
    p = validate_section("subset", subset)
    com = validate_section("common", common)
    kind, root, idx = _source(p, faceworld_info)
    packed, report = pack_subset(
        manifest,
        packed_dir,
        image_size=p.image_size,
        shard_size=p.shard_size,
        folder_root=root if kind == "folder" else None,
        rec_path=root if kind == "recordio" else None,
        idx_path=idx,
        num_workers=com.num_workers,
        progress=com.progress,
    )
    report["packed_dir"] = str(packed_dir)
    return packed, report


def summarise_subset(packed_manifest: pd.DataFrame, pack_report: dict):
    """Counts json, images-per-identity histogram and MLflow metrics."""
    counts = packed_manifest.groupby("identity").size()
    stats = {
        "identities": int(counts.size),
        "images": int(len(packed_manifest)),
        "images_per_identity": {
            "min": int(counts.min()),
            "median": float(counts.median()),
            "mean": float(counts.mean()),
            "max": int(counts.max()),
        },
        "skipped_images": int(pack_report["skipped"]),
    }
    fig = images_per_identity_figure(packed_manifest, title="subset")
    return stats, fig, flat_metrics(stats)

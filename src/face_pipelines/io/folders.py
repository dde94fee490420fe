"""Identity-folder datasets (WebFace4M / WebFace260M layout): <root>/<identity>/<n>.jpg.

A scan lists every image, optionally decodes each one to prove it is readable, and returns a manifest
plus a report. Bad items never vanish silently and never abort the scan: corrupt images, non-image
files and empty identity folders are skipped, counted and listed in the report.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.atomic import write_text_atomic
from face_pipelines.io.images import check_image_file, check_image_files

__all__ = ["scan_identity_folders", "write_scan_report", "check_image_file", "SKIP_REASONS"]

SKIP_REASONS = (
    "corrupt_image",  # has an image extension and an image header, but does not decode
    "not_an_image",  # wrong extension, or the content is not in any image format
    "empty_identity_folder",  # identity folder without any image file
    "identity_without_valid_images",  # identity folder whose image files all failed to decode
    "unexpected_entry",  # a file directly under root, or a sub-folder inside an identity folder
)


def _list_identity_folders(root: Path) -> tuple[list[Path], list[str]]:
    if not root.exists():
        raise MissingInputError(f"identity-folder dataset root does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"identity-folder dataset root is not a folder: {root}")
    folders: list[Path] = []
    stray: list[str] = []
    with os.scandir(root) as it:
        for entry in it:
            # Hidden folders (.ipynb_checkpoints, .git) are not identities; they are reported.
            if entry.is_dir() and not entry.name.startswith("."):
                folders.append(Path(entry.path))
            else:
                stray.append(entry.name)
    if not folders:
        raise DataError(
            f"{root}: no identity folders found; expected the layout <root>/<identity>/<image>.jpg"
        )
    folders.sort(key=lambda p: p.name)
    return folders, sorted(stray)


def _candidate_images(
    folders: list[Path], exts: tuple[str, ...], skipped: dict[str, list[str]]
) -> list[tuple[str, str]]:
    """(relative posix path, identity folder name) of every file with an image extension, sorted
    per folder; sub-folders, other files and empty folders go into `skipped` by reason."""
    candidates: list[tuple[str, str]] = []
    for folder in folders:
        names = []
        with os.scandir(folder) as it:
            for entry in it:
                rel = f"{folder.name}/{entry.name}"
                if entry.is_dir():
                    skipped["unexpected_entry"].append(rel)
                elif os.path.splitext(entry.name)[1].lower() in exts:
                    names.append(entry.name)
                else:
                    skipped["not_an_image"].append(rel)
        if not names:
            skipped["empty_identity_folder"].append(folder.name)
            continue
        candidates.extend((f"{folder.name}/{n}", folder.name) for n in sorted(names))
    return candidates


def scan_identity_folders(
    root: str | os.PathLike,
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png"),
    num_workers: int = 0,
    verify: bool = True,
    progress: bool = True,
    start_method: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Scan <root>/<identity>/<image> into a manifest and a report of what was skipped.

    Args:
        root: dataset root; every sub-folder is one identity.
        extensions: image file extensions (case-insensitive).
        num_workers: processes used to decode images when verifying (0 = in this process).
        verify: decode every image and skip the unreadable ones.
        progress: show a tqdm progress bar while verifying.
        start_method: multiprocessing start method for the workers; None = "fork" on Linux (pool
            start-up in milliseconds; workers only decode with PIL, so threads the parent may hold
            are not touched), "spawn" elsewhere. "spawn"/"forkserver" re-import the parent's
            main module in every worker, which costs seconds per scan.

    Returns:
        manifest: columns `path` (posix, relative to root), `identity` (int64, contiguous from 0
            in sorted folder-name order over folders that kept at least one image) and
            `identity_name` (the folder name); sorted by identity then path.
        report: {"root", "scanned", "kept", "identities", "skipped": {reason: [paths]},
            "skipped_counts": {reason: n}, "errors": {path: message}}.
    """
    root = Path(root)
    if num_workers < 0:
        raise ParameterError(f"num_workers must be >= 0, got {num_workers}")
    if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
        raise ParameterError(
            f"start_method must be one of {multiprocessing.get_all_start_methods()} or None, "
            f"got {start_method!r}"
        )
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    folders, stray = _list_identity_folders(root)
    skipped: dict[str, list[str]] = {reason: [] for reason in SKIP_REASONS}
    skipped["unexpected_entry"].extend(stray)
    errors: dict[str, str] = {}

    candidates = _candidate_images(folders, exts, skipped)
    scanned = len(candidates) + len(skipped["not_an_image"])

    if verify and candidates:
        abs_paths = [str(root / rel) for rel, _ in candidates]
        results = _verify_paths(abs_paths, num_workers, progress, str(root), start_method)
        kept = []
        for (rel, name), (reason, message) in zip(candidates, results, strict=True):
            if reason is None:
                kept.append((rel, name))
            else:
                skipped[reason].append(rel)
                errors[rel] = message
    else:
        kept = candidates

    kept_names = sorted({name for _, name in kept})
    with_files = {name for _, name in candidates}
    skipped["identity_without_valid_images"].extend(sorted(with_files - set(kept_names)))
    for key in ("not_an_image", "unexpected_entry"):
        skipped[key].sort()

    identity_of = {name: i for i, name in enumerate(kept_names)}
    manifest = pd.DataFrame(
        {
            "path": pd.Series([rel for rel, _ in kept], dtype=object),
            "identity": pd.Series([identity_of[n] for _, n in kept], dtype="int64"),
            "identity_name": pd.Series([n for _, n in kept], dtype=object),
        }
    )
    report = {
        "root": str(root),
        "scanned": scanned,
        "kept": len(manifest),
        "identities": len(kept_names),
        "verified": bool(verify),
        "skipped": skipped,
        "skipped_counts": {k: len(v) for k, v in skipped.items()},
        "errors": errors,
    }
    if manifest.empty:
        raise DataError(
            f"{root}: no readable images in {len(folders)} identity folders "
            f"(skipped: {report['skipped_counts']})"
        )
    return manifest, report


def _verify_paths(
    paths: list[str], num_workers: int, progress: bool, root: str, start_method: str | None
) -> list[tuple[str | None, str]]:
    bar = tqdm(total=len(paths), desc=f"verify {root}", unit="img", disable=not progress)
    results: list[tuple[str | None, str]] = []
    try:
        if num_workers == 0:
            for p in paths:
                results.append(check_image_file(p))
                bar.update(1)
            return results
        # Chunks amortise inter-process overhead (a 112 px JPEG decodes in well under 1 ms).
        chunk = max(1, min(256, len(paths) // (num_workers * 4) or 1))
        chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        if start_method is None:
            start_method = "fork" if sys.platform.startswith("linux") else "spawn"
        ctx = multiprocessing.get_context(start_method)
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
            for part in pool.map(check_image_files, chunks):
                results.extend(part)
                bar.update(len(part))
        return results
    finally:
        bar.close()


def write_scan_report(report: dict, path: str | os.PathLike) -> None:
    """Write a scan report as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")

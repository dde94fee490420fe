"""Editing a synthetic dataset with ELEGANT into a new dataset: which images, which exemplars, and
the report of what the edits met."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.atomic import atomic_path
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.elegant import (
    ELEGANTGenerator,
)
from face_pipelines.models.inference import embed_images
from face_pipelines.training.elegant.inference import _cos, classify_attributes, transfer_attribute

EDIT_COLUMNS = (
    "edited",
    "edit_attribute",
    "edit_exemplar",
    "edit_exemplar_identity",
    "edit_target_prob_before",
    "edit_target_prob_after",
    "edit_success",
    "edit_judge_cos",
)


def _read_images(root: Path, paths: Sequence[str]) -> np.ndarray:
    out = []
    for rel in paths:
        path = root / rel
        try:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"synthetic image {path} (manifest path {rel!r}) is unreadable: {exc}"
            ) from exc
    return np.stack(out)


def choose_edits(
    probs_before: np.ndarray,
    edit_attributes: Sequence[int],
    fraction: float,
    seed: int,
) -> list[tuple[int, int]]:
    """(image row, attribute) pairs to edit: round(fraction * N) edits spread evenly over
    `edit_attributes`; each edit goes to a distinct image that the classifier says lacks that
    attribute (probability < 0.5), chosen at random. Fewer when there are too few such images."""
    n_images = len(probs_before)
    total = int(round(fraction * n_images))
    rng = np.random.default_rng([seed, 21])
    taken = np.zeros(n_images, bool)
    chosen = []
    for k, attr in enumerate(edit_attributes):
        want = total // len(edit_attributes) + (k < total % len(edit_attributes))
        candidates = np.flatnonzero((probs_before[:, attr] < 0.5) & ~taken)
        rows = rng.choice(candidates, min(want, len(candidates)), replace=False)
        taken[rows] = True
        chosen += [(int(r), int(attr)) for r in np.sort(rows)]
    return chosen


def _check_edit_request(
    src_root: Path, out_root: Path, manifest: pd.DataFrame, attributes, edit_attributes
) -> bool:
    """Refuse unknown attributes, a manifest without paths, or a set already edited in place;
    returns whether the edit replaces the source images."""
    unknown = [a for a in edit_attributes if a not in attributes]
    if unknown:
        raise ParameterError(
            f"elegant.edit.attributes names {unknown}, which the ELEGANT model was not trained "
            f"on (its attributes: {list(attributes)}; see elegant.train.attributes)"
        )
    if "path" not in manifest.columns:
        raise DataError(f"{src_root}/manifest.parquet has no 'path' column")
    in_place = out_root.resolve() == src_root.resolve()
    if in_place and "edited" in manifest.columns and manifest["edited"].fillna(False).any():
        raise DataError(
            f"{src_root} was edited in place before (its manifest has edited rows); re-render it "
            "before editing it again"
        )
    return in_place


def _transfer_chosen(
    gen: ELEGANTGenerator,
    images: np.ndarray,
    chosen,
    attributes: Sequence[str],
    exemplars: PackedImages,
    exemplar_labels: np.ndarray,
    probs_before: np.ndarray,
    rng: np.random.Generator,
    device,
    batch_size: int,
    strength: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Edit every chosen (row, attribute) with a random real exemplar that has the attribute;
    returns the EDIT_COLUMNS filled so far and the edited images (the others unchanged)."""
    n = len(images)
    cols = {
        "edited": np.zeros(n, bool),
        "edit_attribute": np.full(n, None, object),
        "edit_exemplar": np.full(n, -1, np.int64),
        "edit_exemplar_identity": np.full(n, -1, np.int64),
        "edit_target_prob_before": np.full(n, np.nan),
        "edit_target_prob_after": np.full(n, np.nan),
        "edit_success": np.zeros(n, bool),
        "edit_judge_cos": np.full(n, np.nan),
    }
    edited_images = images.copy()
    for attr in sorted({a for _, a in chosen}):
        rows = np.array([r for r, a in chosen if a == attr], np.int64)
        pool = np.flatnonzero(exemplar_labels[:, attr] == 1)
        if not len(pool):
            raise DataError(f"no real exemplar has attribute {attributes[attr]!r}")
        ex_rows = rng.choice(pool, len(rows))
        for s in range(0, len(rows), batch_size):
            r, e = rows[s : s + batch_size], ex_rows[s : s + batch_size]
            ex_images, ex_ids = exemplars.get_batch(e)
            edited_images[r] = transfer_attribute(
                gen, images[r], ex_images, attr, device, strength=strength
            )
            cols["edit_exemplar_identity"][r] = ex_ids
        cols["edited"][rows] = True
        cols["edit_attribute"][rows] = attributes[attr]
        cols["edit_exemplar"][rows] = ex_rows
        cols["edit_target_prob_before"][rows] = probs_before[rows, attr]
    return cols, edited_images


def edit_dataset(
    src_root: str | Path,
    manifest: pd.DataFrame,
    out_root: str | Path,
    gen: ELEGANTGenerator,
    attributes: Sequence[str],
    edit_attributes: Sequence[str],
    exemplars: PackedImages,
    exemplar_labels: np.ndarray,
    classifier: nn.Module,
    judge: nn.Module | None,
    fraction: float,
    seed: int = 0,
    device: str | torch.device = "cpu",
    jpeg_quality: int = 95,
    batch_size: int = 128,
    strength: float = 1.0,
) -> tuple[pd.DataFrame, dict]:
    """Transfer attributes from random real exemplars into a fraction of a synthetic dataset.

    Each chosen image (see `choose_edits`) gets attribute a from a random real exemplar that has it
    (`exemplar_labels[:, a] == 1`). The result is a complete dataset at `out_root` (same layout and
    paths; unedited images copied) whose manifest adds the EDIT_COLUMNS: the attribute, the
    exemplar's row in the real subset and its identity, the classifier's probability of the
    attribute before and after, success (after >= 0.5) and the judge's cos between the image before
    and after. With out_root == src_root the originals are replaced (only when asked for).

    `strength` scales the slot's move towards the exemplar's (1 = swap; see transfer_attribute).

    Returns (the new manifest, a report: success, judge cos and attribute frequencies).

    Raises:
        ParameterError: an edit attribute is not one the model was trained on.
        DataError: the manifest lacks 'path', was edited already (in place), or images are
            unreadable / of another size than the model's.
    """
    src_root, out_root = Path(src_root), Path(out_root)
    in_place = _check_edit_request(src_root, out_root, manifest, attributes, edit_attributes)
    device = resolve_device(device)
    images = _read_images(src_root, manifest["path"].tolist())
    side = gen.config.image_size
    if images.shape[1:3] != (side, side):
        raise DataError(
            f"synthetic images in {src_root} are {images.shape[2]}x{images.shape[1]} px but the "
            f"ELEGANT model edits {side} px images"
        )
    probs_before = classify_attributes(classifier, images, device)
    attr_index = {name: j for j, name in enumerate(attributes)}
    chosen = choose_edits(probs_before, [attr_index[a] for a in edit_attributes], fraction, seed)
    rng = np.random.default_rng([seed, 22])
    out = manifest.drop(columns=[c for c in EDIT_COLUMNS if c in manifest.columns]).copy()
    cols, edited_images = _transfer_chosen(
        gen, images, chosen, attributes, exemplars, exemplar_labels, probs_before, rng,
        device, batch_size, strength,
    )  # fmt: skip
    probs_after = classify_attributes(classifier, edited_images, device)
    rows = np.array([r for r, _ in chosen], np.int64)
    attrs = np.array([a for _, a in chosen], np.int64)
    if len(rows):
        cols["edit_target_prob_after"][rows] = probs_after[rows, attrs]
        cols["edit_success"][rows] = probs_after[rows, attrs] >= 0.5
        if judge is not None:
            before = embed_images(judge, images[rows], device)
            after = embed_images(judge, edited_images[rows], device)
            cols["edit_judge_cos"][rows] = _cos(before, after)
    for k, v in cols.items():
        out[k] = v
    out["edit_attribute"] = out["edit_attribute"].astype("string")
    _write_dataset(src_root, out_root, out, edited_images, rows, in_place, jpeg_quality)
    report = _edit_report(
        out, attributes, edit_attributes, exemplar_labels, probs_before, probs_after
    )
    report.update(
        {
            "source": str(src_root),
            "output": str(out_root),
            "in_place": in_place,
            "strength": strength,
        }
    )
    return out, report


def _write_dataset(
    src_root: Path,
    out_root: Path,
    manifest: pd.DataFrame,
    edited_images: np.ndarray,
    edited_rows: np.ndarray,
    in_place: bool,
    jpeg_quality: int,
) -> None:
    """Edited JPEGs + manifest; a separate output is built in `<out>.partial` and renamed when
    complete, so an interrupted edit never looks finished and never touches the originals."""
    paths = manifest["path"].tolist()
    if in_place:
        target = src_root
    else:
        target = out_root.with_name(out_root.name + ".partial")
        if target.exists():
            shutil.rmtree(target)
        for rel in paths:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_root / rel, target / rel)
    for r in edited_rows:
        with atomic_path(target / paths[int(r)]) as tmp:
            Image.fromarray(edited_images[int(r)]).save(tmp, format="JPEG", quality=jpeg_quality)
    with atomic_path(target / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    if not in_place:
        (target / "_COMPLETE").write_text("ok\n")
        if out_root.exists():
            shutil.rmtree(out_root)
        target.rename(out_root)


def _edit_report(
    manifest: pd.DataFrame,
    attributes: Sequence[str],
    edit_attributes: Sequence[str],
    exemplar_labels: np.ndarray,
    probs_before: np.ndarray,
    probs_after: np.ndarray,
) -> dict:
    edited = manifest[manifest["edited"]]
    per_attr = {}
    for name in edit_attributes:
        e = edited[edited["edit_attribute"] == name]
        cos = e["edit_judge_cos"].to_numpy(np.float64)
        per_attr[name] = {
            "edits": int(len(e)),
            "success": float(e["edit_success"].mean()) if len(e) else float("nan"),
            "judge_cos_mean": float(np.nanmean(cos)) if np.isfinite(cos).any() else float("nan"),
            "judge_cos_ge_0.7": float((cos >= 0.7).mean()) if len(e) else float("nan"),
        }
    cos = edited["edit_judge_cos"].to_numpy(np.float64)
    both = edited["edit_success"].to_numpy(bool) & (cos >= 0.7)
    return {
        "images": int(len(manifest)),
        "edits": int(len(edited)),
        "success": float(edited["edit_success"].mean()) if len(edited) else float("nan"),
        "judge_cos_mean": float(np.nanmean(cos)) if np.isfinite(cos).any() else float("nan"),
        "judge_cos_ge_0.7": float((cos >= 0.7).mean()) if len(edited) else float("nan"),
        "success_and_judge_cos_ge_0.7": float(both.mean()) if len(edited) else float("nan"),
        "per_attribute": per_attr,
        "frequency": {
            name: {
                "real_labels": float(exemplar_labels[:, j].mean()),
                "synthetic_before": float((probs_before[:, j] >= 0.5).mean()),
                "synthetic_after": float((probs_after[:, j] >= 0.5).mean()),
            }
            for j, name in enumerate(attributes)
        },
        "classifier_note": "synthetic frequencies are the attribute classifier's predictions "
        "(threshold 0.5); real ones are the subset's labels",
    }

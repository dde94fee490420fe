"""Render a synthetic dataset from a plan of vectors: sharded, resumable, parallel.

Layout under `out_root`:
    <identity:06d>/<index:03d>.jpg      the images
    .shards/shard_<k:05d>.json          completion marker of shard k: its manifest rows and a hash
                                        of everything its images depend on
    manifest.parquet                    one row per image (data contract), written last
    _COMPLETE                           json (counts, hash); present only when the dataset is whole

Shard k holds identities [k*S, (k+1)*S). A shard removes its marker and its identity folders, writes
its images (each atomically) and then its marker (atomically), so a crash loses at most the shards
in progress; a re-run skips every shard whose marker matches the current plan/vectors/settings hash
and re-renders the others from scratch. Every shard draws its randomness from its own generator,
seeded from (seed, shard index), and splits its rows into the same batches wherever it runs, so the
images do not depend on the number of worker processes or on which shards were rendered earlier.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.image_tensors import images_to_uint8
from face_pipelines.io.atomic import write_bytes_atomic, write_text_atomic
from face_pipelines.io.images import encode_jpeg
from face_pipelines.io.manifest import read_manifest, write_manifest
from face_pipelines.io.recordio import write_recordio
from face_pipelines.synthesis.attrop import generate_images

__all__ = [
    "COMPLETE_MARKER",
    "MANIFEST_NAME",
    "SHARDS_DIR",
    "BatchEditor",
    "export_recordio",
    "file_fingerprint",
    "image_relpath",
    "is_complete",
    "load_rendered_manifest",
    "render_dataset",
    "shard_seed",
]

FORMAT_VERSION = 1
SHARDS_DIR = ".shards"
COMPLETE_MARKER = "_COMPLETE"
MANIFEST_NAME = "manifest.parquet"
_PRODUCED = ("path", "attrop_steps", "attrop_met")


class BatchEditor(Protocol):
    """Turns one batch of plan rows into images (AttrOP, an exemplar attribute editor, ...)."""

    def __call__(
        self,
        generator: Any,
        vectors: torch.Tensor,
        rows: pd.DataFrame,
        torch_generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray | torch.Tensor, Mapping[str, Any]]:
        """Images ([B, H, W, 3] uint8 or [B, 3, H, W] float in [-1, 1]) and per-row columns."""
        ...


def image_relpath(identity: int, index: int) -> str:
    """Path of an image relative to the dataset root: '<identity:06d>/<index:03d>.jpg'."""
    return f"{int(identity):06d}/{int(index):03d}.jpg"


def shard_seed(seed: int, shard: int) -> int:
    """The 63-bit seed of shard `shard`'s torch.Generator, derived from the base seed."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), int(shard)]).generate_state(
        2, np.uint32
    )
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2**63 - 1)


def _marker_path(root: Path, shard: int) -> Path:
    return root / SHARDS_DIR / f"shard_{shard:05d}.json"


# --------------------------------------------------------------------------------------------------
# plan checks and hashing


def _validate_plan(plan: pd.DataFrame, vectors: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the plan sorted by (identity, index) with a fresh index, and the row order used."""
    if not isinstance(plan, pd.DataFrame):
        raise DataError(f"render plan must be a pandas DataFrame, got {type(plan).__name__}")
    for col in ("identity", "index"):
        if col not in plan.columns:
            raise DataError(f"render plan needs an '{col}' column; has {list(plan.columns)}")
        c = plan[col]
        if not pd.api.types.is_integer_dtype(c) or pd.api.types.is_bool_dtype(c):
            raise DataError(f"render plan column '{col}' must hold integers, got dtype {c.dtype}")
        if len(c) and int(c.min()) < 0:
            raise DataError(f"render plan column '{col}' must be >= 0, found {int(c.min())}")
    clash = [c for c in _PRODUCED if c in plan.columns]
    if clash:
        raise DataError(f"render plan must not contain the columns the renderer writes: {clash}")
    if len(plan) == 0:
        raise DataError("render plan is empty")
    if vectors.ndim != 2 or len(vectors) != len(plan):
        raise DataError(
            f"vectors must be [N, D] with one row per plan row; plan has {len(plan)} rows, "
            f"vectors have shape {vectors.shape}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise DataError(f"vectors must be floating point, got {vectors.dtype}")
    ids = plan["identity"].to_numpy(np.int64)
    uniq = np.unique(ids)
    if uniq[0] != 0 or len(uniq) != uniq[-1] + 1:
        missing = sorted(set(range(int(uniq[-1]) + 1)) - set(uniq.tolist()))[:5]
        raise DataError(f"render plan 'identity' must be contiguous from 0; missing e.g. {missing}")
    idx = plan["index"].to_numpy(np.int64)
    order = np.lexsort((idx, ids))
    s_ids, s_idx = ids[order], idx[order]
    dup = (s_ids[1:] == s_ids[:-1]) & (s_idx[1:] == s_idx[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"render plan has (identity, index) = ({s_ids[i]}, {s_idx[i]}) more than once"
        )
    return plan.iloc[order].reset_index(drop=True), order


def _hash_rows(h: Any, rows: pd.DataFrame) -> None:
    for col in sorted(rows.columns, key=str):
        series = rows[col]
        h.update(f"|{col}:{series.dtype}|".encode())
        if pd.api.types.is_numeric_dtype(series) and not isinstance(
            series.dtype, pd.api.extensions.ExtensionDtype
        ):
            h.update(np.ascontiguousarray(series.to_numpy()).tobytes())
        else:
            h.update("\x1f".join(repr(v) for v in series.tolist()).encode())


# --------------------------------------------------------------------------------------------------
# marker (de)serialisation: a shard's manifest rows as json


def _rows_to_json(df: pd.DataFrame) -> dict:
    out = {}
    for col in df.columns:
        values = [
            None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in df[col].tolist()
        ]
        out[str(col)] = {"dtype": str(df[col].dtype), "values": values}
    return out


def _rows_from_json(data: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {col: pd.Series(spec["values"], dtype=spec["dtype"]) for col, spec in data.items()}
    )


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _marker_is_valid(
    root: Path, marker: dict | None, shard: int, digest: str, verify: bool
) -> bool:
    if not marker or marker.get("format") != FORMAT_VERSION:
        return False
    if marker.get("shard") != shard or marker.get("hash") != digest:
        return False
    if verify:
        paths = marker.get("rows", {}).get("path", {}).get("values", [])
        if len(paths) != marker.get("images") or not all((root / p).is_file() for p in paths):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# shard rendering (in-process or in a worker)


@dataclass
class _ShardTask:
    shard: int
    digest: str
    identities: tuple[int, int]
    rows: pd.DataFrame
    vectors: np.ndarray
    out_root: str
    seed: int
    batch_size: int
    jpeg_quality: int


@dataclass
class _WorkerState:
    generator: Any
    editor: BatchEditor | None
    device: torch.device


def _build_state(make_generator: Callable[[], Any], editor: Any, device: str) -> _WorkerState:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    generator = make_generator()
    if isinstance(generator, nn.Module):
        # Rendering never trains the generator: dropout off, no parameter gradients.
        generator = generator.to(dev).eval().requires_grad_(False)
    if not hasattr(generator, "generate") or not hasattr(generator, "image_size"):
        raise ParameterError(
            f"make_generator returned {type(generator).__name__}, which lacks generate() / "
            "image_size; expected an image generator"
        )
    return _WorkerState(generator, editor, dev)


def _as_uint8(images: Any, n: int, size: int, shard: int) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images_to_uint8(images)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape != (n, size, size, 3):
        raise DataError(
            f"shard {shard}: the editor returned images {images.dtype} {images.shape}; expected "
            f"uint8 {(n, size, size, 3)} or a float tensor [B, 3, H, W]"
        )
    return images


def _generate_plain(
    generator: Any,
    vectors: torch.Tensor,
    rows: pd.DataFrame,
    torch_gen: torch.Generator,
    shard: int,
) -> np.ndarray | torch.Tensor:
    """No editor: the generator alone. A generator with `target_columns` (e.g. DR-GAN's pose bin)
    gets those plan columns of the batch as `targets`; others get the vectors only (Vec2Face)."""
    wanted = tuple(getattr(generator, "target_columns", ()) or ())
    if not wanted:
        return generate_images(generator, vectors, len(vectors), torch_gen)
    missing = [c for c in wanted if c not in rows.columns]
    if missing:
        raise DataError(
            f"shard {shard}: the {type(generator).__name__} generator renders from the plan "
            f"column(s) {missing}, which the render plan lacks (it has {list(rows.columns)})"
        )
    with torch.no_grad():
        return generator.generate(
            vectors, generator=torch_gen, targets={c: rows[c].to_numpy() for c in wanted}
        )


def _render_shard(task: _ShardTask, state: _WorkerState) -> dict:
    t0 = time.perf_counter()
    root = Path(task.out_root)
    # Marker first: a crash from here on leaves a shard that a re-run renders again.
    _marker_path(root, task.shard).unlink(missing_ok=True)
    for identity in range(*task.identities):
        shutil.rmtree(root / f"{identity:06d}", ignore_errors=True)
    torch_gen = torch.Generator().manual_seed(shard_seed(task.seed, task.shard))
    size = int(state.generator.image_size)
    rows = task.rows
    n = len(rows)
    paths = [image_relpath(i, j) for i, j in zip(rows["identity"], rows["index"], strict=True)]
    extra: dict[str, list] = {}
    for start in range(0, n, task.batch_size):
        stop = min(n, start + task.batch_size)
        batch_rows = rows.iloc[start:stop]
        v = torch.from_numpy(np.ascontiguousarray(task.vectors[start:stop], dtype=np.float32))
        v = v.to(state.device)
        if state.editor is None:
            images = _generate_plain(state.generator, v, batch_rows, torch_gen, task.shard)
            columns: Mapping[str, Any] = {}
        else:
            images, columns = state.editor(
                state.generator, v, batch_rows, torch_generator=torch_gen
            )
        images = _as_uint8(images, stop - start, size, task.shard)
        for key, values in columns.items():
            if key in ("path", "identity", "index") or key in rows.columns:
                raise DataError(
                    f"shard {task.shard}: the editor returned column '{key}', which the plan "
                    "or the renderer already provides"
                )
            if len(values) != stop - start:
                raise DataError(
                    f"shard {task.shard}: editor column '{key}' has {len(values)} values for "
                    f"{stop - start} rows"
                )
            if key not in extra:
                if start > 0:
                    raise DataError(f"shard {task.shard}: editor column '{key}' missing in a batch")
                extra[key] = []
            extra[key].append(values)
        for k in range(stop - start):
            write_bytes_atomic(root / paths[start + k], encode_jpeg(images[k], task.jpeg_quality))
    manifest = pd.DataFrame({"path": paths})
    for col in rows.columns:
        manifest[col] = rows[col].array
    if "sigma" not in manifest.columns:
        manifest["sigma"] = np.nan
    for key, parts in extra.items():
        if parts and isinstance(parts[0], pd.api.extensions.ExtensionArray):
            manifest[key] = pd.concat([pd.Series(p) for p in parts], ignore_index=True)
        else:
            manifest[key] = np.concatenate([np.asarray(p) for p in parts])
    if "attrop_steps" not in manifest.columns:
        manifest["attrop_steps"] = np.zeros(n, np.int64)
    if "attrop_met" not in manifest.columns:
        manifest["attrop_met"] = pd.array([pd.NA] * n, dtype="boolean")
    manifest["attrop_steps"] = manifest["attrop_steps"].astype("int64")
    manifest["attrop_met"] = manifest["attrop_met"].astype("boolean")
    marker = {
        "format": FORMAT_VERSION,
        "shard": task.shard,
        "hash": task.digest,
        "identities": list(task.identities),
        "images": n,
        "image_size": size,
        "seconds": time.perf_counter() - t0,
        "rows": _rows_to_json(manifest),
    }
    write_text_atomic(_marker_path(root, task.shard), json.dumps(marker, default=str))
    return marker


_WORKER: _WorkerState | None = None


def _init_worker(make_generator, editor, devices, counter, threads) -> None:
    global _WORKER
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    torch.set_num_threads(max(1, int(threads)))
    _WORKER = _build_state(make_generator, editor, devices[slot % len(devices)])


def _render_shard_in_worker(task: _ShardTask) -> dict:
    assert _WORKER is not None, "worker not initialised"
    return _render_shard(task, _WORKER)


# --------------------------------------------------------------------------------------------------
# public API


def render_dataset(
    plan: pd.DataFrame,
    vectors: np.ndarray,
    make_generator: Callable[[], Any],
    out_root: str | os.PathLike,
    shard_identities: int = 100,
    attrop: BatchEditor | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    devices: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    jpeg_quality: int = 95,
    fingerprint: str = "",
    verify_existing: bool = True,
    rank: int = 0,
    world_size: int = 1,
    threads_per_worker: int | None = None,
    log: Callable[[dict, int], None] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Render `plan` into `<out_root>/<identity:06d>/<index:03d>.jpg`, resumably.

    Args:
        plan: one row per image: `identity` (int, contiguous from 0), `index` (int, image number
            within its identity) and any target columns (yaw_target, quality_target, sigma,
            attrop, ...), which are copied into the manifest.
        vectors: [N, D] float vectors, row i for plan row i.
        make_generator: () -> image generator (see synthesis.attrop.ImageGenerator); picklable
            (e.g. functools.partial of a module-level function) when num_workers > 0. nn.Module
            generators are moved to the device and put in eval mode. A generator with a
            `target_columns` attribute (synthesis.pose_code.PoseCodeGenerator: 'pose_bin') is
            called as generate(vectors, generator=g, targets={column: [B] values of the plan}).
        out_root: dataset root.
        shard_identities: identities per shard (shard k = identities [k*S, (k+1)*S)).
        attrop: None (plain generation) or an editor called per batch as
            editor(generator, vectors [B, D] on the device, plan rows, torch_generator=g) ->
            (images, {column: [B] values}); e.g. synthesis.attrop.AttrOPBatchEditor. Must be
            picklable when num_workers > 0. Its columns (attrop_steps, attrop_met,
            id_cos_to_centre, yaw_pred, ...) go into the manifest.
        batch_size: rows per generator/editor call (batches never span shards).
        num_workers: worker processes (spawned); 0 renders in-process. With several `devices` and
            num_workers=0, one worker per device is used.
        devices: devices to render on (e.g. ['cuda:0', 'cuda:1']); workers take them round-robin.
            Default ['cpu'].
        seed: base seed; shard k uses shard_seed(seed, k).
        progress: show a progress bar over shards.
        jpeg_quality: JPEG quality (1-100).
        fingerprint: anything else the images depend on (generator checkpoint hash, ...); part
            of every shard hash, so changing it re-renders every shard. An editor with a
            `fingerprint()` method (AttrOPBatchEditor: config + centres) adds its own.
        verify_existing: before skipping a complete shard, check that its image files exist.
        rank / world_size: render only shards k with k % world_size == rank (one call per
            torchrun rank or node); the call that finds every shard complete writes the manifest.
        threads_per_worker: torch threads in each worker (default: cores // workers).
        log: optional callback log(metrics, step) called after each rendered shard.

    Returns:
        (manifest, report). manifest: path, identity, index, the plan's other columns, sigma
        (NaN if the plan has none), attrop_steps, attrop_met (nullable bool: NA where no AttrOP
        ran) and the editor's columns; empty if other ranks' shards are still missing.
        report: images, identities, shards, shards_rendered, shards_skipped, images_rendered,
        seconds, images_per_second, num_workers, complete, and attrop_rows / attrop_met_rate
        when AttrOP ran.

    Raises:
        DataError: a bad plan/vectors or editor output. ParameterError: bad settings.
        RuntimeError: a worker process died (completed shards are kept; re-run to resume).
    """
    t_start = time.perf_counter()
    root = Path(out_root)
    _check_render_settings(
        shard_identities, batch_size, num_workers, jpeg_quality, rank, world_size
    )
    devices = list(devices) if devices else ["cpu"]
    if num_workers == 0 and len(devices) > 1:
        num_workers = len(devices)
    layout = _ShardLayout.of(
        plan, vectors, shard_identities, seed, batch_size, jpeg_quality, fingerprint, attrop
    )

    root.mkdir(parents=True, exist_ok=True)
    # The dataset must not look complete while any shard may change.
    (root / COMPLETE_MARKER).unlink(missing_ok=True)
    if rank == 0:
        (root / MANIFEST_NAME).unlink(missing_ok=True)
        _remove_stale(root, layout.n_identities, layout.n_shards)

    markers, skipped, todo = _partition_shards(layout, root, rank, world_size, verify_existing)
    t_render = time.perf_counter()
    images_rendered = _render_shards(
        layout, todo, root, markers, make_generator, attrop, devices, num_workers,
        threads_per_worker, progress, log,
    )  # fmt: skip
    render_seconds = time.perf_counter() - t_render

    if world_size > 1:
        markers = _with_other_ranks_markers(layout, root, markers)
    manifest, image_size = pd.DataFrame(), None
    complete = len(markers) == layout.n_shards
    if complete:
        manifest, image_size = _write_manifest_and_complete_marker(layout, root, markers)

    report: dict[str, Any] = {
        "images": int(len(layout.plan)),
        "identities": layout.n_identities,
        "shards": layout.n_shards,
        "shards_rendered": len(todo),
        "shards_skipped": len(skipped),
        "images_rendered": images_rendered,
        "seconds": time.perf_counter() - t_start,
        "render_seconds": render_seconds,
        "images_per_second": images_rendered / render_seconds if images_rendered else 0.0,
        "num_workers": int(num_workers),
        "complete": complete,
        "image_size": image_size,
    }
    if complete and manifest["attrop_met"].notna().any():
        ran = manifest["attrop_met"].dropna()
        report["attrop_rows"] = int(len(ran))
        report["attrop_met_rate"] = float(ran.astype(bool).mean())
    return manifest, report


def _check_render_settings(
    shard_identities: int,
    batch_size: int,
    num_workers: int,
    jpeg_quality: int,
    rank: int,
    world_size: int,
) -> None:
    if shard_identities <= 0 or batch_size <= 0:
        raise ParameterError(
            f"shard_identities ({shard_identities}) and batch_size ({batch_size}) must be > 0"
        )
    if num_workers < 0:
        raise ParameterError(f"num_workers must be >= 0, got {num_workers}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ParameterError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ParameterError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")


@dataclass(frozen=True)
class _ShardLayout:
    """The plan sorted by identity and cut into shards, with what every shard's hash starts from."""

    plan: pd.DataFrame  # sorted by (identity, index)
    vectors: np.ndarray
    order: np.ndarray  # plan row of each sorted row
    contiguous: bool  # order is the identity permutation (no copy needed)
    bounds: np.ndarray  # sorted-row bounds of shard k: [bounds[k], bounds[k + 1])
    n_identities: int
    n_shards: int
    shard_identities: int
    seed: int
    batch_size: int
    jpeg_quality: int
    header: bytes

    @classmethod
    def of(
        cls,
        plan: pd.DataFrame,
        vectors: np.ndarray,
        shard_identities: int,
        seed: int,
        batch_size: int,
        jpeg_quality: int,
        fingerprint: str,
        editor: Any,
    ) -> _ShardLayout:
        vectors = np.asarray(vectors)
        plan_sorted, order = _validate_plan(plan, vectors)
        if not np.isfinite(vectors).all():
            raise DataError("render vectors contain NaN or infinite values")
        ids = plan_sorted["identity"].to_numpy(np.int64)
        n_identities = int(ids[-1]) + 1
        n_shards = (n_identities + shard_identities - 1) // shard_identities
        header = json.dumps(
            {
                "format": FORMAT_VERSION,
                "shard_identities": shard_identities,
                "seed": int(seed),
                "batch_size": int(batch_size),
                "jpeg_quality": int(jpeg_quality),
                "fingerprint": fingerprint,
                "vector_dtype": str(vectors.dtype),
                "dim": int(vectors.shape[1]),
                "editor": _editor_fingerprint(editor),
            },
            sort_keys=True,
        ).encode()
        return cls(
            plan=plan_sorted,
            vectors=vectors,
            order=order,
            contiguous=bool(np.all(order == np.arange(len(order)))),
            bounds=np.searchsorted(ids, np.arange(n_shards + 1) * shard_identities),
            n_identities=n_identities,
            n_shards=n_shards,
            shard_identities=shard_identities,
            seed=int(seed),
            batch_size=int(batch_size),
            jpeg_quality=int(jpeg_quality),
            header=header,
        )

    def shard(self, k: int) -> tuple[pd.DataFrame, np.ndarray, str]:
        """Shard k's plan rows, vectors and hash (of the header, the rows and the vectors)."""
        a, b = int(self.bounds[k]), int(self.bounds[k + 1])
        rows = self.plan.iloc[a:b].reset_index(drop=True)
        vecs = self.vectors[a:b] if self.contiguous else self.vectors[self.order[a:b]]
        vecs = np.ascontiguousarray(vecs)
        h = hashlib.sha256(self.header)
        h.update(f"|shard:{k}|rows:{b - a}|".encode())
        _hash_rows(h, rows)
        h.update(vecs.tobytes())
        return rows, vecs, h.hexdigest()

    def task(self, k: int, root: Path) -> _ShardTask:
        rows, vecs, digest = self.shard(k)
        lo = k * self.shard_identities
        return _ShardTask(
            shard=k,
            digest=digest,
            identities=(lo, min(self.n_identities, lo + self.shard_identities)),
            rows=rows,
            vectors=vecs,
            out_root=str(root),
            seed=self.seed,
            batch_size=self.batch_size,
            jpeg_quality=self.jpeg_quality,
        )


def _partition_shards(
    layout: _ShardLayout, root: Path, rank: int, world_size: int, verify_existing: bool
) -> tuple[dict[int, dict], list[int], list[int]]:
    """This rank's shards split into those already complete (their markers) and those to render."""
    markers: dict[int, dict] = {}
    skipped: list[int] = []
    todo: list[int] = []
    for k in range(rank, layout.n_shards, world_size):
        _, _, digest = layout.shard(k)
        marker = _read_marker(_marker_path(root, k))
        if _marker_is_valid(root, marker, k, digest, verify_existing):
            markers[k] = marker
            skipped.append(k)
        else:
            todo.append(k)
    return markers, skipped, todo


def _render_shards(
    layout: _ShardLayout,
    todo: list[int],
    root: Path,
    markers: dict[int, dict],
    make_generator: Callable[[], Any],
    editor: Any,
    devices: list[str],
    num_workers: int,
    threads_per_worker: int | None,
    progress: bool,
    log: Callable[[dict, int], None] | None,
) -> int:
    """Render the `todo` shards (in-process or in a worker pool), adding each one's marker to
    `markers` as it completes; returns the number of images rendered."""
    images_rendered = 0
    bar = tqdm(total=len(todo), desc="render shards", unit="shard", disable=not progress)

    def done(marker: dict) -> None:
        nonlocal images_rendered
        markers[marker["shard"]] = marker
        images_rendered += int(marker["images"])
        bar.update(1)
        if log is not None:
            log(
                {"render/images": images_rendered, "render/shard_seconds": marker["seconds"]},
                len(markers),
            )

    tasks = (layout.task(k, root) for k in todo)
    try:
        if todo and num_workers == 0:
            state = _build_state(make_generator, editor, devices[0])
            for task in tasks:
                done(_render_shard(task, state))
        elif todo:
            _render_in_pool(
                tasks,
                len(todo),
                num_workers,
                make_generator,
                editor,
                devices,
                threads_per_worker,
                done,
            )
    finally:
        bar.close()
    return images_rendered


def _with_other_ranks_markers(
    layout: _ShardLayout, root: Path, markers: dict[int, dict]
) -> dict[int, dict]:
    """`markers` plus the valid markers other ranks have written so far."""
    found = dict(markers)
    for k in range(layout.n_shards):
        if k not in found:
            _, _, digest = layout.shard(k)
            m = _read_marker(_marker_path(root, k))
            if _marker_is_valid(root, m, k, digest, False):
                found[k] = m
    return found


def _write_manifest_and_complete_marker(
    layout: _ShardLayout, root: Path, markers: dict[int, dict]
) -> tuple[pd.DataFrame, int]:
    """Every shard is done: write the manifest, then the completion marker (last)."""
    n_shards = layout.n_shards
    manifest = pd.concat(
        [_rows_from_json(markers[k]["rows"]) for k in range(n_shards)], ignore_index=True
    )
    image_size = int(markers[0]["image_size"])
    dataset_hash = hashlib.sha256(
        "".join(markers[k]["hash"] for k in range(n_shards)).encode()
    ).hexdigest()
    write_manifest(manifest, root / MANIFEST_NAME)
    write_text_atomic(
        root / COMPLETE_MARKER,
        json.dumps(
            {
                "format": FORMAT_VERSION,
                "images": int(len(manifest)),
                "identities": layout.n_identities,
                "shards": n_shards,
                "shard_identities": layout.shard_identities,
                "image_size": image_size,
                "hash": dataset_hash,
                "manifest": MANIFEST_NAME,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            indent=2,
        ),
    )
    return manifest, image_size


def file_fingerprint(path: str | os.PathLike) -> str:
    """name:size:mtime of a file (e.g. a generator checkpoint): cheap, and changes when it is
    rewritten, so passing it as render_dataset's `fingerprint` re-renders after retraining."""
    st = Path(path).stat()
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def _editor_fingerprint(editor: Any) -> str | None:
    """The editor's own fingerprint() (config, centres...) when it has one, else its type name."""
    if editor is None:
        return None
    name = f"{type(editor).__module__}.{type(editor).__qualname__}"
    fp = getattr(editor, "fingerprint", None)
    return f"{name}:{fp()}" if callable(fp) else name


def _remove_stale(root: Path, n_identities: int, n_shards: int) -> None:
    """Delete identity folders and shard markers beyond the current plan (a plan that shrank),
    and temp files of marker/manifest writes that a killed run left behind."""
    for name in (MANIFEST_NAME, COMPLETE_MARKER):
        for p in root.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
    shard_dir = root / SHARDS_DIR
    if shard_dir.is_dir():
        for p in shard_dir.glob(".shard_*.json.*.tmp"):
            p.unlink(missing_ok=True)
        for p in shard_dir.glob("shard_*.json"):
            stem = p.stem[len("shard_") :]
            if stem.isdigit() and int(stem) >= n_shards:
                p.unlink(missing_ok=True)
    for p in root.iterdir():
        if p.is_dir() and len(p.name) >= 6 and p.name.isdigit() and int(p.name) >= n_identities:
            shutil.rmtree(p, ignore_errors=True)


def _render_in_pool(
    tasks: Iterator[_ShardTask],
    n_tasks: int,
    num_workers: int,
    make_generator: Callable[[], Any],
    editor: Any,
    devices: list[str],
    threads_per_worker: int | None,
    done: Callable[[dict], None],
) -> None:
    try:
        pickle.dumps((make_generator, editor))
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        raise ParameterError(
            "with num_workers > 0, make_generator and the attrop editor are sent to worker "
            "processes and must be picklable (e.g. functools.partial of a module-level "
            f"function): {type(exc).__name__}: {exc}"
        ) from exc
    ctx = get_context("spawn")  # fork + torch threads can deadlock; CUDA needs spawn
    counter = ctx.Value("i", 0)
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // num_workers)
    executor = ProcessPoolExecutor(
        max_workers=max(1, min(num_workers, n_tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(make_generator, editor, devices, counter, threads),
    )
    pending: set[Future] = set()
    try:
        # A bounded window keeps only a few shards' vectors in flight at once.
        for task in tasks:
            if len(pending) >= 2 * num_workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
            pending.add(executor.submit(_render_shard_in_worker, task))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                done(f.result())
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "a render worker process died (killed, crashed, or make_generator failed in it); "
            "completed shards are kept - run render_dataset again to resume"
        ) from exc
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _read_complete(root: Path) -> dict | None:
    marker = _read_marker(root / COMPLETE_MARKER)
    if not marker or marker.get("format") != FORMAT_VERSION:
        return None
    return marker


def is_complete(root: str | os.PathLike) -> bool:
    """True when `root` holds a fully rendered dataset (_COMPLETE marker and manifest present)."""
    root = Path(root)
    return _read_complete(root) is not None and (root / MANIFEST_NAME).is_file()


def load_rendered_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a completely rendered dataset.

    Raises:
        MissingInputError: `root` does not exist.
        DataError: the dataset is incomplete (no _COMPLETE marker: a render was interrupted or is
            running) or its manifest disagrees with the marker.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"rendered dataset folder not found: {root}")
    marker = _read_complete(root)
    if marker is None or not (root / MANIFEST_NAME).is_file():
        raise DataError(
            f"{root}: the rendered dataset is incomplete (no valid {COMPLETE_MARKER} marker or "
            f"no {MANIFEST_NAME}); a render was interrupted or is still running - run "
            "render_dataset again with the same plan to finish it"
        )
    manifest = read_manifest(root / MANIFEST_NAME)
    if len(manifest) != marker["images"] or manifest["identity"].nunique() != marker["identities"]:
        raise DataError(
            f"{root / MANIFEST_NAME}: {len(manifest)} images / "
            f"{manifest['identity'].nunique()} identities, but {COMPLETE_MARKER} says "
            f"{marker['images']} / {marker['identities']}"
        )
    return manifest


def export_recordio(
    root: str | os.PathLike,
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike | None = None,
) -> int:
    """Pack a completely rendered dataset into an insightface .rec/.idx (+ property file).

    Images are stored as their JPEG bytes, identity by identity (labels = identity). idx_path
    defaults to rec_path with suffix .idx. Returns the number of images written.
    """
    root = Path(root)
    manifest = load_rendered_manifest(root)
    image_size = int(_read_complete(root)["image_size"])
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    manifest = manifest.sort_values(["identity", "index"], kind="stable")

    def items() -> Iterator[tuple[int, bytes]]:
        for rel, identity in zip(manifest["path"], manifest["identity"], strict=True):
            path = root / rel
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise DataError(f"{path}: listed in the manifest but missing on disk") from None
            yield int(identity), data

    return write_recordio(rec_path, idx_path, items(), image_size=(image_size, image_size))

"""Write the FaceWorld pools and benchmarks to disk, once per config (cached by a config hash).

Layout under `root`:
    faceworld.json                      config hash, completion marker, summary
    pretrain/<identity:06d>/<n:03d>.jpg, pretrain/labels.parquet, pretrain/identities.parquet
    train/<identity:06d>/<n:03d>.jpg,    train/labels.parquet,    train/identities.parquet
    eval/fw_lfw.bin, eval/fw_cfp.bin, eval/fw_age.bin (insightface .bin)
    eval/fw_<protocol>_pairs.parquet (fold, issame, identities and every label of both sides)
    eval/identities.parquet

The world is built under `<root>.partial` and renamed into place when complete, so an interrupted
run leaves either the previous complete world or an obvious `.partial` folder.
Identity pools come from separate seed streams and disjoint global identity ranges
(pool offset x 10^7), so pretrain, train and eval never share a person.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from face_pipelines.errors import DataError
from face_pipelines.faceworld.config import (
    RENDERER_VERSION,
    FaceWorldConfig,
    ImagesPerIdentityConfig,
    config_hash,
    load_faceworld_config,
)
from face_pipelines.faceworld.face_images import render_identity_images
from face_pipelines.faceworld.identity import IDENTITY_FIELDS, sample_identities
from face_pipelines.faceworld.nuisance import NUISANCE_FIELDS, nuisance_rows, sample_nuisances
from face_pipelines.faceworld.protocols import PROTOCOLS, PairPlan, plan_pairs
from face_pipelines.io.atomic import atomic_dir

__all__ = [
    "materialise_faceworld",
    "pool_rng",
    "pool_identities",
    "plan_pool",
    "PoolPlan",
    "POOL_CODES",
    "GLOBAL_ID_STRIDE",
    "MARKER_NAME",
]

POOL_CODES = {"pretrain": 1, "train": 2, "eval": 3}
GLOBAL_ID_STRIDE = 10_000_000
MARKER_NAME = "faceworld.json"
_STREAM_IDENTITIES, _STREAM_COUNTS, _STREAM_NUISANCES, _STREAM_PROTOCOL = 0, 1, 2, 10


def pool_rng(seed: int, pool: str, stream: int) -> np.random.Generator:
    """The random stream `stream` of a pool: independent of every other pool and stream."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(POOL_CODES[pool], stream)))


def pool_identities(config: FaceWorldConfig, pool: str) -> np.ndarray:
    """The identity matrix [n_ids, D] of a pool (deterministic from config.seed)."""
    n = getattr(config, pool).n_ids
    ic = config.identity
    return sample_identities(
        pool_rng(config.seed, pool, _STREAM_IDENTITIES),
        n,
        diversity=ic.diversity,
        glasses_wearer_fraction=ic.glasses_wearer_fraction,
        beard_fraction=ic.beard_fraction,
        mole_fraction=ic.mole_fraction,
        freckle_fraction=ic.freckle_fraction,
    )


def _images_per_identity(
    rng: np.random.Generator, n: int, c: ImagesPerIdentityConfig
) -> np.ndarray:
    raw = c.median * np.exp(c.log_std * rng.standard_normal(n))
    return np.clip(np.rint(raw), c.min, c.max).astype(np.int64)


@dataclass
class PoolPlan:
    """Identities, image counts and per-image nuisances of one folder pool."""

    name: str
    identities: np.ndarray  # [n_ids, D]
    counts: np.ndarray  # [n_ids]
    image_identity: np.ndarray  # [n_images] pool-local identity of each image
    image_index: np.ndarray  # [n_images] index of the image within its identity
    nuisances: dict[str, np.ndarray]  # [n_images]

    @property
    def offsets(self) -> np.ndarray:
        """Index of the first image of each identity (length n_ids + 1)."""
        return np.r_[0, np.cumsum(self.counts)]


def plan_pool(config: FaceWorldConfig, pool: str) -> PoolPlan:
    """Sample everything a folder pool needs (cheap, vectorised; rendering happens later)."""
    pc = getattr(config, pool)
    ids = pool_identities(config, pool)
    counts = _images_per_identity(
        pool_rng(config.seed, pool, _STREAM_COUNTS), pc.n_ids, pc.images_per_identity
    )
    img_id = np.repeat(np.arange(pc.n_ids), counts)
    img_idx = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, int)
    nz = sample_nuisances(
        pool_rng(config.seed, pool, _STREAM_NUISANCES), len(img_id), pc.nuisances, ids[img_id]
    )
    return PoolPlan(pool, ids, counts, img_id, img_idx, nz)


# --------------------------------------------------------------------------------------------------
# work units (run in worker processes; must be top-level functions)
def _jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _render_folder_chunk(task: dict) -> int:
    """Render the images of a run of identities and write them as <id:06d>/<n:03d>.jpg."""
    imgs = render_identity_images(
        task["rows"], task["nuisances"], size=task["size"], batch_size=task["batch_size"]
    )
    out = Path(task["pool_dir"])
    made: set[int] = set()
    for img, ident, n, q in zip(
        imgs, task["identity"], task["index"], task["nuisances"]["jpeg_quality"], strict=True
    ):
        folder = out / f"{int(ident):06d}"
        if ident not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(ident)
        (folder / f"{int(n):03d}.jpg").write_bytes(_jpeg_bytes(img, q))
    return len(imgs)


def _render_pair_chunk(task: dict) -> np.ndarray:
    """Render eval images and pass them through JPEG at their own quality (returned decoded)."""
    imgs = render_identity_images(
        task["rows"], task["nuisances"], size=task["size"], batch_size=task["batch_size"]
    )
    for i, q in enumerate(task["nuisances"]["jpeg_quality"]):
        with Image.open(io.BytesIO(_jpeg_bytes(imgs[i], q))) as im:
            imgs[i] = np.asarray(im.convert("RGB"))
    return imgs


def _run_tasks(fn, tasks: list[dict], executor, desc: str, progress: bool, total: int) -> list:
    """Run tasks in-process (executor None) or on worker processes; results keep task order."""
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    results = []
    try:
        mapped = map(fn, tasks) if executor is None else executor.map(fn, tasks)
        for t, r in zip(tasks, mapped, strict=True):
            results.append(r)
            bar.update(len(t["rows"]))
    finally:
        bar.close()
    return results


# --------------------------------------------------------------------------------------------------
def _labels_frame(plan: PoolPlan, pool: str) -> pd.DataFrame:
    paths = [
        f"{int(i):06d}/{int(n):03d}.jpg"
        for i, n in zip(plan.image_identity, plan.image_index, strict=True)
    ]
    df = pd.DataFrame(
        {
            "path": paths,
            "identity": plan.image_identity.astype(np.int64),
            "global_identity": plan.image_identity.astype(np.int64)
            + POOL_CODES[pool] * GLOBAL_ID_STRIDE,
        }
    )
    for k in NUISANCE_FIELDS:
        df[k] = plan.nuisances[k]
    return df


def _identities_frame(ids: np.ndarray, pool: str) -> pd.DataFrame:
    df = pd.DataFrame(ids, columns=list(IDENTITY_FIELDS))
    df.insert(0, "global_identity", np.arange(len(ids)) + POOL_CODES[pool] * GLOBAL_ID_STRIDE)
    df.insert(0, "identity", np.arange(len(ids)))
    return df


def _pairs_frame(plan: PairPlan) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "pair": np.arange(plan.n_pairs),
            "fold": plan.fold,
            "issame": plan.issame,
            "identity_a": plan.identity_a,
            "identity_b": plan.identity_b,
        }
    )
    for k in NUISANCE_FIELDS:
        df[f"{k}_a"] = plan.nuisances[k][0::2]
        df[f"{k}_b"] = plan.nuisances[k][1::2]
    return df


def _write_folder_pool(config, plan: PoolPlan, pool_dir: Path, executor, progress) -> None:
    pool_dir.mkdir(parents=True, exist_ok=True)
    off = plan.offsets
    step = config.chunk_identities
    tasks = []
    for i0 in range(0, len(plan.counts), step):
        i1 = min(len(plan.counts), i0 + step)
        sl = slice(int(off[i0]), int(off[i1]))
        tasks.append(
            {
                "pool_dir": str(pool_dir),
                "rows": plan.identities[plan.image_identity[sl]],
                "identity": plan.image_identity[sl],
                "index": plan.image_index[sl],
                "nuisances": nuisance_rows(plan.nuisances, sl),
                "size": config.image_size,
                "batch_size": config.render_batch_size,
            }
        )
    _run_tasks(_render_folder_chunk, tasks, executor, plan.name, progress, len(plan.image_identity))
    _labels_frame(plan, plan.name).to_parquet(pool_dir / "labels.parquet", index=False)
    _identities_frame(plan.identities, plan.name).to_parquet(
        pool_dir / "identities.parquet", index=False
    )


def _write_eval(config: FaceWorldConfig, eval_dir: Path, executor, progress) -> dict:
    from face_pipelines.io.verification_bin import write_verification_bin

    eval_dir.mkdir(parents=True, exist_ok=True)
    ids = pool_identities(config, "eval")
    _identities_frame(ids, "eval").to_parquet(eval_dir / "identities.parquet", index=False)
    out = {}
    chunk = max(1, config.chunk_identities) * 16
    for p_idx, name in enumerate(PROTOCOLS):
        proto = getattr(config.eval, name)
        rng = pool_rng(config.seed, "eval", _STREAM_PROTOCOL + p_idx)
        plan = plan_pairs(name, proto, config.eval, ids, rng)
        n_img = 2 * plan.n_pairs
        tasks = [
            {
                "rows": ids[plan.image_identity[s : s + chunk]],
                "nuisances": nuisance_rows(plan.nuisances, slice(s, s + chunk)),
                "size": config.image_size,
                "batch_size": config.render_batch_size,
            }
            for s in range(0, n_img, chunk)
        ]
        imgs = np.concatenate(
            _run_tasks(_render_pair_chunk, tasks, executor, name, progress, n_img)
        )
        write_verification_bin(
            eval_dir / f"{name}.bin", imgs, plan.issame, quality=config.jpeg_bin_quality
        )
        _pairs_frame(plan).to_parquet(eval_dir / f"{name}_pairs.parquet", index=False)
        out[name] = {
            "bin": f"eval/{name}.bin",
            "pairs": f"eval/{name}_pairs.parquet",
            "n_pairs": int(plan.n_pairs),
            "folds": int(proto.folds),
        }
    return out


def _cached_summary(root: Path, digest: str) -> dict | None:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("complete") is not True or info.get("config_hash") != digest:
        return None
    summary = info.get("summary", {})
    expected = [f"{p}/labels.parquet" for p in ("pretrain", "train")]
    expected += [v["bin"] for v in summary.get("eval", {}).values()]
    if not all((root / rel).is_file() for rel in expected):
        return None
    return summary


def materialise_faceworld(
    config: FaceWorldConfig | dict | None,
    root: str | os.PathLike,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Render the FaceWorld pools and eval benchmarks under `root` (or reuse a complete cached one).

    Args:
        config: FaceWorldConfig (or a mapping validated into one).
        root: output folder; it is owned by FaceWorld (replaced when the config changes).
        num_workers: worker processes for rendering (0 = in-process). Results are identical for
            any value: work is split into fixed chunks of identities.
        progress: show tqdm progress bars.

    Returns:
        summary dict: root, config_hash, cached (True when nothing was rendered), image_size,
        pools (identities / images per folder pool), eval (per protocol: bin and pairs paths
        relative to root, n_pairs, folds), wall_s.
    """
    config = load_faceworld_config(config)
    root = Path(root)
    digest = config_hash(config)
    cached = _cached_summary(root, digest)
    if cached is not None:
        return {**cached, "root": str(root), "cached": True}
    if root.exists() and not root.is_dir():
        raise DataError(f"FaceWorld root {root} exists and is not a folder")

    t0 = time.perf_counter()
    executor = None
    if num_workers > 0:
        executor = ProcessPoolExecutor(
            max_workers=int(num_workers), mp_context=get_context("spawn")
        )
    try:
        with atomic_dir(root) as tmp:
            summary = _build(config, root, tmp, digest, executor, progress, t0)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {**summary, "cached": False}


def _build(config, root: Path, tmp: Path, digest: str, executor, progress: bool, t0: float) -> dict:
    pools = {}
    for pool in ("pretrain", "train"):
        plan = plan_pool(config, pool)
        _write_folder_pool(config, plan, tmp / pool, executor, progress)
        pools[pool] = {
            "identities": int(len(plan.counts)),
            "images": int(plan.counts.sum()),
            "labels": f"{pool}/labels.parquet",
        }
    evals = _write_eval(config, tmp / "eval", executor, progress)
    summary = {
        "root": str(root),
        "config_hash": digest,
        "image_size": config.image_size,
        "pools": pools,
        "eval": evals,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    marker = {
        "complete": True,
        "config_hash": digest,
        "renderer_version": RENDERER_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "summary": summary,
    }
    # written last: its presence with complete=true is what makes the folder count as done
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2))
    return summary

"""Benchmark: the recognizer's two data paths at 112 px - packed uint8 shards versus JPEGs decoded in
the loader workers - in decode+augment images/s per worker and disk bytes per 1M images.

Renders N FaceWorld training images at 112 px, writes them as the synthetic dataset stores them
(<root>/<identity:06d>/<index:03d>.jpg at JPEG quality 95) and as an insightface .rec/.idx, packs them
with the subset/recognizer packing step, then times full epochs of make_loader over
PackedFaceDataset and EncodedFaceDataset (folders and .rec) with flip only (the FaceWorld default)
and with the HSFace recipe, in one process with one torch thread: that is the work of one loader
worker. Wall-clock rates depend on what else runs on the machine; images per CPU-second (process
time) are what a dedicated core does. One untimed epoch first (page cache); medians of the timed
epochs go to benchmarks/results/data_path.json.

    python benchmarks/bench_data_path.py [--images 4096] [--batch-size 128] [--repeats 2]
"""

from __future__ import annotations

import os

# one core per worker: set before numpy loads its thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from _env import cpu_device, time_epochs  # noqa: E402  (benchmarks/_env.py; scripts run from benchmarks/)
from face_pipelines.faceworld import FaceWorldConfig, plan_pool, render_identity_images  # noqa: E402
from face_pipelines.io.atomic import write_text_atomic  # noqa: E402
from face_pipelines.io.encoded import EncodedImages, write_encoded_index  # noqa: E402
from face_pipelines.io.images import encode_jpeg  # noqa: E402
from face_pipelines.io.packed import PackedImages  # noqa: E402
from face_pipelines.io.recordio import write_recordio  # noqa: E402
from face_pipelines.io.subset import pack_subset  # noqa: E402
from face_pipelines.training.data import (  # noqa: E402
    AugmentationConfig,
    EncodedFaceDataset,
    PackedFaceDataset,
    make_loader,
)

RESULTS = Path(__file__).resolve().parent / "results" / "data_path.json"
SIZE = 112
JPEG_QUALITY = 95  # the render stage's default (conf/base/parameters_render.yml)
PAPER_IMAGES = 15_000_000  # HSFace300K


def render_dataset(root: Path, n: int) -> pd.DataFrame:
    """N FaceWorld train-pool images as identity folders of JPEGs; returns the manifest."""
    config = FaceWorldConfig(image_size=SIZE)
    plan = plan_pool(config, "train")
    ids = plan.image_identity[:n]
    nuisances = {k: v[:n] for k, v in plan.nuisances.items()}
    images = render_identity_images(plan.identities[ids], nuisances, SIZE, config.render_batch_size)
    labels = pd.factorize(ids, sort=True)[0]
    rows, per_identity = [], {}
    for image, label in zip(images, labels, strict=True):
        index = per_identity[label] = per_identity.get(label, -1) + 1
        rel = f"{label:06d}/{index:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_jpeg(image, JPEG_QUALITY))
        rows.append({"path": rel, "identity": int(label)})
    return pd.DataFrame(rows)


def disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of files and of every file under folders."""
    files = []
    for p in paths:
        files.extend([f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p])
    stats = [f.stat() for f in files]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def main() -> None:
    """Run the benchmark, print a table and write benchmarks/results/data_path.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_data_path_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifest = render_dataset(tmp / "jpeg", args.images)
        render_s = time.perf_counter() - t0
        pack_subset(manifest, tmp / "packed", SIZE, 4096, folder_root=tmp / "jpeg", progress=False)
        items = [
            (int(r.identity), (tmp / "jpeg" / r.path).read_bytes()) for r in manifest.itertuples()
        ]
        write_recordio(tmp / "rec" / "train.rec", tmp / "rec" / "train.idx", items, (SIZE, SIZE))
        folder = EncodedImages.from_folder(
            tmp / "jpeg", manifest["path"], manifest["identity"], SIZE
        )
        write_encoded_index(tmp / "jpeg_index", folder)
        sets = {
            "packed": (PackedImages(tmp / "packed"), [tmp / "packed"]),
            "jpeg_folders": (folder, [tmp / "jpeg", tmp / "jpeg_index"]),
            "jpeg_recordio": (
                EncodedImages.from_recordio(tmp / "rec" / "train.rec", tmp / "rec" / "train.idx"),
                [tmp / "rec"],
            ),
        }
        n = len(manifest)
        disk = {}
        for name, (_, paths) in sets.items():
            apparent, allocated = disk_bytes(paths)
            disk[name] = {
                "bytes_per_image": round(apparent / n, 1),
                "gb_per_1m_images": round(apparent / n * 1e6 / 1e9, 2),
                "gb_per_1m_images_allocated": round(allocated / n * 1e6 / 1e9, 2),
                "gb_for_15m_images": round(apparent / n * PAPER_IMAGES / 1e9, 1),
            }

        augmentations = {
            "flip": AugmentationConfig.flip_only(),
            "hsface": AugmentationConfig.hsface(),
        }
        rows = []
        for aug_name, aug in augmentations.items():
            for name, (images, _) in sets.items():
                dataset = (
                    PackedFaceDataset(images, aug)
                    if isinstance(images, PackedImages)
                    else EncodedFaceDataset(images, aug)
                )
                loader = make_loader(dataset, batch_size=args.batch_size, seed=0, num_workers=0)
                wall, cpu = time_epochs(loader, args.repeats)
                count = (n // args.batch_size) * args.batch_size
                rows.append(
                    {
                        "format": name,
                        "augmentation": aug_name,
                        "images_per_epoch": count,
                        "images_per_s": round(count / statistics.median(wall), 1),
                        "images_per_cpu_s": round(count / statistics.median(cpu), 1),
                        "wall_s": [round(t, 3) for t in wall],
                        **disk[name],
                    }
                )
    total = time.perf_counter() - started

    header = (
        f"{'format':<14} {'aug':<7} {'img/s/worker':>13} {'img/cpu-s':>10} {'B/img':>8} "
        f"{'GB/1M':>7} {'GB/1M alloc':>12} {'GB @15M':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['format']:<14} {r['augmentation']:<7} {r['images_per_s']:>13.0f} "
            f"{r['images_per_cpu_s']:>10.0f} {r['bytes_per_image']:>8.0f} "
            f"{r['gb_per_1m_images']:>7.2f} {r['gb_per_1m_images_allocated']:>12.2f} "
            f"{r['gb_for_15m_images']:>8.1f}"
        )
    result = {
        "benchmark": "recognizer data path at 112 px: packed uint8 shards vs JPEGs decoded per worker",
        "device": cpu_device(load_before),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "config": {
            "images": n,
            "image_px": SIZE,
            "content": "FaceWorld train pool rendered at 112 px",
            "jpeg_quality": JPEG_QUALITY,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "statistic": "median",
            "torch_threads": 1,
            "workers": "0 (in-process): the work of one loader worker",
            "augmentations": {k: v.__dict__ for k, v in augmentations.items()},
            "render_s": round(render_s, 1),
            "note": "files in the OS page cache (one untimed epoch first); disk: apparent bytes "
            "(jpeg_folders includes the training-set index), 'alloc' = filesystem blocks; "
            "normalisation to float happens on the training device and is not timed",
        },
        "results": rows,
        "total_s": round(total, 1),
    }
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"total {total:.1f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()

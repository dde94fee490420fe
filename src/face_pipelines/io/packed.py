"""Packed, training-ready images: decoded uint8 shards that training reads with random access.

JPEG decoding is the usual bottleneck of face-recognition training, so the subset stage decodes once and
stores square RGB images as plain `.npy` shards that open memory-mapped. Layout of a packed folder::

    shard_00000.npy   uint8 [n, H, W, 3] RGB (np.load(mmap_mode="r") gives a view without reading)
    shard_00001.npy   ...
    labels.npy        int64 [N], label of image i (images are numbered across shards in order)
    index.json        {"format": "face_pipelines.packed/1", "count": N, "height": H, "width": W,
                       "num_classes": C, "shards": [{"file", "start", "count"}, ...], "complete": true}

`PackedWriter` builds the folder under `<root>.partial` and renames it into place only when closed
without error, so an interrupted job never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from face_pipelines.errors import DataError, MissingInputError, ParameterError

PACKED_FORMAT = "face_pipelines.packed/1"
INDEX_FILE = "index.json"
LABELS_FILE = "labels.npy"


def shard_file_name(shard_index: int) -> str:
    """File name of shard number `shard_index` (`shard_00000.npy`, ...)."""
    return f"shard_{shard_index:05d}.npy"


class PackedWriter:
    """Write images and labels into a packed folder (see the module docstring).

    Use as a context manager::

        with PackedWriter(root, image_size=112, shard_size=4096) as writer:
            writer.add(image_uint8_hwc, label)
            writer.add_batch(images_uint8_bhwc, labels)

    Args:
        root: the packed folder to create; an existing folder is replaced only on success.
        image_size: side of the square images (every image must be [image_size, image_size, 3]).
        shard_size: images per shard file.
        num_classes: number of classes to record; default max(label) + 1. Must exceed every label.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        shard_size: int = 4096,
        num_classes: int | None = None,
    ):
        if int(image_size) <= 0:
            raise ParameterError(f"PackedWriter image_size must be > 0, got {image_size!r}")
        if int(shard_size) <= 0:
            raise ParameterError(f"PackedWriter shard_size must be > 0, got {shard_size!r}")
        self.root = Path(root)
        self.partial = self.root.with_name(self.root.name + ".partial")
        self.image_size = int(image_size)
        self.shard_size = int(shard_size)
        self.num_classes = num_classes
        self._buffer: np.ndarray | None = None
        self._fill = 0
        self._shards: list[dict[str, Any]] = []
        self._labels: list[np.ndarray] = []
        self._count = 0
        self._open = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> PackedWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Start a fresh `<root>.partial` folder (a stale one from an interrupted run is removed)."""
        if self._open:
            return
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        side = self.image_size
        self._buffer = np.empty((self.shard_size, side, side, 3), dtype=np.uint8)
        self._open = True

    def abort(self) -> None:
        """Discard everything written so far; `root` (if it existed before) is left untouched."""
        self._buffer = None
        self._open = False
        self._closed = True
        if self.partial.exists():
            shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> Path:
        """Flush the last shard, write labels and index, and rename the folder into place."""
        if self._closed:
            return self.root
        if not self._open:
            self.open()
        self._flush()
        labels = (
            np.concatenate(self._labels) if self._labels else np.zeros((0,), dtype=np.int64)
        ).astype(np.int64, copy=False)
        max_label = int(labels.max()) if len(labels) else -1
        num_classes = max_label + 1 if self.num_classes is None else int(self.num_classes)
        if num_classes <= max_label:
            raise ParameterError(
                f"PackedWriter({self.root}): num_classes={num_classes} but a label is {max_label}"
            )
        np.save(self.partial / LABELS_FILE, labels)
        index = {
            "format": PACKED_FORMAT,
            "count": int(self._count),
            "height": self.image_size,
            "width": self.image_size,
            "num_classes": num_classes,
            "shards": self._shards,
            "complete": True,
        }
        # The index is the completion marker: written last, inside the folder that is renamed.
        (self.partial / INDEX_FILE).write_text(json.dumps(index, indent=1))
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self.partial, self.root)
        self._buffer = None
        self._open = False
        self._closed = True
        return self.root

    # -- adding images -------------------------------------------------------------------------
    def add(self, image: np.ndarray, label: int) -> None:
        """Append one uint8 RGB image [H, W, 3] with its integer label."""
        self.add_batch(np.asarray(image)[None], np.asarray([label]))

    def add_batch(self, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        """Append uint8 RGB images [B, H, W, 3] with their integer labels [B]."""
        if self._closed:
            raise RuntimeError(f"PackedWriter({self.root}) is already closed")
        if not self._open:
            self.open()
        images = np.asarray(images)
        labels = np.asarray(labels)
        side = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (side, side, 3):
            raise DataError(
                f"PackedWriter({self.root}): image(s) starting at #{self._count} have dtype "
                f"{images.dtype} shape {tuple(images.shape[1:])}; expected uint8 ({side}, {side}, 3)"
            )
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"PackedWriter({self.root}): labels starting at #{self._count} must be {len(images)} "
                f"integers, got dtype {labels.dtype} shape {labels.shape}"
            )
        if len(labels) and int(labels.min()) < 0:
            raise DataError(
                f"PackedWriter({self.root}): negative label {int(labels.min())} near #{self._count}"
            )
        self._labels.append(labels.astype(np.int64))
        done = 0
        while done < len(images):
            take = min(self.shard_size - self._fill, len(images) - done)
            self._buffer[self._fill : self._fill + take] = images[done : done + take]
            self._fill += take
            done += take
            if self._fill == self.shard_size:
                self._flush()
        self._count += len(images)

    def _flush(self) -> None:
        if self._fill == 0:
            return
        name = shard_file_name(len(self._shards))
        start = self._shards[-1]["start"] + self._shards[-1]["count"] if self._shards else 0
        np.save(self.partial / name, self._buffer[: self._fill])
        self._shards.append({"file": name, "start": int(start), "count": int(self._fill)})
        self._fill = 0


def array_fingerprint(array: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and bytes): e.g. the teacher features a run trains on."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:20]


class PackedImages:
    """Random-access reader of a packed folder (see the module docstring).

    `images[i] -> (uint8 [H, W, 3], label)`, `images.get_batch(indices) -> (uint8 [B, H, W, 3],
    int64 [B])`. Shards are memory-mapped; the reader pickles without them (DataLoader workers started
    with spawn re-open the files instead of copying their contents).

    Raises:
        MissingInputError: `root` does not exist.
        DataError: index.json is missing, unreadable or not marked complete, or a shard / labels.npy
            is missing or has the wrong size. The message names the folder or file.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            partial = self.root.with_name(self.root.name + ".partial")
            hint = (
                f" (found {partial}: a packing job was interrupted; re-run it)"
                if partial.exists()
                else ""
            )
            raise MissingInputError(f"packed image folder {self.root} does not exist{hint}")
        index = self._read_index()
        self.count = int(index["count"])
        self.height = int(index["height"])
        self.width = int(index["width"])
        self.num_classes = int(index["num_classes"])
        self.shards = list(index["shards"])
        self._starts = np.array([s["start"] for s in self.shards], dtype=np.int64)
        self.labels = self._read_labels()
        self._arrays: list[np.ndarray] | None = None
        self._arrays = self._open_shards()

    # -- validation ----------------------------------------------------------------------------
    def _read_index(self) -> dict:
        path = self.root / INDEX_FILE
        if not path.is_file():
            raise DataError(
                f"packed folder {self.root} has no {INDEX_FILE}: it is not a packed image folder or "
                "its writer did not finish; re-run the packing step"
            )
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"packed index {path} is not readable JSON: {exc}") from exc
        if not isinstance(index, dict) or index.get("format") != PACKED_FORMAT:
            raise DataError(
                f"packed index {path} has format {index.get('format') if isinstance(index, dict) else None!r}; "
                f"expected {PACKED_FORMAT!r}"
            )
        if index.get("complete") is not True:
            raise DataError(f"packed index {path} is not marked complete; re-run the packing step")
        missing = [
            k for k in ("count", "height", "width", "num_classes", "shards") if k not in index
        ]
        if missing:
            raise DataError(f"packed index {path} lacks the field(s) {missing}")
        if index["height"] != index["width"]:
            raise DataError(
                f"packed index {path}: images are {index['height']}x{index['width']}; "
                "packed images are square"
            )
        expected_start = 0
        for shard in index["shards"]:
            if shard.get("start") != expected_start or int(shard.get("count", 0)) <= 0:
                raise DataError(
                    f"packed index {path}: shard {shard.get('file')!r} starts at "
                    f"{shard.get('start')} with count {shard.get('count')}; expected contiguous "
                    f"shards starting at {expected_start}"
                )
            expected_start += int(shard["count"])
        if expected_start != index["count"]:
            raise DataError(
                f"packed index {path}: shards hold {expected_start} images but count is "
                f"{index['count']}"
            )
        return index

    def _read_labels(self) -> np.ndarray:
        path = self.root / LABELS_FILE
        if not path.is_file():
            raise DataError(f"packed folder {self.root}: {LABELS_FILE} is missing")
        try:
            labels = np.load(path)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"packed labels {path} are not a readable .npy file: {exc}") from exc
        if labels.shape != (self.count,) or labels.dtype != np.int64:
            raise DataError(
                f"packed labels {path} have dtype {labels.dtype} shape {labels.shape}; expected "
                f"int64 ({self.count},)"
            )
        if self.count and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(
                f"packed labels {path} range over [{labels.min()}, {labels.max()}] but "
                f"num_classes is {self.num_classes}"
            )
        return labels

    def _open_shards(self) -> list[np.ndarray]:
        arrays = []
        for shard in self.shards:
            path = self.root / shard["file"]
            if not path.is_file():
                raise DataError(f"packed shard {path} is missing; re-run the packing step")
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError, EOFError) as exc:
                # A truncated shard shows up here ("mmap length is greater than file size").
                raise DataError(f"packed shard {path} is corrupt or truncated: {exc}") from exc
            expected = (int(shard["count"]), self.height, self.width, 3)
            if array.dtype != np.uint8 or array.shape != expected:
                raise DataError(
                    f"packed shard {path} has dtype {array.dtype} shape {array.shape}; expected "
                    f"uint8 {expected}"
                )
            arrays.append(array)
        return arrays

    # -- access --------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return self.height

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (
            f"PackedImages({str(self.root)!r}, count={self.count}, size={self.height}, "
            f"num_classes={self.num_classes}, shards={len(self.shards)})"
        )

    def fingerprint(self, sample: int = 512) -> str:
        """Content hash identifying this packed set: size, classes, every label and `sample` images
        spread evenly over it (cheap at 10^6 images, yet any re-render or re-selection changes it).

        Training runs record it so that a finished or interrupted run is never resumed on other data.
        """
        h = hashlib.sha256()
        h.update(f"{self.count}/{self.height}/{self.num_classes}".encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        if self.count:
            idx = np.unique(
                np.linspace(0, self.count - 1, min(sample, self.count)).astype(np.int64)
            )
            h.update(np.ascontiguousarray(self.get_batch(idx)[0]).tobytes())
        return h.hexdigest()[:20]

    def _shard_arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = self._open_shards()
        return self._arrays

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = int(i)
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"index {i} out of range for {self!r}")
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        image = np.asarray(self._shard_arrays()[s][i - int(self._starts[s])])
        return image, int(self.labels[i])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [B, H, W, 3] and labels int64 [B] for `indices` (in the order given).

        Reads each shard once with sorted indices (sequential access on the memory map).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"indices span [{idx.min()}, {idx.max()}], out of range for {self!r}")
        out = np.empty((len(idx), self.height, self.width, 3), dtype=np.uint8)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        order = np.lexsort((idx, shard_of))  # by shard, then by position inside the shard
        arrays = self._shard_arrays()
        bounds = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            s = int(shard_of[group[0]])
            out[group] = arrays[s][idx[group] - self._starts[s]]
        return out, self.labels[idx]

    def close(self) -> None:
        """Drop the memory maps (they are re-opened on the next access)."""
        self._arrays = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

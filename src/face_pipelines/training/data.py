"""Training data: a Dataset over packed images with face-recognition augmentations, and a loader.

Samples stay uint8 (CHW) on the CPU side - four times less to copy than float - and are normalised on
the device with `image_tensors.to_device_normalised`: (x / 255 - 0.5) / 0.5, i.e. [-1, 1].

Augmentations (each applied with its own probability, in this order):
1. random-resized crop with zero padding: a random box (area `crop_scale`, aspect `crop_ratio`) keeps
   its pixels at their place and everything outside it becomes black - the face does not move, so
   alignment is kept while parts of it disappear;
2. low resolution: down-scale to a random fraction (`low_res_scale`) of the side with a random
   interpolation, then back up;
3. colour jitter: brightness, contrast and saturation factors drawn from [1 - x, 1 + x];
4. horizontal flip;
5. random erasing: a random box (area `erasing_scale`, aspect `erasing_ratio`) set to 0.
`AugmentationConfig.hsface()` is the recipe used to train recognizers on HSFace (Vec2Face paper).

Randomness comes from a per-sample seed that `EpochSampler(with_sample_seeds=True)` passes in with
the index, so a run gives the same images whatever the number of workers and after a resume.

Storage: a training set is packed (decoded once, H*W*3 bytes per image, memory-mapped) or read from
its JPEGs (`EncodedFaceDataset`: decoded in the loader's workers). `choose_training_format` picks by
size; both datasets give the same tensors for the same images, keys and seeds.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.encoded import EncodedImages
from face_pipelines.io.packed import PackedImages
from face_pipelines.training.distributed import EpochSampler

_RESAMPLE = (
    Image.Resampling.NEAREST,
    Image.Resampling.BILINEAR,
    Image.Resampling.BICUBIC,
    Image.Resampling.BOX,
    Image.Resampling.LANCZOS,
)


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of the training augmentations (all off except flip by default).

    Attributes:
        flip_prob: probability of a horizontal flip.
        crop_prob: probability of a random-resized crop with zero padding.
        crop_scale: (min, max) area fraction of the kept box.
        crop_ratio: (min, max) aspect ratio (width / height) of the kept box.
        low_res_prob: probability of down- then up-scaling.
        low_res_scale: (min, max) side fraction of the low-resolution intermediate.
        color_jitter_prob: probability of colour jitter.
        brightness: brightness factor range is [1 - brightness, 1 + brightness].
        contrast: contrast factor range is [1 - contrast, 1 + contrast].
        saturation: saturation factor range is [1 - saturation, 1 + saturation].
        erasing_prob: probability of random erasing.
        erasing_scale: (min, max) area fraction of the erased box.
        erasing_ratio: (min, max) aspect ratio of the erased box.
    """

    flip_prob: float = 0.5
    crop_prob: float = 0.0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    low_res_prob: float = 0.0
    low_res_scale: tuple[float, float] = (0.2, 1.0)
    color_jitter_prob: float = 0.0
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    erasing_prob: float = 0.0
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ParameterError(f"augmentation {name} must be in [0, 1], got {value}")
            if isinstance(value, tuple) and not (len(value) == 2 and 0 < value[0] <= value[1]):
                raise ParameterError(f"augmentation {name} must be (min, max) with 0 < min <= max")

    @classmethod
    def none(cls) -> AugmentationConfig:
        """No augmentation at all (the Vec2Face generator trains on plain images)."""
        return cls(flip_prob=0.0)

    @classmethod
    def flip_only(cls) -> AugmentationConfig:
        """Horizontal flip only (insightface arcface_torch)."""
        return cls()

    @classmethod
    def hsface(cls) -> AugmentationConfig:
        """HSFace recognizer recipe: crop / low-res / jitter 0.5 each at p=0.3, flip, erasing."""
        return cls(
            flip_prob=0.5, crop_prob=0.3, low_res_prob=0.3, color_jitter_prob=0.3, erasing_prob=0.5
        )

    @property
    def active(self) -> bool:
        """True if any augmentation can fire."""
        return any(v > 0 for k, v in asdict(self).items() if k.endswith("_prob"))


def _random_box(
    rng: random.Random, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box with random area and aspect (torchvision's recipe)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        bw = int(round(math.sqrt(target * aspect)))
        bh = int(round(math.sqrt(target / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            return rng.randint(0, h - bh), rng.randint(0, w - bw), bh, bw
    return 0, 0, h, w


def augment_image(image: np.ndarray, config: AugmentationConfig, rng: random.Random) -> np.ndarray:
    """Apply `config` to one uint8 RGB image [H, W, 3]; returns a new (or the same) uint8 array."""
    h, w = image.shape[:2]
    out = image
    if config.crop_prob and rng.random() < config.crop_prob:
        top, left, bh, bw = _random_box(rng, h, w, config.crop_scale, config.crop_ratio)
        padded = np.zeros_like(out)
        padded[top : top + bh, left : left + bw] = out[top : top + bh, left : left + bw]
        out = padded
    if config.low_res_prob and rng.random() < config.low_res_prob:
        side = rng.uniform(*config.low_res_scale)
        resample = rng.choice(_RESAMPLE)
        small = (max(1, int(w * side)), max(1, int(h * side)))
        pil = Image.fromarray(np.ascontiguousarray(out)).resize(small, resample)
        out = np.asarray(pil.resize((w, h), resample))
    if config.color_jitter_prob and rng.random() < config.color_jitter_prob:
        out = _color_jitter(out, config, rng)
    if config.flip_prob and rng.random() < config.flip_prob:
        out = out[:, ::-1]
    if config.erasing_prob and rng.random() < config.erasing_prob:
        top, left, bh, bw = _random_box(rng, h, w, config.erasing_scale, config.erasing_ratio)
        out = np.array(out)
        out[top : top + bh, left : left + bw] = 0
    return out


def _color_jitter(image: np.ndarray, config: AugmentationConfig, rng: random.Random) -> np.ndarray:
    # Each factor blends with a reference (black, mean grey, per-pixel grey) and clamps, like
    # torchvision's ColorJitter; done in place on one float32 copy.
    x = image.astype(np.float32)
    gray_weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if config.brightness:
        x *= rng.uniform(1 - config.brightness, 1 + config.brightness)
        np.clip(x, 0, 255, out=x)
    if config.contrast:
        factor = rng.uniform(1 - config.contrast, 1 + config.contrast)
        mean = float((x @ gray_weights).mean())
        x *= factor
        x += (1 - factor) * mean
        np.clip(x, 0, 255, out=x)
    if config.saturation:
        factor = rng.uniform(1 - config.saturation, 1 + config.saturation)
        gray = x @ gray_weights
        gray *= 1 - factor
        x *= factor
        x += gray[..., None]
        np.clip(x, 0, 255, out=x)
    return np.rint(x, out=x).astype(np.uint8)


class PackedFaceDataset(Dataset):
    """Map-style dataset of (uint8 CHW image tensor, int label) over a packed folder.

    Keys are indices, or `(index, sample_seed)` pairs from `EpochSampler(with_sample_seeds=True)`
    (then the augmentation of that sample is a pure function of the seed). With a plain index the
    augmentation draws from Python's global `random`.

    Args:
        packed: a PackedImages reader or the packed folder.
        augmentation: what to apply (default: none).
        indices: optional subset of packed image numbers; dataset item i is packed image indices[i].
    """

    accepts_sample_seeds = True

    def __init__(
        self,
        packed: PackedImages | str | os.PathLike,
        augmentation: AugmentationConfig | None = None,
        indices: np.ndarray | None = None,
    ):
        self.packed = packed if isinstance(packed, PackedImages) else PackedImages(Path(packed))
        self.augmentation = augmentation or AugmentationConfig.none()
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.packed) if self.indices is None else len(self.indices)

    @property
    def num_classes(self) -> int:
        """Number of classes of the packed set."""
        return self.packed.num_classes

    @property
    def labels(self) -> np.ndarray:
        """int64 labels of the dataset's items."""
        labels = self.packed.labels
        return labels if self.indices is None else labels[self.indices]

    def _split_keys(self, keys: list[Any]) -> tuple[np.ndarray, list[random.Random | None]]:
        positions, rngs = [], []
        for key in keys:
            if isinstance(key, tuple | list):
                positions.append(int(key[0]))
                rngs.append(random.Random(int(key[1])))
            else:
                positions.append(int(key))
                rngs.append(None)
        idx = np.asarray(positions, dtype=np.int64)
        if self.indices is not None:
            idx = self.indices[idx]
        return idx, rngs

    def _finish(self, image: np.ndarray, label: int, rng: random.Random | None):
        if self.augmentation.active:
            # The `random` module offers the same methods as a Random instance (global state).
            image = augment_image(image, self.augmentation, rng or random)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return torch.from_numpy(chw), int(label)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        (i,), (rng,) = self._split_keys([key])
        image, label = self.packed[int(i)]
        return self._finish(image, label, rng)

    def __getitems__(self, keys: list[Any]) -> list[tuple[torch.Tensor, int]]:
        """Batch fetch used by the DataLoader: one sorted gather per shard instead of B reads."""
        idx, rngs = self._split_keys(list(keys))
        images, labels = self.packed.get_batch(idx)
        return [self._finish(images[j], labels[j], rngs[j]) for j in range(len(idx))]


class EncodedFaceDataset(PackedFaceDataset):
    """`PackedFaceDataset` over encoded images (io.encoded): each JPEG is read and decoded by the
    loader worker that fetches it. Same keys, augmentation and output, so a set trains the same
    whichever way it is stored.

    An image that cannot be read or decoded is skipped: left out of its batch (which is one image
    shorter), counted in `skipped` and appended to `<skip_log_dir>/skipped-<pid>.jsonl` - workers
    are separate processes, so a file is how the trainer learns of it (`read_skip_log`). A batch
    in which no image decodes raises DataError: that is a broken set, not a stray bad file.

    Args:
        encoded: the EncodedImages reader.
        augmentation: what to apply (default: none).
        indices: optional subset of image numbers; dataset item i is image indices[i].
        skip_log_dir: where skipped images are listed (None: only counted in this process).
    """

    def __init__(
        self,
        encoded: EncodedImages,
        augmentation: AugmentationConfig | None = None,
        indices: np.ndarray | None = None,
        skip_log_dir: str | os.PathLike | None = None,
    ):
        # The parent's methods read the images through `self.packed`: here the encoded reader.
        self.packed = encoded
        self.augmentation = augmentation or AugmentationConfig.none()
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.skip_log_dir = None if skip_log_dir is None else Path(skip_log_dir)
        self.skipped = 0

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Any]) -> list[tuple[torch.Tensor, int]]:
        idx, rngs = self._split_keys(list(keys))
        out, failed = [], []
        for i, rng in zip(idx, rngs, strict=True):
            try:
                image, label = self.packed[int(i)]
            except DataError as exc:
                failed.append(
                    {"item": int(i), "source": self.packed.source(int(i)), "error": str(exc)}
                )
                continue
            out.append(self._finish(image, label, rng))
        if failed:
            self._record_skips(failed)
        if not out:
            raise DataError(
                f"none of the {len(failed)} images of a batch could be decoded, e.g. "
                f"{failed[0]['error']}; the training set {self.packed!r} is broken"
            )
        return out

    def _record_skips(self, failed: list[dict]) -> None:
        self.skipped += len(failed)
        if self.skip_log_dir is None:
            return
        self.skip_log_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(f) + "\n" for f in failed)
        # A file per process: lines of concurrent workers never interleave.
        with open(self.skip_log_dir / f"skipped-{os.getpid()}.jsonl", "a") as f:
            f.write(lines)


def read_skip_log(skip_log_dir: str | os.PathLike) -> dict:
    """Images `EncodedFaceDataset` skipped (over every worker and epoch, each listed once):
    {"skipped": count, "items": [{"item", "source", "error"}, ...] sorted by item}."""
    items: dict[int, dict] = {}
    for path in sorted(Path(skip_log_dir).glob("skipped-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                items.setdefault(int(entry["item"]), entry)
    return {"skipped": len(items), "items": [items[k] for k in sorted(items)]}


def face_dataset(
    images: PackedImages | EncodedImages,
    augmentation: AugmentationConfig | None = None,
    skip_log_dir: str | os.PathLike | None = None,
) -> PackedFaceDataset:
    """The training dataset for a set of either storage (io.encoded.open_image_set)."""
    if isinstance(images, EncodedImages):
        return EncodedFaceDataset(images, augmentation, skip_log_dir=skip_log_dir)
    return PackedFaceDataset(images, augmentation)


def choose_training_format(
    n_images: int, image_size: int, requested: str = "auto", packed_limit_gib: float = 8.0
) -> tuple[str, str]:
    """How to store a training set: ("packed" | "jpeg", why).

    `auto` packs when the decoded images (n * size * size * 3 bytes) fit under `packed_limit_gib`:
    packing decodes every JPEG once and stores it raw, the fastest to read but 37,632 bytes per
    112 px image (~564 GB for 15M images); above the limit the set is read from its JPEGs, decoded
    in the loader workers. `packed` / `jpeg` force the choice.
    """
    if requested not in ("auto", "packed", "jpeg"):
        raise ParameterError(f"training-set format must be auto, packed or jpeg, got {requested!r}")
    raw = int(n_images) * int(image_size) ** 2 * 3
    amount = f"{raw / 2**30:,.2f} GiB" if raw >= 2**30 / 100 else f"{raw / 2**20:,.2f} MiB"
    size = f"{n_images:,} images x {image_size}x{image_size}x3 = {amount} decoded"
    if requested != "auto":
        return requested, f"{requested} (set by the format parameter; {size})"
    if raw <= packed_limit_gib * 2**30:
        return "packed", f"packed: {size} <= packed_limit_gib {packed_limit_gib:g}"
    return "jpeg", (
        f"jpeg: {size} > packed_limit_gib {packed_limit_gib:g}; images are read from their JPEGs "
        "and decoded in the loader workers"
    )


class PackedTargetDataset(PackedFaceDataset):
    """Packed images with float regression targets [N, K] instead of identity labels."""

    def __init__(self, packed: PackedImages, targets: np.ndarray):
        super().__init__(packed)
        if len(targets) != len(packed):
            raise DataError(f"{len(targets)} targets for {len(packed)} packed images")
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        idx, _ = self._split_keys(list(keys))
        images, _ = self.packed.get_batch(idx)
        return [
            (
                torch.from_numpy(np.ascontiguousarray(images[j].transpose(2, 0, 1))),
                self.targets[int(idx[j])],
            )
            for j in range(len(idx))
        ]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    drop_last: bool = True,
    persistent_workers: bool = True,
    prefetch_factor: int | None = 4,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """A DataLoader with a deterministic, resumable, rank-sharded `EpochSampler`.

    Args:
        dataset: any map-style dataset; `PackedFaceDataset` also gets per-sample seeds.
        batch_size: batch size per process (the global batch is batch_size * world_size).
        shuffle: new permutation every epoch (seeded by `seed` and the epoch).
        seed: data-order seed.
        num_workers: worker processes (0 = load in the training process).
        device: target device; pinned memory is used for CUDA.
        drop_last: drop the last incomplete batch (and trim the epoch to the world size).
        persistent_workers: keep workers alive between epochs (when num_workers > 0).
        prefetch_factor: batches each worker prepares ahead (when num_workers > 0).
        rank, world_size: default from the process group / torchrun env.
    """
    if batch_size <= 0:
        raise ParameterError(f"batch_size must be > 0, got {batch_size}")
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        with_sample_seeds=bool(getattr(dataset, "accepts_sample_seeds", False)),
    )
    workers = int(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        # A private generator: creating a loader iterator then never draws from the global RNG, so
        # resuming mid-epoch does not shift dropout & co.
        generator=torch.Generator().manual_seed(int(seed)),
    )


def heldout_identity_split(
    labels: np.ndarray, fraction: float, seed: int | Sequence[int], min_held: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Train rows and held-out rows, holding out whole identities (never an identity on both sides).

    Args:
        labels: [N] identity labels.
        fraction: share of the identities to hold out (rounded to a count).
        seed: seed of the numpy Generator that picks them (an int or a sequence, e.g. [seed, stream]).
        min_held: if > 0, hold out at least this many identities but always leave one to train on;
            0 holds out exactly the rounded fraction (none for 0).

    Returns:
        (train_rows, heldout_rows), both sorted row indices into `labels`.
    """
    ids = np.unique(labels)
    n_held = int(round(fraction * len(ids)))
    if min_held:
        n_held = min(max(min_held, n_held), len(ids) - 1)
    rng = np.random.default_rng(seed)
    held = rng.choice(ids, size=n_held, replace=False) if n_held > 0 else ids[:0]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)

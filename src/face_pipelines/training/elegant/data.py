"""Attribute labels of the real subset and the (A has attribute i, B lacks it) pairs ELEGANT trains on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.packed import PackedImages
from face_pipelines.training.data import PackedFaceDataset


def attribute_labels(
    manifest: pd.DataFrame, attributes: Sequence[str], where: str, parameter: str
) -> np.ndarray:
    """float32 [N, n] 0/1 labels of `attributes` from the manifest's boolean / 0-1 columns.

    Raises:
        ParameterError: an attribute is not a column of the manifest (names `parameter`, the
            file `where` and the columns that would do).
        DataError: a column has missing or non-binary values (names the column and first row).
    """
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        usable = [
            c
            for c in manifest.columns
            if manifest[c].dtype == bool or str(manifest[c].dtype) == "boolean"
        ]
        raise ParameterError(
            f"{parameter} names {missing}, which {where} has no column for; binary attribute "
            f"columns there: {usable}. Fix the parameter or add the labels to the manifest"
        )
    out = np.zeros((len(manifest), len(attributes)), np.float32)
    for j, name in enumerate(attributes):
        col = manifest[name]
        values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
        if len(bad):
            raise DataError(
                f"{where}: column {name!r} must be boolean (0/1) for every image; row "
                f"{int(bad[0])} has {col.iloc[int(bad[0])]!r} ({len(bad)} bad rows)"
            )
        out[:, j] = values
    return out


def read_label_table(path: str | Path) -> pd.DataFrame:
    """An attribute-label table by path: parquet, or CSV (.csv / .txt). CelebA's
    list_attr_celeba.txt converts with one line of pandas (see the README)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"attribute labels file {path} (elegant.labels_path) does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"attribute labels file {path} is unreadable: {exc}") from exc


def attribute_labels_by_path(
    manifest: pd.DataFrame,
    table: pd.DataFrame,
    attributes: Sequence[str],
    where: str,
    parameter: str = "elegant.train.attributes",
) -> np.ndarray:
    """float32 [N, n] labels of the manifest's images (in manifest order) looked up by 'path' in a
    label table. -1/1 columns (CelebA's convention) are read as 0/1.

    Raises:
        DataError: the table or manifest lacks 'path', the table repeats a path, or some manifest
            images have no row (names how many and the first).
        ParameterError: an attribute is not a column of the table.
    """
    for frame, name in ((manifest, "the subset manifest"), (table, where)):
        if "path" not in frame.columns:
            raise DataError(f"{name} has no 'path' column (columns: {list(frame.columns)[:12]})")
    dup = table["path"].duplicated()
    if dup.any():
        raise DataError(
            f"{where} lists path {table['path'][dup].iloc[0]!r} more than once "
            f"({int(dup.sum())} repeated rows)"
        )
    cols = [a for a in attributes if a in table.columns]
    sub = table[["path", *cols]].copy()
    for c in cols:  # CelebA stores -1 / 1
        values = pd.to_numeric(sub[c], errors="coerce")
        if values.isin((-1, 1)).all():
            sub[c] = (values > 0).astype(np.float32)
    joined = manifest[["path"]].merge(sub, on="path", how="left", indicator=True)
    missing = joined["_merge"] != "both"
    if missing.any():
        raise DataError(
            f"{where} has no labels for {int(missing.sum())} of {len(manifest)} subset images, "
            f"e.g. {joined['path'][missing].iloc[0]!r}; its 'path' must match the subset "
            "manifest's (relative to the image root)"
        )
    return attribute_labels(joined.drop(columns="_merge"), attributes, where, parameter)


class AttributePairDataset(PackedFaceDataset):
    """Items (A uint8 CHW, B uint8 CHW, y_A [n], y_B [n], attribute i) for iterative training.

    Item k trains attribute (k // batch_size) mod n, so with the loader's unshuffled order every
    batch trains one attribute and consecutive batches cycle through them. A is a random image with
    attribute i, B a random one without it (another identity when one exists), drawn from the
    sample seed the EpochSampler gives (new pairs every epoch, exact on resume).
    """

    def __init__(self, packed: PackedImages, labels: np.ndarray, batch_size: int, length: int):
        super().__init__(packed)
        self.labels_n = np.asarray(labels, dtype=np.float32)
        if self.labels_n.shape[0] != len(packed):
            raise DataError(f"{len(self.labels_n)} label rows for {len(packed)} packed images")
        self.batch_size, self.length = int(batch_size), int(length)
        self.positives, self.negatives = [], []
        for j in range(self.labels_n.shape[1]):
            pos = np.flatnonzero(self.labels_n[:, j] == 1)
            neg = np.flatnonzero(self.labels_n[:, j] == 0)
            if not len(pos) or not len(neg):
                raise DataError(
                    f"attribute slot {j} has {len(pos)} images with it and {len(neg)} without: "
                    "ELEGANT needs both for every attribute"
                )
            self.positives.append(pos)
            self.negatives.append(neg)

    def __len__(self) -> int:
        return self.length

    def attribute_of(self, k: int) -> int:
        return (int(k) // self.batch_size) % self.labels_n.shape[1]

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        items = []
        for key in keys:
            k, seed = (key if isinstance(key, tuple | list) else (key, k_seed(key)))[:2]
            rng = random.Random(int(seed))
            i = self.attribute_of(k)
            a = int(rng.choice(self.positives[i]))
            b = int(rng.choice(self.negatives[i]))
            for _ in range(8):  # unpaired identities: avoid A and B being the same person
                if self.packed.labels[b] != self.packed.labels[a]:
                    break
                b = int(rng.choice(self.negatives[i]))
            images, _ = self.packed.get_batch(np.array([a, b]))
            chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            y = torch.from_numpy(self.labels_n[[a, b]])
            items.append((chw[0], chw[1], y[0], y[1], i))
        return items


def k_seed(k: int) -> int:
    """Sample seed of a plain index (loaders without sample seeds)."""
    return 1_000_003 * int(k) + 7

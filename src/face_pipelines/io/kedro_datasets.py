"""Kedro dataset adapters (the one module of io/ that imports Kedro).

Large folder outputs (FaceWorld pools, packed shards, rendered datasets, checkpoints folders) are not
passed through memory: a node receives the folder as a `DirectoryDataset` input, writes into it through
the library's atomic writers, and returns a small JSON summary that downstream nodes depend on. That
keeps the DAG explicit (downstream nodes consume the summary) without loading gigabytes into Python.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from face_pipelines.errors import MissingInputError
from face_pipelines.io.atomic import atomic_path


class DirectoryDataset(AbstractDataset[None, Path]):
    """A folder on disk. `load()` returns its absolute Path.

    Args:
        path: the folder (relative to the project root or absolute).
        must_exist: if true, loading a missing folder raises a MissingInputError naming the catalog
            entry and the path (used for user-supplied data such as a WebFace4M root).
        description: what the folder holds; shown in the error when it is missing.
    """

    def __init__(
        self,
        path: str,
        must_exist: bool = False,
        description: str = "",
        metadata: dict[str, Any] | None = None,
    ):
        self._path = PurePosixPath(path)
        self._must_exist = must_exist
        self._description = description
        self.metadata = metadata

    def load(self) -> Path:
        p = Path(self._path).resolve()
        if self._must_exist and not p.exists():
            what = f" ({self._description})" if self._description else ""
            raise MissingInputError(
                f"folder {p} does not exist{what}; set its path in conf/<env>/catalog.yml "
                "or create it"
            )
        p.mkdir(parents=True, exist_ok=True)
        return p

    def save(self, data: None) -> None:  # pragma: no cover - folders are written by nodes
        raise DatasetError("DirectoryDataset is an input: nodes write into the folder it loads")

    def _exists(self) -> bool:
        return Path(self._path).exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "must_exist": self._must_exist}


class NpyDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """A numpy array in a .npy file (saved atomically; loaded memory-mapped if `mmap` is set)."""

    def __init__(self, filepath: str, mmap: bool = False, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._mmap = mmap
        self.metadata = metadata

    def load(self) -> np.ndarray:
        if not self._filepath.exists():
            raise MissingInputError(
                f"{self._filepath} does not exist; run the stage that writes it"
            )
        return np.load(self._filepath, mmap_mode="r" if self._mmap else None, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        with atomic_path(self._filepath) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(data), allow_pickle=False)

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "mmap": self._mmap}

"""Dataset manifests: one row per image, stored as parquet.

Contract: a `path` column (posix path relative to the dataset root) or a `record` column (RecordIO
record index), and an `identity` column of ints contiguous from 0. Other columns (attributes, sigma,
attrop_* ...) are carried through unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.atomic import atomic_path

__all__ = ["validate_manifest", "write_manifest", "read_manifest"]


def _integer_column(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    col = df[column]
    if col.isna().any():
        row = col.index[col.isna()][0]
        raise DataError(f"{source}: column '{column}' has a missing value (row {row})")
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        raise DataError(f"{source}: column '{column}' must hold integers, got dtype {col.dtype}")
    as_int = col.astype("int64")
    if not (as_int == col).all():
        row = col.index[as_int != col][0]
        raise DataError(
            f"{source}: column '{column}' must hold integers, row {row} has {col.loc[row]!r}"
        )
    return as_int


def validate_manifest(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a manifest against the data contract; return a copy with `identity` as int64.

    Raises DataError naming `source` and the problem: missing columns, empty manifest, missing or
    non-integer identities, identities not contiguous from 0, absolute/escaping or duplicate paths,
    negative or duplicate record indices.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: manifest must be a pandas DataFrame, got {type(df).__name__}")
    if "path" not in df.columns and "record" not in df.columns:
        raise DataError(
            f"{source}: manifest needs a 'path' or a 'record' column; has {list(df.columns)}"
        )
    if "identity" not in df.columns:
        raise DataError(f"{source}: manifest needs an 'identity' column; has {list(df.columns)}")
    if len(df) == 0:
        raise DataError(f"{source}: manifest is empty")
    out = df.copy()
    identity = _integer_column(out, "identity", source)
    uniq = pd.unique(identity)
    lo, hi = int(identity.min()), int(identity.max())
    if lo != 0 or len(uniq) != hi + 1:
        missing = sorted(set(range(max(hi, 0) + 1)) - {int(v) for v in uniq})[:5]
        raise DataError(
            f"{source}: 'identity' must be contiguous from 0; found {len(uniq)} distinct values "
            f"in [{lo}, {hi}]" + (f", missing e.g. {missing}" if missing else "")
        )
    out["identity"] = identity
    if "path" in out.columns:
        paths = out["path"]
        bad = paths.map(lambda p: not isinstance(p, str) or p == "")
        if bad.any():
            row = paths.index[bad][0]
            raise DataError(
                f"{source}: 'path' must be non-empty strings; row {row} has {paths[row]!r}"
            )
        # Vectorised: manifests of real sets have millions of rows.
        norm = paths.str.replace("\\", "/", regex=False)
        escaping = (
            norm.str.startswith("/")
            | norm.str.match(r"^[A-Za-z]:")
            | norm.str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
        )
        if escaping.any():
            row = paths.index[escaping][0]
            raise DataError(
                f"{source}: 'path' must be relative to the dataset root and stay inside it; "
                f"row {row} has {paths[row]!r}"
            )
        dup = paths.duplicated()
        if dup.any():
            row = paths.index[dup][0]
            raise DataError(f"{source}: duplicate path {paths[row]!r} (row {row})")
    if "record" in out.columns:
        record = _integer_column(out, "record", source)
        if (record < 0).any():
            row = record.index[record < 0][0]
            raise DataError(f"{source}: 'record' must be >= 0; row {row} has {record[row]}")
        dup = record.duplicated()
        if dup.any():
            row = record.index[dup][0]
            raise DataError(f"{source}: duplicate record index {record[row]} (row {row})")
        out["record"] = record
    return out


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Validate a manifest and write it as parquet, atomically."""
    path = Path(path)
    valid = validate_manifest(df, str(path))
    with atomic_path(path) as tmp:
        valid.to_parquet(tmp, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a parquet manifest."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"manifest not found: {path}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(
            f"{path}: not a readable parquet manifest ({type(exc).__name__}: {exc})"
        ) from exc
    return validate_manifest(df, str(path))

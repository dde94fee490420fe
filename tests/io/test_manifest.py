"""Manifest contract: validation errors name the source and the problem; parquet round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.io.manifest import read_manifest, validate_manifest, write_manifest


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": ["000000/000.jpg", "000000/001.jpg", "000001/000.jpg"],
            "identity": [0, 0, 1],
            "yaw": [10.0, None, -5.0],
            "attrop_met": [True, False, True],
        }
    )


def test_round_trip_keeps_extra_columns(tmp_path):
    path = tmp_path / "m" / "manifest.parquet"
    write_manifest(good(), path)
    back = read_manifest(path)
    assert back["path"].tolist() == good()["path"].tolist()
    assert back["identity"].dtype == np.int64 and back["identity"].tolist() == [0, 0, 1]
    assert back["yaw"].isna().tolist() == [False, True, False]
    assert back["attrop_met"].tolist() == [True, False, True]
    assert [p.name for p in path.parent.iterdir()] == ["manifest.parquet"]


def test_record_manifest_and_integral_floats():
    df = pd.DataFrame({"record": [1, 2, 3], "identity": [1.0, 0.0, 1.0]})
    out = validate_manifest(df, "rec_manifest")
    assert out["identity"].dtype == np.int64 and out["identity"].tolist() == [1, 0, 1]
    assert df["identity"].dtype == np.float64  # input not modified


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns="path"), "needs a 'path' or a 'record' column"),
        (lambda d: d.drop(columns="identity"), "needs an 'identity' column"),
        (lambda d: d.iloc[:0], "manifest is empty"),
        (lambda d: d.assign(identity=[0, 0, 2]), r"contiguous from 0.*missing e\.g\. \[1\]"),
        (lambda d: d.assign(identity=[1, 1, 2]), "contiguous from 0"),
        (lambda d: d.assign(identity=[0, None, 1]), "'identity' has a missing value"),
        (lambda d: d.assign(identity=[0, 0.5, 1]), "must hold integers, row 1"),
        (lambda d: d.assign(identity=["a", "a", "b"]), "must hold integers"),
        (lambda d: d.assign(path=["/abs/0.jpg", "a", "b"]), "relative to the dataset root"),
        (lambda d: d.assign(path=["a/../../x.jpg", "a", "b"]), "stay inside it"),
        (lambda d: d.assign(path=["a", "a", "b"]), "duplicate path 'a'"),
        (lambda d: d.assign(path=["a", None, "b"]), "non-empty strings; row 1"),
        (lambda d: d.assign(record=[0, -1, 2]), "'record' must be >= 0"),
        (lambda d: d.assign(record=[0, 1, 1]), "duplicate record index 1"),
    ],
)
def test_contract_violations(change, message):
    with pytest.raises(DataError, match=rf"^my_source: .*{message}"):
        validate_manifest(change(good()), "my_source")


def test_write_refuses_invalid_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.parquet"
    with pytest.raises(DataError, match="bad.parquet"):
        write_manifest(good().assign(identity=[0, 0, 5]), path)
    assert list(tmp_path.iterdir()) == []


def test_read_errors(tmp_path):
    with pytest.raises(MissingInputError, match="missing.parquet"):
        read_manifest(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"definitely not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet manifest"):
        read_manifest(junk)
    # a parquet that breaks the contract is caught on read too
    bad = tmp_path / "bad.parquet"
    good().assign(identity=[3, 3, 4]).to_parquet(bad)
    with pytest.raises(DataError, match=r"bad\.parquet: 'identity' must be contiguous"):
        read_manifest(bad)

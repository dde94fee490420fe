"""Checkpoints: atomic save, weights_only load, foreign state_dicts, clear errors."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.checkpoint import load_checkpoint, save_checkpoint, strip_state_dict_prefix


class Payload:
    """An arbitrary Python object: a checkpoint holding one must not be unpickled."""

    def __init__(self):
        self.value = 3


def test_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    path = save_checkpoint(
        tmp_path / "sub" / "model.pt",
        arch="tiny",
        config={"width": 3, "root": Path("/data/x"), "scale": np.float32(0.5)},
        state_dict=model.state_dict(),
        meta={"epoch": 4, "acc": 0.9},
        optimizer={"lr": 0.1},
    )
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    ckpt = load_checkpoint(path)
    assert ckpt["arch"] == "tiny"
    assert ckpt["config"] == {"width": 3, "root": "/data/x", "scale": 0.5}
    assert ckpt["meta"] == {"epoch": 4, "acc": 0.9}
    assert ckpt["optimizer"] == {"lr": 0.1}
    clone = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    clone.load_state_dict(ckpt["state_dict"])
    for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_save_refuses_values_that_would_not_load(tmp_path):
    with pytest.raises(ParameterError, match="meta.*ndarray"):
        save_checkpoint(tmp_path / "a.pt", "tiny", {}, {}, meta={"hist": np.zeros(3)})
    assert not (tmp_path / "a.pt").exists()


def test_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"arch": "x", "config": {}, "state_dict": {}, "meta": {}, "p": Payload()}, path)
    with pytest.raises(DataError, match="evil.pt.*weights_only"):
        load_checkpoint(path)


def test_foreign_bare_state_dict(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    sd = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    torch.save(sd, tmp_path / "backbone.pth")  # how insightface ships backbone.pth
    ckpt = load_checkpoint(tmp_path / "backbone.pth")
    assert ckpt["arch"] is None and ckpt["config"] == {} and ckpt["meta"] == {"foreign": True}
    assert set(ckpt["state_dict"]) == {"0.weight", "0.bias"}
    assert torch.equal(ckpt["state_dict"]["0.weight"], sd["0.weight"])

    torch.save({"epoch": 3, "arch": "iresnet100", "state_dict": sd}, tmp_path / "magface.pth")
    magface = load_checkpoint(tmp_path / "magface.pth")
    assert magface["meta"]["foreign"] is True and magface["epoch"] == 3
    assert magface["arch"] == "iresnet100"

    ddp = {"module." + k: v for k, v in sd.items()}
    assert set(strip_state_dict_prefix(ddp)) == set(sd)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(MissingInputError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "ok.pt", "tiny", {}, nn.Linear(2, 2).state_dict())
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="text.pt"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(DataError, match="list.pt"):
        load_checkpoint(tmp_path / "list.pt")


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, "tiny", {"v": 1}, {})

    def exploding_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, "tiny", {"v": 2}, {})
    monkeypatch.undo()
    assert load_checkpoint(path)["config"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]

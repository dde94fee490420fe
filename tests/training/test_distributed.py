"""DDP through launch(): 2 CPU processes on gloo equal one process on the same global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from face_pipelines.device import unwrap_model
from face_pipelines.errors import ParameterError
from face_pipelines.image_tensors import to_device_normalised
from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.training.data import PackedFaceDataset, make_loader
from face_pipelines.training.distributed import (
    all_reduce_mean,
    is_rank0,
    launch,
    world_info,
    wrap_ddp,
)
from face_pipelines.training.engine import TrainState, fit

from .helpers import TinyNet, make_packed

GLOBAL_BATCH = 8


def _step(batch, state):
    images, labels = batch
    loss = nn.functional.cross_entropy(state.model(to_device_normalised(images, "cpu")), labels)
    state.backward_and_step(loss)
    return {"loss": loss}


def train_worker(packed_root: str, checkpoint_dir: str) -> dict:
    """Runs in every rank (module level so spawned processes can import it)."""
    torch.set_num_threads(1)
    info = world_info()
    torch.manual_seed(0)
    model = wrap_ddp(TinyNet(dropout=0.0), torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = TrainState.create(model, opt, device="cpu", grad_clip=1.0)
    loader = make_loader(
        PackedFaceDataset(packed_root), batch_size=GLOBAL_BATCH // info.world_size, seed=3
    )
    history = fit(_step, state, loader, 2, checkpoint_dir, progress=False)
    mean_rank = float(all_reduce_mean(torch.tensor(float(info.rank))))
    return {
        "world_size": info.world_size,
        "rank0": is_rank0(),
        "mean_rank": mean_rank,
        "steps": state.step,
        "epoch_loss": history[-1]["epoch/loss"],
        "params": {k: v.numpy().copy() for k, v in unwrap_model(model).state_dict().items()},
    }


@pytest.mark.timeout(240)
def test_two_gloo_processes_match_one_process(tmp_path):
    root = str(make_packed(tmp_path / "packed", n=32, size=8))
    single = launch(train_worker, (root, str(tmp_path / "single")), devices=1)
    assert single["world_size"] == 1 and single["steps"] == 8
    ddp = launch(train_worker, (root, str(tmp_path / "ddp")), devices=2, backend="gloo")
    assert ddp["world_size"] == 2 and ddp["rank0"] and ddp["mean_rank"] == 0.5
    assert ddp["steps"] == 8  # each rank sees half of every global batch
    for name, value in single["params"].items():
        np.testing.assert_allclose(ddp["params"][name], value, atol=1e-5, rtol=0)
    assert ddp["epoch_loss"] == pytest.approx(single["epoch_loss"], abs=1e-5)
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["meta"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    for name, value in single["params"].items():
        np.testing.assert_allclose(ckpt["state_dict"]["model"][name].numpy(), value, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["last.pt"]


def test_launch_arguments():
    assert launch(world_info) == world_info()
    with pytest.raises(ParameterError, match="devices"):
        launch(world_info, devices=0)
    with pytest.raises(ParameterError, match="backend"):
        launch(world_info, devices=2, backend="mpi")

"""Multi-process training: one worker function, run in-process, under torchrun, or spawned.

`launch(worker_fn, args, devices)`:
- inside a torchrun world (WORLD_SIZE / RANK set, e.g. multi-node `torchrun ... -m kedro run`): join
  that process group and run the worker in this process;
- `devices == 1`: run the worker in this process, no process group;
- `devices > 1`: start `devices` copies with torch's elastic launcher (torchrun semantics, rendezvous
  on localhost with a free port); NCCL on CUDA, gloo on CPU.

Inside the worker, `world_info()` says who we are, `EpochSampler` gives each rank its deterministic,
resumable share of every epoch, `wrap_ddp` wraps the model, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from face_pipelines.errors import ParameterError


@dataclass(frozen=True)
class WorldInfo:
    """Where this process stands in the (possibly single-process) world.

    Attributes:
        rank: global rank (0 when not distributed).
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes.
    """

    rank: int
    local_rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def in_torchrun_world() -> bool:
    """True when torchrun (or the elastic launcher) started this process (WORLD_SIZE and RANK set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_info() -> WorldInfo:
    """Rank, local rank and world size, from the process group if initialised, else from the env."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(
            dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
        )
    if in_torchrun_world():
        return WorldInfo(
            int(os.environ["RANK"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
        )
    return WorldInfo(0, 0, 1)


def is_rank0() -> bool:
    """True on the process that writes checkpoints, logs and catalog outputs."""
    return world_info().rank == 0


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ParameterError(f"distributed backend {backend!r} is unknown; use auto, nccl or gloo")
    return backend


def init_from_env(backend: str = "auto") -> WorldInfo:
    """Join the process group described by the torchrun env vars (no-op if already joined).

    On NCCL, also selects the GPU of LOCAL_RANK for this process.
    """
    if not dist.is_initialized() and in_torchrun_world() and int(os.environ["WORLD_SIZE"]) > 1:
        backend = _resolve_backend(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend, init_method="env://")
    return world_info()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _elastic_entry(worker_fn: Callable[..., Any], args: Sequence[Any], backend: str) -> Any:
    """What each spawned process runs: join the group, run the worker, leave the group."""
    init_from_env(backend)
    try:
        return worker_fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    worker_fn: Callable[..., Any],
    args: Sequence[Any] = (),
    devices: int = 1,
    backend: str = "auto",
) -> Any:
    """Run `worker_fn(*args)` on `devices` processes and return rank 0's result.

    Spawned processes import `worker_fn` by module path and re-import the calling script, so
    scripts that call launch need an `if __name__ == "__main__":` guard (Kedro's CLI has one).

    Args:
        worker_fn: a module-level (picklable) function; it builds its own model, loader and state.
        args: picklable arguments.
        devices: processes on this node (GPUs on CUDA; CPU processes on gloo otherwise).
        backend: "auto" (NCCL on CUDA, gloo on CPU), "nccl" or "gloo".

    Raises:
        ParameterError: devices < 1, or more CUDA processes than visible GPUs with NCCL.
    """
    if in_torchrun_world():
        init_from_env(backend)
        return worker_fn(*args)
    devices = int(devices)
    if devices < 1:
        raise ParameterError(f"devices must be >= 1, got {devices}")
    if devices == 1:
        return worker_fn(*args)
    backend = _resolve_backend(backend)
    if backend == "nccl" and devices > torch.cuda.device_count():
        raise ParameterError(
            f"devices={devices} but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=f"face_pipelines-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.1,
    )
    results = elastic_launch(config, _elastic_entry)(worker_fn, tuple(args), backend)
    return results[0]


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over ranks (a new tensor; `value` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (`[obj]` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, **ddp_kwargs: Any) -> nn.Module:
    """DistributedDataParallel around `model` when the world has > 1 process, else `model`."""
    if world_info().world_size == 1:
        return model
    device_ids = (
        [device.index if device.index is not None else 0] if device.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, rank-sharded sample order (a DistributedSampler that can skip).

    Epoch `e` uses the permutation drawn from `numpy.random.default_rng([seed, e])`, padded (by
    wrapping) or trimmed to a multiple of the world size; rank r takes every world_size-th entry
    starting at r. `set_start(k)` skips this rank's first k samples of the current epoch (resume
    mid-epoch); `set_epoch` resets it.

    With `with_sample_seeds=True` it yields `(index, sample_seed)` pairs, the seed drawn from the
    same epoch generator: datasets that accept them (`PackedFaceDataset`) derive their augmentation
    randomness from it, so augmentations are reproducible across worker counts and resumes.

    Args:
        num_samples: dataset length.
        shuffle: permute every epoch (else dataset order).
        seed: base seed of the data order.
        rank, world_size: default from `world_info()`.
        drop_last: trim instead of pad to a multiple of the world size.
        with_sample_seeds: yield (index, seed) pairs instead of indices.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        with_sample_seeds: bool = False,
    ):
        info = world_info()
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = info.rank if rank is None else int(rank)
        self.world_size = info.world_size if world_size is None else int(world_size)
        self.drop_last = drop_last
        self.with_sample_seeds = with_sample_seeds
        if not 0 <= self.rank < self.world_size:
            raise ParameterError(f"rank {self.rank} outside world of size {self.world_size}")
        if drop_last:
            self.total = (self.num_samples // self.world_size) * self.world_size
        else:
            self.total = -(-self.num_samples // self.world_size) * self.world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to yield (and start it from the beginning)."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip this rank's first `start` samples of the current epoch."""
        self.start = int(start)

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and start: all that defines what comes next."""
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore `state_dict()`."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.start = int(state["start"])

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, sample seeds) of the whole epoch before sharding (length `self.total`)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        seeds = rng.integers(0, 2**62, size=self.num_samples, dtype=np.int64)
        if self.total > self.num_samples:  # pad by wrapping, like torch's DistributedSampler
            extra = np.resize(np.arange(self.num_samples), self.total - self.num_samples)
            order = np.concatenate([order, order[extra]])
            seeds = np.concatenate([seeds, seeds[extra]])
        return order[: self.total], seeds[: self.total]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        order, seeds = self.epoch_order(self.epoch)
        mine = slice(self.rank, self.total, self.world_size)
        order, seeds = order[mine][self.start :], seeds[mine][self.start :]
        if self.with_sample_seeds:
            return iter(zip(order.tolist(), seeds.tolist(), strict=True))
        return iter(order.tolist())

    def __len__(self) -> int:
        # The full share of an epoch (not minus `start`): the engine counts batches per epoch.
        return self.total // self.world_size

"""The shared training loop: recognizer, teacher and Vec2Face generator all train through `fit`.

A stage supplies a `step_fn(batch, state) -> {"loss": tensor, ...}` that runs the forward pass under
`state.autocast()` and hands each loss to `state.backward_and_step(loss, name)`; the engine does the
rest, top to bottom:

    resume from <checkpoint_dir>/last.pt if it exists and was written by the same configuration, data
    and code (otherwise set it aside as stale-<time>.pt, say why, and start from scratch)
    for each remaining epoch:
        for each batch (skipping those done before a mid-epoch checkpoint):
            metrics = step_fn(batch, state)           # backward + optimizer steps inside
            stop with NonFiniteLossError if the loss is not finite
            at the end of an accumulation window: scaler update, step += 1, log, maybe checkpoint
        checkpoint (atomic), epoch_end_fn (evaluation, sample grids), log epoch means

`backward_and_step` does loss scaling (fp16), gradient accumulation (the loss is divided by the
window length; the optimizer steps at the end of the window), gradient clipping and the optimizer's
LR scheduler step. Several optimizers (GAN: generator and discriminator) are several names
(`frozen_parameters`, from face_pipelines.losses.gan, keeps D's weights out of G's step)::

    def step_fn(batch, state):
        real = to_device_normalised(batch[0], state.device)
        with state.autocast():
            fake = state.models["gen"](feats)
            d_loss = d_objective(state.models["disc"], real, fake.detach())
        state.backward_and_step(d_loss, "disc")
        with frozen_parameters(state.models["disc"]), state.autocast():
            g_loss = g_objective(state.models["disc"], fake, real)
        state.backward_and_step(g_loss, "gen")
        return {"loss": g_loss + d_loss, "g_loss": g_loss, "d_loss": d_loss}

The checkpoint (`last.pt`, a face_pipelines checkpoint with arch "face_pipelines.train_state")
holds every model, optimizer, scheduler and scaler state, the Python / NumPy / torch (CPU and CUDA)
RNG states of every rank, the sampler (data order) and loader-generator state, the step, epoch and
position inside the epoch. Restoring it continues the run exactly as if it had not stopped (on CPU).

The run configuration stored in it (and compared before resuming) holds the caller's `config` (recipe
and data fingerprints), `grad_accum_steps` and the digest of the face_pipelines source the run
executes (`code_version.source_digest` over the engine's, the step function's, the models' and the
dataset's modules and what they import), so a run whose loss, model or data code changed is never
resumed or reused as finished.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from face_pipelines.device import PrecisionPolicy, resolve_device, unwrap_model
from face_pipelines.errors import DataError, FacePipelinesError, ParameterError
from face_pipelines.io.atomic import atomic_path
from face_pipelines.io.checkpoint import load_checkpoint, save_checkpoint
from face_pipelines.training.code_version import SourceDigest, source_digest
from face_pipelines.training.distributed import (
    EpochSampler,
    all_reduce_mean,
    barrier,
    gather_objects,
    is_rank0,
    world_info,
)

log_warning = logging.getLogger(__name__).warning
TRAIN_STATE_ARCH = "face_pipelines.train_state"
LAST_CHECKPOINT = "last.pt"
SOURCE_KEY = "source_code"  # run-config entry holding the digest of the code the run executes

StepFn = Callable[[Any, "TrainState"], Mapping[str, Any]]
LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(FacePipelinesError, FloatingPointError):
    """A loss (or gradient norm) became NaN/inf; the run stopped before updating the weights.

    Attributes:
        step: optimizer step at which it happened (0-based count of completed steps).
        epoch: epoch index (0-based).
        value: the offending value.
    """

    def __init__(self, step: int, epoch: int, value: float, what: str = "loss"):
        self.step, self.epoch, self.value = step, epoch, value
        super().__init__(
            f"non-finite {what} ({value}) at step {step}, epoch {epoch}: training stopped and the "
            "last good checkpoint was kept. Lower the learning rate, check the inputs or clip "
            "gradients, then re-run (it resumes from that checkpoint)."
        )


@dataclass
class TrainState:
    """Everything a training run carries from step to step (and into its checkpoint).

    Attributes:
        models: named modules (possibly DDP / compiled wrappers); "model" for a single one.
        optimizers: named optimizers; `backward_and_step(loss, name)` steps optimizers[name].
        schedulers: per-optimizer LR schedulers (same names), stepped with their optimizer.
        device: where training runs.
        precision: autocast / GradScaler policy.
        scaler: one GradScaler shared by all optimizers (enabled for fp16 only).
        grad_clip: per-optimizer max gradient norm (None = no clipping).
        grad_accum_steps: batches whose gradients are summed before each optimizer step.
        step: completed optimizer steps (iterations).
        epoch: current epoch (0-based; equals completed epochs between epochs).
        batch_in_epoch: batches of the current epoch already consumed.
        extra: user state saved with the checkpoint (plain values / tensors only).
        epoch_sums: running sums of this epoch's metrics (so means survive a mid-epoch resume).
        epoch_batches: batches summed into epoch_sums.
    """

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: PrecisionPolicy | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_clip: dict[str, float | None] = field(default_factory=dict)
    grad_accum_steps: int = 1
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_batches: int = 0
    # Accumulation-window bookkeeping for the batch in progress (set by fit, not saved).
    _window_len: int = field(default=1, repr=False)
    _window_end: bool = field(default=True, repr=False)
    _zeroed: set = field(default_factory=set, repr=False)
    _stepped: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if set(self.schedulers) - set(self.optimizers):
            raise ParameterError(
                f"schedulers {sorted(set(self.schedulers) - set(self.optimizers))} have no "
                f"optimizer of the same name (optimizers: {sorted(self.optimizers)})"
            )
        if self.grad_accum_steps < 1:
            raise ParameterError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.precision is None:
            self.precision = PrecisionPolicy.resolve(self.device)
        if self.scaler is None:
            self.scaler = self.precision.make_grad_scaler()

    @classmethod
    def create(
        cls,
        model: nn.Module | Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
        scheduler: Any | Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "auto",
        precision: str = "auto",
        grad_clip: float | Mapping[str, float | None] | None = None,
        grad_accum_steps: int = 1,
    ) -> TrainState:
        """Build a state from one model/optimizer/scheduler, or from dicts of named ones.

        Args:
            model: a module, or {name: module}.
            optimizer: an optimizer, or {name: optimizer} (names used by backward_and_step).
            scheduler: an LR scheduler, or {optimizer name: scheduler}, or None.
            device: device spec (see resolve_device).
            precision: "auto", "fp32", "bf16" or "fp16" (see PrecisionPolicy.resolve).
            grad_clip: max gradient norm for every optimizer, or {name: norm}.
            grad_accum_steps: batches per optimizer step.
        """
        device = resolve_device(device)
        optimizers = dict(optimizer) if isinstance(optimizer, Mapping) else {"model": optimizer}
        if isinstance(scheduler, Mapping):
            schedulers = dict(scheduler)
        elif scheduler is None:
            schedulers = {}
        else:
            if len(optimizers) != 1:
                raise ParameterError("pass schedulers as {optimizer name: scheduler}")
            schedulers = {next(iter(optimizers)): scheduler}
        if isinstance(grad_clip, Mapping):
            clip = dict(grad_clip)
        else:
            clip = dict.fromkeys(optimizers, grad_clip)
        return cls(
            models=dict(model) if isinstance(model, Mapping) else {"model": model},
            optimizers=optimizers,
            schedulers=schedulers,
            device=device,
            precision=PrecisionPolicy.resolve(device, precision),
            grad_clip=clip,
            grad_accum_steps=int(grad_accum_steps),
        )

    # -- conveniences for step functions -----------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The only model (error if there are several: use state.models[name])."""
        return self._only(self.models, "models")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The only optimizer (error if there are several)."""
        return self._only(self.optimizers, "optimizers")

    @staticmethod
    def _only(named: dict[str, Any], what: str) -> Any:
        if len(named) != 1:
            raise ParameterError(f"this state has {len(named)} {what} {sorted(named)}; name one")
        return next(iter(named.values()))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes under the state's precision policy."""
        return self.precision.autocast()

    def lr(self, name: str | None = None) -> float:
        """Current learning rate of the first param group of optimizer `name`."""
        opt = self.optimizers[name] if name else self.optimizer
        return float(opt.param_groups[0]["lr"])

    @property
    def accumulating(self) -> bool:
        """True while the current batch is not the last of its accumulation window."""
        return not self._window_end

    def backward_and_step(self, loss: torch.Tensor, name: str | None = None) -> torch.Tensor | None:
        """Backpropagate `loss` for optimizer `name`; step it at the end of the accumulation window.

        Checks the loss is finite before touching gradients, scales it for fp16 and divides it by the
        window length, clips the gradient norm (after unscaling) if configured, steps the optimizer
        through the GradScaler and then its scheduler. Gradients of this optimizer are zeroed at the
        first backward of each window.

        Returns the (pre-clip) gradient norm when it stepped with clipping, else None.

        Raises:
            NonFiniteLossError: the loss is NaN/inf, or (without a GradScaler) the gradient norm is.
        """
        if name is None:
            name = next(iter(self.optimizers)) if len(self.optimizers) == 1 else None
            if name is None:
                raise ParameterError(
                    f"backward_and_step needs an optimizer name, one of {sorted(self.optimizers)}"
                )
        optimizer = self.optimizers[name]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(self.step, self.epoch, value, f"loss ({name})")
        if name not in self._zeroed:
            optimizer.zero_grad(set_to_none=True)
            self._zeroed.add(name)
        self.scaler.scale(loss / self._window_len).backward()
        if not self._window_end:
            return None
        norm = None
        max_norm = self.grad_clip.get(name)
        if max_norm:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                raise NonFiniteLossError(
                    self.step, self.epoch, float(norm), f"gradient norm ({name})"
                )
        self.scaler.step(optimizer)
        self._stepped.add(name)
        if name in self.schedulers:
            self.schedulers[name].step()
        return norm

    def _begin_batch(self, num_batches: int) -> None:
        k = self.grad_accum_steps
        window_start = (self.batch_in_epoch // k) * k
        # A short last window (epoch not a multiple of k) averages over the batches it has; a
        # loader that yields more batches than its len() steps on every extra batch.
        self._window_len = max(1, min(k, num_batches - window_start))
        self._window_end = self.batch_in_epoch + 1 >= window_start + self._window_len

    def _end_window(self) -> None:
        if self._stepped and self.scaler.is_enabled():
            self.scaler.update()
        self._zeroed.clear()
        self._stepped.clear()
        self.step += 1


# -- checkpoints -------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_train_state(
    state: TrainState,
    path: str | Path,
    loader: Any = None,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Checkpoint `state` to `path` atomically (rank 0 writes; every rank must call it).

    Args:
        state: the training state.
        path: the file (usually <checkpoint_dir>/last.pt).
        loader: the DataLoader, whose EpochSampler and generator states are saved.
        config: plain run configuration recorded in the checkpoint.
    """
    rng_per_rank = gather_objects(_rng_state())  # collective: every rank takes part
    if not is_rank0():
        return
    sampler = getattr(loader, "sampler", None)
    generator = getattr(loader, "generator", None)
    save_checkpoint(
        path,
        arch=TRAIN_STATE_ARCH,
        config=dict(config or {}),
        state_dict={name: unwrap_model(m).state_dict() for name, m in state.models.items()},
        meta={
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "world_size": world_info().world_size,
            "precision": state.precision.name,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        optimizers={name: opt.state_dict() for name, opt in state.optimizers.items()},
        schedulers={name: s.state_dict() for name, s in state.schedulers.items()},
        scaler=state.scaler.state_dict(),
        rng=rng_per_rank,
        sampler=sampler.state_dict() if isinstance(sampler, EpochSampler) else None,
        loader_generator=generator.get_state() if generator is not None else None,
        epoch_sums=dict(state.epoch_sums),
        epoch_batches=state.epoch_batches,
        extra=state.extra,
    )


def load_train_state(state: TrainState, path: str | Path, loader: Any = None) -> None:
    """Restore `state` (and the loader's sampler / generator) from a `save_train_state` file.

    Raises:
        DataError: the file is not a training-state checkpoint or does not fit these models.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("arch") != TRAIN_STATE_ARCH:
        raise DataError(
            f"{path} is not a training-state checkpoint (arch {ckpt.get('arch')!r}, expected "
            f"{TRAIN_STATE_ARCH!r}); move it away or point checkpoint_dir elsewhere"
        )
    for kind, saved, ours in (
        ("models", ckpt["state_dict"], state.models),
        ("optimizers", ckpt["optimizers"], state.optimizers),
        ("schedulers", ckpt["schedulers"], state.schedulers),
    ):
        if set(saved) != set(ours):
            raise DataError(
                f"checkpoint {path} holds {kind} {sorted(saved)} but this run has {sorted(ours)}"
            )
    try:
        for name, model in state.models.items():
            unwrap_model(model).load_state_dict(ckpt["state_dict"][name])
        for name, opt in state.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise DataError(f"checkpoint {path} does not fit this run's models: {exc}") from exc
    for name, sched in state.schedulers.items():
        sched.load_state_dict(ckpt["schedulers"][name])
    if state.scaler.is_enabled() and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    meta = ckpt["meta"]
    state.step, state.epoch = int(meta["step"]), int(meta["epoch"])
    state.batch_in_epoch = int(meta["batch_in_epoch"])
    state.epoch_sums = dict(ckpt.get("epoch_sums") or {})
    state.epoch_batches = int(ckpt.get("epoch_batches") or 0)
    state.extra = dict(ckpt.get("extra") or {})
    rng = ckpt["rng"]
    info = world_info()
    _set_rng_state(rng[info.rank] if len(rng) == info.world_size else rng[0])
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler) and ckpt.get("sampler"):
        sampler.load_state_dict(ckpt["sampler"])
    generator = getattr(loader, "generator", None)
    if generator is not None and ckpt.get("loader_generator") is not None:
        generator.set_state(ckpt["loader_generator"])


# -- the loop ----------------------------------------------------------------------------------
def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, list | tuple) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, Mapping) and batch:
        return _batch_size(next(iter(batch.values())))
    return 0


def _no_sync(state: TrainState) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce on batches inside an accumulation window."""
    stack = contextlib.ExitStack()
    if state.accumulating:
        for model in state.models.values():
            if isinstance(model, nn.parallel.DistributedDataParallel):
                stack.enter_context(model.no_sync())
    return stack


def fit(
    step_fn: StepFn,
    state: TrainState,
    loader: Any,
    epochs: int,
    checkpoint_dir: str | Path | None = None,
    *,
    log: LogFn | None = None,
    log_every: int = 10,
    checkpoint_every_steps: int | None = None,
    keep_every_epochs: int | None = None,
    epoch_end_fn: Callable[[TrainState, dict[str, float]], Mapping[str, float] | None]
    | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train `state` for `epochs` epochs over `loader`, resuming from `checkpoint_dir` if possible.

    Args:
        step_fn: `step_fn(batch, state) -> {"loss": scalar, ...}`; runs forward under
            `state.autocast()` and calls `state.backward_and_step(loss, name)` per optimizer.
            Every returned value is averaged into the logged metrics.
        state: the TrainState (models already on the device, DDP-wrapped when distributed).
        loader: an iterable of batches with a length; a `make_loader` DataLoader (EpochSampler)
            gives exact mid-epoch resume without reading the skipped batches.
        epochs: total epochs of the run (a resumed run continues up to it).
        checkpoint_dir: where `last.pt` lives; None disables checkpoints and resume.
        log: `log(metrics, step)` on rank 0: every `log_every` optimizer steps the window means plus
            the lr the last step used ("lr", or "lr/<name>" with several optimizers) and
            "images_per_s" (all ranks together), at step=state.step (1-based); after every
            epoch the epoch means as "epoch/<key>" plus "epoch/images_per_s" and "epoch/time_s",
            at step=completed epochs.
        log_every: optimizer steps between per-step logs.
        checkpoint_every_steps: also checkpoint mid-epoch every this many optimizer steps.
        keep_every_epochs: keep a copy `epoch_<n>.pt` every this many epochs (besides last.pt).
        epoch_end_fn: called on every rank after each epoch's checkpoint with (state, epoch
            metrics); the metrics it returns are added to the epoch's log.
        config: plain run configuration stored in the checkpoint; a checkpoint written with
            another one (epochs aside), or by other code (see `_run_source`), is set aside.
        progress: show a tqdm bar (rank 0).
        desc: progress-bar label.

    Returns:
        The epoch metrics of the epochs run by this call.

    Raises:
        NonFiniteLossError: a loss became NaN/inf (the weights were not updated with it; the last
            checkpoint on disk is the last good one).

    Long because: the epoch and batch loops stay one function (about 90 lines) so that resume,
    accumulation windows, logging, mid-epoch and end-of-epoch checkpoints read in the order they
    happen, as the module docstring lists them.
    """
    info = world_info()
    rank0 = info.rank == 0
    ckpt_path = Path(checkpoint_dir) / LAST_CHECKPOINT if checkpoint_dir is not None else None
    run_config = {"epochs": epochs, "grad_accum_steps": state.grad_accum_steps, **(config or {})}
    if ckpt_path is not None:
        source = _run_source(step_fn, state, loader)
        run_config[SOURCE_KEY] = {"digest": source.digest, "files": source.files}
    if ckpt_path is not None and ckpt_path.exists():
        _resume_or_set_aside(state, ckpt_path, run_config, loader, rank0)
    num_batches = len(loader)
    history: list[dict[str, float]] = []

    for epoch in range(state.epoch, epochs):
        state.epoch = epoch
        skip = state.batch_in_epoch
        bar = tqdm(
            _epoch_batches(loader, epoch, skip),
            total=num_batches,
            initial=skip,
            desc=f"{desc} {epoch + 1}/{epochs}",
            unit="batch",
            disable=not (progress and rank0),
            dynamic_ncols=True,
        )
        epoch_start = time.perf_counter()
        epoch_images = 0
        window = _LogWindow()

        for batch in bar:
            state._begin_batch(num_batches)
            lrs_used = _lrs(state)  # before the scheduler moves on: the lr of this step
            with _no_sync(state):
                out = step_fn(batch, state)
            values = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in out.items()}
            if "loss" not in values:
                raise ParameterError("step_fn must return a dict with a 'loss' entry")
            if not math.isfinite(values["loss"]):
                raise NonFiniteLossError(state.step, epoch, values["loss"])
            n_images = _batch_size(batch)
            window.add(values, n_images)
            for k, v in values.items():
                state.epoch_sums[k] = state.epoch_sums.get(k, 0.0) + v
            epoch_images += n_images
            state.epoch_batches += 1
            state.batch_in_epoch += 1
            if state.accumulating:
                continue
            state._end_window()

            if state.step % log_every == 0:
                metrics = window.flush(lrs_used, info.world_size)
                if rank0 and log is not None:
                    log(metrics, state.step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            if (
                ckpt_path is not None
                and checkpoint_every_steps
                and state.step % checkpoint_every_steps == 0
                and state.batch_in_epoch < num_batches
            ):
                save_train_state(state, ckpt_path, loader, run_config)
        bar.close()

        epoch_time = time.perf_counter() - epoch_start
        epoch_metrics = _epoch_means(state)
        epoch_metrics["epoch/images_per_s"] = epoch_images * info.world_size / max(epoch_time, 1e-9)
        epoch_metrics["epoch/time_s"] = epoch_time
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        state.epoch_sums, state.epoch_batches = {}, 0
        if ckpt_path is not None:
            _checkpoint_epoch(state, ckpt_path, loader, run_config, keep_every_epochs, rank0)
        if epoch_end_fn is not None:
            epoch_metrics.update(epoch_end_fn(state, dict(epoch_metrics)) or {})
        if rank0 and log is not None:
            log(epoch_metrics, state.epoch)
        history.append(epoch_metrics)
    return history


@dataclass
class _LogWindow:
    """Metric sums of the batches since the last per-step log."""

    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    images: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, values: Mapping[str, float], n_images: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.batches += 1
        self.images += n_images

    def flush(self, lrs: Mapping[str, float], world_size: int) -> dict[str, float]:
        """The window's means, the learning rates used and the throughput; starts a new window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        metrics = {k: v / self.batches for k, v in self.sums.items()}
        metrics.update(lrs)
        metrics["images_per_s"] = self.images * world_size / elapsed
        self.sums, self.batches, self.images = {}, 0, 0
        self.start = time.perf_counter()
        return metrics


def _checkpoint_epoch(
    state: TrainState,
    ckpt_path: Path,
    loader: Any,
    run_config: dict,
    keep_every_epochs: int | None,
    rank0: bool,
) -> None:
    """last.pt after an epoch, plus a kept copy epoch_<n>.pt every `keep_every_epochs` epochs."""
    save_train_state(state, ckpt_path, loader, run_config)
    if keep_every_epochs and state.epoch % keep_every_epochs == 0 and rank0:
        _copy_checkpoint(ckpt_path, ckpt_path.with_name(f"epoch_{state.epoch:04d}.pt"))


def _resume_or_set_aside(
    state: TrainState, ckpt_path: Path, run_config: dict, loader: Any, rank0: bool
) -> None:
    """Resume from `ckpt_path`, or - written by another configuration, data or code - move it
    aside as stale-<time>.pt, say why, and leave `state` fresh."""
    reason = _stale_reason(ckpt_path, run_config)
    if reason:
        stale = ckpt_path.with_name(f"stale-{time.strftime('%Y%m%dT%H%M%S')}.pt")
        if rank0:
            ckpt_path.replace(stale)
            log_warning(f"{reason}; moved it to {stale.name} and starting from scratch")
        barrier()
    else:
        load_train_state(state, ckpt_path, loader)


def _epoch_batches(loader: Any, epoch: int, skip: int) -> Iterator[Any]:
    """This epoch's batches from the `skip`-th on: a resumable EpochSampler starts there itself
    (no batch is loaded twice); any other loader is iterated past the skipped ones."""
    sampler = getattr(loader, "sampler", None)
    resumable_sampler = isinstance(sampler, EpochSampler) and getattr(loader, "batch_size", None)
    if resumable_sampler:
        sampler.set_epoch(epoch)
        sampler.set_start(skip * loader.batch_size)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batches = iter(loader)
    if skip and not resumable_sampler:
        batches = itertools.islice(batches, skip, None)
    return batches


def _epoch_means(state: TrainState) -> dict[str, float]:
    """The epoch's metric means over every rank ('epoch/<name>')."""
    keys = sorted(state.epoch_sums)
    local_means = torch.tensor(
        [state.epoch_sums[k] / max(state.epoch_batches, 1) for k in keys],
        dtype=torch.float64,
        device=state.device if state.device.type == "cuda" else "cpu",  # NCCL needs CUDA
    )
    means = all_reduce_mean(local_means).tolist()
    return {f"epoch/{k}": v for k, v in zip(keys, means, strict=True)}


def _run_source(step_fn: StepFn, state: TrainState, loader: Any) -> SourceDigest:
    """Digest of the face_pipelines code this run executes: the import closure of the engine, the
    step function's module (the trainer, which also builds models, data and optimizers), the
    models' classes and the loader's dataset class."""
    fn = step_fn
    while isinstance(fn, functools.partial):
        fn = fn.func
    roots = {__name__, getattr(fn, "__module__", None) or type(fn).__module__}
    roots.update(type(unwrap_model(m)).__module__ for m in state.models.values())
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        roots.add(type(dataset).__module__)
    return source_digest(sorted(roots))


def _stale_reason(path: Path, run_config: Mapping[str, Any]) -> str | None:
    """Why the checkpoint at `path` must not be resumed by this run, or None when it may be.

    It may when its run configuration equals this run's, epochs aside (a longer run may continue a
    shorter one) - the source digest included, so changed code is never resumed or reused.
    """
    saved = dict(load_checkpoint(path, map_location="cpu").get("config") or {})
    ours = {k: v for k, v in run_config.items() if k != "epochs"}
    saved.pop("epochs", None)
    saved_source, our_source = saved.pop(SOURCE_KEY, None), ours.pop(SOURCE_KEY, None)
    if _plain(saved) != _plain(ours):
        return f"{path} was written by a run with another configuration"
    if _plain(saved_source) == _plain(our_source):
        return None
    if not isinstance(saved_source, Mapping) or "files" not in saved_source:
        return (
            f"code changed since {path} was written: it records no source digest (written "
            "before runs recorded the code they ran)"
        )
    changed = SourceDigest(our_source["digest"], our_source["files"]).changed_files(
        saved_source["files"]
    )
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"code changed since {path} was written: {shown or 'source digest differs'}"


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _lrs(state: TrainState) -> dict[str, float]:
    if len(state.optimizers) == 1:
        return {"lr": state.lr(next(iter(state.optimizers)))}
    return {f"lr/{name}": state.lr(name) for name in state.optimizers}


def _copy_checkpoint(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)

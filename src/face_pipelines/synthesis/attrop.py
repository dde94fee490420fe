"""AttrOP: optimise identity vectors towards target pose and quality while keeping the identity.

Per sample, with Adam on a copy of the vector v (the generator, teacher and attribute models stay
frozen):

    loss(v) = w_id * (1 - cos(teacher(G(v)), centre))
            + w_quality * max(0, q_target - quality(G(v)))
            + w_pose * | yaw_target - |yaw(G(v))| |

A NaN target switches its term off. Unlike the upstream loop (which stops only when the batch-mean
losses fall under their thresholds and can run forever), this one

- has a hard step cap (`steps_max`): it always ends;
- converges per sample: a sample that meets all its targets is frozen - its vector and the image that
  met the targets are kept and it is no longer fed to the generator - and the loop ends when every
  sample is frozen or the cap is reached;
- records, per sample, the steps used, which targets were met and the final identity cosine, yaw and
  quality, so a dataset can say how many of its images actually reached their targets.

Each sample's loss is summed, not averaged, over the batch, so its gradient (and, with a
deterministic generator, its whole trajectory) does not depend on which other samples share the
batch. Models are used as given: put them in eval mode first (dropout or batch-norm statistics in
train mode would couple the samples of a batch).

Plug-in interfaces (kept small so other generators and editors slot in):
- generator: `image_size: int` and `generate(vectors [B, D], generator=None) -> [B, 3, H, W]` in
  [-1, 1], differentiable w.r.t. the vectors when grad is enabled; optionally a `masking=` keyword.
- teacher: nn.Module images [B, 3, H, W] in [-1, 1] -> raw embeddings [B, E].
- quality_fn: callable images -> [B]; None = the teacher's raw embedding norm (MagFace convention).
- pose_model: nn.Module images -> [B, 2] (yaw, pitch) in degrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from face_pipelines.device import inference_autocast
from face_pipelines.errors import DataError, ParameterError
from face_pipelines.image_tensors import images_to_uint8

__all__ = [
    "AttrOPBatchEditor",
    "AttrOPConfig",
    "AttrOPModels",
    "AttrOPResult",
    "ImageGenerator",
    "Masking",
    "attrop",
    "generate_images",
]

Masking = Literal["generator_default", "inference", "train", "none"]

_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8


@runtime_checkable
class ImageGenerator(Protocol):
    """Anything that turns feature vectors into face images (Vec2Face, a pose-code GAN, ...)."""

    image_size: int

    def generate(
        self, vectors: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """vectors [B, D] -> images [B, 3, H, W] float in [-1, 1]."""
        ...


class AttrOPConfig(BaseModel):
    """AttrOP settings (upstream Vec2Face values as defaults, plus a step cap and per-sample stop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_max: int = Field(
        30,
        ge=0,
        description="Hard cap on optimisation steps per sample; the loop always ends after at most "
        "this many updates (0 = evaluate only).",
    )
    lr: float = Field(
        0.1,
        gt=0,
        description="Adam learning rate on the vectors (upstream 0.1, for 512-d features of norm "
        "~22; Adam steps are ~lr per coordinate, so scale it with the per-dimension spread of "
        "your vectors).",
    )
    w_id: float = Field(
        100.0, ge=0, description="Weight of the identity loss 1 - cos(teacher, centre)."
    )
    w_quality: float = Field(
        1.0, ge=0, description="Weight of the quality hinge max(0, q_target - quality)."
    )
    w_pose: float = Field(
        1.0, ge=0, description="Weight of the pose loss |yaw_target - |yaw|| (degrees)."
    )
    id_tolerance: float = Field(
        0.3,
        ge=0,
        le=2,
        description="Identity counts as kept when 1 - cos(teacher(image), centre) <= this.",
    )
    pose_tolerance_deg: float = Field(
        5.0,
        ge=0,
        description="A sample stops optimising once |yaw_target - |yaw|| <= this (degrees).",
    )
    pose_success_deg: float = Field(
        10.0,
        ge=0,
        description="The pose target counts as met in the result (pose_met / met) when the final "
        "|yaw_target - |yaw|| <= this (degrees); looser than the stopping tolerance.",
    )
    quality_tolerance: float = Field(
        1.0,
        ge=0,
        description="Quality counts as met when quality >= q_target - this (upstream: L_q <= 1).",
    )
    pose_newton_steps: int = Field(
        0,
        ge=0,
        description="The first N update steps of a row with a yaw target are Gauss-Newton steps "
        "on its pose residual instead of Adam steps: v += (yaw_target - |yaw|) g / |g|^2 with g = "
        "d|yaw|/dv, so a generator whose yaw is near-linear in the vector lands on the target in "
        "one or two steps; Adam then keeps identity and quality. 0 = Adam only (upstream). Each "
        "counts as a step (one generator forward/backward).",
    )
    pose_newton_max_step: float = Field(
        0.5,
        gt=0,
        description="Cap on one Gauss-Newton step's norm, as a fraction of the vector's norm.",
    )
    masking: Masking = Field(
        "generator_default",
        description="Row masking of the generator during optimisation and for the final image: "
        "'generator_default' calls generate(v, generator=g) without a masking argument "
        "(Vec2Face: random inference masking, as upstream); 'inference' / 'train' / 'none' are "
        "passed as generate(..., masking=...) ('none' -> masking=None) to generators that take it.",
    )
    batch_size: int = Field(
        64,
        gt=0,
        description="Samples optimised together (one generator forward/backward per step); "
        "larger inputs are processed in consecutive chunks of this size.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Forward precision: 'auto' = bf16 autocast on CUDA GPUs that support it, "
        "else fp32 (always fp32 on CPU). Vectors, Adam state and losses stay fp32.",
    )

    @model_validator(mode="after")
    def _check(self) -> AttrOPConfig:
        if self.pose_success_deg < self.pose_tolerance_deg:
            raise ValueError(
                f"pose_success_deg ({self.pose_success_deg}) must be >= pose_tolerance_deg "
                f"({self.pose_tolerance_deg})"
            )
        return self


def _load_config(config: AttrOPConfig | Mapping[str, Any] | None) -> AttrOPConfig:
    if config is None:
        return AttrOPConfig()
    if isinstance(config, AttrOPConfig):
        return config
    try:
        return AttrOPConfig(**dict(config))
    except ValidationError as err:
        raise ParameterError(f"invalid AttrOP config {dict(config)!r}: {err}") from None


@dataclass
class AttrOPResult:
    """What AttrOP produced for B samples (CPU, in input order).

    Attributes:
        vectors: [B, D] float32, the optimised vectors (frozen ones as they were when they met
            their targets).
        images: [B, H, W, 3] uint8 RGB, the image each vector produced at the step it was frozen
            (or after the last step).
        steps_used: [B] int64, Adam updates applied (0 = met its targets as given).
        converged: [B] bool, met the stopping criteria (id, pose within pose_tolerance_deg,
            quality) before steps_max ran out.
        met: [B] bool, all targets met in the final image (pose within pose_success_deg).
        id_met, pose_met, quality_met: [B] bool, per target (a NaN target counts as met).
        diverged: [B] bool, stopped early because the loss or gradient became non-finite (the
            vector is the last finite one).
        id_cos: [B] float64, cos(teacher(image), centre).
        yaw, pitch: [B] float64 degrees by the pose model (NaN without one).
        quality: [B] float64, quality_fn(image) (the teacher's embedding norm by default).
    """

    vectors: torch.Tensor
    images: np.ndarray
    steps_used: np.ndarray
    converged: np.ndarray
    met: np.ndarray
    id_met: np.ndarray
    pose_met: np.ndarray
    quality_met: np.ndarray
    diverged: np.ndarray
    id_cos: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.steps_used)

    def columns(self) -> dict[str, np.ndarray]:
        """Per-image manifest columns: attrop_steps, attrop_met, attrop_converged,
        id_cos_to_centre, yaw_pred, pitch_pred, quality_pred."""
        return {
            "attrop_steps": self.steps_used.astype(np.int64),
            "attrop_met": self.met.astype(bool),
            "attrop_converged": self.converged.astype(bool),
            "id_cos_to_centre": self.id_cos.astype(np.float64),
            "yaw_pred": self.yaw.astype(np.float64),
            "pitch_pred": self.pitch.astype(np.float64),
            "quality_pred": self.quality.astype(np.float64),
        }

    @classmethod
    def concatenate(cls, parts: list[AttrOPResult]) -> AttrOPResult:
        """Join the results of consecutive chunks."""
        values = {}
        for f in fields(cls):
            items = [getattr(p, f.name) for p in parts]
            values[f.name] = torch.cat(items) if f.name == "vectors" else np.concatenate(items)
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# helpers shared by AttrOP and plain generation


def _generate(
    generator: Any, vectors: torch.Tensor, torch_generator: torch.Generator | None, masking: str
) -> torch.Tensor:
    if masking == "generator_default":
        images = generator.generate(vectors, generator=torch_generator)
    else:
        mode = None if masking == "none" else masking
        images = generator.generate(vectors, masking=mode, generator=torch_generator)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != len(vectors):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(
            f"{type(generator).__name__}.generate returned {shape} for {len(vectors)} vectors; "
            "expected a tensor [B, 3, H, W]"
        )
    return images.float().clamp(-1, 1)


def _generator_device(generator: Any) -> torch.device:
    if isinstance(generator, nn.Module):
        for p in generator.parameters():
            return p.device
    return torch.device("cpu")


def generate_images(
    generator: Any,
    vectors: torch.Tensor | np.ndarray,
    batch_size: int = 64,
    torch_generator: torch.Generator | None = None,
    masking: Masking = "generator_default",
    device: torch.device | str | None = None,
    precision: Literal["auto", "fp32", "bf16"] = "auto",
) -> np.ndarray:
    """The no-AttrOP path: images of `vectors` in batches, without gradients.

    Args:
        generator: an ImageGenerator (put nn.Modules in eval mode first).
        vectors: [N, D] float vectors (tensor or array).
        batch_size: vectors per generator call.
        torch_generator: seeded generator for the generator's own randomness (row masking).
        masking: as AttrOPConfig.masking.
        device: where to run; default: the vectors' device for tensors, else the generator's.
        precision: 'auto' = bf16 autocast on CUDA (where supported), fp32 elsewhere.

    Returns:
        [N, H, W, 3] uint8 RGB images.
    """
    if batch_size <= 0:
        raise ParameterError(f"batch_size must be > 0, got {batch_size}")
    if isinstance(vectors, np.ndarray):
        vectors = torch.from_numpy(np.ascontiguousarray(vectors))
    if vectors.ndim != 2:
        raise DataError(f"generate_images expects vectors [N, D], got {tuple(vectors.shape)}")
    if device is None:
        device = vectors.device if vectors.device.type != "cpu" else _generator_device(generator)
    device = torch.device(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(vectors), batch_size):
            v = vectors[start : start + batch_size].to(device=device, dtype=torch.float32)
            with inference_autocast(device, precision):
                images = _generate(generator, v, torch_generator, masking)
            out.append(images_to_uint8(images))
    if not out:
        size = int(getattr(generator, "image_size", 0))
        return np.zeros((0, size, size, 3), np.uint8)
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# AttrOP


class _Evaluation(NamedTuple):
    loss: torch.Tensor  # [b], differentiable
    id_cos: torch.Tensor
    yaw: torch.Tensor
    pitch: torch.Tensor
    quality: torch.Tensor
    pose_err: torch.Tensor  # 0 where there is no pose target
    id_ok: torch.Tensor
    pose_stop_ok: torch.Tensor
    pose_success_ok: torch.Tensor
    quality_ok: torch.Tensor


def _evaluate(
    images: torch.Tensor,
    centres: torch.Tensor,
    yaw_targets: torch.Tensor,
    quality_targets: torch.Tensor,
    teacher: nn.Module,
    pose_model: nn.Module | None,
    quality_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    cfg: AttrOPConfig,
    device: torch.device,
) -> _Evaluation:
    with inference_autocast(device, cfg.precision):
        embeddings = teacher(images)
        quality = embeddings.float().norm(dim=1) if quality_fn is None else quality_fn(images)
        pose = pose_model(images) if pose_model is not None else None
    embeddings = embeddings.float()
    quality = torch.as_tensor(quality, device=device).float().reshape(-1)
    id_cos = F.cosine_similarity(embeddings, centres, dim=1, eps=1e-8)
    n = len(images)
    if pose is not None:
        pose = pose.float()
        yaw, pitch = pose[:, 0], pose[:, 1]
    else:
        yaw = pitch = torch.full((n,), float("nan"), device=device)
    # NaN targets are replaced by 0 before entering the graph: a NaN there would turn the masked
    # gradient into NaN (0 * NaN) even though torch.where discards the value.
    has_yaw = ~torch.isnan(yaw_targets)
    has_q = ~torch.isnan(quality_targets)
    yaw_t = torch.where(has_yaw, yaw_targets, torch.zeros_like(yaw_targets))
    q_t = torch.where(has_q, quality_targets, torch.zeros_like(quality_targets))
    zero = torch.zeros(n, device=device)
    pose_err = torch.where(has_yaw, (yaw_t - yaw.nan_to_num(0.0).abs()).abs(), zero)
    q_gap = torch.where(has_q, F.relu(q_t - quality), zero)
    loss = cfg.w_id * (1 - id_cos) + cfg.w_quality * q_gap + cfg.w_pose * pose_err
    with torch.no_grad():
        id_ok = (1 - id_cos) <= cfg.id_tolerance
        quality_ok = ~has_q | (quality >= q_t - cfg.quality_tolerance)
        pose_stop_ok = ~has_yaw | (pose_err <= cfg.pose_tolerance_deg)
        pose_success_ok = ~has_yaw | (pose_err <= cfg.pose_success_deg)
    return _Evaluation(
        loss,
        id_cos,
        yaw,
        pitch,
        quality,
        pose_err,
        id_ok,
        pose_stop_ok,
        pose_success_ok,
        quality_ok,
    )


def _as_targets(
    values: torch.Tensor | np.ndarray | None, n: int, name: str, device: torch.device
) -> torch.Tensor:
    if values is None:
        return torch.full((n,), float("nan"), device=device)
    if not isinstance(values, torch.Tensor):
        values = torch.from_numpy(np.asarray(values, dtype=np.float64))
    t = values.to(device=device, dtype=torch.float32).reshape(-1)
    if len(t) != n:
        raise DataError(f"attrop: {name} has {len(t)} values for {n} vectors")
    if torch.isinf(t).any():
        raise DataError(f"attrop: {name} holds an infinite target; use NaN for 'no target'")
    return t


@dataclass
class _ChunkState:
    """Per-row state of one AttrOP chunk: the vectors and their Adam moments, steps taken, whether
    a row is frozen (done, diverged, or out of steps) and what was recorded when it froze."""

    v: torch.Tensor
    adam_m: torch.Tensor
    adam_s: torch.Tensor
    steps: torch.Tensor
    frozen: torch.Tensor
    flags: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    images_out: torch.Tensor | None = None

    @classmethod
    def start(cls, vectors: torch.Tensor) -> _ChunkState:
        device, n = vectors.device, len(vectors)
        v = vectors.detach().float().clone()
        return cls(
            v=v,
            adam_m=torch.zeros_like(v),
            adam_s=torch.zeros_like(v),
            steps=torch.zeros(n, dtype=torch.long, device=device),
            frozen=torch.zeros(n, dtype=torch.bool, device=device),
            flags={
                k: torch.zeros(n, dtype=torch.bool, device=device)
                for k in ("converged", "diverged", "id_met", "pose_met", "quality_met")
            },
            stats={
                k: torch.full((n,), float("nan"), device=device)
                for k in ("id_cos", "yaw", "pitch", "quality")
            },
        )

    def record(self, rows: torch.Tensor, sel: torch.Tensor, ev: _Evaluation, images: torch.Tensor):
        """Freeze `rows` with their image and measures (entries `sel` of this step's batch)."""
        if self.images_out is None:
            n = len(self.v)
            self.images_out = torch.zeros(
                (n, *images.shape[1:]), dtype=torch.float32, device=self.v.device
            )
        self.images_out[rows] = images[sel].detach()
        self.stats["id_cos"][rows] = ev.id_cos[sel].detach()
        self.stats["yaw"][rows] = ev.yaw[sel].detach()
        self.stats["pitch"][rows] = ev.pitch[sel].detach()
        self.stats["quality"][rows] = ev.quality[sel].detach()
        self.flags["id_met"][rows] = ev.id_ok[sel]
        self.flags["pose_met"][rows] = ev.pose_success_ok[sel]
        self.flags["quality_met"][rows] = ev.quality_ok[sel]
        self.frozen[rows] = True

    def newton_step(
        self, rows: torch.Tensor, grad: torch.Tensor, residual: torch.Tensor, max_step: float
    ) -> None:
        """Gauss-Newton on one scalar residual per row: v += r g / |g|^2, the step's norm capped
        at max_step x |v|. The Adam moments stay untouched (Adam starts from the new point)."""
        self.steps[rows] += 1
        g2 = grad.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12)
        delta = residual.unsqueeze(1) * grad / g2
        cap = max_step * self.v[rows].norm(dim=1, keepdim=True)
        scale = (cap / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        self.v[rows] = self.v[rows] + delta * scale

    def adam_step(self, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Adam, per row: frozen rows are never touched, so their state and vector stay as they
        were."""
        self.steps[rows] += 1
        k = self.steps[rows].float().unsqueeze(1)
        self.adam_m[rows] = _ADAM_BETA1 * self.adam_m[rows] + (1 - _ADAM_BETA1) * grad
        self.adam_s[rows] = _ADAM_BETA2 * self.adam_s[rows] + (1 - _ADAM_BETA2) * grad * grad
        m_hat = self.adam_m[rows] / (1 - _ADAM_BETA1**k)
        s_hat = self.adam_s[rows] / (1 - _ADAM_BETA2**k)
        self.v[rows] = self.v[rows] - lr * m_hat / (s_hat.sqrt() + _ADAM_EPS)

    def result(self) -> AttrOPResult:
        assert self.images_out is not None  # every row is recorded at the latest on the last step
        flags, stats = self.flags, self.stats
        met = flags["id_met"] & flags["pose_met"] & flags["quality_met"]
        to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
        return AttrOPResult(
            vectors=self.v.detach().cpu(),
            images=images_to_uint8(self.images_out),
            steps_used=to_np(self.steps).astype(np.int64),
            converged=to_np(flags["converged"]),
            met=to_np(met),
            id_met=to_np(flags["id_met"]),
            pose_met=to_np(flags["pose_met"]),
            quality_met=to_np(flags["quality_met"]),
            diverged=to_np(flags["diverged"]),
            id_cos=to_np(stats["id_cos"]).astype(np.float64),
            yaw=to_np(stats["yaw"]).astype(np.float64),
            pitch=to_np(stats["pitch"]).astype(np.float64),
            quality=to_np(stats["quality"]).astype(np.float64),
        )


def _attrop_chunk(
    generator: Any,
    vectors: torch.Tensor,
    centres: torch.Tensor,
    yaw_targets: torch.Tensor,
    quality_targets: torch.Tensor,
    teacher: nn.Module,
    pose_model: nn.Module | None,
    quality_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    cfg: AttrOPConfig,
    torch_generator: torch.Generator | None,
) -> AttrOPResult:
    device = vectors.device
    st = _ChunkState.start(vectors)
    for step in range(cfg.steps_max + 1):
        active = (~st.frozen).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        last = step == cfg.steps_max
        v_active = st.v[active].clone().requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            images = _generate(generator, v_active, torch_generator, cfg.masking)
            ev = _evaluate(
                images,
                centres[active],
                yaw_targets[active],
                quality_targets[active],
                teacher,
                pose_model,
                quality_fn,
                cfg,
                device,
            )
        done = ev.id_ok & ev.pose_stop_ok & ev.quality_ok
        st.flags["converged"][active[done]] = True
        if last:
            st.record(active, torch.ones_like(done), ev, images)
            break
        if done.any():
            st.record(active[done], done, ev, images)
        update = ~done
        if not update.any():
            continue
        if not images.requires_grad:
            raise DataError(
                f"attrop: {type(generator).__name__}.generate output does not depend "
                "differentiably on the vectors; AttrOP needs gradients through the generator"
            )
        # Rows in their first pose_newton_steps steps with a yaw target follow |yaw| (one backward
        # for both kinds: rows are independent, so the gradient of the sum is per row).
        newton = (st.steps[active] < cfg.pose_newton_steps) & ~torch.isnan(yaw_targets[active])
        objective = torch.where(newton, ev.yaw.abs(), ev.loss)
        (grad,) = torch.autograd.grad(objective[update].sum(), v_active)
        grad, newton = grad[update], newton[update]
        residual = (yaw_targets[active] - ev.yaw.abs()).detach()[update]
        rows = active[update]
        finite = torch.isfinite(grad).all(dim=1) & torch.isfinite(objective[update].detach())
        if not finite.all():
            bad = update.clone()
            bad[update] = ~finite
            st.flags["diverged"][active[bad]] = True
            st.record(active[bad], bad, ev, images)
            rows, grad, newton, residual = (
                rows[finite],
                grad[finite],
                newton[finite],
                residual[finite],
            )
        if newton.any():
            st.newton_step(rows[newton], grad[newton], residual[newton], cfg.pose_newton_max_step)
        if (~newton).any():
            st.adam_step(rows[~newton], grad[~newton], cfg.lr)
    return st.result()


def attrop(
    generator: Any,
    vectors: torch.Tensor,
    centres: torch.Tensor,
    yaw_targets_deg: torch.Tensor | np.ndarray | None,
    quality_targets: torch.Tensor | np.ndarray | None,
    teacher: nn.Module,
    pose_model: nn.Module | None = None,
    quality_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    config: AttrOPConfig | Mapping[str, Any] | None = None,
    torch_generator: torch.Generator | None = None,
) -> AttrOPResult:
    """Optimise `vectors` so their images keep the identity of `centres` and meet pose/quality.

    Runs on the vectors' device, in chunks of config.batch_size samples that step together; each
    chunk takes at most config.steps_max Adam steps (never an unbounded loop).

    Args:
        generator: an ImageGenerator whose images are differentiable w.r.t. the vectors.
        vectors: [B, D] starting vectors (not modified).
        centres: [B, D] identity targets (the unperturbed class vectors, in the teacher's space).
        yaw_targets_deg: [B] absolute yaw targets in degrees (sign free); NaN or None = none.
        quality_targets: [B] quality targets (MagFace norm, ~27 upstream); NaN or None = none.
        teacher: recognizer images -> raw embeddings [B, E].
        pose_model: images -> [B, 2] (yaw, pitch) degrees; needed only if a yaw target is set.
        quality_fn: images -> [B]; None = the teacher's embedding norm.
        config: AttrOPConfig (or a mapping of its fields); None = defaults.
        torch_generator: seeded generator for the generator's randomness (row masking); with it,
            results are deterministic on CPU.

    Returns:
        AttrOPResult (CPU arrays in input order).

    Raises:
        DataError: shapes disagree, an infinite target, or a generator without gradients.
        ParameterError: a bad config, or yaw targets without a pose model.
    """
    cfg = _load_config(config)
    if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2:
        raise DataError(
            f"attrop expects vectors as a tensor [B, D], got {getattr(vectors, 'shape', vectors)}"
        )
    device = vectors.device
    centres = torch.as_tensor(centres).to(device=device, dtype=torch.float32)
    if centres.shape != vectors.shape:
        raise DataError(
            f"attrop: centres {tuple(centres.shape)} must match vectors {tuple(vectors.shape)}"
        )
    n = len(vectors)
    yaw_t = _as_targets(yaw_targets_deg, n, "yaw_targets_deg", device)
    q_t = _as_targets(quality_targets, n, "quality_targets", device)
    if pose_model is None and not torch.isnan(yaw_t).all():
        raise ParameterError(
            "attrop: yaw targets are set but no pose_model was given; pass a pose model "
            "(images -> [B, 2] yaw, pitch in degrees) or set the targets to NaN"
        )
    if not torch.isfinite(vectors).all() or not torch.isfinite(centres).all():
        raise DataError("attrop: vectors and centres must be finite")
    parts = []
    for start in range(0, n, cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        parts.append(
            _attrop_chunk(
                generator,
                vectors[sl],
                centres[sl],
                yaw_t[sl],
                q_t[sl],
                teacher,
                pose_model,
                quality_fn,
                cfg,
                torch_generator,
            )
        )
    if not parts:
        size = int(getattr(generator, "image_size", 0))
        empty_f = np.zeros(0, np.float64)
        empty_b = np.zeros(0, bool)
        return AttrOPResult(
            torch.zeros(0, vectors.shape[1]),
            np.zeros((0, size, size, 3), np.uint8),
            np.zeros(0, np.int64),
            empty_b,
            empty_b,
            empty_b,
            empty_b,
            empty_b,
            empty_b,
            empty_f,
            empty_f,
            empty_f,
            empty_f,
        )
    return AttrOPResult.concatenate(parts)


# --------------------------------------------------------------------------------------------------
# render-stage adapter


class AttrOPModels(NamedTuple):
    """The frozen models AttrOP needs (see `attrop`)."""

    teacher: nn.Module
    pose_model: nn.Module | None
    quality_fn: Callable[[torch.Tensor], torch.Tensor] | None


class AttrOPBatchEditor:
    """The render stage's editor for AttrOP: `editor(generator, vectors, rows, torch_generator)`.

    Rows whose `attrop_column` is False (when the plan has that column) are generated without
    optimisation; all rows are then measured by the same models so every image gets
    id_cos_to_centre / yaw_pred / quality_pred. Models are built lazily (once per process, on the
    vectors' device) by `make_models`, which must be picklable (e.g. functools.partial of a
    module-level function) so the editor can be sent to render worker processes.

    Args:
        centres: [C, D] identity centres, indexed by the plan's `identity`.
        make_models: () -> AttrOPModels.
        config: AttrOPConfig (or mapping).
        attrop_column / yaw_column / quality_column: plan column names (missing target columns
            mean "no target").
    """

    def __init__(
        self,
        centres: np.ndarray,
        make_models: Callable[[], AttrOPModels],
        config: AttrOPConfig | Mapping[str, Any] | None = None,
        attrop_column: str = "attrop",
        yaw_column: str = "yaw_target",
        quality_column: str = "quality_target",
    ) -> None:
        self.centres = np.asarray(centres, dtype=np.float32)
        if self.centres.ndim != 2:
            raise DataError(f"AttrOPBatchEditor: centres must be [C, D], got {self.centres.shape}")
        self.make_models = make_models
        self.config = _load_config(config)
        self.attrop_column = attrop_column
        self.yaw_column = yaw_column
        self.quality_column = quality_column
        self._models: AttrOPModels | None = None
        self._device: torch.device | None = None

    def fingerprint(self) -> str:
        """Hash of what this editor's output depends on besides the models (config, centres,
        column names); the renderer puts it in every shard hash."""
        h = hashlib.sha256(self.config.model_dump_json().encode())
        h.update(f"{self.attrop_column}|{self.yaw_column}|{self.quality_column}|".encode())
        h.update(str(self.centres.shape).encode())
        h.update(np.ascontiguousarray(self.centres).tobytes())
        return h.hexdigest()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_models"] = None  # built again in the receiving process
        state["_device"] = None
        return state

    def _get_models(self, device: torch.device) -> AttrOPModels:
        if self._models is None or self._device != device:
            models = AttrOPModels(*self.make_models())
            moved = []
            for m in models:
                if isinstance(m, nn.Module):
                    m = m.to(device).eval().requires_grad_(False)
                moved.append(m)
            self._models = AttrOPModels(*moved)
            self._device = device
        return self._models

    def _column(self, rows: pd.DataFrame, name: str) -> np.ndarray:
        if name not in rows.columns:
            return np.full(len(rows), np.nan)
        return pd.to_numeric(rows[name], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)

    def __call__(
        self,
        generator: Any,
        vectors: torch.Tensor,
        rows: pd.DataFrame,
        torch_generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Images [B, H, W, 3] uint8 and per-row columns for one batch of plan rows."""
        device = vectors.device
        teacher, pose_model, quality_fn = self._get_models(device)
        ids = rows["identity"].to_numpy(dtype=np.int64)
        if ids.max(initial=-1) >= len(self.centres):
            raise DataError(
                f"AttrOPBatchEditor: plan identity {int(ids.max())} has no centre "
                f"(only {len(self.centres)} centres)"
            )
        centres = torch.from_numpy(self.centres[ids]).to(device)
        yaw = self._column(rows, self.yaw_column)
        quality = self._column(rows, self.quality_column)
        if self.attrop_column in rows.columns:
            optimise = rows[self.attrop_column].fillna(False).to_numpy(dtype=bool)
        else:
            optimise = np.ones(len(rows), bool)
        n = len(rows)
        cols: dict[str, Any] = {
            "attrop_steps": np.zeros(n, np.int64),
            "attrop_met": pd.array([pd.NA] * n, dtype="boolean"),
            "attrop_converged": pd.array([pd.NA] * n, dtype="boolean"),
        }
        images = np.zeros((n, generator.image_size, generator.image_size, 3), np.uint8)
        measured = {
            k: np.full(n, np.nan)
            for k in ("id_cos_to_centre", "yaw_pred", "pitch_pred", "quality_pred")
        }
        sel = np.flatnonzero(optimise)
        if len(sel):
            res = attrop(
                generator,
                vectors[sel],
                centres[sel],
                yaw[sel],
                quality[sel],
                teacher,
                pose_model,
                quality_fn,
                self.config,
                torch_generator,
            )
            images[sel] = res.images
            rc = res.columns()
            cols["attrop_steps"][sel] = rc["attrop_steps"]
            cols["attrop_met"][sel] = rc["attrop_met"]
            cols["attrop_converged"][sel] = rc["attrop_converged"]
            for k in measured:
                measured[k][sel] = rc[k]
        rest = np.flatnonzero(~optimise)
        if len(rest):
            # Plain images, measured with the AttrOP config's zero-step evaluation.
            res = attrop(
                generator,
                vectors[rest],
                centres[rest],
                None,
                None,
                teacher,
                pose_model,
                quality_fn,
                self.config.model_copy(update={"steps_max": 0}),
                torch_generator,
            )
            images[rest] = res.images
            rc = res.columns()
            for k in measured:
                measured[k][rest] = rc[k]
        cols.update(measured)
        return images, cols

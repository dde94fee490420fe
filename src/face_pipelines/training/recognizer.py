"""Training a face recognizer (backbone + margin head) on a packed dataset.

Used three times: the teacher (features for Vec2Face), the recognizer trained on the synthetic set,
and the baseline trained on the real subset - all with this one function, so recipes are identical.
`method` switches between plain margin losses (arcface | cosface | magface) and TopoFR (perturbation-
guided structure alignment + structure damage estimation on top of an ArcFace/CosFace base).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from face_pipelines.device import (
    maybe_channels_last,
    maybe_compile,
    resolve_device,
    unwrap_model,
)
from face_pipelines.errors import ParameterError
from face_pipelines.image_tensors import normalise
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.encoded import open_image_set
from face_pipelines.losses.perturbations import random_structure_perturbation
from face_pipelines.losses.topofr import (
    input_space_distances,
    latent_space_distances,
    sde_weights,
    structure_alignment_loss,
    topology_discrepancy,
)
from face_pipelines.models.heads import build_head
from face_pipelines.models.inference import load_pose_regressor
from face_pipelines.models.registry import build_backbone
from face_pipelines.training.data import (
    AugmentationConfig,
    face_dataset,
    make_loader,
    read_skip_log,
)
from face_pipelines.training.distributed import launch, world_info, wrap_ddp
from face_pipelines.training.engine import TrainState, fit
from face_pipelines.training.loop_config import (
    BatchSize,
    Epochs,
    LearningRate,
    NumWorkers,
    TrainLoopConfig,
)
from face_pipelines.training.schedule import build_scheduler


class AugmentParams(BaseModel):
    """Training augmentations (probabilities); see face_pipelines.training.data."""

    model_config = ConfigDict(extra="forbid")
    flip_prob: float = Field(0.5, ge=0, le=1, description="horizontal flip")
    crop_prob: float = Field(0.0, ge=0, le=1, description="random-resized crop with zero padding")
    low_res_prob: float = Field(0.0, ge=0, le=1, description="down- then up-scaling")
    color_jitter_prob: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation")
    erasing_prob: float = Field(0.0, ge=0, le=1, description="random erasing")


class TopoFRParams(BaseModel):
    """TopoFR options (used when method == 'topofr')."""

    model_config = ConfigDict(extra="forbid")
    base: Literal["arcface", "cosface"] = Field("arcface", description="margin loss under TopoFR")
    perturb_prob: float = Field(0.2, ge=0, le=1, description="RSP: per-sample perturbation prob xi")
    alpha: float = Field(0.1, ge=0, description="weight of the structure alignment loss L_sa")
    sde: bool = Field(True, description="structure damage estimation re-weighting")
    sde_lambda: float = Field(1.0, ge=0, description="exponent lambda of (1+h)^lambda")


class PoseRetentionParams(BaseModel):
    """Keep head pose readable from the raw embedding (a teacher for Vec2Face).

    A margin loss teaches a recognizer to discard pose; Vec2Face needs a teacher whose raw feature
    still says which pose to draw (the released ArcFace-R100's does, from 4M images; a small CPU
    teacher does not - docs/study.md (h)). With `weight > 0` a linear head on the raw embedding
    regresses a frozen pose model's (yaw, pitch) of each augmented training image, so pose stays
    linearly decodable. The targets come from a pose model, not from dataset labels: with real data
    the pose model is 6DRepNet (teacher.pose.checkpoint).
    """

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.0, ge=0, description="weight of the pose regression term (0 = off)")
    checkpoint: str | None = Field(
        None, description="pose model (pose_regressor or 6DRepNet file); set by the teacher node"
    )
    scale_deg: float = Field(30.0, gt=0, description="degrees per regression unit (target / scale)")


class AppearanceRetentionParams(BaseModel):
    """Keep the image's coarse appearance readable from the raw embedding (a teacher for Vec2Face).

    Pose is not all a margin loss discards: background, lighting and colour cast go too, and a
    generator conditioned on such a feature draws their average - every synthetic image of an
    identity gets the same grey backdrop and the same light (docs/study.md (h3)). With `weight > 0`
    a linear head on the raw embedding regresses the training image's `grid` x `grid` RGB
    thumbnail (mean colour per cell, in the network's [-1, 1] input scale), so that coarse
    appearance stays linearly decodable. No label or extra model is needed: the target is the
    augmented input image itself, so it works unchanged on real data.
    """

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.0, ge=0, description="weight of the thumbnail regression (0 = off)")
    grid: int = Field(4, ge=1, le=16, description="thumbnail side: grid x grid cells x 3 colours")


class RecognizerConfig(TrainLoopConfig):
    """Recipe of one recognizer training run (backbone, head, optimiser, schedule, devices)."""

    epochs: Epochs = 10
    batch_size: BatchSize = 128
    lr: LearningRate = Field(0.1, description="peak SGD learning rate")
    num_workers: NumWorkers = 2
    seed: int = Field(0, description="seed for initialisation, data order and augmentation")
    log_every: int = Field(20, gt=0, description="optimiser steps between metric logs")
    arch: str = Field("small", description="backbone: small | iresnet18/34/50/100")
    embedding_dim: int = Field(256, gt=0, description="embedding size (512 for IResNets)")
    backbone_kwargs: dict = Field(default_factory=dict, description="extra backbone arguments")
    method: Literal["arcface", "cosface", "magface", "topofr"] = Field(
        "arcface", description="margin loss, or topofr (ArcFace/CosFace base + RSP/ISA/SDE)"
    )
    s: float = Field(64.0, gt=0, description="logit scale")
    m: float | None = Field(None, description="margin (default: 0.5 arcface, 0.4 cosface)")
    sample_rate: float = Field(1.0, gt=0, le=1, description="PartialFC class sampling rate")
    topofr: TopoFRParams = Field(default_factory=TopoFRParams)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay (not on BN/bias/PReLU)")
    schedule: Literal["poly", "step", "cosine"] = Field("poly", description="LR schedule")
    milestones: list[int] = Field(default_factory=list, description="epochs of /10 for 'step'")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length in epochs")
    grad_clip: float | None = Field(5.0, description="max gradient norm (None = off)")
    grad_accum_steps: int = Field(1, ge=1, description="batches per optimiser step")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    pose_retention: PoseRetentionParams = Field(
        default_factory=PoseRetentionParams,
        description="keep (yaw, pitch) linearly readable from the raw embedding (teachers only)",
    )
    appearance_retention: AppearanceRetentionParams = Field(
        default_factory=AppearanceRetentionParams,
        description="keep a coarse RGB thumbnail of the image linearly readable from the raw "
        "embedding (teachers only)",
    )
    channels_last: bool = Field(True, description="channels_last memory format (CUDA and CPU)")
    compile: bool = Field(False, description="torch.compile the backbone (CUDA)")
    devices: int = Field(1, ge=1, description="processes/GPUs; > 1 launches torchrun-style DDP")

    @model_validator(mode="after")
    def _check(self):
        if self.method == "topofr" and self.topofr.sde and self.sample_rate < 1:
            raise ValueError("topofr.sde needs the full softmax (sample_rate: 1.0)")
        return self

    def head_name(self) -> str:
        return self.topofr.base if self.method == "topofr" else self.method

    def backbone_args(self, image_size: int) -> dict:
        return {
            "num_features": self.embedding_dim,
            "input_size": image_size,
            **self.backbone_kwargs,
        }


class RecognizerNet(nn.Module):
    """Backbone + margin head (+ the optional pose- and appearance-retention heads) in one module
    so DDP synchronises all of them."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        pose_head: nn.Module | None = None,
        appearance_head: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pose_head = pose_head
        self.appearance_head = appearance_head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        emb = self.backbone(x)
        out = self.head(emb.float(), labels)
        if self.pose_head is not None:
            out = {**out, "pose": self.pose_head(emb.float())}
        if self.appearance_head is not None:
            out = {**out, "appearance": self.appearance_head(emb.float())}
        return emb, out


def appearance_target(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, 3 * grid * grid]: the mean colour of each cell of a grid x grid split of images x."""
    return F.adaptive_avg_pool2d(x.float(), grid).flatten(1)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # insightface practice: no weight decay on BN/PReLU/bias (1-D) parameters.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _make_step_fn(cfg: RecognizerConfig, channels_last: bool, pose_model: nn.Module | None = None):
    topo = cfg.method == "topofr"
    pose_w = cfg.pose_retention.weight if pose_model is not None else 0.0
    appearance_w = cfg.appearance_retention.weight

    def step_fn(batch, state: TrainState) -> dict:
        images, labels = batch
        x = normalise(images.to(state.device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(state.device, non_blocking=True)
        metrics = {}
        with state.autocast():
            x_in = x
            if topo:
                x_in, which = random_structure_perturbation(x, p=cfg.topofr.perturb_prob)
                metrics["perturbed_fraction"] = float((which >= 0).float().mean())
            emb, out = state.model(x_in, labels)
            loss = out["loss"]
            if topo:
                if cfg.topofr.sde:
                    w, diag = sde_weights(out["logits"], labels, lam=cfg.topofr.sde_lambda)
                    loss = (w * out["per_sample_loss"]).mean()
                    sde = diag.to_metrics(prefix="sde_")
                    metrics["sde_mean_weight"] = sde["sde_mean_weight"]
                    metrics["sde_hard_fraction"] = sde["sde_hard_fraction"]
                x_dist = input_space_distances(x)
                z_dist = latent_space_distances(emb.float(), reference_dist=x_dist)
                l_sa = structure_alignment_loss(x_dist, z_dist)
                loss = loss + cfg.topofr.alpha * l_sa
                metrics["l_sa"] = float(l_sa.detach())
                metrics["topology_discrepancy"] = topology_discrepancy(x_dist, z_dist.detach())
            if pose_w > 0:
                with torch.no_grad():
                    target = pose_model(x_in.float()).float() / cfg.pose_retention.scale_deg
                pose_loss = nn.functional.mse_loss(out["pose"].float(), target)
                loss = loss + pose_w * pose_loss
                metrics["pose_loss"] = float(pose_loss.detach())
            if appearance_w > 0:
                target = appearance_target(x_in, cfg.appearance_retention.grid)
                appearance_loss = F.mse_loss(out["appearance"].float(), target)
                loss = loss + appearance_w * appearance_loss
                metrics["appearance_loss"] = float(appearance_loss.detach())
        state.backward_and_step(loss)
        if cfg.sample_rate >= 1.0:
            metrics["accuracy"] = float((out["logits"].argmax(1) == labels).float().mean())
        return {"loss": loss.detach(), **metrics}

    return step_fn


def _build_recognizer_net(
    cfg: RecognizerConfig, image_size: int, num_classes: int
) -> tuple[RecognizerNet, nn.Module | None]:
    """Backbone + margin head (+ the pose-retention head and its frozen pose model), seeded."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.arch, **cfg.backbone_args(image_size))
    m = {} if cfg.m is None else {"m": cfg.m}
    head = build_head(
        cfg.head_name(),
        cfg.embedding_dim,
        num_classes,
        s=cfg.s,
        sample_rate=cfg.sample_rate,
        shard_classes=False,
        **m,
    )
    pose_model = None
    pose_head = None
    if cfg.pose_retention.weight > 0:
        if not cfg.pose_retention.checkpoint:
            raise ParameterError(
                "pose_retention.weight > 0 needs pose_retention.checkpoint: a pose model file "
                "(the teacher node fills it in from teacher.pose)"
            )
        pose_model = load_pose_regressor(cfg.pose_retention.checkpoint, device="cpu")
        for p in pose_model.parameters():
            p.requires_grad_(False)
        pose_head = nn.Linear(cfg.embedding_dim, 2)
    appearance_head = None
    if cfg.appearance_retention.weight > 0:
        appearance_head = nn.Linear(cfg.embedding_dim, 3 * cfg.appearance_retention.grid**2)
    return RecognizerNet(backbone, head, pose_head, appearance_head), pose_model


def _recognizer_train_state(
    cfg: RecognizerConfig, net: RecognizerNet, batches_per_epoch: int, device
) -> TrainState:
    """SGD with weight decay off BN/bias/PReLU, the configured schedule over optimizer steps."""
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum_steps)
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.SGD(
        _param_groups(net, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )
    scheduler = build_scheduler(
        optimizer,
        cfg.schedule,
        total_steps=total,
        warmup_steps=int(math.ceil(cfg.warmup_epochs * steps_per_epoch)),
        milestones=cfg.milestones,  # epochs: the schedule divides steps by steps_per_epoch
        steps_per_epoch=steps_per_epoch,
    )
    return TrainState.create(
        net,
        optimizer,
        scheduler,
        device=device,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
        grad_accum_steps=cfg.grad_accum_steps,
    )


def _save_backbone(
    path: Path, model: nn.Module, cfg: RecognizerConfig, packed, packed_root
) -> None:
    """The trained backbone (unwrapped from DDP / torch.compile) as a recognizer checkpoint."""
    bb = unwrap_model(model).backbone
    bb = getattr(bb, "_orig_mod", bb)
    save_checkpoint(
        path,
        arch=cfg.arch,
        config=cfg.backbone_args(packed.image_size),
        state_dict={k: v.detach().cpu() for k, v in bb.state_dict().items()},
        meta={
            "image_size": packed.image_size,
            "num_classes": packed.num_classes,
            "method": cfg.method,
            "epochs": cfg.epochs,
            "trained_on": str(packed_root),
        },
    )


def _warn_skipped(skips: dict, packed_root) -> None:
    logging.getLogger(__name__).warning(
        "%d training image(s) of %s could not be decoded and were skipped, e.g. %s",
        skips["skipped"],
        packed_root,
        skips["items"][0]["error"],
    )


def _train_worker(
    packed_root: str,
    out_dir: str,
    cfg_dict: dict,
    device_spec: str,
    progress: bool,
    log: Callable | None,
) -> dict:
    cfg = RecognizerConfig.model_validate(cfg_dict)
    info = world_info()
    device_spec = resolve_device(device_spec)
    packed = open_image_set(packed_root)  # packed, or JPEGs decoded in the loader workers
    data_fingerprint = packed.fingerprint()
    skip_log_dir = Path(out_dir) / "skipped_images" / data_fingerprint
    net, pose_model = _build_recognizer_net(cfg, packed.image_size, packed.num_classes)
    aug = AugmentationConfig(**cfg.augment.model_dump())
    dataset = face_dataset(packed, augmentation=aug, skip_log_dir=skip_log_dir)
    loader = make_loader(
        dataset,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device_spec,
    )
    state = _recognizer_train_state(cfg, net, len(loader), device_spec)
    net.to(state.device)
    if pose_model is not None:
        pose_model.to(state.device)
    cl = cfg.channels_last and maybe_channels_last(net, state.device)
    if cfg.compile:
        net.backbone = maybe_compile(net.backbone, True)
    if info.world_size > 1:
        state.models["model"] = wrap_ddp(net, state.device)
    history = fit(
        _make_step_fn(cfg, cl, pose_model),
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        config={**cfg.model_dump(), "data": data_fingerprint},  # never resume on other data
        progress=progress,
        desc=f"train {cfg.arch}",
    )
    final = Path(out_dir) / "model.pt"
    if info.rank == 0:
        _save_backbone(final, state.models["model"], cfg, packed, packed_root)
    last = history[-1] if history else {}
    skips = read_skip_log(skip_log_dir)
    if skips["skipped"]:
        _warn_skipped(skips, packed_root)
    return {
        "checkpoint": str(final),
        "epochs": cfg.epochs,
        "images": len(packed),
        "identities": packed.num_classes,
        "final": {k: float(v) for k, v in last.items()},
        "skipped_images": skips["skipped"],
        "skipped_items": skips["items"][:100],
    }


def train_recognizer(
    packed_root: str | Path,
    out_dir: str | Path,
    config: RecognizerConfig,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
) -> dict:
    """Train a recognizer on a training-set folder - packed, or an encoded one whose JPEGs are
    decoded in the loader workers (io.encoded) - and write `<out_dir>/model.pt` (backbone
    checkpoint). Images that fail to decode are skipped and listed in the summary.

    Resumes from `<out_dir>/train_state/last.pt` if a previous run was interrupted. With
    `config.devices > 1` the worker is launched torchrun-style (one process per device); inside an
    existing torchrun world it joins that world instead. Returns a summary dict (rank 0).

    `log(metrics, step)` is called on rank 0. Spawned workers (`devices > 1`) get it only when it
    says `logs_from_workers = True` (a picklable callback that writes somewhere itself, e.g. the
    live MLflow logger): a plain in-memory recorder would fill a copy in another process.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    to_workers = config.devices == 1 or getattr(log, "logs_from_workers", False)
    args = (
        str(packed_root),
        str(out_dir),
        config.model_dump(),
        device,
        progress,
        log if to_workers else None,
    )
    return launch(_train_worker, args, devices=config.devices)

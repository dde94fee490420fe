"""Training the attribute models AttrOP uses (head-pose regressor on ground-truth labels)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from face_pipelines.device import maybe_channels_last, resolve_device
from face_pipelines.image_tensors import normalise
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.models.attributes import POSE_SCALE_DEG, PoseRegressor
from face_pipelines.models.inference import POSE_REGRESSOR_ARCH
from face_pipelines.training.data import PackedTargetDataset, make_loader
from face_pipelines.training.engine import TrainState, fit
from face_pipelines.training.loop_config import BatchSize, Epochs, LearningRate, TrainLoopConfig
from face_pipelines.training.schedule import build_scheduler


class PoseConfig(TrainLoopConfig):
    """Recipe of the head-pose regressor."""

    epochs: Epochs = 6
    batch_size: BatchSize = 128
    lr: LearningRate = Field(2e-3, description="AdamW learning rate (cosine decay)")
    widths: list[int] = Field([16, 32, 64, 128], description="channels of the conv stages")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")


def train_pose_regressor(
    packed_root: str | Path,
    yaw_pitch_deg: np.ndarray,
    out_dir: str | Path,
    config: PoseConfig,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
) -> dict:
    """Fit (yaw, pitch) in degrees from packed images; writes `<out_dir>/model.pt`.

    Returns a summary with the training MAE in degrees. Resumes from `<out_dir>/train_state`.
    """
    packed = PackedImages(Path(packed_root))
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    model = PoseRegressor(config.widths, input_size=packed.image_size)
    targets = np.asarray(yaw_pitch_deg, dtype=np.float32)
    ds = PackedTargetDataset(packed, targets)
    loader = make_loader(
        ds, config.batch_size, seed=config.seed, num_workers=config.num_workers, device=device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = len(loader) * config.epochs
    sched = build_scheduler(opt, "cosine", total_steps=total, warmup_steps=max(1, total // 20))
    state = TrainState.create(
        model, opt, sched, device=device, precision=config.precision, grad_clip=5.0
    )
    model.to(state.device)
    cl = maybe_channels_last(model, state.device)

    def step_fn(batch, st: TrainState) -> dict:
        images, target = batch
        x = normalise(images.to(st.device))
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        target = target.to(st.device)
        with st.autocast():
            pred = st.model(x).float()
        # Smooth L1 in units of 90 degrees: robust to the rare extreme-pose outliers.
        loss = torch.nn.functional.smooth_l1_loss(
            pred / POSE_SCALE_DEG, target / POSE_SCALE_DEG, beta=0.05
        )
        st.backward_and_step(loss)
        mae = (pred.detach() - target).abs().mean(0)
        return {"loss": loss.detach(), "yaw_mae_deg": float(mae[0]), "pitch_mae_deg": float(mae[1])}

    history = fit(
        step_fn,
        state,
        loader,
        config.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=config.log_every,
        progress=progress,
        desc="train pose",
        config={
            **config.model_dump(),
            "data": {"images": packed.fingerprint(), "targets": array_fingerprint(targets)},
        },
    )
    save_checkpoint(
        Path(out_dir) / "model.pt",
        arch=POSE_REGRESSOR_ARCH,
        config={"widths": list(config.widths), "input_size": packed.image_size},
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        meta={"outputs": ["yaw_deg", "pitch_deg"]},
    )
    last = history[-1] if history else {}
    return {
        "checkpoint": str(Path(out_dir) / "model.pt"),
        "final": {k: float(v) for k, v in last.items()},
    }

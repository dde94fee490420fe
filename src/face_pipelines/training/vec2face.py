"""Training the Vec2Face generator: feature vector -> face image.

Losses (weights are parameters): pixel MSE; identity 1 - cos(teacher(G(f)), f) with the frozen
teacher; perceptual distance between the teacher's intermediate feature maps of G(f) and x (or
LPIPS-VGG, weights by path: `perceptual_net: lpips`); 1 - SSIM
(pytorch-msssim); token regression of the decoder tokens onto the unmasked token map; and, from
`gan_start_epoch`, a GAN with ONE formulation for both players (hinge or least squares). The
discriminator only ever sees detached fakes in its own loss and is frozen during the generator's, so
neither objective leaks into the other (upstream mixed a hinge G term with an LSGAN D that also
received the generator's gradients). An EMA of the generator is kept and is what gets saved.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pytorch_msssim import ssim
from torch import nn

from face_pipelines.device import resolve_device
from face_pipelines.image_tensors import hwc_to_input, image_grid, images_to_uint8, normalise
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.losses.gan import (
    discriminator_loss,
    frozen_parameters,
    generator_adversarial_loss,
)
from face_pipelines.losses.lpips import LPIPSVGG
from face_pipelines.metrics.feature_stats import frechet_distance
from face_pipelines.metrics.separability import pixel_spread
from face_pipelines.models.discriminator import build_discriminator
from face_pipelines.models.inference import embed_images, predict_pose
from face_pipelines.models.vec2face import VEC2FACE_PRESETS, Vec2Face, Vec2FaceConfig
from face_pipelines.training.data import PackedTargetDataset, heldout_identity_split, make_loader
from face_pipelines.training.engine import TrainState, fit
from face_pipelines.training.loop_config import Epochs, LearningRate, TrainLoopConfig
from face_pipelines.training.schedule import build_scheduler


class Vec2FaceLossWeights(BaseModel):
    """Weights of the generator's loss terms."""

    model_config = ConfigDict(extra="forbid")
    pixel: float = Field(1.0, ge=0, description="pixel MSE")
    identity: float = Field(1.0, ge=0, description="1 - cos(teacher(G(f)), f)")
    perceptual: float = Field(0.2, ge=0, description="teacher feature-map distance")
    ssim: float = Field(0.2, ge=0, description="1 - SSIM")
    tokens: float = Field(1.0, ge=0, description="token regression MSE")
    gan: float = Field(0.1, ge=0, description="adversarial term (after gan_start_epoch)")
    pose: float = Field(
        0.0,
        ge=0,
        description="pose consistency: mean |pose(G(f)) - pose(x)| (yaw and pitch, in units of "
        "30 degrees) read by the pose model AttrOP steers with; the generator still sees only f, "
        "but is told to draw the head turned as the real image is (0 = off, the published loss)",
    )


class Vec2FaceTrainConfig(TrainLoopConfig):
    """Recipe of a Vec2Face training run."""

    epochs: Epochs = 8
    lr: LearningRate = Field(4e-4, description="generator AdamW peak lr (warm-up + half-cosine)")
    preset: Literal["default", "paper"] = Field("default", description="model size preset")
    model: dict = Field(
        default_factory=dict,
        description="overrides of the preset's arguments "
        "(face_pipelines.models.vec2face.Vec2FaceConfig); feat_dim is set from "
        "the features",
    )
    discriminator_preset: Literal["default", "paper"] = Field("default", description="D size")
    discriminator_scales: int = Field(2, ge=1, description="1 = patch D, 2 = two-scale D")
    gan_kind: Literal["hinge", "lsgan"] = Field("hinge", description="GAN formulation (G and D)")
    gan_start_epoch: int = Field(4, ge=0, description="epoch from which the GAN terms are on")
    teacher_view_jitter: int = Field(
        0,
        ge=0,
        description="identity and teacher-perceptual terms see G(f) (and x) through one random "
        "shift of up to this many pixels and, for half the batches, a 2x down-and-up resize: a "
        "pattern that only fools the frozen teacher at one exact pixel position stops paying "
        "(0 = off, the published loss)",
    )
    weights: Vec2FaceLossWeights = Field(default_factory=Vec2FaceLossWeights)
    perceptual_net: Literal["teacher", "lpips"] = Field(
        "teacher",
        description="perceptual term: channel-normalised teacher feature-map distance, or "
        "LPIPS-VGG with weights by path (lpips_vgg_path + lpips_linear_path; nothing downloads)",
    )
    lpips_vgg_path: str | None = Field(
        None, description="torchvision vgg16 state dict (e.g. vgg16-397923af.pth) for LPIPS"
    )
    lpips_linear_path: str | None = Field(
        None,
        description="LPIPS v0.1 linear-layer weights (the lpips package's weights/v0.1/vgg.pth)",
    )
    linear_base_init: Literal["ridge", "zero"] = Field(
        "ridge",
        description="with model.linear_base: ridge = fit the linear path in closed form (ridge "
        "regression of the training images on their standardised features) before the first "
        "step; zero = start it at zero and let it train with the rest",
    )
    linear_baseline: bool = Field(
        True,
        description="also fit a plain linear map f -> image (ridge, seconds) and report its "
        "held-out measures as `linear_baseline`: the floor G should beat",
    )
    linear_base_trainable: bool = Field(
        False,
        description="with model.linear_base: let the identity, perceptual and GAN terms train the "
        "linear path too. Off: it stays the closed-form fit and the decoder learns the residual - "
        "a full-resolution linear layer trained by the teacher's identity loss draws per-pixel "
        "patterns the teacher reads (docs/study.md (h4))",
    )
    linear_base_alpha: float = Field(
        1e-3,
        gt=0,
        description="ridge strength of linear_base_init=ridge, per training image (the penalty is "
        "alpha * n_images on standardised features)",
    )
    lr_d: float = Field(2e-4, gt=0, description="discriminator AdamW lr (constant)")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas (G and D)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay of G")
    warmup_epochs: float = Field(0.5, ge=0, description="linear warm-up of G's lr")
    grad_clip: float | None = Field(2.0, description="max gradient norm of G and D")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="EMA of G's weights (saved model)")
    heldout_identities: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="fraction of identities held out of training to measure identity preservation",
    )
    eval_images: int = Field(256, gt=0, description="held-out images used for the report")
    curve_epochs: list[int] = Field(
        default_factory=list,
        description="epochs after which the full held-out evaluation (SSIM, judge cos, pixel "
        "spread, rendered yaw) also runs, with the training seconds spent so far: a "
        "quality-versus-compute curve from one run (report['curve'], <out_dir>/curve.jsonl); "
        "the last epoch is always a point",
    )
    grid_identities: int = Field(8, gt=0, description="identities per sample grid")

    @model_validator(mode="after")
    def _check_lpips(self):
        if self.perceptual_net == "lpips":
            missing = [k for k in ("lpips_vgg_path", "lpips_linear_path") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"perceptual_net is 'lpips' but {' and '.join(missing)} is not set: give "
                    "the weight files by path (nothing is downloaded)"
                )
        return self

    @model_validator(mode="after")
    def _check_model(self):
        # Fail at parameter validation, not minutes later when the model is built.
        try:
            Vec2FaceConfig(**{**VEC2FACE_PRESETS[self.preset], **self.model})
        except ValidationError as err:
            problems = "; ".join(
                f"model.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(problems) from None
        return self


def build_generator(cfg: Vec2FaceTrainConfig, feat_dim: int, image_size: int) -> Vec2Face:
    """The generator of `cfg` for features of `feat_dim` at `image_size` pixels."""
    params = {**VEC2FACE_PRESETS[cfg.preset], **cfg.model, "feat_dim": feat_dim}
    if params["image_size"] != image_size:
        raise ValueError(
            f"vec2face image_size {params['image_size']} != packed images {image_size}; set "
            "vec2face.train.model.image_size/grid_size/ch_mult to match subset.image_size"
        )
    return Vec2Face(**params)


class LinearRenderer(nn.Module):
    """Feature vector -> image by one linear map: the floor a generator should beat.

    Fitted by `fit_linear_base` (ridge regression of the training images on their features), it
    draws the best linear reconstruction - blurred, but with the colours, layout and pose the
    vector carries linearly. The Vec2Face report evaluates it next to G on the same held-out pairs
    (`linear_baseline`), so a generator still near the mean face shows up as one that does worse.
    """

    def __init__(self, feat_dim: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.linear_base = nn.Linear(feat_dim, 3 * image_size**2)

    def generate(self, features: torch.Tensor, masking: Any = None, generator=None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1]; `masking` and `generator` are accepted and unused."""
        size = self.image_size
        return self.linear_base(features).view(-1, 3, size, size).clamp(-1, 1)


def fit_linear_base(
    gen: Vec2Face | LinearRenderer,
    packed: PackedImages,
    features: np.ndarray,
    rows: np.ndarray,
    alpha: float,
    batch_size: int = 1024,
) -> dict:
    """Set `gen.linear_base` to the ridge regression of the images `rows` on their features.

    Features are standardised per dimension (the fit is solved in that basis and folded back into
    the layer, which takes raw features), images are in the generator's [-1, 1] NCHW layout; the
    images are streamed in batches, so memory is D x (D + 3HW) whatever the image count. Returns
    the fit's mean squared error on those images and the mean image's, for the log.
    """
    if getattr(gen, "linear_base", None) is None:
        raise ValueError("fit_linear_base needs a generator built with model.linear_base: true")
    rows = np.asarray(rows, dtype=np.int64)
    f = np.asarray(features[rows], dtype=np.float64)
    mean, std = f.mean(0), f.std(0) + 1e-6
    z = (f - mean) / std
    ata = z.T @ z
    aty = np.zeros((z.shape[1], gen.linear_base.out_features))
    y_sum = np.zeros(gen.linear_base.out_features)
    y_sq = 0.0
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        images, _ = packed.get_batch(rows[part])
        y = hwc_to_input(images).reshape(len(images), -1).double().numpy()
        aty += z[part].T @ y
        y_sum += y.sum(0)
        y_sq += float((y**2).sum())
    n = len(rows)
    y_mean = y_sum / n
    aty -= np.outer(z.sum(0), y_mean)  # centre the targets: z has zero mean, so this is ~0
    weight = np.linalg.solve(ata + alpha * n * np.eye(len(ata)), aty)  # [D, P]
    with torch.no_grad():
        gen.linear_base.weight.copy_(torch.from_numpy((weight / std[:, None]).T))
        gen.linear_base.bias.copy_(torch.from_numpy(y_mean - (mean / std) @ weight))
    # Residual sum of squares from the normal equations ((A + lambda I) W = B):
    # ||Y - ybar||^2 - tr(W^T B) - lambda ||W||^2.
    total = y_sq - n * float((y_mean**2).sum())
    explained = float((weight * aty).sum()) + alpha * n * float((weight**2).sum())
    size = gen.linear_base.out_features
    return {
        "linear_base_mse": max(total - explained, 0.0) / (n * size),
        "mean_image_mse": total / (n * size),
    }


def _perceptual(maps_fake: list[torch.Tensor], maps_real: list[torch.Tensor]) -> torch.Tensor:
    # Channel-normalised feature maps (as LPIPS does) so every stage counts comparably.
    total = 0.0
    for a, b in zip(maps_fake, maps_real, strict=True):
        a = a.float() / (a.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
        b = b.float() / (b.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
        total = total + (a - b).pow(2).sum(1).mean()
    return total / len(maps_fake)


def teacher_view(
    fake: torch.Tensor, real: torch.Tensor, jitter: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random shift (and every other step a 2x down-and-up resize) of G(f) and x, for the
    terms scored by the frozen teacher; identity when `jitter` is 0. Deterministic in `step`."""
    if jitter <= 0:
        return fake, real
    g = torch.Generator().manual_seed(int(step))
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
    both = torch.cat([fake, real.to(fake.dtype)])
    size = both.shape[-1]
    both = F.pad(both, (jitter,) * 4, mode="replicate")
    both = both[..., jitter + dy : jitter + dy + size, jitter + dx : jitter + dx + size]
    if step % 2:
        both = F.interpolate(both, scale_factor=0.5, mode="bilinear", antialias=True)
        both = F.interpolate(both, size=(size, size), mode="bilinear")
    return both[: len(fake)], both[len(fake) :]


def _ssim(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    win = 7 if min(fake.shape[-2:]) < 96 else 11
    return ssim(
        (fake.float().clamp(-1, 1) + 1) / 2,
        (real.float() + 1) / 2,
        data_range=1.0,
        win_size=win,
        size_average=True,
    )


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def generate_batched(
    gen: Vec2Face,
    feats: np.ndarray | torch.Tensor,
    device,
    batch_size: int = 256,
    seed: int = 0,
    masking="inference",
) -> np.ndarray:
    """uint8 images [N,H,W,3] for feature vectors, with seeded inference masking."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.as_tensor(np.asarray(feats, dtype=np.float32))
    out = []
    gen.eval()
    for s in range(0, len(feats), batch_size):
        out.append(
            images_to_uint8(
                gen.generate(feats[s : s + batch_size].to(device), masking, g), contiguous=False
            )
        )
    return (
        np.concatenate(out) if out else np.zeros((0, gen.image_size, gen.image_size, 3), np.uint8)
    )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-8)
    return (a * b).sum(1)


def evaluate_generator(
    gen: Vec2Face,
    teacher: nn.Module,
    judge: nn.Module,
    images_u8: np.ndarray,
    feats: np.ndarray,
    labels: np.ndarray,
    device,
    seed: int = 0,
    lpips: nn.Module | None = None,
    pose_model: nn.Module | None = None,
) -> dict:
    """Identity preservation and realism of G on held-out real (image, feature) pairs.

    identity_cos_mean is the training signal (teacher); judge_identity_cos_mean uses a recognizer
    no loss saw, comparing G(f) with the real image x; ssim_mean compares G(f) with x; judge_fd is
    the Frechet distance between judge features of real and generated images; pixel spread is the
    mean per-identity pixel std (variation within an identity), generated vs real; with an LPIPS
    network, lpips_mean is the mean LPIPS-VGG distance between G(f) and x. With a pose model (one
    no generator loss uses), yaw_* compare the head yaw it reads off G(f) with the one it reads off
    x: whether the generator draws the pose the feature carries (yaw_corr) and how far from
    frontal its faces turn (|yaw| mean and the share beyond 30 degrees).
    """
    fake = generate_batched(gen, feats, device, seed=seed)
    t_fake = embed_images(teacher, fake, device)
    j_fake, j_real = embed_images(judge, fake, device), embed_images(judge, images_u8, device)
    id_cos = _cos(t_fake, feats)
    judge_cos = _cos(j_fake, j_real)
    with torch.no_grad():
        f_t = hwc_to_input(fake)
        r_t = hwc_to_input(images_u8)
        ssim_mean = float(_ssim(f_t, r_t))
        extra = {}
        if lpips is not None:
            dev = next(lpips.buffers()).device
            d = [
                lpips(f_t[s : s + 64].to(dev), r_t[s : s + 64].to(dev))
                for s in range(0, len(f_t), 64)
            ]
            extra["lpips_mean"] = float(torch.cat(d).mean()) if d else float("nan")
    if pose_model is not None:
        extra.update(yaw_agreement(pose_model, fake, images_u8, device))
    q = np.quantile
    return {
        "identity_cos_mean": float(id_cos.mean()),
        "identity_cos_quantiles": {str(k): float(q(id_cos, k)) for k in (0.1, 0.5, 0.9)},
        "judge_identity_cos_mean": float(judge_cos.mean()),
        "judge_identity_cos_quantiles": {str(k): float(q(judge_cos, k)) for k in (0.1, 0.5, 0.9)},
        "ssim_mean": ssim_mean,
        "judge_fd": float(frechet_distance(j_real, j_fake)),
        "pixel_spread_generated": float(pixel_spread(fake, labels)),
        "pixel_spread_real": float(pixel_spread(images_u8, labels)),
        "eval_images": int(len(feats)),
        **extra,
    }


def yaw_agreement(pose_model: nn.Module, fake_u8: np.ndarray, real_u8: np.ndarray, device) -> dict:
    """How the yaw a pose model reads off generated images G(f) compares with the real images x."""
    yaw_fake = predict_pose(pose_model, fake_u8, device)[:, 0]
    yaw_real = predict_pose(pose_model, real_u8, device)[:, 0]
    # No spread on one side (e.g. one frontal average for every input): no agreement, not NaN.
    spread = len(yaw_fake) > 1 and yaw_fake.std() > 1e-6 and yaw_real.std() > 1e-6
    corr = np.corrcoef(yaw_fake, yaw_real)[0, 1] if spread else 0.0
    return {
        "yaw_abs_mean_generated": float(np.abs(yaw_fake).mean()),
        "yaw_abs_mean_real": float(np.abs(yaw_real).mean()),
        "yaw_gt30_generated": float((np.abs(yaw_fake) > 30).mean()),
        "yaw_gt30_real": float((np.abs(yaw_real) > 30).mean()),
        "yaw_corr": float(corr) if np.isfinite(corr) else 0.0,
        "yaw_mae": float(np.abs(yaw_fake - yaw_real).mean()),
    }


def sample_grid(
    gen: Vec2Face,
    real_u8: np.ndarray,
    feats: np.ndarray,
    new_vectors: np.ndarray,
    device,
    seed: int = 0,
) -> np.ndarray:
    """Rows: real images, their reconstructions G(f), then two renderings of new vectors."""
    rec = generate_batched(gen, feats, device, seed=seed)
    new_a = generate_batched(gen, new_vectors, device, seed=seed + 1)
    new_b = generate_batched(gen, new_vectors, device, seed=seed + 2)
    return image_grid(np.concatenate([real_u8, rec, new_a, new_b]), ncols=len(feats))


def gaussian_vectors(feats: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Random vectors from a full-covariance Gaussian fitted to features (for sample grids)."""
    rng = np.random.default_rng(seed)
    mean = feats.mean(0)
    cov = np.cov(feats, rowvar=False) + 1e-4 * np.eye(feats.shape[1])
    return rng.multivariate_normal(mean, cov, size=n, method="cholesky").astype(np.float32)


class CurveLog:
    """Quality-versus-compute points of one generator run, kept in a JSON-lines file.

    `seconds()` is the training time spent so far: the time since the last point (or since this
    object was made) plus the last point's seconds, so evaluations are not charged and a resumed
    run continues its count (time lost in a crash after the last point is not counted).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.points = self._read()
        self._offset = self.points[-1]["train_seconds"] if self.points else 0.0
        self._t0 = time.perf_counter()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def seconds(self) -> float:
        return self._offset + time.perf_counter() - self._t0

    def reset(self) -> None:
        self.points = []
        self.path.unlink(missing_ok=True)

    def add(self, epoch: int, seconds: float, metrics: dict) -> list[dict]:
        """Record the point for `epoch` (an existing point for that epoch is kept: a reused run's
        final point keeps the seconds it was trained in); returns every point."""
        if all(p["epoch"] != epoch for p in self.points):
            point = {"epoch": int(epoch), "train_seconds": round(float(seconds), 1)}
            point |= {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            self.points.append(point)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(point) + "\n")
        self._offset, self._t0 = float(seconds), time.perf_counter()
        return sorted(self.points, key=lambda p: p["epoch"])


def _vec2face_step_fn(
    cfg: Vec2FaceTrainConfig,
    teacher: nn.Module,
    lpips: LPIPSVGG | None,
    pose_model: nn.Module | None,
) -> Callable[[Any, TrainState], dict]:
    """One optimisation step: D on detached fakes (once the GAN is on), then G on the weighted sum
    of its terms (see the module docstring) through a frozen D, then the EMA update."""
    w = cfg.weights

    def step_fn(batch, st: TrainState) -> dict:
        images, feats = batch
        x = normalise(images.to(st.device))
        f = feats.to(st.device)
        G, D = st.models["gen"], st.models["disc"]
        gan_on = st.epoch >= cfg.gan_start_epoch and w.gan > 0
        metrics = {}
        with st.autocast():
            out = G(f, masking="train")
        fake = out["image"]
        if gan_on:
            with st.autocast():
                d_loss = discriminator_loss(D(x), D(fake.detach()), cfg.gan_kind)
            st.backward_and_step(d_loss, "disc")
            metrics["d_loss"] = d_loss.detach()
        with frozen_parameters(D), st.autocast():
            t_fake, t_real = teacher_view(fake, x, cfg.teacher_view_jitter, st.step)
            emb_fake, maps_fake = teacher.forward_features(t_fake, return_maps=True)
            l_pix = F.mse_loss(fake.float(), x)
            l_id = (1 - F.cosine_similarity(emb_fake.float(), f, dim=1, eps=1e-6)).mean()
            if lpips is not None:
                l_perc = lpips(fake, x).mean()
            else:
                with torch.no_grad():
                    _, maps_real = teacher.forward_features(t_real, return_maps=True)
                l_perc = _perceptual(maps_fake, maps_real)
            l_ssim = 1 - _ssim(fake, x)
            l_tok = F.mse_loss(out["tokens_pred"].float(), out["tokens_target"].float())
            if w.pose > 0:
                with torch.no_grad():
                    pose_real = pose_model(x).float()
                l_pose = (pose_model(fake).float() - pose_real).abs().mean() / 30.0
                metrics["pose"] = l_pose.detach()
            else:
                l_pose = torch.zeros((), device=fake.device)
            loss = (
                w.pixel * l_pix
                + w.identity * l_id
                + w.perceptual * l_perc
                + w.ssim * l_ssim
                + w.tokens * l_tok
                + w.pose * l_pose
            )
            if gan_on:
                l_adv = generator_adversarial_loss(D(fake), cfg.gan_kind)
                loss = loss + w.gan * l_adv
                metrics["g_adv"] = l_adv.detach()
        st.backward_and_step(loss, "gen")
        _ema_update(st.models["ema"], G, cfg.ema_decay)
        return {
            "loss": loss.detach(),
            "pixel": l_pix.detach(),
            "identity": l_id.detach(),
            "perceptual": l_perc.detach(),
            "ssim": l_ssim.detach(),
            "tokens": l_tok.detach(),
            **metrics,
        }

    return step_fn


def _vec2face_train_state(
    cfg: Vec2FaceTrainConfig,
    gen: Vec2Face,
    disc: nn.Module,
    ema: Vec2Face,
    steps_per_epoch: int,
    device: torch.device,
) -> TrainState:
    """AdamW for G (warm-up + half-cosine) and D (constant lr); the EMA copy rides along."""
    opt_g = torch.optim.AdamW(
        (p for p in gen.parameters() if p.requires_grad),
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
    )
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_d, betas=cfg.betas, weight_decay=0.0)
    sched = build_scheduler(
        opt_g,
        "cosine",
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=int(math.ceil(cfg.warmup_epochs * steps_per_epoch)),
    )
    return TrainState.create(
        {"gen": gen, "disc": disc, "ema": ema},
        {"gen": opt_g, "disc": opt_d},
        {"gen": sched},
        device=device,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
    )


def _yaw_measured_by(
    pose_judge: nn.Module | None, pose_model: nn.Module | None, pose_weight: float
) -> str:
    """Which model the report's yaw measures come from (a model in the loss flatters itself)."""
    if pose_judge is not None:
        return "independent pose judge"
    if pose_model is not None and pose_weight > 0:
        return "the pose model of the generator's pose term (not independent)"
    return "the teacher pipeline's pose model (in no generator loss)"


def _save_generator(
    path: Path, ema: Vec2Face, features: np.ndarray, image_size: int, report: dict
) -> None:
    """The EMA generator as a vec2face checkpoint, with the feature statistics sampling needs."""
    save_checkpoint(
        path,
        arch="vec2face",
        config=dict(ema.config.model_dump()),
        state_dict={k: v.detach().cpu() for k, v in ema.state_dict().items()},
        meta={
            "feat_dim": int(features.shape[1]),
            "image_size": image_size,
            "feature_mean": features.mean(0).tolist(),
            "feature_std": features.std(0).tolist(),
            "report": report,
        },
    )


@dataclass
class _HeldOutMonitor:
    """What a Vec2Face run measures on identities it never trains on: after every epoch a sample
    grid and the teacher cosine of 64 generated faces; at `curve_epochs` and at the end the full
    evaluation (evaluate_generator), its points kept in the curve log."""

    cfg: Vec2FaceTrainConfig
    teacher: nn.Module
    judge: nn.Module
    lpips: LPIPSVGG | None
    pose_eval: nn.Module | None
    yaw_measured_by: str
    images: np.ndarray
    feats: np.ndarray
    labels: np.ndarray
    grid_real: np.ndarray
    grid_feats: np.ndarray
    new_vectors: np.ndarray
    grids_dir: Path
    curve: CurveLog

    @classmethod
    def build(
        cls,
        cfg: Vec2FaceTrainConfig,
        packed: PackedImages,
        features: np.ndarray,
        train_rows: np.ndarray,
        held_rows: np.ndarray,
        models: tuple[nn.Module, nn.Module, LPIPSVGG | None],
        device: torch.device,
        pose_model: nn.Module | None,
        pose_judge: nn.Module | None,
        grids_dir: Path,
        curve_path: Path,
    ) -> _HeldOutMonitor:
        teacher, judge, lpips = models
        held = held_rows[: cfg.eval_images]
        held_images, held_labels = packed.get_batch(held)
        grid_rows = held[np.unique(packed.labels[held], return_index=True)[1]]
        grid_rows = grid_rows[: cfg.grid_identities]
        grid_real, _ = packed.get_batch(grid_rows)
        grids_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            cfg=cfg,
            teacher=teacher,
            judge=judge,
            lpips=lpips,
            pose_eval=pose_judge.to(device).eval() if pose_judge is not None else pose_model,
            yaw_measured_by=_yaw_measured_by(pose_judge, pose_model, cfg.weights.pose),
            images=held_images,
            feats=features[held],
            labels=held_labels,
            grid_real=grid_real,
            grid_feats=features[grid_rows],
            new_vectors=gaussian_vectors(features[train_rows], len(grid_rows), cfg.seed),
            grids_dir=grids_dir,
            curve=CurveLog(curve_path),
        )

    def grid(self, g: Vec2Face, dev) -> np.ndarray:
        return sample_grid(g, self.grid_real, self.grid_feats, self.new_vectors, dev, self.cfg.seed)

    def evaluate(self, g: Vec2Face, dev) -> dict:
        report = evaluate_generator(
            g,
            self.teacher,
            self.judge,
            self.images,
            self.feats,
            self.labels,
            dev,
            seed=self.cfg.seed,
            lpips=self.lpips,
            pose_model=self.pose_eval,
        )
        if self.pose_eval is not None:
            report["yaw_measured_by"] = self.yaw_measured_by
        return report

    def epoch_end(self, st: TrainState, _metrics: dict) -> dict:
        g = st.models["ema"]
        done = st.epoch  # epochs completed (the engine counts the one that just ended)
        Image.fromarray(self.grid(g, st.device)).save(self.grids_dir / f"epoch_{done:03d}.png")
        f_small = self.feats[:64]
        fake = generate_batched(g, f_small, st.device, seed=self.cfg.seed)
        cos = _cos(embed_images(self.teacher, fake, st.device), f_small)
        out = {"heldout_identity_cos": float(cos.mean())}
        if done == 1:  # a run from scratch: points of an earlier (set-aside) run do not apply
            self.curve.reset()
        if done in self.cfg.curve_epochs and done < self.cfg.epochs:
            seconds = self.curve.seconds()  # training time only: the evaluation is not charged
            point = self.evaluate(g, st.device)
            self.curve.add(done, seconds, point)
            out.update({f"curve.{k}": v for k, v in point.items() if isinstance(v, float)})
        return out


@dataclass
class _LinearFit:
    """The ridge map f -> image fitted once per run: the generator's linear path starts from it,
    and the report's `linear_baseline` evaluates it alone."""

    renderer: LinearRenderer
    summary: dict


def _initial_generator(
    cfg: Vec2FaceTrainConfig, packed: PackedImages, features: np.ndarray, train_rows: np.ndarray
) -> tuple[Vec2Face, _LinearFit | None]:
    """G before the first step (seeded), its linear path set and frozen as `cfg` says; returns
    (G, the ridge fit when the linear path or the linear baseline needs one)."""
    torch.manual_seed(cfg.seed)
    gen = build_generator(cfg, features.shape[1], packed.image_size)
    ridge_init = gen.linear_base is not None and cfg.linear_base_init == "ridge"
    fit = None
    if ridge_init or cfg.linear_baseline:
        renderer = LinearRenderer(features.shape[1], packed.image_size)
        summary = fit_linear_base(renderer, packed, features, train_rows, cfg.linear_base_alpha)
        fit = _LinearFit(renderer, summary)
    if ridge_init:
        gen.linear_base.load_state_dict(fit.renderer.linear_base.state_dict())
    if gen.linear_base is not None and not cfg.linear_base_trainable:
        gen.linear_base.requires_grad_(False)
    return gen, fit


def _finish(
    cfg: Vec2FaceTrainConfig,
    state: TrainState,
    monitor: _HeldOutMonitor,
    linear_fit: _LinearFit | None,
    packed: PackedImages,
    features: np.ndarray,
    out_dir: Path,
) -> dict:
    """The trained EMA generator's report, final grid and checkpoint (model.pt)."""
    ema = state.models["ema"]
    seconds = monitor.curve.seconds()
    report = monitor.evaluate(ema, state.device)
    report["curve"] = monitor.curve.add(cfg.epochs, seconds, report)
    if linear_fit is not None and ema.linear_base is not None and cfg.linear_base_init == "ridge":
        report["linear_base_fit"] = {k: round(v, 5) for k, v in linear_fit.summary.items()}
    if linear_fit is not None and cfg.linear_baseline:
        measured = monitor.evaluate(linear_fit.renderer.to(state.device), state.device)
        report["linear_baseline"] = {k: v for k, v in measured.items() if isinstance(v, float)}
    Image.fromarray(monitor.grid(ema, state.device)).save(monitor.grids_dir / "final.png")
    _save_generator(out_dir / "model.pt", ema, features, packed.image_size, report)
    return {
        "checkpoint": str(out_dir / "model.pt"),
        "grid": str(monitor.grids_dir / "final.png"),
        **report,
    }


def train_vec2face(
    packed_root: str | Path,
    features: np.ndarray,
    teacher: nn.Module,
    judge: nn.Module,
    out_dir: str | Path,
    grids_dir: str | Path,
    config: Vec2FaceTrainConfig,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
    pose_model: nn.Module | None = None,
    pose_judge: nn.Module | None = None,
) -> dict:
    """Train G on (packed image, teacher feature) pairs; writes `<out_dir>/model.pt` (EMA weights),
    per-epoch sample grids in `grids_dir`, and returns the report (see evaluate_generator).

    `pose_model` (image -> yaw, pitch in degrees) is the pose term's model when `weights.pose` > 0;
    the report's yaw measures use `pose_judge` when given, else `pose_model` - when that model is
    also in the loss, the report says so (`yaw_measured_by`), since a model scored by its own
    training signal flatters itself.

    With `cfg.curve_epochs`, the full held-out evaluation also runs after those epochs; each point
    (epoch, training seconds so far, metrics) is appended to `<out_dir>/curve.jsonl` as soon as it
    exists, so a resumed run keeps its earlier points, and the report's `curve` lists them all.
    """
    cfg = config
    device = resolve_device(device)
    packed = PackedImages(Path(packed_root))
    features = np.asarray(features, dtype=np.float32)
    if len(features) != len(packed):
        raise ValueError(f"{len(features)} features for {len(packed)} packed images")
    train_rows, held_rows = heldout_identity_split(
        packed.labels, cfg.heldout_identities, cfg.seed, min_held=2
    )
    gen, linear_fit = _initial_generator(cfg, packed, features, train_rows)
    gen = gen.to(device)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    disc = build_discriminator(cfg.discriminator_preset, num_scales=cfg.discriminator_scales)
    disc = disc.to(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    judge = judge.to(device).eval().requires_grad_(False)
    lpips = None
    if cfg.perceptual_net == "lpips":
        lpips = LPIPSVGG.from_paths(cfg.lpips_vgg_path, cfg.lpips_linear_path).to(device)
    if pose_model is not None:
        pose_model = pose_model.to(device).eval().requires_grad_(False)
    if cfg.weights.pose > 0 and pose_model is None:
        raise ValueError("vec2face.train.weights.pose > 0 needs a pose model (the teacher's)")

    ds = PackedTargetDataset(packed, features)
    ds.indices = train_rows
    loader = make_loader(
        ds, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, device=device
    )
    state = _vec2face_train_state(cfg, gen, disc, ema, len(loader), device)
    step_fn = _vec2face_step_fn(cfg, teacher, lpips, pose_model)

    monitor = _HeldOutMonitor.build(
        cfg, packed, features, train_rows, held_rows, (teacher, judge, lpips), device,
        pose_model, pose_judge, Path(grids_dir), Path(out_dir) / "curve.jsonl",
    )  # fmt: skip

    fit(
        step_fn,
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        epoch_end_fn=monitor.epoch_end,
        progress=progress,
        desc="train vec2face",
        # The data's content is part of the run: new teacher features or a new subset must not
        # resume (or reuse) a generator trained on the old ones.
        config={
            **cfg.model_dump(),
            "data": {"images": packed.fingerprint(), "features": array_fingerprint(features)},
        },
    )
    return _finish(cfg, state, monitor, linear_fit, packed, features, Path(out_dir))

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
from pathlib import Path
from typing import Literal

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
    torch.manual_seed(cfg.seed)
    gen = build_generator(cfg, features.shape[1], packed.image_size).to(device)
    ema = copy.deepcopy(gen).eval().requires_grad_(False)
    disc = build_discriminator(cfg.discriminator_preset, num_scales=cfg.discriminator_scales)
    disc = disc.to(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    judge = judge.to(device).eval().requires_grad_(False)
    lpips = None
    if cfg.perceptual_net == "lpips":
        lpips = LPIPSVGG.from_paths(cfg.lpips_vgg_path, cfg.lpips_linear_path).to(device)

    train_rows, held_rows = heldout_identity_split(
        packed.labels, cfg.heldout_identities, cfg.seed, min_held=2
    )
    ds = PackedTargetDataset(packed, features)
    ds.indices = train_rows
    loader = make_loader(
        ds, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, device=device
    )
    steps_per_epoch = len(loader)
    opt_g = torch.optim.AdamW(
        gen.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_d, betas=cfg.betas, weight_decay=0.0)
    sched = build_scheduler(
        opt_g,
        "cosine",
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=int(math.ceil(cfg.warmup_epochs * steps_per_epoch)),
    )
    state = TrainState.create(
        {"gen": gen, "disc": disc, "ema": ema},
        {"gen": opt_g, "disc": opt_d},
        {"gen": sched},
        device=device,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
    )
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

    held = held_rows[: cfg.eval_images]
    held_images, held_labels = packed.get_batch(held)
    held_feats = features[held]
    grid_rows = held[np.unique(packed.labels[held], return_index=True)[1]][: cfg.grid_identities]
    grid_real, _ = packed.get_batch(grid_rows)
    new_vectors = gaussian_vectors(features[train_rows], len(grid_rows), cfg.seed)
    grids_dir = Path(grids_dir)
    grids_dir.mkdir(parents=True, exist_ok=True)
    if pose_model is not None:
        pose_model = pose_model.to(device).eval().requires_grad_(False)
    if cfg.weights.pose > 0 and pose_model is None:
        raise ValueError("vec2face.train.weights.pose > 0 needs a pose model (the teacher's)")
    pose_eval = pose_judge.to(device).eval() if pose_judge is not None else pose_model
    if pose_judge is not None:
        yaw_measured_by = "independent pose judge"
    elif pose_model is not None and cfg.weights.pose > 0:
        yaw_measured_by = "the pose model of the generator's pose term (not independent)"
    else:
        yaw_measured_by = "the teacher pipeline's pose model (in no generator loss)"
    curve = CurveLog(Path(out_dir) / "curve.jsonl")

    def evaluate(g: Vec2Face, dev) -> dict:
        return evaluate_generator(
            g,
            teacher,
            judge,
            held_images,
            held_feats,
            held_labels,
            dev,
            seed=cfg.seed,
            lpips=lpips,
            pose_model=pose_eval,
        ) | ({"yaw_measured_by": yaw_measured_by} if pose_eval is not None else {})

    def epoch_end(st: TrainState, _metrics: dict) -> dict:
        g = st.models["ema"]
        grid = sample_grid(g, grid_real, features[grid_rows], new_vectors, st.device, cfg.seed)
        done = st.epoch  # epochs completed (the engine counts the one that just ended)
        Image.fromarray(grid).save(grids_dir / f"epoch_{done:03d}.png")
        f_small = held_feats[:64]
        fake = generate_batched(g, f_small, st.device, seed=cfg.seed)
        cos = _cos(embed_images(teacher, fake, st.device), f_small)
        out = {"heldout_identity_cos": float(cos.mean())}
        if done == 1:  # a run from scratch: points of an earlier (set-aside) run do not apply
            curve.reset()
        if done in cfg.curve_epochs and done < cfg.epochs:
            seconds = curve.seconds()  # training time only: the evaluation is not charged
            point = evaluate(g, st.device)
            curve.add(done, seconds, point)
            out.update({f"curve.{k}": v for k, v in point.items() if isinstance(v, float)})
        return out

    fit(
        step_fn,
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        epoch_end_fn=epoch_end,
        progress=progress,
        desc="train vec2face",
        # The data's content is part of the run: new teacher features or a new subset must not
        # resume (or reuse) a generator trained on the old ones.
        config={
            **cfg.model_dump(),
            "data": {"images": packed.fingerprint(), "features": array_fingerprint(features)},
        },
    )
    ema = state.models["ema"]
    seconds = curve.seconds()
    report = evaluate(ema, state.device)
    report["curve"] = curve.add(cfg.epochs, seconds, report)
    final_grid = sample_grid(
        ema, grid_real, features[grid_rows], new_vectors, state.device, cfg.seed
    )
    Image.fromarray(final_grid).save(grids_dir / "final.png")
    save_checkpoint(
        Path(out_dir) / "model.pt",
        arch="vec2face",
        config=dict(ema.config.model_dump()),
        state_dict={k: v.detach().cpu() for k, v in ema.state_dict().items()},
        meta={
            "feat_dim": int(features.shape[1]),
            "image_size": packed.image_size,
            "feature_mean": features.mean(0).tolist(),
            "feature_std": features.std(0).tolist(),
            "report": report,
        },
    )
    return {
        "checkpoint": str(Path(out_dir) / "model.pt"),
        "grid": str(grids_dir / "final.png"),
        **report,
    }

"""Training DR-GAN (seed 002): the generator re-renders a face at a target pose, D tells who, which
pose, and whether it is generated.

Single-image DR-GAN, per batch of real images x with identity y_d and pose bin y_p:

    c ~ uniform over the Np pose bins, z ~ U(-1, 1)^Nz, x~ = G(x, c, z) = decode(encode(x), c, z)
    D loss = CE(D_id(x), y_d) + CE(D_pose(x), y_p) + CE(D_id(x~), fake)
             (D learns who and which pose for real faces; generated ones go to the extra class
              Nd + 1; their pose is not D's to learn - the pose code was given, not observed)
    G loss = CE(D_id(x~), y_d) + CE(D_pose(x~), c)
             (G wants its output taken for the source identity - not for "fake" - at the target
              pose; this is the non-saturating form the article prefers to minimising log(1 - D))

`pose_weight` scales both pose terms (1 in the paper). D steps on detached fakes; the G loss runs
through a frozen D, so neither objective leaks into the other's weights.

Multi-image DR-GAN (model.multi_image): each item is n images of one identity; the encoder also
outputs a confidence per image, the n representations are fused by confidence-weighted average, and
the decoder renders every single f_i and the fused f (at their own random target poses). All those
fakes enter both losses, so the confidences learn which images give a good identity representation.

Logged per step (epoch means as epoch/<name>): d_loss (d_real_identity, d_real_pose, d_fake), g_loss
(g_identity, g_pose), and D's view of the batch: real_identity_acc, generated_pose_acc (D's pose
argmax = target code), generated_identity_acc (argmax = source identity), generated_detected (argmax
= the fake class). After every epoch, with G in eval mode on a fixed set of real images and pose
codes: eval/generated_pose_acc and eval/generated_identity_acc, and a grid of one identity across
all pose codes (`<out_dir>/grids/epoch_NNN.png`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, ValidationError, model_validator

from face_pipelines.device import maybe_channels_last, resolve_device
from face_pipelines.errors import DataError
from face_pipelines.image_tensors import (
    hwc_to_input,
    image_grid,
    images_to_uint8,
    to_device_normalised,
)
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.losses.gan import (
    fake_class_discriminator_terms,
    fake_class_generator_term,
    frozen_parameters,
)
from face_pipelines.models.drgan import (
    DRGANConfig,
    DRGANDiscriminator,
    DRGANGenerator,
    fuse_by_confidence,
    pose_bin_centres,
    yaw_to_pose_bin,
)
from face_pipelines.models.inference import DRGAN_ARCH, embed_images, load_drgan
from face_pipelines.training.data import PackedFaceDataset, make_loader
from face_pipelines.training.engine import TrainState, fit
from face_pipelines.training.loop_config import BatchSize, Epochs, LearningRate, TrainLoopConfig


class DRGANTrainConfig(TrainLoopConfig):
    """Recipe of a DR-GAN training run."""

    epochs: Epochs = 2
    batch_size: BatchSize = Field(64, description="real images (multi_image: identities) per batch")
    lr: LearningRate = Field(2e-4, description="Adam lr of G (paper: 2e-4)")
    seed: int = Field(0, description="seed of weights, data order, pose codes and noise")
    model: dict = Field(
        default_factory=dict,
        description="arguments of face_pipelines.models.drgan.DRGANConfig (channels, feat_dim, "
        "noise_dim, num_pose_bins, multi_image); image_size is taken from the packed images",
    )
    yaw_min_deg: float = Field(-60.0, description="yaw of the first pose bin (degrees)")
    yaw_max_deg: float = Field(60.0, description="yaw of the last pose bin (degrees)")
    images_per_identity: int = Field(
        2, ge=2, description="n images of one identity fused per item (multi_image only)"
    )
    pose_weight: float = Field(1.0, ge=0, description="weight of the pose terms of D and G")
    balance_pose_bins: bool = Field(
        False,
        description="weight D's real-pose cross-entropy by inverse bin frequency, so the rare "
        "profile bins count as much as the frontal ones (False = the paper's plain loss)",
    )
    lr_d: float = Field(2e-4, gt=0, description="Adam lr of D (paper: 2e-4)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of G and D")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm (None = no clip)")
    grid_identities: int = Field(6, gt=0, description="identities (rows) of the final pose grid")
    eval_images: int = Field(
        256,
        gt=0,
        description="real images re-rendered after every epoch to measure D's pose "
        "and identity accuracy on generated images in eval mode",
    )

    @model_validator(mode="after")
    def _check(self):
        # Fail at parameter validation, not minutes later when the model is built. The image size
        # comes from the data; a probe size that suits any number of stages checks the rest.
        if "image_size" in self.model:
            raise ValueError("model.image_size is set from the packed images; remove it")
        channels = self.model.get("channels", DRGANConfig.model_fields["channels"].default)
        stages = len(channels) if isinstance(channels, list | tuple) else 1
        try:
            cfg = DRGANConfig(**self.model, image_size=2**stages)
        except ValidationError as err:
            problems = "; ".join(
                f"model.{'.'.join(map(str, e['loc'])) or 'model'}: {e['msg']}" for e in err.errors()
            )
            raise ValueError(problems) from None
        pose_bin_centres(cfg.num_pose_bins, self.yaw_min_deg, self.yaw_max_deg)
        return self

    def model_config_for(self, image_size: int) -> DRGANConfig:
        """The architecture for packed images of side `image_size`."""
        try:
            return DRGANConfig(**self.model, image_size=image_size)
        except ValidationError as err:
            raise DataError(
                f"drgan model does not fit the {image_size} px packed images: "
                + "; ".join(e["msg"] for e in err.errors())
            ) from None


# -- losses ----------------------------------------------------------------------------------------
def discriminator_loss(
    real_identity: torch.Tensor,
    real_pose: torch.Tensor,
    fake_identity: torch.Tensor,
    y_identity: torch.Tensor,
    y_pose: torch.Tensor,
    pose_weight: float = 1.0,
    pose_class_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """D's terms: real -> (true identity, true pose), generated -> the fake class (the last logit).
    `pose_class_weights` [Np] weight the real-pose cross-entropy per bin (None = uniform)."""
    d_real, d_fake = fake_class_discriminator_terms(real_identity, fake_identity, y_identity)
    terms = {
        "d_real_identity": d_real,
        "d_real_pose": F.cross_entropy(real_pose.float(), y_pose, weight=pose_class_weights),
        "d_fake": d_fake,
    }
    terms["d_loss"] = (
        terms["d_real_identity"] + pose_weight * terms["d_real_pose"] + terms["d_fake"]
    )
    return terms


def generator_loss(
    fake_identity: torch.Tensor,
    fake_pose: torch.Tensor,
    source_identity: torch.Tensor,
    target_pose: torch.Tensor,
    pose_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """G's terms: generated images classified as the source identity and the target pose."""
    terms = {
        "g_identity": fake_class_generator_term(fake_identity, source_identity),
        "g_pose": F.cross_entropy(fake_pose.float(), target_pose),
    }
    terms["g_loss"] = terms["g_identity"] + pose_weight * terms["g_pose"]
    return terms


def _accuracy(logits: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
    return (logits.argmax(1) == target).float().mean()


# -- data ------------------------------------------------------------------------------------------
class PackedPoseDataset(PackedFaceDataset):
    """Packed images with their identity label and pose bin: items (uint8 CHW, label, pose bin).

    With `images_per_identity = n > 1` an item is n images of one identity - the indexed image and
    n - 1 others drawn (with replacement when the identity has fewer) from the sample's seed - as
    (uint8 [n, 3, H, W], label, pose bins [n]).
    """

    def __init__(self, packed: PackedImages, pose_bins: np.ndarray, images_per_identity: int = 1):
        super().__init__(packed)
        if len(pose_bins) != len(packed):
            raise DataError(f"{len(pose_bins)} pose labels for {len(packed)} packed images")
        self.pose_bins = np.asarray(pose_bins, dtype=np.int64)
        self.n = int(images_per_identity)
        order = np.argsort(packed.labels, kind="stable")
        bounds = np.flatnonzero(np.diff(packed.labels[order])) + 1
        self._rows_of = {int(packed.labels[g[0]]): g for g in np.split(order, bounds) if len(g)}

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        idx, rngs = self._split_keys(list(keys))
        if self.n == 1:
            images, labels = self.packed.get_batch(idx)
            return [
                (torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))), int(lab), int(p))
                for im, lab, p in zip(images, labels, self.pose_bins[idx], strict=True)
            ]
        items = []
        for i, rng in zip(idx, rngs, strict=True):
            rng = rng or random
            rows = self._rows_of[int(self.packed.labels[i])]
            others = [int(rng.choice(rows)) for _ in range(self.n - 1)]
            group = np.asarray([int(i), *others])
            images, labels = self.packed.get_batch(group)
            chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
            items.append(
                (torch.from_numpy(chw), int(labels[0]), torch.from_numpy(self.pose_bins[group]))
            )
        return items


# -- generation ------------------------------------------------------------------------------------
@torch.no_grad()
def generate_images(
    gen: DRGANGenerator,
    f: np.ndarray | torch.Tensor,
    pose_bins: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 256,
    noise: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """uint8 images [N, H, W, 3] decoded from identity representations f [N, feat_dim] at pose bins
    [N], with z ~ U(-1, 1) drawn from `seed` (or the given noise [N, noise_dim]); eval mode."""
    f = torch.as_tensor(np.asarray(f, dtype=np.float32))
    bins = torch.as_tensor(np.asarray(pose_bins, dtype=np.int64))
    if bins.shape != (len(f),):
        raise DataError(f"{len(f)} representations but pose bins of shape {tuple(bins.shape)}")
    if noise is None:
        noise = gen.sample_noise(len(f), "cpu", torch.Generator().manual_seed(int(seed)))
    noise = torch.as_tensor(np.asarray(noise, dtype=np.float32))
    gen.eval()
    out = [
        images_to_uint8(
            gen.decode(
                f[s : s + batch_size].to(device),
                bins[s : s + batch_size].to(device),
                noise[s : s + batch_size].to(device),
            )
        )
        for s in range(0, len(f), batch_size)
    ]
    side = gen.image_size
    return np.concatenate(out) if out else np.zeros((0, side, side, 3), np.uint8)


def encode_images(
    gen: DRGANGenerator, images_u8: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Identity representations f float32 [N, feat_dim] of uint8 images [N, H, W, 3]; eval mode."""
    return embed_images(gen.encoder, images_u8, device)


def pose_grid(
    gen: DRGANGenerator, real_u8: np.ndarray, device: torch.device | str = "cpu", seed: int = 0
) -> np.ndarray:
    """uint8 grid: one row per real image - the image, then its identity at every pose code (one z
    per row, so only the pose changes along a row)."""
    k, np_ = len(real_u8), gen.config.num_pose_bins
    f = encode_images(gen, real_u8, device)
    z = gen.sample_noise(k, "cpu", torch.Generator().manual_seed(int(seed)))
    fake = generate_images(
        gen,
        np.repeat(f, np_, axis=0),
        np.tile(np.arange(np_), k),
        device,
        noise=z.repeat_interleave(np_, dim=0),
    )
    rows = np.concatenate([real_u8[:, None], fake.reshape(k, np_, *fake.shape[1:])], axis=1)
    return image_grid(rows.reshape(-1, *rows.shape[2:]), ncols=np_ + 1)


@torch.no_grad()
def score_generated(
    gen: DRGANGenerator,
    disc: DRGANDiscriminator,
    real_u8: np.ndarray,
    identities: np.ndarray,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """D's pose and identity accuracy on re-renderings of `real_u8` at pose codes cycling over all
    bins (eval mode, seeded noise), and the decoder's throughput in images/s."""
    np_ = gen.config.num_pose_bins
    targets = np.arange(len(real_u8)) % np_
    f = encode_images(gen, real_u8, device)
    start = time.perf_counter()
    fake = generate_images(gen, f, targets, device, seed=seed)
    elapsed = max(time.perf_counter() - start, 1e-9)
    disc.eval()
    x = hwc_to_input(fake, device)
    id_logits, pose_logits = disc(x)
    disc.train()
    return {
        "generated_pose_acc": float(
            _accuracy(pose_logits, torch.as_tensor(targets, device=device))
        ),
        "generated_identity_acc": float(
            _accuracy(id_logits, torch.as_tensor(identities, device=device))
        ),
        "generate_images_per_s": len(fake) / elapsed,
    }


# -- training --------------------------------------------------------------------------------------
def even_rows(labels: np.ndarray, k: int) -> np.ndarray:
    """First image of each of up to k identities spread over the label range (grid / eval rows)."""
    ids, first = np.unique(labels, return_index=True)
    pick = np.linspace(0, len(ids) - 1, min(k, len(ids))).round().astype(int)
    return first[pick]


def _pose_class_weights(bins: np.ndarray, num_bins: int, device) -> torch.Tensor:
    """Inverse bin frequency (the rare profile bins count as much as the frontal ones)."""
    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_bins * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def _drgan_train_state(
    cfg: DRGANTrainConfig, gen: DRGANGenerator, disc: DRGANDiscriminator, device
) -> TrainState:
    return TrainState.create(
        {"gen": gen, "disc": disc},
        {
            "gen": torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=cfg.betas),
            "disc": torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=cfg.betas),
        },
        device=device,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
    )


def _drgan_step_fn(
    cfg: DRGANTrainConfig,
    n: int,
    np_: int,
    pose_class_weights: torch.Tensor | None,
    channels_last: bool,
):
    """One step (see the module docstring): D on real and detached generated images, then G
    through a frozen D; `n` images per identity (multi-image), `np_` pose bins."""

    def step_fn(batch, st: TrainState) -> dict:
        images, y_id, y_pose = batch
        G, D = st.models["gen"], st.models["disc"]
        x = to_device_normalised(images.flatten(0, images.ndim - 4), st.device, channels_last)
        y_id, y_pose = y_id.to(st.device), y_pose.flatten().to(st.device)
        real_id = y_id.repeat_interleave(n)
        with st.autocast():
            f, confidence = G.encode(x)
            source_id = real_id
            if n > 1:  # the single representations and their fusion are all rendered
                f = torch.cat([f, fuse_by_confidence(f, confidence, n)])
                source_id = torch.cat([real_id, y_id])
            target = torch.randint(0, np_, (len(f),)).to(st.device)
            fake = G.decode(f, target, G.sample_noise(len(f), st.device))
            id_logits, pose_logits = D(torch.cat([x, fake.detach()]))
            d_terms = discriminator_loss(
                id_logits[: len(x)],
                pose_logits[: len(x)],
                id_logits[len(x) :],
                real_id,
                y_pose,
                cfg.pose_weight,
                pose_class_weights,
            )
        st.backward_and_step(d_terms["d_loss"], "disc")
        with frozen_parameters(D), st.autocast():
            fake_id, fake_pose = D(fake)
            g_terms = generator_loss(fake_id, fake_pose, source_id, target, cfg.pose_weight)
        st.backward_and_step(g_terms["g_loss"], "gen")
        return {
            "loss": d_terms["d_loss"].detach() + g_terms["g_loss"].detach(),
            **{k: v.detach() for k, v in {**d_terms, **g_terms}.items()},
            "real_identity_acc": _accuracy(id_logits[: len(x)].detach(), real_id),
            "generated_pose_acc": _accuracy(fake_pose.detach(), target),
            "generated_identity_acc": _accuracy(fake_id.detach(), source_id),
            "generated_detected": _accuracy(fake_id.detach(), D.fake_class),
        }

    return step_fn


def _save_generator(
    gen: DRGANGenerator, model_cfg: DRGANConfig, cfg: DRGANTrainConfig, report: dict
) -> None:
    """The generator as a drgan checkpoint; meta keeps the pose bins and the report."""
    save_checkpoint(
        report["checkpoint"],
        arch=DRGAN_ARCH,
        config=model_cfg.model_dump(),
        state_dict={k: v.detach().cpu() for k, v in gen.state_dict().items()},
        meta={
            "num_identities": report["identities"],
            "pose_bin_centres_deg": list(report["pose_bin_centres_deg"]),
            "yaw_min_deg": cfg.yaw_min_deg,
            "yaw_max_deg": cfg.yaw_max_deg,
            "report": {k: v for k, v in report.items() if k != "final_epoch"},
        },
    )


class _MonitorImages(NamedTuple):
    eval_u8: np.ndarray  # one real image of each of up to cfg.eval_images identities
    eval_ids: np.ndarray  # their identities
    grid_u8: np.ndarray  # one real image of each of up to cfg.grid_identities identities


def _monitor_images(packed: PackedImages, cfg: DRGANTrainConfig) -> _MonitorImages:
    """The fixed real images every epoch's and the final evaluation and grids start from."""
    eval_u8, eval_ids = packed.get_batch(even_rows(packed.labels, cfg.eval_images))
    grid_u8, _ = packed.get_batch(even_rows(packed.labels, cfg.grid_identities))
    return _MonitorImages(eval_u8, eval_ids, grid_u8)


def _epoch_end_fn(cfg: DRGANTrainConfig, monitor: _MonitorImages, grids_dir: Path):
    """After each epoch: identity 0 across every pose code as `epoch_NNN.png`, and D's scores on
    re-renderings of the eval images as `eval/<metric>`."""

    def epoch_end(st: TrainState, _metrics: dict) -> dict:
        G, D = st.models["gen"], st.models["disc"]
        row = pose_grid(G, monitor.grid_u8[:1], st.device, cfg.seed)
        Image.fromarray(row).save(grids_dir / f"epoch_{st.epoch:03d}.png")
        scores = score_generated(G, D, monitor.eval_u8, monitor.eval_ids, st.device, cfg.seed)
        G.train()
        return {f"eval/{k}": v for k, v in scores.items() if k != "generate_images_per_s"}

    return epoch_end


def _final_report(
    gen: DRGANGenerator,
    disc: DRGANDiscriminator,
    monitor: _MonitorImages,
    out_dir: Path,
    packed: PackedImages,
    bins: np.ndarray,
    cfg: DRGANTrainConfig,
    history: list[dict],
    device: torch.device,
) -> dict:
    """Score the trained generator, save the final pose grid and return the training report."""
    gen.eval()
    grids_dir = out_dir / "grids"
    scores = score_generated(gen, disc, monitor.eval_u8, monitor.eval_ids, device, cfg.seed)
    Image.fromarray(pose_grid(gen, monitor.grid_u8, device, cfg.seed)).save(grids_dir / "final.png")
    np_ = gen.config.num_pose_bins
    centres = pose_bin_centres(np_, cfg.yaw_min_deg, cfg.yaw_max_deg)
    return {
        "checkpoint": str(out_dir / "model.pt"),
        "grid": str(grids_dir / "final.png"),
        # This run's epochs only (a folder may hold grids of an older, longer run).
        "epoch_grids": [str(grids_dir / f"epoch_{e:03d}.png") for e in range(1, cfg.epochs + 1)],
        "images": len(packed),
        "identities": int(packed.num_classes),
        "image_size": packed.image_size,
        "pose_bin_centres_deg": centres.tolist(),
        "train_images_per_pose_bin": np.bincount(bins, minlength=np_).tolist(),
        "multi_image": bool(gen.config.multi_image),
        "final_epoch": dict(history[-1]) if history else {},
        **scores,
    }


def train_drgan(
    packed_root: str | Path,
    yaw_labels_deg: np.ndarray,
    out_dir: str | Path,
    config: DRGANTrainConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
    log: Callable[[dict, int], None] | None = None,
) -> dict:
    """Train DR-GAN on packed images with per-image yaw labels (degrees, aligned with the packed
    order). Resumes from `<out_dir>/train_state/last.pt`; writes `<out_dir>/model.pt` (generator),
    `<out_dir>/grids/epoch_NNN.png` and `final.png`, and returns the report."""
    cfg = config
    device = resolve_device(device)
    packed = PackedImages(Path(packed_root))
    yaw = np.asarray(yaw_labels_deg, dtype=np.float64).reshape(-1)
    if len(yaw) != len(packed):
        raise DataError(f"{len(yaw)} yaw labels for {len(packed)} packed images in {packed_root}")
    model_cfg = cfg.model_config_for(packed.image_size)
    np_ = model_cfg.num_pose_bins
    bins = yaw_to_pose_bin(yaw, np_, cfg.yaw_min_deg, cfg.yaw_max_deg)
    pose_class_weights = _pose_class_weights(bins, np_, device) if cfg.balance_pose_bins else None
    n = cfg.images_per_identity if model_cfg.multi_image else 1

    torch.manual_seed(cfg.seed)
    gen = DRGANGenerator(model_cfg).to(device)
    disc = DRGANDiscriminator(model_cfg, packed.num_classes).to(device)
    # channels_last where it pays (CUDA; on CPU only for nets without thin convs, i.e. D).
    channels_last = maybe_channels_last(disc, device) | maybe_channels_last(gen, device)
    loader = make_loader(
        PackedPoseDataset(packed, bins, n),
        cfg.batch_size,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device,
    )
    state = _drgan_train_state(cfg, gen, disc, device)
    step_fn = _drgan_step_fn(cfg, n, np_, pose_class_weights, channels_last)

    monitor = _monitor_images(packed, cfg)
    grids_dir = Path(out_dir) / "grids"
    grids_dir.mkdir(parents=True, exist_ok=True)

    history = fit(
        step_fn,
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        epoch_end_fn=_epoch_end_fn(cfg, monitor, grids_dir),
        progress=progress,
        desc="train drgan",
        # Content fingerprints: never resume a run trained on other images or other pose labels.
        config={
            **cfg.model_dump(),
            "data": {"images": packed.fingerprint(), "yaw": array_fingerprint(yaw)},
        },
    )
    report = _final_report(
        gen, disc, monitor, Path(out_dir), packed, bins, cfg, history, state.device
    )
    _save_generator(gen, model_cfg, cfg, report)
    return report


def save_encoder_checkpoint(drgan_path: str | Path, out_path: str | Path) -> dict:
    """Write the DR-GAN encoder as a recognizer checkpoint (arch 'drgan_encoder'), loadable by
    training.recognizer.load_recognizer and so by the verification benchmarks. Returns its summary.
    """
    gen = load_drgan(drgan_path)
    cfg = gen.config.model_dump()
    config = {
        "input_size": cfg.pop("image_size"),
        "num_features": cfg.pop("feat_dim"),
        **{k: v for k, v in cfg.items() if k not in ("noise_dim", "num_pose_bins")},
    }
    save_checkpoint(
        out_path,
        arch="drgan_encoder",
        config=config,
        state_dict={k: v.detach().cpu() for k, v in gen.encoder.state_dict().items()},
        meta={"source": str(drgan_path)},
    )
    return {"checkpoint": str(out_path), "source": str(drgan_path), "config": config}


@torch.no_grad()
def judge_reconstruction(
    gen: DRGANGenerator,
    judge: torch.nn.Module,
    real_u8: np.ndarray,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict:
    """Identity kept through DR-GAN, by a recognizer no DR-GAN loss uses (the judge): each real
    image x is encoded and re-rendered at a pose code cycling over the bins; judge cosine of
    G(x, c, z) with x (as Vec2Face's judge_identity_cos_mean compares G(f) with x)."""
    targets = np.arange(len(real_u8)) % gen.config.num_pose_bins
    fake = generate_images(gen, encode_images(gen, real_u8, device), targets, device, seed=seed)
    a = embed_images(judge, fake, device)
    b = embed_images(judge, real_u8, device)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-8
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-8
    cos = (a * b).sum(1)
    per_bin = [cos[targets == k] for k in range(gen.config.num_pose_bins)]
    return {
        "judge_identity_cos_mean": float(cos.mean()),
        "judge_identity_cos_per_bin": [float(c.mean()) if len(c) else None for c in per_bin],
        "judge_eval_images": int(len(real_u8)),
    }

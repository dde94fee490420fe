"""ELEGANT's training loop (one attribute per iteration, cycling)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError
from face_pipelines.image_tensors import normalise
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.losses.gan import frozen_parameters
from face_pipelines.models.elegant import (
    ELEGANTConfig,
    ELEGANTDiscriminator,
    ELEGANTGenerator,
)
from face_pipelines.models.inference import ELEGANT_ARCH
from face_pipelines.training.data import make_loader
from face_pipelines.training.elegant.config import ELEGANTTrainConfig
from face_pipelines.training.elegant.data import AttributePairDataset
from face_pipelines.training.elegant.inference import interpolation_grid, score_edits
from face_pipelines.training.elegant.losses import (
    critic_loss,
    discriminator_loss,
    generator_loss,
    swap_forward,
)
from face_pipelines.training.engine import TrainState, fit

LogFn = Callable[[dict, int], None]


def _eval_pairs(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per attribute: (k sources without it, k exemplars with it), fixed by seed."""
    rng = np.random.default_rng([seed, 4])
    pairs = []
    for j in range(labels.shape[1]):
        neg, pos = np.flatnonzero(labels[:, j] == 0), np.flatnonzero(labels[:, j] == 1)
        pairs.append((rng.choice(neg, k), rng.choice(pos, k)))
    return pairs


def _elegant_train_state(
    cfg: ELEGANTTrainConfig, gen: ELEGANTGenerator, disc: ELEGANTDiscriminator, device
) -> TrainState:
    """Adam for G, for D's adversarial heads, and for the attribute critic (its own lr)."""
    return TrainState.create(
        {"gen": gen, "disc": disc},
        {
            "gen": torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=cfg.betas),
            "disc": torch.optim.Adam(
                [p for n, p in disc.named_parameters() if not n.startswith("critic.")],
                lr=cfg.lr_d,
                betas=cfg.betas,
            ),
            "critic": torch.optim.Adam(disc.critic.parameters(), lr=cfg.critic_lr),
        },
        device=device,
        precision=cfg.precision,
        grad_clip=cfg.grad_clip,
    )


def _elegant_step_fn(cfg: ELEGANTTrainConfig):
    """One step on a pair batch for attribute i: the critic (during its warm-up, alone), D on the
    detached swaps, then G's reconstruction, adversarial and attribute terms through a frozen D."""

    def step_fn(batch, st: TrainState) -> dict:
        a_u8, b_u8, y_a, y_b, attr = batch
        i = int(attr[0])
        G, D = st.models["gen"], st.models["disc"]
        x_a, x_b = (normalise(t.to(st.device)) for t in (a_u8, b_u8))
        y_a, y_b = y_a.to(st.device), y_b.to(st.device)
        c_terms = {}
        if cfg.attribute_weight > 0 and st.step < cfg.critic_warmup_steps:
            with st.autocast():
                c_terms["critic"] = critic_loss(D, x_a, x_b, y_a, y_b)
            st.backward_and_step(c_terms["critic"], "critic")
            c = c_terms["critic"].detach()
            return {"loss": c, "critic": c, "attribute": float(i)}
        with st.autocast():
            recon_a, recon_b, fake_c, fake_d = swap_forward(G, x_a, x_b, i)
        if cfg.attribute_weight > 0:
            with st.autocast():
                c_terms["critic"] = critic_loss(
                    D,
                    x_a,
                    x_b,
                    y_a,
                    y_b,
                    fake_c.detach(),
                    fake_d.detach(),
                    i,
                    cfg.critic_fake_weight,
                )
            st.backward_and_step(c_terms["critic"], "critic")
        with st.autocast():
            d_terms = discriminator_loss(
                D,
                x_a,
                x_b,
                fake_c.detach(),
                fake_d.detach(),
                y_a,
                y_b,
                i,
                cfg.mismatch_weight,
            )
        st.backward_and_step(d_terms["d_loss"], "disc")
        with frozen_parameters(D), st.autocast():
            g_terms = generator_loss(
                D,
                x_a,
                x_b,
                recon_a,
                recon_b,
                fake_c,
                fake_d,
                y_a,
                y_b,
                i,
                cfg.recon_weight,
                cfg.attribute_weight,
                cfg.change_weight,
            )
        st.backward_and_step(g_terms["g_loss"], "gen")
        terms = {k: v.detach() for k, v in {**c_terms, **d_terms, **g_terms}.items()}
        return {"loss": terms["d_loss"] + terms["g_loss"], **terms, "attribute": float(i)}

    return step_fn


def _save_interpolation_grids(
    gen: ELEGANTGenerator,
    packed: PackedImages,
    pairs,
    cfg: ELEGANTTrainConfig,
    grids_dir: Path,
    device,
) -> list[str]:
    """One exemplar interpolation grid per attribute; returns their paths."""
    grids = []
    for j, name in enumerate(cfg.attributes):
        src, _ = packed.get_batch(pairs[j][0][:1])
        ex, _ = packed.get_batch(pairs[j][1][:3])
        grid = interpolation_grid(gen, src, ex, j, cfg.grid_steps, device)
        path = grids_dir / f"interpolation_{name}.png"
        Image.fromarray(grid).save(path)
        grids.append(str(path))
    return grids


def _score_real_pair_edits(
    G: ELEGANTGenerator, packed: PackedImages, pairs, attributes, classifier, judge, dev
) -> dict:
    """score_edits of the fixed real pairs, per attribute ('<attribute>/<measure>'); G back in
    train mode afterwards."""
    scores = {}
    for j, name in enumerate(attributes):
        src, _ = packed.get_batch(pairs[j][0])
        ex, _ = packed.get_batch(pairs[j][1])
        for k, v in score_edits(G, classifier, judge, src, ex, j, dev).items():
            scores[f"{name}/{k}"] = v
    G.train()
    return scores


def _pair_loader(
    packed: PackedImages, labels: np.ndarray, cfg: ELEGANTTrainConfig, device: torch.device
) -> DataLoader:
    """Batches of (A with attribute i, B without) pairs in order, so batch k trains attribute
    k mod n; `steps_per_epoch` batches an epoch."""
    dataset = AttributePairDataset(
        packed, labels, cfg.batch_size, cfg.steps_per_epoch * cfg.batch_size
    )
    return make_loader(
        dataset,
        cfg.batch_size,
        shuffle=False,  # batch k trains attribute k mod n (pairs are still random per epoch)
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device,
    )


def _save_generator_and_report(
    gen: ELEGANTGenerator,
    model_cfg: ELEGANTConfig,
    cfg: ELEGANTTrainConfig,
    packed: PackedImages,
    labels: np.ndarray,
    checkpoint: Path,
    grids: list[str],
    history: list[dict],
    scores: dict,
) -> dict:
    """Saves the generator to `checkpoint` (attributes and edit scores in its meta) and returns
    the training report: data sizes, label frequencies, last epoch's metrics, edit scores."""
    report = {
        "checkpoint": str(checkpoint),
        "attributes": list(cfg.attributes),
        "grids": grids,
        "images": len(packed),
        "image_size": packed.image_size,
        "train_frequency": dict(zip(cfg.attributes, labels.mean(0).tolist(), strict=True)),
        "final_epoch": dict(history[-1]) if history else {},
        "edits_of_real_pairs": scores,
    }
    save_checkpoint(
        report["checkpoint"],
        arch=ELEGANT_ARCH,
        config=model_cfg.model_dump(),
        state_dict={k: v.detach().cpu() for k, v in gen.state_dict().items()},
        meta={"attributes": report["attributes"], "edits_of_real_pairs": scores},
    )
    return report


def train_elegant(
    packed_root: str | Path,
    labels: np.ndarray,
    out_dir: str | Path,
    config: ELEGANTTrainConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
    log: LogFn | None = None,
    classifier: nn.Module | None = None,
    judge: nn.Module | None = None,
) -> dict:
    """Train ELEGANT on packed images with labels [N, n] (config.attributes order, aligned with the
    packed order). Resumes from `<out_dir>/train_state/last.pt`; writes `<out_dir>/model.pt` and
    `<out_dir>/grids/` (interpolation grids per attribute); returns the report. With a classifier /
    judge, every epoch also scores edits of fixed real pairs (eval/<attribute>/success, judge_cos).
    """
    cfg = config
    device = resolve_device(device)
    packed = PackedImages(Path(packed_root))
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != (len(packed), len(cfg.attributes)):
        raise DataError(
            f"labels of shape {labels.shape} for {len(packed)} packed images and "
            f"{len(cfg.attributes)} attributes in {packed_root}"
        )
    model_cfg = cfg.model_config_for(packed.image_size)
    torch.manual_seed(cfg.seed)
    gen = ELEGANTGenerator(model_cfg).to(device)
    disc = ELEGANTDiscriminator(model_cfg).to(device)
    loader = _pair_loader(packed, labels, cfg, device)
    state = _elegant_train_state(cfg, gen, disc, device)
    pairs = _eval_pairs(labels, cfg.eval_pairs, cfg.seed)
    grids_dir = Path(out_dir) / "grids"
    grids_dir.mkdir(parents=True, exist_ok=True)

    def evaluate(G: ELEGANTGenerator, dev) -> dict:
        return _score_real_pair_edits(G, packed, pairs, cfg.attributes, classifier, judge, dev)

    def epoch_end(st: TrainState, _metrics: dict) -> dict:
        return {f"eval/{k}": v for k, v in evaluate(st.models["gen"], st.device).items()}

    history = fit(
        _elegant_step_fn(cfg),
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        epoch_end_fn=epoch_end,
        progress=progress,
        desc="train elegant",
        config={
            **cfg.model_dump(),
            "data": {"images": packed.fingerprint(), "labels": array_fingerprint(labels)},
        },
    )
    gen.eval()
    scores = evaluate(gen, state.device)
    gen.eval()
    grids = _save_interpolation_grids(gen, packed, pairs, cfg, grids_dir, state.device)
    return _save_generator_and_report(
        gen, model_cfg, cfg, packed, labels, Path(out_dir) / "model.pt", grids, history, scores
    )

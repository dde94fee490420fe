"""Training the attribute classifier that judges ELEGANT's edits; it never enters ELEGANT's loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError
from face_pipelines.image_tensors import normalise
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.models.attributes import AttributeClassifier
from face_pipelines.models.inference import CLASSIFIER_ARCH
from face_pipelines.training.data import PackedTargetDataset, heldout_identity_split, make_loader
from face_pipelines.training.elegant.config import AttributeClassifierConfig
from face_pipelines.training.elegant.inference import classify_attributes
from face_pipelines.training.engine import TrainState, fit

LogFn = Callable[[dict, int], None]


def per_attribute_rates(pred: np.ndarray, truth: np.ndarray, attributes: Sequence[str]) -> dict:
    """Per attribute: positives and negatives counted, true-positive rate (recall of images that
    have it), true-negative rate (of images that lack it), their mean (balanced accuracy) and plain
    accuracy, from bool [N, n] predictions and truths. A rate without images is NaN."""
    out = {}
    for j, name in enumerate(attributes):
        p, t = pred[:, j], truth[:, j]
        tpr = float(p[t].mean()) if t.any() else float("nan")
        tnr = float((~p[~t]).mean()) if (~t).any() else float("nan")
        out[name] = {
            "positives": int(t.sum()),
            "negatives": int((~t).sum()),
            "true_positive_rate": tpr,
            "true_negative_rate": tnr,
            "balanced_accuracy": float(np.nanmean([tpr, tnr])),
            "accuracy": float((p == t).mean()),
        }
    return out


def _classifier_arch(cfg: AttributeClassifierConfig, num_attributes: int, input_size: int) -> dict:
    """AttributeClassifier's constructor arguments; also the checkpoint's config."""
    return {
        "num_attributes": num_attributes,
        "widths": list(cfg.widths),
        "norm": cfg.norm,
        "head": cfg.head,
        "input_size": input_size,
    }


def _classifier_train_state(
    model: AttributeClassifier,
    cfg: AttributeClassifierConfig,
    packed: PackedImages,
    labels: np.ndarray,
    train_idx: np.ndarray,
    device: torch.device,
) -> tuple[TrainState, DataLoader]:
    """The loader over the training identities' images (targets stay indexed globally), AdamW
    with the optional one-cycle schedule over all its batches, and their TrainState."""
    dataset = PackedTargetDataset(packed, labels)
    dataset.indices = train_idx  # train on the identities not held out (targets stay global)
    loader = make_loader(
        dataset, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, device=device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = None
    if cfg.lr_schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, cfg.lr, total_steps=max(1, cfg.epochs * len(loader)), pct_start=0.15
        )
    state = TrainState.create(
        model, opt, sched, device=device, precision=cfg.precision, grad_clip=5.0
    )
    return state, loader


def _classifier_step_fn(hflip: bool, pos_weight: torch.Tensor):
    """One BCE step on a batch of (uint8 images, multi-label targets), mirroring a random half of
    the images when `hflip`; returns the loss and the per-label accuracy at logit 0."""

    def step_fn(batch, st: TrainState) -> dict:
        images, target = batch
        x = normalise(images.to(st.device))
        if hflip:  # the attributes are left-right symmetric
            flip = torch.rand(len(x)) < 0.5
            x[flip.to(x.device)] = x[flip.to(x.device)].flip(3)
        with st.autocast():
            logits = st.model(x).float()
        loss = F.binary_cross_entropy_with_logits(
            logits, target.to(st.device), pos_weight=pos_weight
        )
        st.backward_and_step(loss)
        acc = ((logits.detach() > 0).float() == target.to(st.device)).float().mean()
        return {"loss": loss.detach(), "accuracy": acc}

    return step_fn


def _heldout_report(
    model: AttributeClassifier,
    packed: PackedImages,
    labels: np.ndarray,
    attributes: Sequence[str],
    train_idx: np.ndarray,
    held_idx: np.ndarray,
    cfg: AttributeClassifierConfig,
    checkpoint: Path,
    device,
) -> dict:
    """The training report: per attribute rates of the model's predictions (probability 0.5) on
    the held-out identities' images, or on the training images when none are held out."""
    rows = held_idx if len(held_idx) else train_idx
    images, _ = packed.get_batch(rows)
    pred = classify_attributes(model, images, device) >= 0.5
    return {
        "checkpoint": str(checkpoint),
        "what": f"AttributeClassifier (small CNN, {cfg.norm} norm, {cfg.head} head, BCE) trained "
        "on the real subset's labels; per attribute TPR, TNR and balanced accuracy at "
        "probability 0.5 on the images of identities held out of training",
        "attributes": list(attributes),
        "evaluated_on": "heldout identities"
        if len(held_idx)
        else "training images (heldout_identities holds out none)",
        "heldout_identities": int(len(np.unique(packed.labels[held_idx]))),
        "heldout_images": int(len(held_idx)),
        "heldout": per_attribute_rates(pred, labels[rows] == 1, attributes),
    }


def train_attribute_classifier(
    packed_root: str | Path,
    labels: np.ndarray,
    attributes: Sequence[str],
    out_dir: str | Path,
    config: AttributeClassifierConfig,
    device: str | torch.device = "auto",
    progress: bool = True,
    log: LogFn | None = None,
) -> dict:
    """Fit the multi-label attribute classifier (BCE) on packed images; `<out_dir>/model.pt`.
    Returns a report with, per attribute, the true-positive and true-negative rates, balanced and
    plain accuracy on the images of held-out identities (never seen in training).
    Resumes from `<out_dir>/train_state`."""
    cfg = config
    device = resolve_device(device)
    packed = PackedImages(Path(packed_root))
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != (len(packed), len(attributes)):
        raise DataError(f"labels of shape {labels.shape} for {len(packed)} packed images")
    train_idx, held_idx = heldout_identity_split(
        packed.labels, cfg.heldout_identities, [cfg.seed, 11]
    )
    torch.manual_seed(cfg.seed)
    arch = _classifier_arch(cfg, len(attributes), packed.height)
    model = AttributeClassifier(**arch).to(device)
    state, loader = _classifier_train_state(model, cfg, packed, labels, train_idx, device)
    # Positives are rare (e.g. sunglasses ~3%): weight them up to the negatives, capped.
    freq = labels[train_idx].mean(0).clip(1e-3, 1 - 1e-3)
    pos_weight = torch.as_tensor(np.minimum((1 - freq) / freq, 10.0), device=state.device)
    fit(
        _classifier_step_fn(cfg.hflip, pos_weight),
        state,
        loader,
        cfg.epochs,
        checkpoint_dir=Path(out_dir) / "train_state",
        log=log,
        log_every=cfg.log_every,
        progress=progress,
        desc="train attribute classifier",
        config={
            **cfg.model_dump(),
            "attributes": list(attributes),
            "data": {"images": packed.fingerprint(), "labels": array_fingerprint(labels)},
        },
    )
    report = _heldout_report(
        model,
        packed,
        labels,
        attributes,
        train_idx,
        held_idx,
        cfg,
        Path(out_dir) / "model.pt",
        state.device,
    )
    save_checkpoint(
        report["checkpoint"],
        arch=CLASSIFIER_ARCH,
        config=arch,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        meta={"attributes": list(attributes), "heldout": report["heldout"]},
    )
    return report

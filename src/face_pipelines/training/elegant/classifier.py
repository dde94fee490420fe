"""Training the attribute classifier that judges ELEGANT's edits; it never enters ELEGANT's loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


def _per_attribute_accuracy(pred: np.ndarray, truth: np.ndarray, attributes) -> dict:
    """Accuracy, balanced accuracy and true-positive rate per attribute (bool [N, n] arrays)."""
    out = {}
    for j, name in enumerate(attributes):
        p, t = pred[:, j], truth[:, j]
        recall_pos = float(p[t].mean()) if t.any() else float("nan")
        recall_neg = float((~p[~t]).mean()) if (~t).any() else float("nan")
        out[name] = {
            "accuracy": float((p == t).mean()),
            "balanced_accuracy": float(np.nanmean([recall_pos, recall_neg])),
            "true_positive_rate": recall_pos,
        }
    return out


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
    Returns a report with held-out (identity-disjoint) accuracy and balanced accuracy per attribute.
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
    model = AttributeClassifier(len(attributes), cfg.widths).to(device)
    dataset = PackedTargetDataset(packed, labels)
    dataset.indices = train_idx  # train on the identities not held out (targets stay global)
    loader = make_loader(
        dataset, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, device=device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    state = TrainState.create(model, opt, device=device, precision=cfg.precision, grad_clip=5.0)
    # Positives are rare (e.g. sunglasses ~3%): weight them up to the negatives, capped.
    freq = labels[train_idx].mean(0).clip(1e-3, 1 - 1e-3)
    pos_weight = torch.as_tensor(np.minimum((1 - freq) / freq, 10.0), device=state.device)

    def step_fn(batch, st: TrainState) -> dict:
        images, target = batch
        x = normalise(images.to(st.device))
        with st.autocast():
            logits = st.model(x).float()
        loss = F.binary_cross_entropy_with_logits(
            logits, target.to(st.device), pos_weight=pos_weight
        )
        st.backward_and_step(loss)
        acc = ((logits.detach() > 0).float() == target.to(st.device)).float().mean()
        return {"loss": loss.detach(), "accuracy": acc}

    fit(
        step_fn,
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
    rows = held_idx if len(held_idx) else train_idx
    images, _ = packed.get_batch(rows)
    pred = classify_attributes(model, images, state.device) >= 0.5
    heldout = _per_attribute_accuracy(pred, labels[rows] == 1, attributes)
    report = {
        "checkpoint": str(Path(out_dir) / "model.pt"),
        "what": "AttributeClassifier (small CNN, BCE) trained on the real subset's labels; "
        "metrics on identity-disjoint held-out images",
        "attributes": list(attributes),
        "heldout_images": int(len(held_idx)),
        "heldout": heldout,
    }
    save_checkpoint(
        report["checkpoint"],
        arch=CLASSIFIER_ARCH,
        config={"num_attributes": len(attributes), "widths": list(cfg.widths)},
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        meta={"attributes": list(attributes), "heldout": heldout},
    )
    return report

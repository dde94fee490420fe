"""Training ELEGANT (seed 004) and using it: exemplar attribute transfer, interpolation grids, and the
attribute classifier that judges whether an edit worked.

Iterative training, one attribute per iteration, cycling over the n attributes (batch k trains
attribute k mod n). A batch holds pairs (A, B): A has attribute i, B lacks it, drawn independently
(unpaired identities; B is re-drawn when it shares A's identity). With z = Enc(x):

    z_C, z_D = swap slot i of z_A and z_B
    A' = A + Dec([z_A, z_A])    B' = B + Dec([z_B, z_B])       reconstructions
    C  = A + Dec([z_C, z_A])    D  = B + Dec([z_D, z_B])       A without i, B with A's i
    labels: y_C = y_A with y_i = 0, y_D = y_B with y_i = 1

    D loss (both scales, least squares): real (A, y_A) and (B, y_B) -> 1; (C, y_C), (D, y_D) -> 0;
           plus `mismatch_weight` x [(A, y_A with i flipped), (B, y_B with i flipped)] -> 0
    G loss: recon_weight x (|A' - A| + |B' - B|) + adversarial (C, y_C) and (D, y_D) -> 1

The mismatch term is this project's addition to the paper (a matching-aware discriminator): a real
image shown with the wrong label for attribute i counts as fake, so D must check the attribute
itself, not only realism - on small CPU runs this is what makes the edits change the attribute.
Least-squares GAN losses keep the early, unbalanced phase stable.

The attribute classifier (`AttributeClassifier`, models/attributes.py) is a small CNN trained with
binary cross-entropy on the labels of the real subset, identity-disjoint held-out split for its
accuracy; it never enters ELEGANT's loss, so the edit success it measures is not self-graded.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError, ParameterError
from face_pipelines.image_tensors import hwc_to_input, image_grid, images_to_uint8, normalise
from face_pipelines.io.atomic import atomic_path
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.io.packed import PackedImages, array_fingerprint
from face_pipelines.models.attributes import AttributeClassifier
from face_pipelines.models.elegant import (
    ELEGANTConfig,
    ELEGANTDiscriminator,
    ELEGANTGenerator,
    swap_slot,
)
from face_pipelines.models.inference import CLASSIFIER_ARCH, ELEGANT_ARCH, embed_images
from face_pipelines.training.data import PackedFaceDataset, PackedTargetDataset, make_loader
from face_pipelines.training.engine import TrainState, fit, frozen

LogFn = Callable[[dict, int], None]


class AttributeClassifierConfig(BaseModel):
    """Recipe of the attribute classifier that measures edit success."""

    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field([24, 48, 96], min_length=1, description="channels of the stages")
    epochs: int = Field(3, gt=0, description="training epochs")
    batch_size: int = Field(64, gt=0, description="batch size")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    heldout_identities: float = Field(
        0.1, ge=0, lt=1, description="fraction of identities held out to report its accuracy"
    )
    num_workers: int = Field(0, ge=0, description="data-loader workers")
    seed: int = Field(0, description="seed of weights, split and data order")


class ELEGANTTrainConfig(BaseModel):
    """Recipe of an ELEGANT training run."""

    model_config = ConfigDict(extra="forbid")
    attributes: list[str] = Field(
        ["glasses", "beard", "hat", "smile"],
        min_length=1,
        description="binary manifest columns, one latent slot each (order = slot order)",
    )
    model: dict = Field(
        default_factory=dict,
        description="arguments of face_pipelines.models.elegant.ELEGANTConfig (channels, "
        "slot_channels, disc_channels); image_size and num_attributes come from the data",
    )
    epochs: int = Field(2, gt=0, description="training epochs")
    steps_per_epoch: int = Field(200, gt=0, description="batches of pairs per epoch")
    batch_size: int = Field(32, gt=0, description="pairs (A, B) per batch")
    lr: float = Field(2e-4, gt=0, description="Adam lr of the generator (encoder + decoder)")
    lr_d: float = Field(2e-4, gt=0, description="Adam lr of the two discriminators")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of G and D")
    recon_weight: float = Field(5.0, ge=0, description="weight of the L1 reconstruction loss")
    mismatch_weight: float = Field(
        1.0, ge=0, description="weight of real-with-flipped-label negatives in D's loss"
    )
    attribute_weight: float = Field(
        0.0,
        ge=0,
        description="weight in G's loss of the attribute critic finding each edit's target label "
        "(0 = the paper's losses only; the critic is then not trained)",
    )
    change_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the L1 size of each edit's change to its source image in G's loss "
        "(0 = the paper: edits are bounded only by the adversarial term)",
    )
    critic_lr: float = Field(
        2e-3, gt=0, description="Adam lr of the attribute critic (trained on real labels only)"
    )
    critic_fake_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the critic's BCE on G's edits against their source's label (the "
        "critic then also guards against edits that fool it without drawing the attribute)",
    )
    critic_warmup_steps: int = Field(
        0,
        ge=0,
        description="first optimizer steps that train only the critic (G and D wait), so G's "
        "attribute term starts from a critic that already sees the attributes",
    )
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm (None = no clip)")
    eval_pairs: int = Field(64, gt=0, description="pairs per attribute scored after every epoch")
    grid_steps: int = Field(4, ge=2, description="side of each exemplar interpolation grid")
    log_every: int = Field(10, gt=0, description="optimizer steps between per-step logs")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="autocast")
    num_workers: int = Field(0, ge=0, description="data-loader workers")
    seed: int = Field(0, description="seed of weights, pair draws and data order")

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes has duplicates: {self.attributes}")
        for key in ("image_size", "num_attributes"):
            if key in self.model:
                raise ValueError(f"model.{key} is set from the data / attributes; remove it")
        channels = self.model.get("channels", ELEGANTConfig.model_fields["channels"].default)
        stages = len(channels) if isinstance(channels, list | tuple) else 1
        try:  # a probe size that suits the stage count checks everything else now
            ELEGANTConfig(**self.model, num_attributes=len(self.attributes), image_size=2**stages)
        except ValidationError as err:
            msgs = [e["msg"] for e in err.errors() if "discriminator sees" not in e["msg"]]
            if msgs:
                raise ValueError("; ".join(f"model: {m}" for m in msgs)) from None
        return self

    def model_config_for(self, image_size: int) -> ELEGANTConfig:
        """The architecture for images of side `image_size`."""
        try:
            return ELEGANTConfig(
                **self.model, num_attributes=len(self.attributes), image_size=image_size
            )
        except ValidationError as err:
            raise DataError(
                f"elegant model does not fit the {image_size} px images: "
                + "; ".join(e["msg"] for e in err.errors())
            ) from None


# -- labels ----------------------------------------------------------------------------------------
def attribute_labels(
    manifest: pd.DataFrame, attributes: Sequence[str], where: str, parameter: str
) -> np.ndarray:
    """float32 [N, n] 0/1 labels of `attributes` from the manifest's boolean / 0-1 columns.

    Raises:
        ParameterError: an attribute is not a column of the manifest (names `parameter`, the
            file `where` and the columns that would do).
        DataError: a column has missing or non-binary values (names the column and first row).
    """
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        usable = [
            c
            for c in manifest.columns
            if manifest[c].dtype == bool or str(manifest[c].dtype) == "boolean"
        ]
        raise ParameterError(
            f"{parameter} names {missing}, which {where} has no column for; binary attribute "
            f"columns there: {usable}. Fix the parameter or add the labels to the manifest"
        )
    out = np.zeros((len(manifest), len(attributes)), np.float32)
    for j, name in enumerate(attributes):
        col = manifest[name]
        values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
        if len(bad):
            raise DataError(
                f"{where}: column {name!r} must be boolean (0/1) for every image; row "
                f"{int(bad[0])} has {col.iloc[int(bad[0])]!r} ({len(bad)} bad rows)"
            )
        out[:, j] = values
    return out


def read_label_table(path: str | Path) -> pd.DataFrame:
    """An attribute-label table by path: parquet, or CSV (.csv / .txt). CelebA's
    list_attr_celeba.txt converts with one line of pandas (see the README)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"attribute labels file {path} (elegant.labels_path) does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"attribute labels file {path} is unreadable: {exc}") from exc


def attribute_labels_by_path(
    manifest: pd.DataFrame,
    table: pd.DataFrame,
    attributes: Sequence[str],
    where: str,
    parameter: str = "elegant.train.attributes",
) -> np.ndarray:
    """float32 [N, n] labels of the manifest's images (in manifest order) looked up by 'path' in a
    label table. -1/1 columns (CelebA's convention) are read as 0/1.

    Raises:
        DataError: the table or manifest lacks 'path', the table repeats a path, or some manifest
            images have no row (names how many and the first).
        ParameterError: an attribute is not a column of the table.
    """
    for frame, name in ((manifest, "the subset manifest"), (table, where)):
        if "path" not in frame.columns:
            raise DataError(f"{name} has no 'path' column (columns: {list(frame.columns)[:12]})")
    dup = table["path"].duplicated()
    if dup.any():
        raise DataError(
            f"{where} lists path {table['path'][dup].iloc[0]!r} more than once "
            f"({int(dup.sum())} repeated rows)"
        )
    cols = [a for a in attributes if a in table.columns]
    sub = table[["path", *cols]].copy()
    for c in cols:  # CelebA stores -1 / 1
        values = pd.to_numeric(sub[c], errors="coerce")
        if values.isin((-1, 1)).all():
            sub[c] = (values > 0).astype(np.float32)
    joined = manifest[["path"]].merge(sub, on="path", how="left", indicator=True)
    missing = joined["_merge"] != "both"
    if missing.any():
        raise DataError(
            f"{where} has no labels for {int(missing.sum())} of {len(manifest)} subset images, "
            f"e.g. {joined['path'][missing].iloc[0]!r}; its 'path' must match the subset "
            "manifest's (relative to the image root)"
        )
    return attribute_labels(joined.drop(columns="_merge"), attributes, where, parameter)


# -- data ------------------------------------------------------------------------------------------
class AttributePairDataset(PackedFaceDataset):
    """Items (A uint8 CHW, B uint8 CHW, y_A [n], y_B [n], attribute i) for iterative training.

    Item k trains attribute (k // batch_size) mod n, so with the loader's unshuffled order every
    batch trains one attribute and consecutive batches cycle through them. A is a random image with
    attribute i, B a random one without it (another identity when one exists), drawn from the
    sample seed the EpochSampler gives (new pairs every epoch, exact on resume).
    """

    def __init__(self, packed: PackedImages, labels: np.ndarray, batch_size: int, length: int):
        super().__init__(packed)
        self.labels_n = np.asarray(labels, dtype=np.float32)
        if self.labels_n.shape[0] != len(packed):
            raise DataError(f"{len(self.labels_n)} label rows for {len(packed)} packed images")
        self.batch_size, self.length = int(batch_size), int(length)
        self.positives, self.negatives = [], []
        for j in range(self.labels_n.shape[1]):
            pos = np.flatnonzero(self.labels_n[:, j] == 1)
            neg = np.flatnonzero(self.labels_n[:, j] == 0)
            if not len(pos) or not len(neg):
                raise DataError(
                    f"attribute slot {j} has {len(pos)} images with it and {len(neg)} without: "
                    "ELEGANT needs both for every attribute"
                )
            self.positives.append(pos)
            self.negatives.append(neg)

    def __len__(self) -> int:
        return self.length

    def attribute_of(self, k: int) -> int:
        return (int(k) // self.batch_size) % self.labels_n.shape[1]

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        items = []
        for key in keys:
            k, seed = (key if isinstance(key, tuple | list) else (key, k_seed(key)))[:2]
            rng = random.Random(int(seed))
            i = self.attribute_of(k)
            a = int(rng.choice(self.positives[i]))
            b = int(rng.choice(self.negatives[i]))
            for _ in range(8):  # unpaired identities: avoid A and B being the same person
                if self.packed.labels[b] != self.packed.labels[a]:
                    break
                b = int(rng.choice(self.negatives[i]))
            images, _ = self.packed.get_batch(np.array([a, b]))
            chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            y = torch.from_numpy(self.labels_n[[a, b]])
            items.append((chw[0], chw[1], y[0], y[1], i))
        return items


def k_seed(k: int) -> int:
    """Sample seed of a plain index (loaders without sample seeds)."""
    return 1_000_003 * int(k) + 7


# -- losses ----------------------------------------------------------------------------------------
def _ls(scores: list[torch.Tensor], target: float) -> torch.Tensor:
    """Least-squares GAN term averaged over the discriminator scales."""
    return sum(((s.float() - target) ** 2).mean() for s in scores) / len(scores)


def discriminator_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    fake_c: torch.Tensor,
    fake_d: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    attribute: int,
    mismatch_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """D's terms: real pairs with their labels -> 1; edits with their target labels -> 0; real
    images with attribute i's label flipped -> 0 (weighted by mismatch_weight)."""
    y_c, y_d = edited_labels(y_a, y_b, attribute)
    terms = {
        "d_real": 0.5 * (_ls(disc(real_a, y_a), 1.0) + _ls(disc(real_b, y_b), 1.0)),
        "d_fake": 0.5 * (_ls(disc(fake_c, y_c), 0.0) + _ls(disc(fake_d, y_d), 0.0)),
    }
    loss = terms["d_real"] + terms["d_fake"]
    if mismatch_weight > 0:
        # A real image labelled like its edit (A without i, B with i) is a wrong pair.
        terms["d_mismatch"] = 0.5 * (_ls(disc(real_a, y_c), 0.0) + _ls(disc(real_b, y_d), 0.0))
        loss = loss + mismatch_weight * terms["d_mismatch"]
    terms["d_loss"] = loss
    return terms


def critic_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    fake_c: torch.Tensor | None = None,
    fake_d: torch.Tensor | None = None,
    attribute: int = 0,
    fake_weight: float = 0.0,
) -> torch.Tensor:
    """BCE of the attribute critic on a real pair batch and all its labels; with fakes and
    fake_weight > 0, plus BCE on the edits' attribute i against their *source's* label (C keeps
    A's, D keeps B's), so an edit only convinces the critic when it looks like the real thing -
    without it G learns a pattern that fools the critic without drawing the attribute."""
    logits = disc.attribute_logits(torch.cat([real_a, real_b])).float()
    loss = F.binary_cross_entropy_with_logits(logits, torch.cat([y_a, y_b]))
    if fake_weight > 0 and fake_c is not None and fake_d is not None:
        fake_logits = disc.attribute_logits(torch.cat([fake_c, fake_d]))[:, attribute].float()
        source = torch.cat([y_a[:, attribute], y_b[:, attribute]])
        loss = loss + fake_weight * F.binary_cross_entropy_with_logits(fake_logits, source)
    return loss


def generator_loss(
    disc: nn.Module,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    recon_a: torch.Tensor,
    recon_b: torch.Tensor,
    fake_c: torch.Tensor,
    fake_d: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    attribute: int,
    recon_weight: float = 5.0,
    attribute_weight: float = 0.0,
    change_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """G's terms: L1 reconstruction of A and B; the edits taken for real with their target labels;
    the critic finding the edits' target labels (weighted by attribute_weight); the L1 size of
    each edit's change to its source image (weighted by change_weight: edits stay local)."""
    y_c, y_d = edited_labels(y_a, y_b, attribute)
    terms = {
        "g_recon": 0.5 * (F.l1_loss(recon_a.float(), real_a) + F.l1_loss(recon_b.float(), real_b)),
        "g_adv": 0.5 * (_ls(disc(fake_c, y_c), 1.0) + _ls(disc(fake_d, y_d), 1.0)),
    }
    terms["g_loss"] = recon_weight * terms["g_recon"] + terms["g_adv"]
    if attribute_weight > 0:
        # Only the edited attribute: the others are unchanged, and the critic's errors on them
        # would otherwise dilute the one gradient that matters here.
        logits = disc.attribute_logits(torch.cat([fake_c, fake_d]))[:, attribute].float()
        target = torch.cat([y_c[:, attribute], y_d[:, attribute]])
        terms["g_attribute"] = F.binary_cross_entropy_with_logits(logits, target)
        terms["g_loss"] = terms["g_loss"] + attribute_weight * terms["g_attribute"]
    if change_weight > 0:
        terms["g_change"] = 0.5 * (
            F.l1_loss(fake_c.float(), real_a) + F.l1_loss(fake_d.float(), real_b)
        )
        terms["g_loss"] = terms["g_loss"] + change_weight * terms["g_change"]
    return terms


def edited_labels(y_a: torch.Tensor, y_b: torch.Tensor, attribute: int):
    """(y_C, y_D): A's labels without attribute i, B's labels with it."""
    y_c, y_d = y_a.clone(), y_b.clone()
    y_c[:, attribute], y_d[:, attribute] = 0.0, 1.0
    return y_c, y_d


def swap_forward(gen: ELEGANTGenerator, x_a: torch.Tensor, x_b: torch.Tensor, attribute: int):
    """(A', B', C, D) of one training pair batch (see the module docstring)."""
    feats_a, feats_b = gen.encode(x_a), gen.encode(x_b)
    z_a, z_b = feats_a[-1], feats_b[-1]
    z_c, z_d = swap_slot(z_a, z_b, attribute, gen.config.slot_channels)
    # One decoder pass per source image: [reconstruction, edit] share the skips.
    out_a = x_a.repeat(2, 1, 1, 1) + gen.decode(
        torch.cat([z_a, z_c]), [torch.cat([f, f]) for f in feats_a]
    )
    out_b = x_b.repeat(2, 1, 1, 1) + gen.decode(
        torch.cat([z_b, z_d]), [torch.cat([f, f]) for f in feats_b]
    )
    n = len(x_a)
    return out_a[:n], out_b[:n], out_a[n:], out_b[n:]


# -- inference helpers -----------------------------------------------------------------------------
def _to_input(images_u8: np.ndarray, device) -> torch.Tensor:
    return hwc_to_input(np.ascontiguousarray(images_u8), device)


@torch.no_grad()
def transfer_attribute(
    gen: ELEGANTGenerator,
    images_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    strength: float = 1.0,
) -> np.ndarray:
    """Images [N, H, W, 3] with slot `attribute` replaced by that of exemplar j (one per image, or
    one exemplar for all); `strength` < 1 blends the slot between the image's and the exemplar's."""
    if len(exemplars_u8) not in (1, len(images_u8)):
        raise DataError(f"{len(exemplars_u8)} exemplars for {len(images_u8)} images (1 or same)")
    gen.eval()
    out = []
    for s in range(0, len(images_u8), batch_size):
        x = _to_input(images_u8[s : s + batch_size], device)
        e = exemplars_u8 if len(exemplars_u8) == 1 else exemplars_u8[s : s + batch_size]
        feats = gen.encode(x)
        slot_x = gen.slot(feats[-1], attribute)
        slot_e = gen.slot(gen.encode(_to_input(e, device))[-1], attribute)
        z_new = gen.with_slot(feats[-1], attribute, slot_x + strength * (slot_e - slot_x))
        out.append(images_to_uint8(x + gen.decode(z_new, feats)))
    return np.concatenate(out) if out else np.zeros_like(images_u8)


@torch.no_grad()
def interpolation_grid(
    gen: ELEGANTGenerator,
    source_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    steps: int = 4,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The paper's exemplar interpolation grid for one source and three exemplars of one attribute.

    uint8 image: a header row [source, exemplar 1, 2, 3], then a steps x steps grid whose corners
    take slot `attribute` from the source (top left), exemplar 1 (top right), 2 (bottom left) and
    3 (bottom right), bilinear blends of the four slots in between.
    """
    if len(exemplars_u8) != 3:
        raise DataError(f"an interpolation grid needs 3 exemplars, got {len(exemplars_u8)}")
    gen.eval()
    x = _to_input(source_u8[:1], device)
    feats = gen.encode(x)
    slots = gen.slot(
        torch.cat([feats[-1], gen.encode(_to_input(exemplars_u8, device))[-1]]), attribute
    )
    t = torch.linspace(0, 1, steps, device=x.device)
    u, v = torch.meshgrid(t, t, indexing="ij")  # u down, v right
    w = torch.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], -1).reshape(-1, 4)
    blended = torch.einsum("kc,cshw->kshw", w, slots)
    z = gen.with_slot(feats[-1].expand(len(w), -1, -1, -1), attribute, blended)
    images = images_to_uint8(x + gen.decode(z, [f.expand(len(w), -1, -1, -1) for f in feats]))
    header = np.concatenate([source_u8[:1], exemplars_u8])
    width = max(steps, 4)
    pad_h = np.full((width - 4, *header.shape[1:]), 255, np.uint8)
    rows = [np.concatenate([header, pad_h])]
    for r in range(steps):
        row = images[r * steps : (r + 1) * steps]
        rows.append(np.concatenate([row, np.full((width - steps, *row.shape[1:]), 255, np.uint8)]))
    return image_grid(np.concatenate(rows), ncols=width)


@torch.no_grad()
def classify_attributes(
    classifier: nn.Module, images_u8: np.ndarray, device="cpu", batch_size: int = 256
) -> np.ndarray:
    """Probabilities float32 [N, n] that each image has each attribute (eval mode)."""
    classifier.eval()
    out = [
        torch.sigmoid(classifier(_to_input(images_u8[s : s + batch_size], device)).float()).cpu()
        for s in range(0, len(images_u8), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def score_edits(
    gen: ELEGANTGenerator,
    classifier: nn.Module | None,
    judge: nn.Module | None,
    sources_u8: np.ndarray,
    exemplars_u8: np.ndarray,
    attribute: int,
    device="cpu",
) -> dict[str, float]:
    """Transfer `attribute` from exemplars into sources (which lack it) and score the result:
    success = classifier says the attribute is present; judge_cos = judge cos(before, after)."""
    edited = transfer_attribute(gen, sources_u8, exemplars_u8, attribute, device)
    out = {"pixel_change": float(np.abs(edited.astype(np.float32) - sources_u8).mean() / 255)}
    if classifier is not None:
        out["success"] = float(
            (classify_attributes(classifier, edited, device)[:, attribute] >= 0.5).mean()
        )
    if judge is not None:
        cos = _cos(embed_images(judge, sources_u8, device), embed_images(judge, edited, device))
        out["judge_cos"] = float(cos.mean())
    return out


# -- training --------------------------------------------------------------------------------------
def _eval_pairs(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per attribute: (k sources without it, k exemplars with it), fixed by seed."""
    rng = np.random.default_rng([seed, 4])
    pairs = []
    for j in range(labels.shape[1]):
        neg, pos = np.flatnonzero(labels[:, j] == 0), np.flatnonzero(labels[:, j] == 1)
        pairs.append((rng.choice(neg, k), rng.choice(pos, k)))
    return pairs


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
    dataset = AttributePairDataset(
        packed, labels, cfg.batch_size, cfg.steps_per_epoch * cfg.batch_size
    )
    loader = make_loader(
        dataset,
        cfg.batch_size,
        shuffle=False,  # batch k trains attribute k mod n (pairs are still random per epoch)
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device,
    )
    state = TrainState.create(
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
        with frozen(D), st.autocast():
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

    pairs = _eval_pairs(labels, cfg.eval_pairs, cfg.seed)
    grids_dir = Path(out_dir) / "grids"
    grids_dir.mkdir(parents=True, exist_ok=True)

    def evaluate(G: ELEGANTGenerator, dev) -> dict:
        scores = {}
        for j, name in enumerate(cfg.attributes):
            src, _ = packed.get_batch(pairs[j][0])
            ex, _ = packed.get_batch(pairs[j][1])
            for k, v in score_edits(G, classifier, judge, src, ex, j, dev).items():
                scores[f"{name}/{k}"] = v
        G.train()
        return scores

    def epoch_end(st: TrainState, _metrics: dict) -> dict:
        return {f"eval/{k}": v for k, v in evaluate(st.models["gen"], st.device).items()}

    history = fit(
        step_fn,
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
    grids = []
    for j, name in enumerate(cfg.attributes):
        src, _ = packed.get_batch(pairs[j][0][:1])
        ex, _ = packed.get_batch(pairs[j][1][:3])
        grid = interpolation_grid(gen, src, ex, j, cfg.grid_steps, state.device)
        path = grids_dir / f"interpolation_{name}.png"
        Image.fromarray(grid).save(path)
        grids.append(str(path))
    report = {
        "checkpoint": str(Path(out_dir) / "model.pt"),
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
        meta={"attributes": list(cfg.attributes), "edits_of_real_pairs": scores},
    )
    return report


# -- attribute classifier --------------------------------------------------------------------------
def _heldout_split(identities: np.ndarray, fraction: float, seed: int):
    ids = np.unique(identities)
    rng = np.random.default_rng([seed, 11])
    held = rng.choice(ids, int(round(fraction * len(ids))), replace=False) if fraction else []
    is_held = np.isin(identities, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


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
    train_idx, held_idx = _heldout_split(packed.labels, cfg.heldout_identities, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = AttributeClassifier(len(attributes), cfg.widths).to(device)
    dataset = PackedTargetDataset(packed, labels)
    dataset.indices = train_idx  # train on the identities not held out (targets stay global)
    loader = make_loader(
        dataset, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, device=device
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    state = TrainState.create(model, opt, device=device, grad_clip=5.0)
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
    truth = labels[rows] == 1
    heldout = {}
    for j, name in enumerate(attributes):
        p, t = pred[:, j], truth[:, j]
        recall_pos = float(p[t].mean()) if t.any() else float("nan")
        recall_neg = float((~p[~t]).mean()) if (~t).any() else float("nan")
        heldout[name] = {
            "accuracy": float((p == t).mean()),
            "balanced_accuracy": float(np.nanmean([recall_pos, recall_neg])),
            "true_positive_rate": recall_pos,
        }
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


# -- editing a synthetic dataset -------------------------------------------------------------------
EDIT_COLUMNS = (
    "edited",
    "edit_attribute",
    "edit_exemplar",
    "edit_exemplar_identity",
    "edit_target_prob_before",
    "edit_target_prob_after",
    "edit_success",
    "edit_judge_cos",
)


def _read_images(root: Path, paths: Sequence[str]) -> np.ndarray:
    out = []
    for rel in paths:
        path = root / rel
        try:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"synthetic image {path} (manifest path {rel!r}) is unreadable: {exc}"
            ) from exc
    return np.stack(out)


def choose_edits(
    probs_before: np.ndarray,
    edit_attributes: Sequence[int],
    fraction: float,
    seed: int,
) -> list[tuple[int, int]]:
    """(image row, attribute) pairs to edit: round(fraction * N) edits spread evenly over
    `edit_attributes`; each edit goes to a distinct image that the classifier says lacks that
    attribute (probability < 0.5), chosen at random. Fewer when there are too few such images."""
    n_images = len(probs_before)
    total = int(round(fraction * n_images))
    rng = np.random.default_rng([seed, 21])
    taken = np.zeros(n_images, bool)
    chosen = []
    for k, attr in enumerate(edit_attributes):
        want = total // len(edit_attributes) + (k < total % len(edit_attributes))
        candidates = np.flatnonzero((probs_before[:, attr] < 0.5) & ~taken)
        rows = rng.choice(candidates, min(want, len(candidates)), replace=False)
        taken[rows] = True
        chosen += [(int(r), int(attr)) for r in np.sort(rows)]
    return chosen


def edit_dataset(
    src_root: str | Path,
    manifest: pd.DataFrame,
    out_root: str | Path,
    gen: ELEGANTGenerator,
    attributes: Sequence[str],
    edit_attributes: Sequence[str],
    exemplars: PackedImages,
    exemplar_labels: np.ndarray,
    classifier: nn.Module,
    judge: nn.Module | None,
    fraction: float,
    seed: int = 0,
    device: str | torch.device = "cpu",
    jpeg_quality: int = 95,
    batch_size: int = 128,
    strength: float = 1.0,
) -> tuple[pd.DataFrame, dict]:
    """Transfer attributes from random real exemplars into a fraction of a synthetic dataset.

    Each chosen image (see `choose_edits`) gets attribute a from a random real exemplar that has it
    (`exemplar_labels[:, a] == 1`). The result is a complete dataset at `out_root` (same layout and
    paths; unedited images copied) whose manifest adds the EDIT_COLUMNS: the attribute, the
    exemplar's row in the real subset and its identity, the classifier's probability of the
    attribute before and after, success (after >= 0.5) and the judge's cos between the image before
    and after. With out_root == src_root the originals are replaced (only when asked for).

    `strength` scales the slot's move towards the exemplar's (1 = swap; see transfer_attribute).

    Returns (the new manifest, a report: success, judge cos and attribute frequencies).

    Raises:
        ParameterError: an edit attribute is not one the model was trained on.
        DataError: the manifest lacks 'path', was edited already (in place), or images are
            unreadable / of another size than the model's.
    """
    src_root, out_root = Path(src_root), Path(out_root)
    unknown = [a for a in edit_attributes if a not in attributes]
    if unknown:
        raise ParameterError(
            f"elegant.edit.attributes names {unknown}, which the ELEGANT model was not trained "
            f"on (its attributes: {list(attributes)}; see elegant.train.attributes)"
        )
    if "path" not in manifest.columns:
        raise DataError(f"{src_root}/manifest.parquet has no 'path' column")
    in_place = out_root.resolve() == src_root.resolve()
    if in_place and "edited" in manifest.columns and manifest["edited"].fillna(False).any():
        raise DataError(
            f"{src_root} was edited in place before (its manifest has edited rows); re-render it "
            "before editing it again"
        )
    device = resolve_device(device)
    images = _read_images(src_root, manifest["path"].tolist())
    side = gen.config.image_size
    if images.shape[1:3] != (side, side):
        raise DataError(
            f"synthetic images in {src_root} are {images.shape[2]}x{images.shape[1]} px but the "
            f"ELEGANT model edits {side} px images"
        )
    probs_before = classify_attributes(classifier, images, device)
    attr_index = {name: j for j, name in enumerate(attributes)}
    chosen = choose_edits(probs_before, [attr_index[a] for a in edit_attributes], fraction, seed)
    rng = np.random.default_rng([seed, 22])
    out = manifest.drop(columns=[c for c in EDIT_COLUMNS if c in manifest.columns]).copy()
    n = len(out)
    cols = {
        "edited": np.zeros(n, bool),
        "edit_attribute": np.full(n, None, object),
        "edit_exemplar": np.full(n, -1, np.int64),
        "edit_exemplar_identity": np.full(n, -1, np.int64),
        "edit_target_prob_before": np.full(n, np.nan),
        "edit_target_prob_after": np.full(n, np.nan),
        "edit_success": np.zeros(n, bool),
        "edit_judge_cos": np.full(n, np.nan),
    }
    edited_images = images.copy()
    for attr in sorted({a for _, a in chosen}):
        rows = np.array([r for r, a in chosen if a == attr], np.int64)
        pool = np.flatnonzero(exemplar_labels[:, attr] == 1)
        if not len(pool):
            raise DataError(f"no real exemplar has attribute {attributes[attr]!r}")
        ex_rows = rng.choice(pool, len(rows))
        for s in range(0, len(rows), batch_size):
            r, e = rows[s : s + batch_size], ex_rows[s : s + batch_size]
            ex_images, ex_ids = exemplars.get_batch(e)
            edited_images[r] = transfer_attribute(
                gen, images[r], ex_images, attr, device, strength=strength
            )
            cols["edit_exemplar_identity"][r] = ex_ids
        cols["edited"][rows] = True
        cols["edit_attribute"][rows] = attributes[attr]
        cols["edit_exemplar"][rows] = ex_rows
        cols["edit_target_prob_before"][rows] = probs_before[rows, attr]
    probs_after = classify_attributes(classifier, edited_images, device)
    rows = np.array([r for r, _ in chosen], np.int64)
    attrs = np.array([a for _, a in chosen], np.int64)
    if len(rows):
        cols["edit_target_prob_after"][rows] = probs_after[rows, attrs]
        cols["edit_success"][rows] = probs_after[rows, attrs] >= 0.5
        if judge is not None:
            before = embed_images(judge, images[rows], device)
            after = embed_images(judge, edited_images[rows], device)
            cols["edit_judge_cos"][rows] = _cos(before, after)
    for k, v in cols.items():
        out[k] = v
    out["edit_attribute"] = out["edit_attribute"].astype("string")
    _write_dataset(src_root, out_root, out, edited_images, rows, in_place, jpeg_quality)
    report = _edit_report(
        out, attributes, edit_attributes, exemplar_labels, probs_before, probs_after
    )
    report.update(
        {
            "source": str(src_root),
            "output": str(out_root),
            "in_place": in_place,
            "strength": strength,
        }
    )
    return out, report


def _write_dataset(
    src_root: Path,
    out_root: Path,
    manifest: pd.DataFrame,
    edited_images: np.ndarray,
    edited_rows: np.ndarray,
    in_place: bool,
    jpeg_quality: int,
) -> None:
    """Edited JPEGs + manifest; a separate output is built in `<out>.partial` and renamed when
    complete, so an interrupted edit never looks finished and never touches the originals."""
    paths = manifest["path"].tolist()
    if in_place:
        target = src_root
    else:
        target = out_root.with_name(out_root.name + ".partial")
        if target.exists():
            shutil.rmtree(target)
        for rel in paths:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_root / rel, target / rel)
    for r in edited_rows:
        with atomic_path(target / paths[int(r)]) as tmp:
            Image.fromarray(edited_images[int(r)]).save(tmp, format="JPEG", quality=jpeg_quality)
    with atomic_path(target / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)
    if not in_place:
        (target / "_COMPLETE").write_text("ok\n")
        if out_root.exists():
            shutil.rmtree(out_root)
        target.rename(out_root)


def _edit_report(
    manifest: pd.DataFrame,
    attributes: Sequence[str],
    edit_attributes: Sequence[str],
    exemplar_labels: np.ndarray,
    probs_before: np.ndarray,
    probs_after: np.ndarray,
) -> dict:
    edited = manifest[manifest["edited"]]
    per_attr = {}
    for name in edit_attributes:
        e = edited[edited["edit_attribute"] == name]
        cos = e["edit_judge_cos"].to_numpy(np.float64)
        per_attr[name] = {
            "edits": int(len(e)),
            "success": float(e["edit_success"].mean()) if len(e) else float("nan"),
            "judge_cos_mean": float(np.nanmean(cos)) if np.isfinite(cos).any() else float("nan"),
            "judge_cos_ge_0.7": float((cos >= 0.7).mean()) if len(e) else float("nan"),
        }
    cos = edited["edit_judge_cos"].to_numpy(np.float64)
    both = edited["edit_success"].to_numpy(bool) & (cos >= 0.7)
    return {
        "images": int(len(manifest)),
        "edits": int(len(edited)),
        "success": float(edited["edit_success"].mean()) if len(edited) else float("nan"),
        "judge_cos_mean": float(np.nanmean(cos)) if np.isfinite(cos).any() else float("nan"),
        "judge_cos_ge_0.7": float((cos >= 0.7).mean()) if len(edited) else float("nan"),
        "success_and_judge_cos_ge_0.7": float(both.mean()) if len(edited) else float("nan"),
        "per_attribute": per_attr,
        "frequency": {
            name: {
                "real_labels": float(exemplar_labels[:, j].mean()),
                "synthetic_before": float((probs_before[:, j] >= 0.5).mean()),
                "synthetic_after": float((probs_after[:, j] >= 0.5).mean()),
            }
            for j, name in enumerate(attributes)
        },
        "classifier_note": "synthetic frequencies are the attribute classifier's predictions "
        "(threshold 0.5); real ones are the subset's labels",
    }

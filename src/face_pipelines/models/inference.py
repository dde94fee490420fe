"""Loading trained models and running them for inference: checkpoint to eval-mode module, images to
embeddings or attributes.

Trainers write these checkpoints (face_pipelines.io.checkpoint's layout, `arch` names below); every
stage that only uses a model - synthesis, metrics, reporting, the pipelines - loads it here, so none of
them imports training code. Inputs are uint8 RGB [N, H, W, 3]; models see RGB in [-1, 1]
(face_pipelines.image_tensors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.image_tensors import hwc_to_input
from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.attributes import AttributeClassifier, PoseRegressor
from face_pipelines.models.drgan import DRGANConfig, DRGANGenerator
from face_pipelines.models.elegant import ELEGANTConfig, ELEGANTGenerator
from face_pipelines.models.registry import build_backbone, load_backbone_weights
from face_pipelines.models.sixdrepnet import SixDRepNetPose, sixdrepnet_from_state_dict
from face_pipelines.models.vec2face import load_vec2face

__all__ = [
    "CLASSIFIER_ARCH",
    "DRGAN_ARCH",
    "ELEGANT_ARCH",
    "POSE_REGRESSOR_ARCH",
    "embed_images",
    "extract_features",
    "load_attribute_classifier",
    "load_drgan",
    "load_elegant",
    "load_judge",
    "load_pose_regressor",
    "load_recognizer",
    "load_vec2face",
    "predict_pose",
]

DRGAN_ARCH = "drgan"
ELEGANT_ARCH = "elegant"
POSE_REGRESSOR_ARCH = "pose_regressor"
CLASSIFIER_ARCH = "attribute_classifier"


def load_recognizer(
    path: str | Path,
    device: torch.device | str = "cpu",
    arch: str | None = None,
    input_size: int = 112,
    embedding_dim: int = 512,
) -> tuple[nn.Module, int]:
    """A backbone in eval mode and its input size, from this project's checkpoint or a foreign one.

    A foreign insightface `backbone.pth` (bare state_dict) needs `arch` (e.g. 'iresnet100') and
    `input_size`; a project checkpoint records both itself.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") is None:
        if arch is None:
            raise ParameterError(
                f"{path} is a bare state_dict (e.g. insightface backbone.pth): give its "
                "architecture (teacher.checkpoint_arch, e.g. iresnet100)"
            )
        config = {
            "num_features" if arch != "small" else "embedding_dim": embedding_dim,
            "input_size": input_size,
        }
        model = build_backbone(arch, **config)
    else:
        model = build_backbone(ckpt["arch"], **ckpt["config"])
        input_size = int(ckpt["config"].get("input_size", input_size))
    load_backbone_weights(model, ckpt, strict=True)
    return model.to(device).eval(), input_size


def extract_features(
    model: nn.Module,
    packed_root: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Raw (un-normalised) embeddings float32 [N, D] of every packed image, in packed order."""

    packed = PackedImages(Path(packed_root))
    device = torch.device(device)
    model.eval()
    out = []
    with torch.no_grad():
        for s in tqdm(
            range(0, len(packed), batch_size), desc="extract features", disable=not progress
        ):
            images, _ = packed.get_batch(np.arange(s, min(s + batch_size, len(packed))))
            x = hwc_to_input(images, device)
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy().astype(np.float32, copy=False)


@torch.no_grad()
def embed_images(
    model: nn.Module, images_u8: np.ndarray, device, batch_size: int = 256
) -> np.ndarray:
    """Raw embeddings float32 [N, D] of uint8 RGB images [N, H, W, 3] (no flip), eval mode."""
    model.eval()
    out = []
    for s in range(0, len(images_u8), batch_size):
        x = hwc_to_input(np.ascontiguousarray(images_u8[s : s + batch_size]), device)
        out.append(model(x).float().cpu())
    if not out:
        raise ValueError("embed_images got no images")
    return torch.cat(out).numpy()


def load_judge(
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    arch: str | None = None,
    input_size: int = 112,
    embedding_dim: int = 512,
) -> nn.Module:
    """The judge recognizer in eval mode: the recognizer that scores identity preservation and that
    no generator or editor loss uses (`arch`, `input_size`, `embedding_dim` describe a bare foreign
    state_dict, as in load_recognizer).
    """
    return load_recognizer(checkpoint, device, arch, input_size, embedding_dim)[0]


def load_pose_regressor(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A (yaw, pitch) model in eval mode: this project's PoseRegressor checkpoint, or a 6DRepNet
    file (a bare state dict in deploy or train form, e.g. the released
    6DRepNet_300W_LP_AFLW2000.pth). Both take RGB images in [-1, 1] and return degrees [B, 2]."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") is None:
        net = sixdrepnet_from_state_dict(ckpt["state_dict"], source=f"6DRepNet file {path}")
        return SixDRepNetPose(net).to(device).eval()
    if ckpt.get("arch") != POSE_REGRESSOR_ARCH:
        raise DataError(
            f"{path}: expected a pose_regressor checkpoint or a 6DRepNet state dict, got arch "
            f"{ckpt.get('arch')!r}"
        )
    model = PoseRegressor(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(device).eval()


def predict_pose(
    model: PoseRegressor, images_uint8: np.ndarray, device, batch_size: int = 512
) -> np.ndarray:
    """(yaw, pitch) degrees [N,2] for uint8 RGB images [N,H,W,3]."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images_uint8), batch_size):
            x = hwc_to_input(images_uint8[s : s + batch_size], device)
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), np.float32)


def load_drgan(path: str | Path, device: torch.device | str = "cpu") -> DRGANGenerator:
    """The trained DR-GAN generator (encoder + decoder) in eval mode."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != DRGAN_ARCH:
        raise DataError(
            f"{path}: expected a {DRGAN_ARCH} checkpoint, got arch {ckpt.get('arch')!r}"
        )
    gen = DRGANGenerator(DRGANConfig(**ckpt["config"]))
    gen.load_state_dict(ckpt["state_dict"], strict=True)
    return gen.to(device).eval()


def load_elegant(path: str | Path, device="cpu") -> tuple[ELEGANTGenerator, list[str]]:
    """The trained ELEGANT generator (eval mode) and its attribute names in slot order."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != ELEGANT_ARCH:
        raise DataError(f"{path}: expected an {ELEGANT_ARCH} checkpoint, got {ckpt.get('arch')!r}")
    gen = ELEGANTGenerator(ELEGANTConfig(**ckpt["config"]))
    gen.load_state_dict(ckpt["state_dict"], strict=True)
    return gen.to(device).eval(), list(ckpt["meta"]["attributes"])


def load_attribute_classifier(path: str | Path, device="cpu") -> tuple[nn.Module, list[str]]:
    """The trained attribute classifier (eval mode) and its attribute names in logit order."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != CLASSIFIER_ARCH:
        raise DataError(
            f"{path}: expected an {CLASSIFIER_ARCH} checkpoint, got {ckpt.get('arch')!r}"
        )
    model = AttributeClassifier(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(device).eval(), list(ckpt["meta"]["attributes"])

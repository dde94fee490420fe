"""Picklable factories the renderer sends to its worker processes (each builds its own models)."""

from __future__ import annotations

from face_pipelines.errors import ParameterError
from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.models.attributes import EmbeddingNormQuality
from face_pipelines.models.inference import load_drgan, load_pose_regressor, load_recognizer
from face_pipelines.models.sixdrepnet import SixDRepNetPose, sixdrepnet_from_state_dict
from face_pipelines.models.vec2face import load_vec2face
from face_pipelines.synthesis.attrop import AttrOPModels
from face_pipelines.synthesis.pose_code import PoseCodeGenerator

GENERATORS = ("vec2face", "drgan")


def load_generator(path: str, device: str = "cpu", kind: str = "vec2face"):
    """The trained generator of `kind` (eval mode) as the renderer's image generator.

    vec2face: Vec2Face (vectors in the teacher's space). drgan: the DR-GAN decoder behind
    synthesis.pose_code.PoseCodeGenerator (vectors = the encoder's f, plus a pose bin per row).
    """
    if kind == "vec2face":
        return load_vec2face(path, device)
    if kind == "drgan":
        return PoseCodeGenerator(load_drgan(path, device)).eval()
    raise ParameterError(f"unknown generator {kind!r}; expected one of {list(GENERATORS)}")


POSE_MODELS = ("pose_regressor", "sixdrepnet")


def load_sixdrepnet_pose(path: str, device: str = "cpu") -> SixDRepNetPose:
    """A 6DRepNet file (deploy or train form, bare state dict) as AttrOP's pose model, eval mode."""
    ckpt = load_checkpoint(path)
    net = sixdrepnet_from_state_dict(ckpt["state_dict"], source=f"6DRepNet file {path}")
    return SixDRepNetPose(net).to(device).eval()


def load_attrop_models(
    teacher_path: str,
    pose_path: str | None,
    teacher_kwargs: dict | None = None,
    device: str = "cpu",
    pose_kind: str = "pose_regressor",
    quality_path: str | None = None,
    quality_kwargs: dict | None = None,
) -> AttrOPModels:
    """Identity model, pose model and quality model for AttrOP.

    `teacher_path` is the identity model (the teacher, or any recognizer embedding into the
    teacher's feature space); `teacher_kwargs` / `quality_kwargs` are `load_recognizer`'s
    arch/input_size/embedding_dim for a bare state_dict. `pose_kind`: 'pose_regressor' (this
    project's yaw/pitch regressor checkpoint) or 'sixdrepnet' (a 6DRepNet file). `quality_path`:
    a recognizer whose embedding norm is the quality (e.g. MagFace IResNet-100); None = the
    identity model's own norm.
    """
    if pose_kind not in POSE_MODELS:
        raise ParameterError(f"unknown pose model {pose_kind!r}; expected one of {POSE_MODELS}")
    teacher, _ = load_recognizer(teacher_path, device, **(teacher_kwargs or {}))
    pose = None
    if pose_path and pose_kind == "sixdrepnet":
        pose = load_sixdrepnet_pose(pose_path, device)
    elif pose_path:
        pose = load_pose_regressor(pose_path, device)
    quality = None
    if quality_path:
        recognizer, size = load_recognizer(quality_path, device, **(quality_kwargs or {}))
        quality = EmbeddingNormQuality(recognizer, size).to(device).eval()
    return AttrOPModels(teacher, pose, quality)

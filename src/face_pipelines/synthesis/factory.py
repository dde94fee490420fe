"""Picklable factories the renderer sends to its worker processes (each builds its own models)."""

from __future__ import annotations

from face_pipelines.errors import ParameterError
from face_pipelines.synthesis.attrop import AttrOPModels
from face_pipelines.synthesis.pose_code import PoseCodeGenerator
from face_pipelines.training.attributes import load_pose_regressor
from face_pipelines.training.drgan import load_drgan
from face_pipelines.training.recognizer import load_recognizer
from face_pipelines.training.vec2face import load_vec2face

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


def load_attrop_models(
    teacher_path: str,
    pose_path: str | None,
    teacher_kwargs: dict | None = None,
    device: str = "cpu",
) -> AttrOPModels:
    """Teacher (identity + MagFace-norm quality) and pose model for AttrOP.

    `teacher_kwargs` are `load_recognizer`'s arch/input_size/embedding_dim for a bare state_dict.
    """
    teacher, _ = load_recognizer(teacher_path, device, **(teacher_kwargs or {}))
    pose = load_pose_regressor(pose_path, device) if pose_path else None
    return AttrOPModels(teacher, pose, None)

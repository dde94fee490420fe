"""Picklable factories the renderer sends to its worker processes (each builds its own models)."""

from __future__ import annotations

from face_pipelines.synthesis.attrop import AttrOPModels
from face_pipelines.training.attributes import load_pose_regressor
from face_pipelines.training.recognizer import load_recognizer
from face_pipelines.training.vec2face import load_vec2face


def load_generator(path: str, device: str = "cpu"):
    """The trained Vec2Face generator (eval mode) for rendering."""
    return load_vec2face(path, device)


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

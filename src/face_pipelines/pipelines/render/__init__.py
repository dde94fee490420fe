"""The render pipeline (and its generator-agnostic render node)."""

from .pipeline import create_pipeline, create_render_pipeline

__all__ = ["create_pipeline", "create_render_pipeline"]

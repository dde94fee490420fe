"""The drgan pipeline (opt-in)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

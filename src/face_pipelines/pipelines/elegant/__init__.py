"""The elegant pipelines (opt-in): train the ELEGANT attribute editor; edit a synthetic dataset into
a new one. The edited set's recognizer and table are built by pipeline_registry."""

from .pipeline import create_edit_pipeline, create_pipeline

__all__ = ["create_edit_pipeline", "create_pipeline"]

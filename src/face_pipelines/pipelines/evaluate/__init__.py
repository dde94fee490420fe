"""The evaluate pipeline (and its table for further sets' recognizers)."""

from .pipeline import create_comparison_pipeline, create_pipeline

__all__ = ["create_comparison_pipeline", "create_pipeline"]

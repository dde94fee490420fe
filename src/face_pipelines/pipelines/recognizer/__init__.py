"""The recognizer pipeline (and its instances for further synthetic sets)."""

from .pipeline import create_instance_pipeline, create_matched_plan_pipeline, create_pipeline

__all__ = ["create_instance_pipeline", "create_matched_plan_pipeline", "create_pipeline"]

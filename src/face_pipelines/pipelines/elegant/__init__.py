"""The elegant pipelines (opt-in): train the ELEGANT attribute editor; edit a synthetic dataset;
verify a recognizer trained on the edited copy."""

from .pipeline import create_edit_pipeline, create_eval_pipeline, create_pipeline

__all__ = ["create_edit_pipeline", "create_eval_pipeline", "create_pipeline"]

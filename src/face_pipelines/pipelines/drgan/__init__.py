"""The DR-GAN pipelines (opt-in): drgan, drgan_synth, drgan_eval."""

from .pipeline import create_eval_pipeline, create_pipeline, create_synth_pipeline

__all__ = ["create_eval_pipeline", "create_pipeline", "create_synth_pipeline"]

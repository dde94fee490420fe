"""DR-GAN's own pipelines (opt-in): the trainer, its sampling, its card and its encoder."""

from .pipeline import (
    create_card_pipeline,
    create_encoder_pipeline,
    create_pipeline,
    create_sample_pipeline,
)

__all__ = [
    "create_card_pipeline",
    "create_encoder_pipeline",
    "create_pipeline",
    "create_sample_pipeline",
]

"""The fields every trainer's recipe shares: the loop that `training.engine.fit` runs.

Each trainer's config (recognizer, pose regressor, Vec2Face, DR-GAN, ELEGANT, attribute classifier)
subclasses `TrainLoopConfig` and restates a loop field only to give it its own default (and, where it
says more, its own description), through the annotated types below so the constraints stay the
same everywhere::

    class PoseConfig(TrainLoopConfig):
        epochs: Epochs = 6
        lr: LearningRate = Field(2e-3, description="AdamW learning rate (cosine decay)")
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchSize", "Epochs", "LearningRate", "NumWorkers", "Precision", "TrainLoopConfig"]

Epochs = Annotated[int, Field(gt=0, description="training epochs")]
BatchSize = Annotated[int, Field(gt=0, description="batch size per process")]
LearningRate = Annotated[float, Field(gt=0, description="peak learning rate")]
NumWorkers = Annotated[int, Field(ge=0, description="data-loader workers per process")]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class TrainLoopConfig(BaseModel):
    """Loop fields of a training recipe (unknown keys are errors, as in every recipe)."""

    model_config = ConfigDict(extra="forbid")
    epochs: Epochs = 1
    batch_size: BatchSize = 64
    lr: LearningRate = 1e-3
    num_workers: NumWorkers = 0
    seed: int = Field(0, description="seed of the weights, the data order and the run's draws")
    precision: Precision = Field(
        "auto",
        description="autocast: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU",
    )
    log_every: int = Field(10, gt=0, description="optimizer steps between per-step logs")

"""What the synthetic-set chain asks of a generator and of an editor: the whole contract.

The chain (sample -> render -> card -> recognizer -> evaluate) is one set of Kedro nodes,
instantiated once per generator under a namespace (pipeline_registry). It never looks inside a
generator; it needs only:

- `Generator`: vectors (and, per image, the plan's target columns it names) in; images out. The
  renderer (synthesis.dataset_writer.render_dataset) batches the plan, calls `generate` and writes the
  JPEGs, shards, markers and manifest, whichever generator it is.
- `Editor`: one batch of plan rows in; images plus what was met per row out (AttrOP's
  `attrop_steps` / `attrop_met`). Editors that change finished images (ELEGANT's attribute
  transfer) take images instead of vectors, and write a NEW dataset - never another stage's output.
- `GeneratorReport`: what the generator's trainer returns (its pipeline's `<name>_report`): the
  checkpoint the renderer loads, and which loader reads it.

A generator is this protocol plus a trainer (its own opt-in pipeline) and a parameters file;
README "Adding a generator" lists the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np

DEFAULT_GENERATOR = "vec2face"


@runtime_checkable
class Generator(Protocol):
    """Turns identity vectors (and per-image targets) into face images."""

    image_size: int
    # Plan columns the generator needs per image (e.g. DR-GAN's ("pose_bin",)); empty for
    # generators that take vectors only.
    target_columns: tuple[str, ...]

    def generate(
        self,
        vectors: Any,
        generator: Any | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Any:
        """vectors [B, D] (torch, on the generator's device), optional {column: [B] values} ->
        images [B, 3, H, W] float in [-1, 1] (or [B, H, W, 3] uint8)."""
        ...


@runtime_checkable
class Editor(Protocol):
    """Optimises or edits one batch of plan rows: images plus what was met per row."""

    def __call__(
        self,
        generator: Generator,
        vectors: Any,
        rows: Any,
        torch_generator: Any | None = None,
    ) -> tuple[Any, Mapping[str, Any]]:
        """Images of the batch and per-row columns (e.g. attrop_steps, attrop_met)."""
        ...


class GeneratorReport(TypedDict, total=False):
    """The keys of a generator's training report that the chain reads."""

    checkpoint: str  # the file the renderer loads (synthesis.factory.load_generator)
    generator: str  # loader kind (synthesis.factory.GENERATORS); absent = DEFAULT_GENERATOR


def generator_kind(report: Mapping[str, Any]) -> str:
    """Which loader reads the report's checkpoint (Vec2Face reports predate the key)."""
    return str(report.get("generator", DEFAULT_GENERATOR))

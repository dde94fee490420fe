"""Learning-rate schedules, stepped once per optimizer step (iteration), all with linear warm-up.

lr(step) = base_lr * multiplier(step), where for `step < warmup_steps` the multiplier is
`(step + 1) / warmup_steps` (the first step already moves; the last warm-up step reaches 1) and after
warm-up, with progress `p = (step - warmup_steps) / (total_steps - warmup_steps)` clamped to [0, 1]:

- "poly" (insightface arcface_torch): `(1 - p) ** power`, power 2.
- "cosine" (Vec2Face generator): half-cosine `0.5 * (1 + cos(pi * p))`, reaching 0 at total_steps.
- "step" (HSFace recognizer recipe): `gamma ** (number of milestones <= epoch)` where
  `epoch = step // steps_per_epoch` and milestones are epochs (e.g. /10 at 12, 20, 24).
- "constant": 1.

`min_lr_ratio` raises the floor: multiplier = min_lr_ratio + (1 - min_lr_ratio) * decay, for poly
and cosine.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from face_pipelines.errors import ParameterError

SCHEDULE_KINDS = ("poly", "cosine", "step", "constant")


class LRMultiplier:
    """Picklable callable `step -> lr multiplier` (see the module docstring for the formulas).

    Its attributes are plain numbers, so LambdaLR's state_dict (which stores them) loads with
    weights_only=True.
    """

    def __init__(
        self,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 2.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        steps_per_epoch: int | None = None,
        min_lr_ratio: float = 0.0,
    ):
        if kind not in SCHEDULE_KINDS:
            raise ParameterError(f"lr schedule {kind!r} is unknown; use one of {SCHEDULE_KINDS}")
        if total_steps <= 0:
            raise ParameterError(f"lr schedule total_steps must be > 0, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ParameterError(
                f"lr schedule warmup_steps must be in [0, total_steps={total_steps}], "
                f"got {warmup_steps}"
            )
        if kind == "step" and (not steps_per_epoch or steps_per_epoch <= 0):
            raise ParameterError(
                "lr schedule 'step' needs steps_per_epoch > 0 (milestones are epochs)"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ParameterError(f"lr schedule min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.kind = kind
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.steps_per_epoch = int(steps_per_epoch or 0)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            return self.gamma ** bisect.bisect_right(self.milestones, epoch)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.kind == "poly":
            decay = (1.0 - progress) ** self.power
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay


def build_scheduler(
    optimizer: Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    power: float = 2.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    steps_per_epoch: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A LambdaLR over every param group of `optimizer`, to be stepped once per optimizer step.

    Args:
        optimizer: the optimizer whose param groups' initial lr is the base lr.
        kind: "poly", "cosine", "step" or "constant".
        total_steps: optimizer steps in the whole run (epochs * steps per epoch).
        warmup_steps: linear warm-up length in optimizer steps.
        power: exponent of the "poly" decay.
        milestones: epochs at which "step" multiplies the lr by `gamma`.
        gamma: "step" decay factor.
        steps_per_epoch: optimizer steps per epoch ("step" only).
        min_lr_ratio: floor of "poly"/"cosine" as a fraction of the base lr.
    """
    multiplier = LRMultiplier(
        kind,
        total_steps,
        warmup_steps,
        power=power,
        milestones=milestones,
        gamma=gamma,
        steps_per_epoch=steps_per_epoch,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, lr_lambda=multiplier)


def steps_per_epoch(num_batches: int, grad_accum_steps: int = 1) -> int:
    """Optimizer steps in an epoch of `num_batches` batches (a partial accumulation window steps)."""
    return math.ceil(num_batches / max(int(grad_accum_steps), 1))

"""The recognizer's "step" schedule divides the lr at the milestone EPOCHS (the HSFace recipe: /10 at
12, 20, 24 of 26), through the real trainer."""

from __future__ import annotations

import pytest

from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

from .helpers import make_packed, recorder


def test_step_schedule_divides_the_lr_at_milestone_epochs(tmp_path):
    packed = make_packed(tmp_path / "packed", n=32, size=32, classes=4)
    cfg = RecognizerConfig(
        arch="small",
        embedding_dim=8,
        backbone_kwargs={"widths": [8, 8, 8, 8], "stem_width": 8},
        epochs=3,
        batch_size=16,  # 2 steps per epoch
        lr=0.1,
        schedule="step",
        milestones=[1, 2],
        warmup_epochs=0,
        num_workers=0,
        log_every=1,
    )
    store: dict = {}
    train_recognizer(packed, tmp_path / "run", cfg, "cpu", False, recorder(store))
    lrs = [store[step]["lr"] for step in sorted(k for k in store if isinstance(k, int))]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])

"""LR schedules: values at known steps, computed independently here."""

from __future__ import annotations

import math

import pytest
import torch

from face_pipelines.errors import ParameterError
from face_pipelines.training.schedule import build_scheduler, steps_per_epoch

BASE_LR = 0.1


def _lrs(kind: str, total: int, warmup: int, **kwargs) -> list[float]:
    """The lr used at each optimizer step 0..total-1 when stepped once per iteration."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    sched = build_scheduler(opt, kind, total, warmup, **kwargs)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_warmup_then_quadratic_decay():
    lrs = _lrs("poly", total=100, warmup=10)
    assert lrs[0] == pytest.approx(0.01)  # (0 + 1) / 10 of the base lr
    assert lrs[4] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 * (1 - 45 / 90) ** 2)  # 0.025
    assert lrs[99] == pytest.approx(0.1 * (1 / 90) ** 2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_cosine_warmup_then_half_cosine_to_zero():
    lrs = _lrs("cosine", total=50, warmup=5)
    assert lrs[2] == pytest.approx(0.06)
    assert lrs[5] == pytest.approx(0.1)
    assert lrs[27] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 22 / 45)))
    assert lrs[49] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 44 / 45)))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    sched = build_scheduler(opt, "cosine", 50, 5, min_lr_ratio=0.1)
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # floor at the end


def test_step_decay_at_epoch_milestones():
    # HSFace recipe shape: /10 at epochs 2 and 4 (scaled down), 3 steps per epoch, 2 warm-up steps.
    lrs = _lrs("step", total=18, warmup=2, milestones=[2, 4], gamma=0.1, steps_per_epoch=3)
    expected = [0.05, 0.1, 0.1, 0.1, 0.1, 0.1] + [0.01] * 6 + [0.001] * 6
    assert lrs == pytest.approx(expected)


def test_constant_and_state_dict_round_trip():
    assert _lrs("constant", total=6, warmup=3) == pytest.approx(
        [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1]
    )
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    sched = build_scheduler(opt, "poly", 20, 4)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched2 = build_scheduler(opt2, "poly", 20, 4)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_bad_parameters():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    with pytest.raises(ParameterError, match="unknown"):
        build_scheduler(opt, "exp", 10)
    with pytest.raises(ParameterError, match="warmup_steps"):
        build_scheduler(opt, "poly", 10, 11)
    with pytest.raises(ParameterError, match="steps_per_epoch"):
        build_scheduler(opt, "step", 10, milestones=[1])
    assert steps_per_epoch(10, 3) == 4

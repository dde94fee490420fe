"""The generator benchmark's analytic FLOP count (it feeds the reported fraction of device peak)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from face_pipelines.models.vec2face import Vec2Face

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_generator.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generator", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the CPU default layout (a level without ResBlocks, a mid block)
        {"decoder_width": 48, "decoder_num_heads": 4, "num_res_blocks": 2, "mid_blocks": 0},
    ],
)
def test_analytic_flops_match_torch_flop_counter(bench, overrides):
    torch.manual_seed(0)
    params = {"feat_dim": 32, "width": 32, "decoder_width": 32, "z_channels": 16, **overrides}
    model = Vec2Face(**params).eval()
    for block in [*model.blocks, *model.decoder_blocks]:
        block.attn.fused_attn = False  # explicit matmuls, which FlopCounterMode can see
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.generate(torch.randn(1, 32), generator=torch.Generator().manual_seed(0))
    rows = bench.inference_encoder_rows(model.config)
    assert rows == 16 - 2  # ceil(16 * 0.1) rows dropped at inference
    assert bench.generator_forward_flops(model.config, rows) == counter.get_total_flops()

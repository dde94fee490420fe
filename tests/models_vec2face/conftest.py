"""Tiny CPU models: one intra-op thread avoids oversubscribing the shared 2-core test machine
(several torch threads spinning against other processes made these tests ~5x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run each test with one torch thread, restoring the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

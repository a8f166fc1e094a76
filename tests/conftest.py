"""Shared fixtures: tiny, fast, seeded problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect import Energy, Objective


@pytest.fixture
def regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=g)
    return x, torch.sin(3 * x)


@pytest.fixture
def tiny_mlp():
    def build(seed: int = 0) -> nn.Module:
        from modeconnect.tasks._init import seeded

        return seeded(lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), seed)

    return build


@pytest.fixture
def regression_problem(regression_data, tiny_mlp):
    x, y = regression_data
    energy = Energy(tiny_mlp(0), x, y, "mse", strategy="vmap")
    return energy, Objective(x, y, "mse")

"""Shared fixtures: tiny, fast, seeded problems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect import Energy, Objective


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny models on one torch thread, as the tiny tasks themselves run (``Task.threads``): a
    second thread only adds synchronisation, up to 100x slower on a busy 2-core machine. Restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


TANH_L0 = 0.02
"""The level of :func:`tanh_pair`: its endpoints are trained below TANH_L0 / 2."""
TANH_TRAINING = {"lr": 0.05, "max_steps": 3000}


def _tanh_mlp(seed: int) -> nn.Module:
    from modeconnect.tasks._init import seeded

    return seeded(lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), seed).double()


@pytest.fixture(scope="session")
def tanh_pair():
    """``((a, b), energy, objective)``: two 1-8-1 tanh networks fitted to sin(3x) in float64 below
    TANH_L0 / 2, whose straight segment peaks near 0.26 (13 x TANH_L0). Shared by the method tests."""
    from modeconnect.params import point_from_module
    from modeconnect.train import TrainConfig, train_to_target

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x)
    energy, objective = Energy(_tanh_mlp(0), x, y, "mse", strategy="vmap"), Objective(x, y, "mse")
    config = TrainConfig(**TANH_TRAINING)
    ends = [train_to_target(point_from_module(_tanh_mlp(s)), energy=energy, objective=objective,
                            target=TANH_L0 / 2, config=config, seed=s)[0] for s in (0, 1)]
    return ends, energy, objective

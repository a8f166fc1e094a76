"""Theorem 4 in spirit: two global minima of a width-H student that every continuous path separates by MSE >= 1/4."""

from __future__ import annotations

import pytest
import torch

from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.tasks import make_task
from modeconnect.tasks.kuditipudi_disconnected import PROVEN_BARRIER

WIDTHS = (2, 3, 4)


def endpoints(width):
    task = make_task("kuditipudi-disconnected", width=width)
    a = task.energy.point_of(task.make_model(0))
    return task, a, task.derive_endpoint_b(a)


@pytest.mark.parametrize("width", WIDTHS)
def test_both_endpoints_are_global_minima_with_zero_loss(width):
    task, a, b = endpoints(width)
    assert task.options["width"] == width and a["0.weight"].shape == (width, 1)
    assert task.energy(a) == 0.0 and task.energy(b) == 0.0
    assert not torch.equal(a["0.weight"], b["0.weight"])
    assert task.default_threshold < PROVEN_BARRIER / 10


@pytest.mark.parametrize("width", WIDTHS)
def test_the_straight_line_crosses_the_proven_barrier(width):
    task, a, b = endpoints(width)
    profile = task.energy.along_segment(a, b, torch.linspace(0, 1, 101))
    assert float(profile.max()) >= PROVEN_BARRIER
    assert float(profile[50]) == pytest.approx(1.0)  # both swapped units at w = 0: a deficit of 1 on each input


@pytest.mark.parametrize("width", WIDTHS)
def test_every_sampled_piecewise_linear_path_reaches_the_bound(width):
    task, a, b = endpoints(width)
    g = torch.Generator().manual_seed(width)
    for _ in range(200):
        n_via = int(torch.randint(1, 5, (1,), generator=g))
        scale = float(torch.rand(1, generator=g)) * 4
        vias = [{k: v + scale * torch.randn(v.shape, generator=g) for k, v in a.items()} for _ in range(n_via)]
        knots = [a, *vias, b]
        worst = max(float(task.energy.along_segment(p, q, torch.linspace(0, 1, 401)).max())
                    for p, q in zip(knots, knots[1:]))
        assert worst >= PROVEN_BARRIER


@pytest.mark.parametrize("width", WIDTHS)
def test_the_bound_holds_where_the_first_unit_changes_sign(width):
    """The proof's step: whenever w_1 = 0, f(+1) + f(-1) <= H - 1, so one input misses its label by >= 1: MSE >= 1/2."""
    task, a, _ = endpoints(width)
    g = torch.Generator().manual_seed(100 + width)
    for _ in range(500):
        p = {"0.weight": 3 * torch.randn(width, 1, generator=g)}
        p["0.weight"][0] = 0.0
        assert task.energy(p) >= PROVEN_BARRIER - 1e-7
    p = {k: v.clone() for k, v in a.items()}
    p["0.weight"][0] = 0.0
    p["0.weight"][-1] *= -1  # the best such point: a deficit of exactly 1 on one input
    assert task.energy(p) == pytest.approx(PROVEN_BARRIER)


@pytest.mark.parametrize("method", ["greedy_dss", "string_evolution"])
def test_methods_fail_on_a_persistent_barrier(method):
    result = run_connect(ConnectRunConfig(task="kuditipudi-disconnected", method=method))
    assert not result["connected"] and result["reason"] == "persistent_barrier"
    assert result["certified_max_energy"] >= PROVEN_BARRIER
    assert result["endpoint_energies"] == [0.0, 0.0]


@pytest.mark.parametrize("method", ["greedy_dss", "string_evolution"])
def test_methods_connect_an_ordinary_pair(method):
    result = run_connect(ConnectRunConfig(task="cubic", threshold=0.05, seed=1, method=method))
    assert result["connected"], result["message"]

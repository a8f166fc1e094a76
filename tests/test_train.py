"""Unit tests for modeconnect.train: train_to_target, TrainConfig and Objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modeconnect.energy import Energy
from modeconnect.errors import ArchitectureMismatch, ConfigError
from modeconnect.train import Objective, Optimizer, StopReason, TrainConfig, TrainStatus, check_steps, train_to_target


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _regression():
    """Noise-free linear regression y = x @ W + c: train and held-out splits."""
    g = _gen(0)
    w_true = torch.tensor([[1.5], [-2.0], [0.5]])
    x_train = torch.randn(64, 3, generator=g)
    x_test = torch.randn(32, 3, generator=g)
    y_train = x_train @ w_true + 0.3
    y_test = x_test @ w_true + 0.3
    net = nn.Linear(3, 1)
    energy = Energy(net, x_test, y_test, "mse", strategy="loop")
    objective = Objective(x_train, y_train, "mse")
    start = {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}
    return energy, objective, start


def _same(p, q) -> bool:
    return set(p) == set(q) and all(torch.equal(p[k], q[k]) for k in p)


def test_reaches_target_on_linear_regression():
    energy, objective, start = _regression()
    initial = energy(start)
    assert initial > 1.0
    point, status = train_to_target(start, energy=energy, objective=objective, target=1e-3,
                                    config=TrainConfig(lr=0.05, check_every=10, max_steps=2000), seed=0)
    assert isinstance(status, TrainStatus)
    assert status.reached and status.reason == "reached"
    assert status.final_energy <= 1e-3
    assert status.target == 1e-3
    assert energy(point) == status.final_energy  # the reported energy is the returned point's
    assert 0 < status.steps <= 2000 and status.steps % 10 == 0
    assert not any(v.requires_grad for v in point.values())
    # the solution is close to the true parameters
    torch.testing.assert_close(point["weight"], torch.tensor([[1.5, -2.0, 0.5]]), rtol=0, atol=0.1)


def test_same_seed_is_bitwise_reproducible_and_seed_matters_with_minibatches():
    energy, objective, start = _regression()
    config = TrainConfig(lr=0.02, batch_size=8, check_every=5, max_steps=40)
    runs = [train_to_target(start, energy=energy, objective=objective, target=0.0, config=config, seed=s)
            for s in (7, 7, 8)]
    (p1, s1), (p2, s2), (p3, s3) = runs
    assert _same(p1, p2)
    assert s1 == s2
    assert s1.steps == 40 and s1.reason == "step_cap"
    assert not _same(p1, p3)  # another seed draws other minibatches
    assert s3.final_energy != s1.final_energy


def test_full_batch_does_not_depend_on_seed():
    energy, objective, start = _regression()
    config = TrainConfig(lr=0.02, check_every=5, max_steps=20)
    p1, _ = train_to_target(start, energy=energy, objective=objective, target=0.0, config=config, seed=1)
    p2, _ = train_to_target(start, energy=energy, objective=objective, target=0.0, config=config, seed=2)
    assert _same(p1, p2)


def test_step_cap():
    energy, objective, start = _regression()
    point, status = train_to_target(start, energy=energy, objective=objective, target=1e-6,
                                    config=TrainConfig(lr=0.01, check_every=2, max_steps=3), seed=0)
    assert status.reason == "step_cap"
    assert not status.reached
    assert status.steps == 3
    assert status.final_energy > 1e-6
    assert energy(point) == status.final_energy
    assert not _same(point, start)


def test_zero_max_steps_returns_start():
    energy, objective, start = _regression()
    point, status = train_to_target(start, energy=energy, objective=objective, target=1e-6,
                                    config=TrainConfig(max_steps=0), seed=0)
    assert status.reason == "step_cap" and status.steps == 0
    assert _same(point, start)


def test_target_met_at_start_takes_zero_steps():
    energy, objective, start = _regression()
    initial = energy(start)
    seen = []
    point, status = train_to_target(start, energy=energy, objective=objective, target=initial + 1.0,
                                    config=TrainConfig(), seed=0, on_check=lambda s, v: seen.append((s, v)))
    assert status.steps == 0
    assert status.reached and status.reason == "reached"
    assert status.final_energy == initial
    assert _same(point, start)
    assert seen == [(0, initial)]


def test_on_check_is_called_at_every_check():
    energy, objective, start = _regression()
    seen = []
    _, status = train_to_target(start, energy=energy, objective=objective, target=0.0,
                                config=TrainConfig(lr=0.01, check_every=4, max_steps=10), seed=0,
                                on_check=lambda s, v: seen.append((s, v)))
    assert [s for s, _ in seen] == [0, 4, 8, 10]
    assert seen[-1][1] == status.final_energy


def test_start_point_is_not_modified():
    energy, objective, start = _regression()
    start = {k: v + 0.25 for k, v in start.items()}
    before = {k: v.clone() for k, v in start.items()}
    point, _ = train_to_target(start, energy=energy, objective=objective, target=1e-3,
                               config=TrainConfig(lr=0.05, max_steps=50), seed=0)
    assert _same(start, before)
    assert not _same(point, start)
    assert all(point[k].data_ptr() != start[k].data_ptr() for k in start)


def test_diverging_run_is_reported():
    energy, objective, start = _regression()
    _, status = train_to_target(start, energy=energy, objective=objective, target=1e-3,
                                config=TrainConfig(optimizer="sgd", lr=1e6, check_every=25, max_steps=500), seed=0)
    assert status.reason == "diverged"
    assert not status.reached
    assert not math.isfinite(status.final_energy)
    assert status.steps < 500


def test_start_of_other_architecture_raises():
    energy, objective, _ = _regression()
    with pytest.raises(ArchitectureMismatch, match="the starting point"):
        train_to_target({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, energy=energy, objective=objective,
                        target=1.0, config=TrainConfig(), seed=0)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_each_optimizer_lowers_the_energy(optimizer):
    energy, objective, start = _regression()
    initial = energy(start)
    config = TrainConfig(optimizer=optimizer, lr=0.01, check_every=10, max_steps=30, momentum=0.5)
    assert config.optimizer is Optimizer(optimizer)
    point, status = train_to_target(start, energy=energy, objective=objective, target=0.0, config=config, seed=0)
    assert status.steps == 30
    assert status.final_energy < 0.8 * initial


def test_cross_entropy_objective_trains_a_classifier():
    g = _gen(5)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    net = nn.Linear(2, 2).double()
    energy = Energy(net, x, y, "error_rate", strategy="loop")
    start = {"weight": torch.zeros(2, 2, dtype=torch.float64), "bias": torch.zeros(2, dtype=torch.float64)}
    point, status = train_to_target(start, energy=energy, objective=Objective(x, y, "cross_entropy"), target=5.0,
                                    config=TrainConfig(lr=0.1, check_every=5, max_steps=500), seed=0)
    assert status.reached
    assert energy(point) <= 5.0
    assert point["weight"].dtype == torch.float64


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.nan, math.inf])
def test_config_rejects_bad_lr(lr):
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        TrainConfig(lr=lr)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"check_every": 0}, "check_every must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"max_steps": -1}, "max_steps must be >= 0"),
        ({"momentum": -0.1}, "momentum must be >= 0"),
        ({"dense_checks": -1}, "dense_checks must be >= 0"),
        ({"proximal": -1.0}, "proximal must be a finite number >= 0"),
        ({"proximal": math.inf}, "proximal must be a finite number >= 0"),
        ({"stall_steps": -5}, "stall_steps must be >= 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_config_to_dict():
    # dense_checks, proximal and stall_steps came with the bead-geometry work; their defaults keep the old
    # behaviour (checks every check_every, no pull, training to the step cap); so do min_steps and dropout
    # (stop at the target, train the whole network)
    d = TrainConfig(optimizer="rmsprop", lr=0.5, batch_size=4).to_dict()
    assert d == {"optimizer": "rmsprop", "lr": 0.5, "batch_size": 4, "check_every": 25, "max_steps": 5000,
                 "momentum": 0.0, "dense_checks": 0, "proximal": 0.0, "stall_steps": 0, "min_steps": 0,
                 "dropout": 0.0}


def test_objective_validation():
    x, y = torch.zeros(4, 2), torch.zeros(4, 1)
    with pytest.raises(ConfigError, match="error_rate is not differentiable"):
        Objective(x, torch.zeros(4, dtype=torch.long), "error_rate")
    with pytest.raises(ConfigError, match="4 samples but targets have 3"):
        Objective(x, y[:3])
    with pytest.raises(ConfigError, match="empty"):
        Objective(x[:0], y[:0])
    with pytest.raises(ConfigError, match="unknown metric"):
        Objective(x, y, "hinge")
    assert Objective(x, y, "mae").describe() == {"loss": "mae", "n_samples": 4}


# -- where training stops and where the point goes ------------------------------------------------------


@pytest.mark.parametrize("config, expected", [
    (TrainConfig(check_every=4, max_steps=10), [4, 8, 10]),
    (TrainConfig(check_every=4, max_steps=10, dense_checks=3), [1, 2, 3, 4, 8, 10]),
    (TrainConfig(check_every=4, max_steps=10, dense_checks=5), [1, 2, 3, 4, 5, 8, 10]),
    (TrainConfig(check_every=4, max_steps=3, dense_checks=50), [1, 2, 3]),
    (TrainConfig(check_every=5, max_steps=10), [5, 10]),
    (TrainConfig(max_steps=0, dense_checks=5), []),
])
def test_check_schedule(config, expected):
    assert check_steps(config) == expected


def test_dense_checks_stop_at_the_first_step_that_reaches_the_target():
    energy, objective, start = _regression()
    target = 0.5
    # the reference: the energy checked after every single step
    _, every = train_to_target(start, energy=energy, objective=objective, target=target,
                               config=TrainConfig(lr=0.05, check_every=1, max_steps=500), seed=0)
    first = every.steps
    assert every.reached and first % 50 != 0
    _, status = train_to_target(start, energy=energy, objective=objective, target=target,
                                config=TrainConfig(lr=0.05, check_every=50, dense_checks=first, max_steps=500), seed=0)
    assert status.reached and status.steps == first
    # checked every 50 steps only, the same run trains on past the first step that reached the target
    _, late = train_to_target(start, energy=energy, objective=objective, target=target,
                              config=TrainConfig(lr=0.05, check_every=50, max_steps=500), seed=0)
    assert late.reached and late.steps == 50 * math.ceil(first / 50) > first
    assert late.final_energy < status.final_energy


def _relu_regression():
    """``y = relu(x @ w + c)`` on 64 samples; a start with its only unit dead has an exactly zero gradient."""
    g = _gen(1)
    x = torch.randn(64, 3, generator=g)
    y = torch.relu(x @ torch.tensor([[1.0], [-1.0], [0.5]]) + 0.2)
    net = nn.Sequential(nn.Linear(3, 1), nn.ReLU())
    dead = {"0.weight": torch.zeros(1, 3), "0.bias": torch.tensor([-1.0])}
    return Energy(net, x, y, "mse", strategy="loop"), Objective(x, y, "mse"), dead


@pytest.mark.parametrize("batch_size, steps", [(None, 1), (16, 4)])
def test_a_dead_start_reports_zero_gradient_after_one_epoch(batch_size, steps):
    energy, objective, dead = _relu_regression()
    point, status = train_to_target(dead, energy=energy, objective=objective, target=1e-3,
                                    config=TrainConfig(lr=0.05, batch_size=batch_size, max_steps=1000), seed=0)
    assert status.reason == StopReason.ZERO_GRADIENT.value and status.stuck and not status.reached
    assert status.steps == steps  # one epoch of zero gradients, not the step cap
    assert _same(point, dead)


def test_an_unreachable_target_stalls_instead_of_running_to_the_step_cap():
    """Noise in the held-out targets puts a floor under the energy: a target below it is never reached. (The
    training targets are noisy too: a noise-free fit ends at an exactly zero gradient, reported as such.)"""
    energy, objective, start = _regression()
    noisy = Energy(energy.model, energy.inputs, energy.targets + 0.3 * torch.randn(32, 1, generator=_gen(3)),
                   "mse", strategy="loop")
    objective = Objective(objective.inputs, objective.targets + 0.3 * torch.randn(64, 1, generator=_gen(4)), "mse")
    config = TrainConfig(lr=0.05, check_every=10, max_steps=5000, stall_steps=200)
    _, status = train_to_target(start, energy=noisy, objective=objective, target=1e-4, config=config, seed=0)
    assert status.reason == "stalled" and status.stuck and status.steps < 2000
    _, capped = train_to_target(start, energy=noisy, objective=objective, target=1e-4,
                                config=TrainConfig(lr=0.05, check_every=10, max_steps=2000), seed=0)
    assert capped.reason == "step_cap" and not capped.stuck and capped.steps == 2000


class _Drift(nn.Module):
    """``E(w) = (1 - w1)_+ - 1e-3 w2``: only w1 matters; w2's tiny gradient still gets Adam's full step size."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return x * (torch.clamp(1 - self.w[0], min=0) - 1e-3 * self.w[1])


def _drift():
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    return Energy(_Drift(), x, y, "mae", strategy="loop"), Objective(x, y, "mae")


def test_proximal_term_keeps_the_point_near_its_start():
    energy, objective = _drift()
    start = {"w": torch.zeros(2, dtype=torch.float64)}

    def train(proximal):
        point, status = train_to_target(start, energy=energy, objective=objective, target=0.2, seed=0,
                                        config=TrainConfig(lr=0.05, check_every=1, proximal=proximal))
        assert status.reached
        return point["w"]

    plain, pulled = train(0.0), train(0.1)
    # plain Adam moves the irrelevant coordinate about as fast as the relevant one
    assert float(plain[1]) > 0.7 * float(plain[0])
    assert abs(float(pulled[1])) < 0.25 * float(plain[1])
    assert float(torch.linalg.vector_norm(pulled)) < float(torch.linalg.vector_norm(plain))


def test_hyperplane_normal_keeps_the_displacement_orthogonal_to_it():
    energy, objective = _drift()
    start = {"w": torch.tensor([0.0, 0.5], dtype=torch.float64)}
    normal = {"w": torch.tensor([0.0, 3.0], dtype=torch.float64)}  # any length: it is normalised
    point, status = train_to_target(start, energy=energy, objective=objective, target=0.2, seed=0,
                                    config=TrainConfig(lr=0.05, check_every=1), hyperplane_normal=normal)
    assert status.reached
    assert float(point["w"][1]) == pytest.approx(0.5, abs=1e-12)  # no motion along the normal
    with pytest.raises(ConfigError, match="nonzero"):
        train_to_target(start, energy=energy, objective=objective, target=0.2, seed=0, config=TrainConfig(),
                        hyperplane_normal={"w": torch.zeros(2, dtype=torch.float64)})

"""Control tasks with known answers.

* ``convex``: a single linear layer fitted by MSE. The energy is convex in the
  parameters, so the straight segment between two endpoints below L0 stays
  below L0: DSS must need no bead and report normalized length 1.
* ``permutation`` (Freeman & Bruna, Appendix E): a 2-3-2 ReLU network without
  biases (12 parameters) mapping three points of R^2 to their cyclic
  permutation, connected against a copy of itself with its first two hidden
  units swapped. The two endpoints compute the same function, yet no
  low-energy path joins them: DSS must report failure and why.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..params import permute_hidden_units
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from .base import Task


def convex_task(*, n_inputs: int = 4, n_outputs: int = 2, n_train: int = 256, n_test: int = 256,
                noise: float = 0.1, data_seed: int = 0) -> Task:
    if min(n_inputs, n_outputs, n_train, n_test) < 1 or noise < 0:
        raise ConfigError("convex task sizes must be >= 1 and noise >= 0")
    g = torch.Generator().manual_seed(int(data_seed))
    weight = torch.randn(n_outputs, n_inputs, generator=g)
    bias = torch.randn(n_outputs, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, n_inputs, generator=g)
        return x, x @ weight.T + bias + noise * torch.randn(n, n_outputs, generator=g)

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return Task(
        name="convex",
        description=f"convex control: linear {n_inputs}->{n_outputs} regression, energy = test MSE "
                    f"(noise floor {noise**2:g})",
        make_model=lambda seed: seeded(lambda: nn.Linear(n_inputs, n_outputs), seed),
        objective=Objective(x_train, y_train, "mse"),
        energy=Energy(build_without_global_rng(lambda: nn.Linear(n_inputs, n_outputs)), x_test, y_test, "mse",
                      strategy="vmap"),
        default_threshold=round(2.0 * noise**2, 12) if noise > 0 else 1e-3,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.05, check_every=25, max_steps=10000),
        bead_training=TrainConfig(optimizer="adam", lr=0.05, check_every=25, dense_checks=100, max_steps=10000),
        threads=1,
        options={"n_inputs": n_inputs, "n_outputs": n_outputs, "n_train": n_train, "n_test": n_test,
                 "noise": noise, "data_seed": data_seed},
    )


def permutation_points() -> torch.Tensor:
    """Three points of the unit circle, 120 degrees apart (pairwise obtuse, so 3 ReLU units can separate them)."""
    angles = torch.tensor([90.0, 210.0, 330.0]) * math.pi / 180
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def relu_232() -> nn.Sequential:
    """The 2-3-2 ReLU network of Appendix E, without biases: 12 parameters."""
    return nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))


def permutation_init(seed: int) -> nn.Sequential:
    """A 2-3-2 network in the basin of the task's solutions, drawn from ``seed``.

    Plain random initialisation of this 12-parameter ReLU net usually leaves a point with no active
    unit (a dead corner that gradient descent cannot leave: energy stuck at 1/6). We therefore draw the
    first layer from N(0, 1) until each hidden unit is active on exactly one point and each point
    activates exactly one unit, and start the output layer at zero; training then reaches the target
    from every seed we tried (20 of 20 with Adam, lr 0.02).
    """
    x = permutation_points()
    generator = torch.Generator().manual_seed(int(seed))
    model = build_without_global_rng(relu_232)
    for _ in range(10_000):
        w1 = torch.randn(3, 2, generator=generator)
        active = (x @ w1.T) > 0  # [point, unit]
        if bool((active.sum(0) == 1).all() and (active.sum(1) == 1).all()):
            with torch.no_grad():
                model[0].weight.copy_(w1)
                model[2].weight.zero_()
            return model
    raise RuntimeError("no suitable initialisation found in 10000 draws")  # probability ~ 0


def permutation_task() -> Task:
    """Appendix E's pair. Endpoint A is trained to half of L0 (``endpoint_fraction=0.5``: a margin, so that
    beads at alpha * L0 are no harder to train than A was), checked after each of its first 200 steps so it
    stops near 0.01 instead of far below. Beads stop as ``stalled`` after 200 steps without progress: the
    bead at the symmetric midpoint sits at energy 1/6 for good, and DSS restarts it off the saddle
    (see ``docs/disconnection.md``). A reaches its target within about 50 steps: 2,000 are plenty for both."""
    x = permutation_points()
    y = x.roll(-1, dims=0)  # x1 -> x2, x2 -> x3, x3 -> x1
    return Task(
        name="permutation",
        description="Appendix E disconnection: 2-3-2 ReLU net (no biases) mapping 3 points to their cyclic "
                    "permutation, against a copy with hidden units 1 and 2 swapped; energy = MSE on the 3 points",
        make_model=permutation_init,
        objective=Objective(x, y, "mse"),
        energy=Energy(build_without_global_rng(relu_232), x, y, "mse", strategy="vmap", split="train"),
        default_threshold=0.02,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.02, check_every=25, dense_checks=200, max_steps=2000),
        bead_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=100, max_steps=2000,
                                  stall_steps=200),
        endpoint_fraction=0.5,
        derive_endpoint_b=lambda point: permute_hidden_units(point, "0", "2", [1, 0, 2]),
        threads=1,
        options={},
    )

"""Polynomial regression (Freeman & Bruna, section 4.1): a 1-4-4-1 MLP on x in [0, 1].

The energy is the mean absolute error on a held-out test sample (as in the
authors' experiments); training minimises the mean squared error on the
training sample. Both samples are drawn uniformly from [0, 1] with ``data_seed``.

Training defaults, as measured (``benchmarks/bead_geometry.py``): endpoints are
checked after every one of their first 500 steps, so at high levels they stop
at 0.9 * L0 instead of deep inside the level set (quadratic at 0.125: 0.12
instead of 0.02-0.05 when checked every 50 steps); beads get the endpoints'
20,000 steps, and stop early when stalled. A lower bead learning rate (1e-3)
shortened cubic strings by at most 0.015 for 2.5-6x the steps: the cubic's
beads move 15-25% of the endpoint distance because its level set is curved,
not because training wanders.
"""

from __future__ import annotations

import torch
from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from .base import Task

POLYNOMIALS = {
    "quadratic": (lambda x: 0.5 * x**2 + 0.25 * x + 0.1, "f(x) = 0.5x^2 + 0.25x + 0.1"),
    "cubic": (lambda x: 8 * x**3 - 10 * x**2 + 3 * x, "f(x) = 8x^3 - 10x^2 + 3x"),
}
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp_1441(activation: str = "sigmoid") -> nn.Sequential:
    """The paper's 1-4-4-1 fully connected network."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    return nn.Sequential(nn.Linear(1, 4), act(), nn.Linear(4, 4), act(), nn.Linear(4, 1))


def polynomial_task(kind: str, *, activation: str = "sigmoid", n_train: int = 256, n_test: int = 256,
                    data_seed: int = 0) -> Task:
    if kind not in POLYNOMIALS:
        raise ConfigError(f"unknown polynomial {kind!r}; choose one of: {', '.join(POLYNOMIALS)}")
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    f, formula = POLYNOMIALS[kind]
    generator = torch.Generator().manual_seed(int(data_seed))
    x_train = torch.rand(n_train, 1, generator=generator)
    x_test = torch.rand(n_test, 1, generator=generator)
    model = build_without_global_rng(lambda: mlp_1441(activation))
    return Task(
        name=kind,
        description=f"{kind} regression {formula} on [0, 1], 1-4-4-1 {activation} MLP, energy = test MAE",
        make_model=lambda seed: seeded(lambda: mlp_1441(activation), seed),
        objective=Objective(x_train, f(x_train), "mse"),
        energy=Energy(model, x_test, f(x_test), "mae", strategy="matmul"),
        default_threshold=0.05,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.02, check_every=50, dense_checks=500, max_steps=20000),
        bead_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=100, max_steps=20000,
                                  stall_steps=2000),
        endpoint_fraction=0.9,
        threads=1,
        options={"activation": activation, "n_train": n_train, "n_test": n_test, "data_seed": data_seed},
    )

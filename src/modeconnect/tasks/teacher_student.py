"""Teacher-student regression with two-layer ReLU networks (Freeman & Bruna, Section 2.3, Theorem 2.4).

* data: ``n_train`` inputs x ~ N(0, I_n) (n = ``input_dim``) drawn with ``data_seed``;
* teacher: a fixed two-layer ReLU network with ``teacher_width`` hidden units (first-layer rows and biases
  drawn from ``data_seed``, each row scaled to unit norm in R^(n+1), output weights +-1); its outputs are
  centred and scaled to unit variance on the sample, so risks are comparable across n;
* student: ``Linear(n, m) -> ReLU -> Linear(m, 1)`` of width m = ``width`` (the paper's Phi(X; W1, W2) with
  the input augmented by a constant 1, so each unit's weight w_i lives in R^(n+1));
* energy: the mean squared error on the training sample (the empirical risk, i.e. the theorem with P replaced
  by the empirical measure, which the paper allows); training minimises the same MSE.

Departures from the theorem's setting, stated once: no l1 penalty kappa * ||W2||_1 and no norm constraint
||w_i|| <= 1 (the ReLU's positive homogeneity lets any unit be rescaled into the ball without changing the
function, so the constraint matters only through the penalty). The teacher has fewer units than every
student width we use, so the students can fit it and the lowest reachable risk is set by the training budget.

>>> task = teacher_student_task(width=4, input_dim=2, n_train=64)
>>> task.energy.inputs.shape, task.name
(torch.Size([64, 2]), 'teacher-student')
"""

from __future__ import annotations

import torch
from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from .base import Task

__all__ = ["teacher_student_task", "student", "teacher_data", "teacher_point", "MAX_INPUT_DIM", "MAX_WIDTH"]

MAX_INPUT_DIM = 64
"""Largest accepted input dimension (the width-scaling study uses 1, 2 and 4)."""
MAX_WIDTH = 4096
"""Largest accepted student width."""


def student(input_dim: int, width: int) -> nn.Sequential:
    """The two-layer ReLU student ``Linear(n, m) -> ReLU -> Linear(m, 1)``."""
    return nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, 1))


def teacher_data(input_dim: int, teacher_width: int, n: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         dict[str, torch.Tensor]]:
    """Inputs, normalised teacher outputs and the teacher itself (``{"w": (k, n), "b": (k,), "a": (k,),
    "shift": (), "scale": ()}``, so that y = (a . relu(w x + b) - shift) / scale), all drawn from ``data_seed``."""
    generator = torch.Generator().manual_seed(int(data_seed))
    rows = torch.randn(teacher_width, input_dim + 1, generator=generator)
    rows = rows / rows.norm(dim=1, keepdim=True)
    w, b = rows[:, :input_dim].contiguous(), rows[:, input_dim].contiguous()
    a = torch.where(torch.rand(teacher_width, generator=generator) < 0.5, -1.0, 1.0)
    x = torch.randn(n, input_dim, generator=generator)
    raw = torch.relu(x @ w.T + b) @ a
    shift, scale = raw.mean(), raw.std().clamp_min(1e-12)
    y = ((raw - shift) / scale).unsqueeze(1)
    return x, y, {"w": w, "b": b, "a": a, "shift": shift, "scale": scale}


def teacher_point(*, input_dim: int = 2, data_seed: int = 0, teacher_width: int = 3, n_train: int = 256,
                  **_: object) -> dict[str, torch.Tensor]:
    """The (normalised) teacher of the task with these options, as a parameter point of
    ``student(input_dim, teacher_width)``: energy 0 on the task's data up to rounding (the width-scaling
    construction uses it as the oracle network). Takes the task's options (``width`` is ignored)."""
    _, _, t = teacher_data(input_dim, teacher_width, n_train, data_seed)
    return {"0.weight": t["w"].clone(), "0.bias": t["b"].clone(), "2.weight": (t["a"] / t["scale"]).unsqueeze(0),
            "2.bias": (-t["shift"] / t["scale"]).reshape(1)}


def _positive_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"teacher-student: {name} must be an integer between {low} and {high}, got {value!r}")
    return value


def teacher_student_task(*, width: int = 16, input_dim: int = 2, data_seed: int = 0, teacher_width: int = 3,
                         n_train: int = 256) -> Task:
    """The task of the module docstring: students of width ``width`` fit a ``teacher_width``-unit teacher on
    ``n_train`` Gaussian inputs in R^``input_dim``; energy = training MSE (targets have unit variance)."""
    width = _positive_int("width", width, 1, MAX_WIDTH)
    input_dim = _positive_int("input_dim", input_dim, 1, MAX_INPUT_DIM)
    teacher_width = _positive_int("teacher_width", teacher_width, 1, MAX_WIDTH)
    n_train = _positive_int("n_train", n_train, 2, 1_000_000)
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
        raise ConfigError(f"teacher-student: data_seed must be an integer >= 0, got {data_seed!r}")
    x, y, _ = teacher_data(input_dim, teacher_width, n_train, data_seed)
    return Task(
        name="teacher-student",
        description=f"teacher-student regression: {input_dim}-{width}-1 ReLU student, {teacher_width}-unit ReLU "
                    f"teacher, {n_train} Gaussian inputs, energy = training MSE (unit-variance targets)",
        make_model=lambda seed: seeded(lambda: student(input_dim, width), seed),
        objective=Objective(x, y, "mse"),
        energy=Energy(build_without_global_rng(lambda: student(input_dim, width)), x, y, "mse", strategy="vmap",
                      split="train"),
        default_threshold=0.02,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.01, check_every=50, dense_checks=0, max_steps=4000),
        bead_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=0, max_steps=4000,
                                  stall_steps=1000),
        endpoint_fraction=0.9,
        threads=1,
        options={"width": width, "input_dim": input_dim, "data_seed": data_seed, "teacher_width": teacher_width,
                 "n_train": n_train},
    )

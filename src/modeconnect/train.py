"""Trainer: move a parameter point until its energy is at or below a target.

Training minimises an :class:`Objective` (a differentiable loss on training
data, in minibatches) and stops as soon as the *energy* (the thresholded
quantity, usually on held-out data) reaches the target, checked every
``check_every`` steps, or when the step cap is hit.

>>> import torch
>>> net = torch.nn.Linear(1, 1)
>>> x = torch.linspace(0, 1, 16).unsqueeze(1)
>>> from modeconnect.energy import Energy
>>> energy = Energy(net, x, 3 * x, "mae", strategy="loop")
>>> objective = Objective(x, 3 * x, "mse")
>>> point, status = train_to_target({"weight": torch.zeros(1, 1), "bias": torch.zeros(1)},
...     energy=energy, objective=objective, target=0.05, config=TrainConfig(lr=0.1), seed=0)
>>> status.reached and status.final_energy <= 0.05
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from .batchnorm import is_buffer_key
from .energy import Energy, data_like
from .errors import ConfigError
from .metrics import Metric, as_metric, metric_count, metric_sum
from .params import Point

__all__ = ["Optimizer", "TrainConfig", "Objective", "TrainStatus", "train_to_target"]


class Optimizer(str, Enum):
    """Optimizers available for training endpoints and beads."""

    ADAM = "adam"
    """torch.optim.Adam with default betas."""
    RMSPROP = "rmsprop"
    """torch.optim.RMSprop with default smoothing."""
    SGD = "sgd"
    """torch.optim.SGD with the configured momentum."""


@dataclass(frozen=True)
class TrainConfig:
    """How a point is trained towards an energy target."""

    optimizer: Optimizer = Optimizer.ADAM
    lr: float = 1e-2
    batch_size: int | None = None
    """Samples per step; ``None`` uses the whole training set (full batch)."""
    check_every: int = 25
    """Steps between energy checks (the energy is also checked before the first step)."""
    max_steps: int = 5000
    """Step cap; reaching it without meeting the target is reported, not raised."""
    momentum: float = 0.0
    """Momentum for SGD (ignored by the other optimizers)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "optimizer", Optimizer(self.optimizer))
        except ValueError:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adam, rmsprop or sgd") from None
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.check_every < 1:
            raise ConfigError(f"check_every must be >= 1, got {self.check_every}")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.momentum < 0:
            raise ConfigError(f"momentum must be >= 0, got {self.momentum}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optimizer"] = self.optimizer.value
        return d


@dataclass(frozen=True, eq=False)
class Objective:
    """The differentiable loss that training minimises, on training data.

    Samples are indexed along dimension 0 (images ``[n, C, H, W]`` with labels ``[n]``, or token windows
    ``[n, T]`` with next-token targets ``[n, T]``). A minibatch's loss is its metric sum divided by its unit
    count (samples, or labels/tokens: see :func:`~modeconnect.metrics.metric_count`).
    """

    inputs: Tensor
    targets: Tensor
    loss: Metric | str = Metric.MSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", as_metric(self.loss))
        if not self.loss.differentiable:
            why = ("is not differentiable" if self.loss is Metric.ERROR_RATE else
                   "is not a training loss (it is exp of the mean cross-entropy: minimising one minimises both)")
            raise ConfigError(f"{self.loss.value} {why}; train with cross_entropy instead")
        if len(self.inputs) != len(self.targets):
            raise ConfigError(f"training inputs have {len(self.inputs)} samples but targets have {len(self.targets)}")
        if len(self.inputs) == 0:
            raise ConfigError("the training data is empty")

    def describe(self) -> dict[str, Any]:
        return {"loss": self.loss.value, "n_samples": len(self.inputs)}


@dataclass(frozen=True)
class TrainStatus:
    """What a training run achieved."""

    reached: bool
    steps: int
    final_energy: float
    target: float
    reason: str
    """``"reached"``, ``"step_cap"`` or ``"diverged"``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _make_optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=config.lr)
    if config.optimizer is Optimizer.RMSPROP:
        return torch.optim.RMSprop(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def train_to_target(
    start: Mapping[str, Tensor],
    *,
    energy: Energy,
    objective: Objective,
    target: float,
    config: TrainConfig,
    seed: int,
    on_check: Callable[[int, float], None] | None = None,
) -> tuple[Point, TrainStatus]:
    """Train a copy of ``start`` until ``energy(point) <= target`` or the step cap.

    Minibatches are drawn from a generator seeded with ``seed``; the same
    inputs always give the same point. ``on_check(step, energy)`` is called at
    every energy check (for progress displays). ``start`` is not modified.

    Only parameters are optimised. BatchNorm statistics a point carries (``buffer:`` keys, the
    INTERPOLATE policy) are updated by the training forward's running average (see
    :meth:`~modeconnect.energy.Energy.train_forward`); BatchNorm layers normalise with batch statistics.
    """
    energy.check_point(start, "the starting point")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in start.items() if not is_buffer_key(k)}
    buffers = {k: v.detach().clone() for k, v in start.items() if is_buffer_key(k)}
    optimizer = _make_optimizer(list(params.values()), config)
    ref = next(iter(params.values()))
    x_all, y_all = data_like(objective.inputs, objective.targets, ref)
    n = len(x_all)
    batch = min(config.batch_size or n, n)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    order, cursor = torch.randperm(n, generator=generator), 0

    def check(step: int) -> float:
        value = energy({k: v.detach() for k, v in params.items()} | buffers)
        if on_check is not None:
            on_check(step, value)
        return value

    step, value = 0, check(0)
    while True:
        if value <= target:
            reason = "reached"
            break
        if not math.isfinite(value):
            reason = "diverged"
            break
        if step >= config.max_steps:
            reason = "step_cap"
            break
        for _ in range(min(config.check_every, config.max_steps - step)):
            if batch == n:
                x, y = x_all, y_all
            else:
                if cursor + batch > n:
                    order, cursor = torch.randperm(n, generator=generator), 0
                idx = order[cursor : cursor + batch].to(x_all.device)
                cursor += batch
                x, y = x_all[idx], y_all[idx]
            optimizer.zero_grad(set_to_none=True)
            outputs = energy.train_forward(params | buffers, x)
            loss = metric_sum(objective.loss, outputs, y) / metric_count(objective.loss, y)
            loss.backward()
            optimizer.step()
            step += 1
        value = check(step)
    point = {k: (buffers[k] if is_buffer_key(k) else params[k].detach()) for k in start}
    return point, TrainStatus(reached=reason == "reached", steps=step, final_energy=value, target=target, reason=reason)

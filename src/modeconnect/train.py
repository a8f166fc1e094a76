"""Trainer: move a parameter point until its energy is at or below a target.

Training minimises an :class:`Objective` (a differentiable loss on training
data, in minibatches) and stops as soon as the *energy* (the thresholded
quantity, usually on held-out data) reaches the target, or when the step cap
is hit, or when training is stuck (see :class:`StopReason`).

Where a trained point ends up matters as much as whether it gets there: DSS
measures the length of a string of trained beads, so a bead that trains on
past its target, or wanders far from where it started, lengthens the string
for nothing. Hence the check schedule (every step for the first
``dense_checks`` steps, where a near-target start stops at once), the
optional proximal pull towards the start, and the optional hyperplane
constraint (``hyperplane_normal``) that keeps the point's displacement
orthogonal to a given direction.

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

__all__ = ["Optimizer", "StopReason", "TrainConfig", "Objective", "TrainStatus", "train_to_target",
           "STALL_PROGRESS", "check_steps"]

STALL_PROGRESS = 0.01
"""Training counts as stalled when, over ``stall_steps`` steps, its best energy closed less than this fraction
of the gap between that best and the target (a plateau, or an asymptote short of the target)."""


class Optimizer(str, Enum):
    """Optimizers available for training endpoints and beads."""

    ADAM = "adam"
    """torch.optim.Adam with default betas."""
    RMSPROP = "rmsprop"
    """torch.optim.RMSprop with default smoothing."""
    SGD = "sgd"
    """torch.optim.SGD with the configured momentum."""


class StopReason(str, Enum):
    """Why training stopped (``TrainStatus.reason``)."""

    REACHED = "reached"
    """The energy is at or below the target."""
    STEP_CAP = "step_cap"
    """max_steps were taken without reaching the target (and without being stuck)."""
    DIVERGED = "diverged"
    """The energy became NaN or infinite."""
    ZERO_GRADIENT = "zero_gradient"
    """Every gradient of a whole epoch of minibatches was exactly zero: the point cannot move (dead units, a
    flat region, a critical point such as a symmetric saddle, or an exact minimum of the training loss whose
    energy is still above the target)."""
    STALLED = "stalled"
    """The energy made almost no progress (see STALL_PROGRESS) for stall_steps steps: stuck on a plateau or in
    an invariant subspace (e.g. two hidden units kept equal by the symmetry of the start)."""


@dataclass(frozen=True)
class TrainConfig:
    """How a point is trained towards an energy target."""

    optimizer: Optimizer = Optimizer.ADAM
    lr: float = 1e-2
    batch_size: int | None = None
    """Samples per step; ``None`` uses the whole training set (full batch)."""
    check_every: int = 25
    """Steps between energy checks after the dense ones (the energy is also checked before the first step)."""
    max_steps: int = 5000
    """Step cap; reaching it without meeting the target is reported, not raised."""
    momentum: float = 0.0
    """Momentum for SGD (ignored by the other optimizers)."""
    dense_checks: int = 0
    """Check the energy after each of the first dense_checks steps, then every check_every: a point that is
    nearly there stops at the first step that reaches the target, not up to check_every - 1 steps deeper."""
    proximal: float = 0.0
    """Weight mu of a proximal term mu/2 * ||theta - theta_start||^2 added to the training loss: pulls the
    point towards where it started, so it finds a nearby point of the level set instead of wandering (0: off)."""
    stall_steps: int = 0
    """Stop with reason 'stalled' when the energy closed less than 1% of its gap to the target over this
    many steps (an asymptote or plateau short of the target); 0: never, train to the step cap."""
    min_steps: int = 0
    """Train at least this many steps even when the target is reached earlier (with dropout the dropped-out
    networks keep improving long after the whole network reaches its target). 0: stop at the target."""
    dropout: float = 0.0
    """Unit dropout during training (Kuditipudi et al.'s dropout stability, Definition 1): every step trains a
    network that keeps exactly floor(h * (1 - dropout)) hidden units of every layer (Linear outputs, Conv2d
    channels), drawn afresh, with kept units' outgoing weights scaled by 1 / (1 - dropout). One mask per
    minibatch. The energy checks see the whole network. 0: off. Needs the model's hidden units, so only
    endpoint training offers it (``--endpoint-dropout``)."""

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
        if self.dense_checks < 0:
            raise ConfigError(f"dense_checks must be >= 0 (steps checked one by one at the start), "
                              f"got {self.dense_checks}")
        if not (self.proximal >= 0 and math.isfinite(self.proximal)):
            raise ConfigError(f"proximal must be a finite number >= 0 (0 turns the pull off), got {self.proximal}")
        if self.stall_steps < 0:
            raise ConfigError(f"stall_steps must be >= 0 (0: never stop early), got {self.stall_steps}")
        if not 0 <= self.min_steps <= self.max_steps:
            raise ConfigError(f"min_steps must be between 0 and max_steps={self.max_steps}, got {self.min_steps}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ConfigError(f"dropout must be in [0, 1) (the fraction of hidden units dropped per step), "
                              f"got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optimizer"] = self.optimizer.value
        return d


def check_steps(config: TrainConfig) -> list[int]:
    """The steps after which the energy is checked (step 0, before training, is always checked too).

    >>> check_steps(TrainConfig(check_every=4, max_steps=10))
    [4, 8, 10]
    >>> check_steps(TrainConfig(check_every=4, max_steps=10, dense_checks=3))
    [1, 2, 3, 4, 8, 10]
    """
    dense = list(range(1, min(config.dense_checks, config.max_steps) + 1))
    start = (len(dense) // config.check_every + 1) * config.check_every
    sparse = list(range(start, config.max_steps + 1, config.check_every))
    if config.max_steps > 0 and (dense + sparse)[-1:] != [config.max_steps]:
        sparse.append(config.max_steps)
    return dense + sparse


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
    l2: float = 0.0
    """Ridge coefficient kappa: ``kappa * (sum of squared parameters)`` is added to the training loss (0: none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", as_metric(self.loss))
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not 0 <= self.l2 < float("inf"):
            raise ConfigError(f"l2 (the ridge coefficient) must be a finite number >= 0, got {self.l2!r}")
        if not self.loss.differentiable:
            why = ("is not differentiable" if self.loss is Metric.ERROR_RATE else
                   "is not a training loss (it is exp of the mean cross-entropy: minimising one minimises both)")
            raise ConfigError(f"{self.loss.value} {why}; train with cross_entropy instead")
        if len(self.inputs) != len(self.targets):
            raise ConfigError(f"training inputs have {len(self.inputs)} samples but targets have {len(self.targets)}")
        if len(self.inputs) == 0:
            raise ConfigError("the training data is empty")

    def describe(self) -> dict[str, Any]:
        return {"loss": self.loss.value, "n_samples": len(self.inputs), **({"l2": self.l2} if self.l2 else {})}


@dataclass(frozen=True)
class TrainStatus:
    """What a training run achieved."""

    reached: bool
    steps: int
    final_energy: float
    target: float
    reason: str
    """A :class:`StopReason` value: ``"reached"``, ``"step_cap"``, ``"diverged"``, ``"zero_gradient"`` or
    ``"stalled"``."""

    @property
    def stuck(self) -> bool:
        """Whether training stopped because the point could not make progress (not for lack of steps)."""
        return self.reason in (StopReason.ZERO_GRADIENT.value, StopReason.STALLED.value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=config.lr)
    if config.optimizer is Optimizer.RMSPROP:
        return torch.optim.RMSprop(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


class Minibatches:
    """Seeded minibatches: reshuffled epochs without replacement (the full set when batch_size is None)."""

    def __init__(self, objective: Objective, ref: Tensor, batch_size: int | None, seed: int) -> None:
        self.x, self.y = data_like(objective.inputs, objective.targets, ref)
        self.n = len(self.x)
        self.batch = min(batch_size or self.n, self.n)
        self.per_epoch = math.ceil(self.n / self.batch)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.batch == self.n:
            return self.x, self.y
        if self.cursor + self.batch > self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.cursor : self.cursor + self.batch].to(self.x.device)
        self.cursor += self.batch
        return self.x[idx], self.y[idx]


class _Hyperplane:
    """Keeps ``params - anchor`` orthogonal to a unit normal (projected after every optimizer step)."""

    def __init__(self, anchor: Mapping[str, Tensor], normal: Mapping[str, Tensor]) -> None:
        keys = [k for k in anchor if not is_buffer_key(k)]
        norm = math.sqrt(sum(float(torch.sum(normal[k].double() ** 2)) for k in keys))
        if not (norm > 0 and math.isfinite(norm)):
            raise ConfigError("the hyperplane normal must be a nonzero finite direction")
        self.anchor = {k: anchor[k].detach() for k in keys}
        self.normal = {k: (normal[k].double() / norm).to(anchor[k].dtype) for k in keys}

    @torch.no_grad()
    def project(self, params: Mapping[str, Tensor]) -> None:
        along = sum(torch.sum((params[k] - self.anchor[k]) * self.normal[k]) for k in self.normal)
        for k, n in self.normal.items():
            params[k].sub_(along * n)


def train_to_target(start: Mapping[str, Tensor], *, energy: Energy, **settings: Any) -> tuple[Point, TrainStatus]:
    """Train a copy of ``start`` until ``energy(point) <= target`` (see :func:`_train_to_target` for the
    settings), with the energy's torch threads (:meth:`~modeconnect.energy.Energy.thread_scope`: its
    ``threads`` setting or measured choice; the process's setting when it has none)."""
    if energy.threads == "auto" and energy.chosen_threads is None:
        energy(start)  # measures the thread count (once per energy), so that training uses it from step 0
    with energy.thread_scope():
        return _train_to_target(start, energy=energy, **settings)


def _train_to_target(
    start: Mapping[str, Tensor],
    *,
    energy: Energy,
    objective: Objective,
    target: float,
    config: TrainConfig,
    seed: int,
    on_check: Callable[[int, float], None] | None = None,
    hyperplane_normal: Mapping[str, Tensor] | None = None,
    extra_loss: Callable[[dict[str, Tensor]], Tensor] | None = None,
    project: Callable[[dict[str, Tensor]], None] | None = None,
    perturb: Callable[[dict[str, Tensor], int], dict[str, Tensor]] | None = None,
) -> tuple[Point, TrainStatus]:
    """Train a copy of ``start`` until ``energy(point) <= target``, the step cap, or a stuck point.

    Minibatches are drawn from a generator seeded with ``seed``; the same
    inputs always give the same point. ``on_check(step, energy)`` is called at
    every energy check (for progress displays). ``start`` is not modified.
    With ``hyperplane_normal`` (a direction with the point's keys) every step is
    projected back onto the hyperplane through ``start`` orthogonal to it.
    ``extra_loss(params)`` is added to the training loss (e.g. constrained DSS's spring), and
    ``project(params)`` moves the parameters in place before the first step and after every step (the
    proximal pull is towards the projected start).
    ``perturb(params, step)`` returns the parameters the training loss sees at ``step`` (differentiably; e.g.
    a dropout mask drawn for that step); the energy checks see the parameters themselves. It is required
    when ``config.dropout > 0`` (see :func:`modeconnect.kuditipudi.dropout.dropout_perturbation`).

    Only parameters are optimised. BatchNorm statistics a point carries (``buffer:`` keys, the
    INTERPOLATE policy) are updated by the training forward's running average (see
    :meth:`~modeconnect.energy.Energy.train_forward`); BatchNorm layers normalise with batch statistics.
    """
    energy.check_point(start, "the starting point")
    if config.dropout and perturb is None:
        raise ConfigError(f"dropout={config.dropout:g} needs the model's hidden units: pass perturb="
                          "dropout_perturbation(...) (modeconnect.kuditipudi.dropout); from the command line only "
                          "endpoint training takes --endpoint-dropout")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in start.items() if not is_buffer_key(k)}
    buffers = {k: v.detach().clone() for k, v in start.items() if is_buffer_key(k)}
    if hyperplane_normal is not None:
        if project is not None:
            raise ValueError("give hyperplane_normal or project, not both")
        project = _Hyperplane({k: v.detach().clone() for k, v in params.items()}, hyperplane_normal).project
    if project is not None:
        project(params)
    origin = {k: v.detach().clone() for k, v in params.items()}
    optimizer = make_optimizer(list(params.values()), config)
    batches = Minibatches(objective, next(iter(params.values())), config.batch_size, seed)

    def check(step: int) -> float:
        value = energy({k: v.detach() for k, v in params.items()} | buffers)
        if on_check is not None:
            on_check(step, value)
        return value

    step, value, zero_run = 0, check(0), 0
    best, best_step = value, 0  # the last energy that counted as progress, and when
    schedule = iter(check_steps(config))
    while True:
        if value <= target and step >= config.min_steps:
            reason = StopReason.REACHED
            break
        if not math.isfinite(value):
            reason = StopReason.DIVERGED
            break
        if zero_run >= batches.per_epoch:
            reason = StopReason.ZERO_GRADIENT
            break
        if value < best - STALL_PROGRESS * (best - target):
            best, best_step = value, step
        elif config.stall_steps and step - best_step >= config.stall_steps:
            reason = StopReason.STALLED
            break
        if step >= config.max_steps:
            reason = StopReason.STEP_CAP
            break
        until = next(schedule)
        while step < until:
            x, y = batches.next()
            optimizer.zero_grad(set_to_none=True)
            seen = params if perturb is None else perturb(params, step)
            outputs = energy.train_forward(seen | buffers, x)
            loss = metric_sum(objective.loss, outputs, y) / metric_count(objective.loss, y)
            if objective.l2:
                loss = loss + objective.l2 * sum(torch.sum(p**2) for p in seen.values())
            if config.proximal:
                loss = loss + 0.5 * config.proximal * sum(torch.sum((p - origin[k]) ** 2) for k, p in params.items())
            if extra_loss is not None:
                loss = loss + extra_loss(params)
            loss.backward()
            zero = all(p.grad is None or not bool(p.grad.any()) for p in params.values())
            zero_run = zero_run + 1 if zero else 0
            optimizer.step()
            if project is not None:
                project(params)
            step += 1
            if zero_run >= batches.per_epoch:
                break
        value = check(step)
    point = {k: (buffers[k] if is_buffer_key(k) else params[k].detach()) for k in start}
    return point, TrainStatus(reached=reason is StopReason.REACHED, steps=step, final_energy=value, target=target,
                              reason=reason.value)

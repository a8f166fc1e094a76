"""Garipov et al.'s curves (2018, "Loss surfaces, mode connectivity, and fast ensembling of DNNs").

Two path methods that train a single point ``c`` so that a fixed family of curves between the endpoints
``a`` and ``b`` has a low training loss on average:

* ``bezier``: the quadratic Bezier curve ``phi(t) = (1-t)^2 a + 2t(1-t) c + t^2 b``; the path is one
  :class:`~modeconnect.path.Bezier` piece with control point ``c``;
* ``polychain``: the polygonal chain ``a -> c -> b``, two straight pieces (``phi(t)`` runs along the
  first for ``t <= 1/2`` and the second after), so ``c`` is a bead of the path.

Training minimises ``E_{t ~ U[0, 1]} objective(phi(t))`` over ``c`` by stochastic gradients: every step
draws ``t_samples`` values of ``t`` and one minibatch, and the gradient reaches ``c`` through ``phi(t)``
(the model is called with ``functional_call`` on the curve's point, as the training loss of every
method is). The endpoints never change. ``c`` starts at the midpoint of ``a`` and ``b`` (both curves are
then the straight segment), plus optional seeded noise (``init_perturbation``).

The method's own check evaluates the energy on ``grid_size`` points of every piece and reports the path
connected when the maximum is <= ``tolerance * L0``; certification re-checks it independently.

BatchNorm. Training forwards normalise with batch statistics (train-mode BatchNorm, as Garipov et al.
train their curves), whatever the energy's policy. Evaluation follows the policy: RECOMPUTE recomputes
the statistics at every evaluated point (Garipov et al.'s procedure) and FREEZE uses its fixed set, so
``c`` carries parameters only. Under INTERPOLATE the statistics are part of the points and the path
interpolates them with the same weights as the parameters; at the end of training ``c``'s statistics
are set so that the path's statistics at ``t = 1/2`` equal those recomputed at ``phi(1/2)`` from the
training inputs (:data:`BN_SAMPLES` of them): for the polychain ``c``'s own statistics, for the Bezier
curve ``2 S(phi(1/2)) - (S_a + S_b) / 2``. A variance cannot be matched that way where the recomputed one is
below ``(V_a + V_b) / 4``: ``c``'s variance is then clipped at 0, so the path's variance at ``t = 1/2`` is
``(V_a + V_b) / 4`` (too large; the curve's variances stay positive since those of ``a`` and ``b`` are). The
result's ``batchnorm_handling`` says how many were clipped. The RECOMPUTE policy has no such compromise.

Resuming. Training runs in chunks of ``chunk_steps`` steps. Each chunk starts a fresh optimizer and
draws its ``t`` values and minibatches from seeds derived from ``(seed, chunk)``; the path and the state
are checkpointed after each chunk. A run resumed from any checkpoint therefore repeats the uninterrupted
run bit for bit, and so does a finished run extended to more steps when its steps were a multiple of
``chunk_steps`` (otherwise the optimizer restarts inside the last chunk, whose random streams are
fast-forwarded to the step reached).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..batchnorm import (
    BatchNormPolicy,
    buffer_key,
    buffer_name,
    is_buffer_key,
    recompute_statistics,
    statistic_names,
)
from ..energy import Energy, data_like
from ..errors import ConfigError
from ..metrics import metric_count, metric_sum
from ..params import Point, distance
from ..path import Bezier, Path, Straight
from ..progress import Task, open_task
from ..seeding import derive_seed
from ..train import Minibatches, Objective, TrainConfig, make_optimizer
from .base import Checkpoint, Outcome, Progress, check_state_fields
from .greedy_dss import MAX_GRID_SIZE

__all__ = ["CurveConfig", "CurveState", "CurveReason", "BezierCurve", "PolyChain", "curve_point", "BN_SAMPLES"]

BN_SAMPLES = 4096
"""INTERPOLATE policy only: at most this many training inputs (the first ones, in batches of the training
batch size) recompute the statistics that ``c`` is fitted to at the end of training."""


class CurveReason:
    """Why a curve method stopped (``Outcome.reason``)."""

    CONNECTED = "connected"
    """The grid maximum along the trained curve is <= tolerance * L0."""
    BARRIER_ABOVE_THRESHOLD = "barrier_above_threshold"
    """The curve was trained for all its steps and its grid maximum is above tolerance * L0."""
    DIVERGED = "diverged"
    """The training objective became NaN or infinite; the curve is checked as it was before that step."""


@dataclass(frozen=True)
class CurveConfig:
    """Settings of the ``bezier`` and ``polychain`` methods; all are recorded in results. L0 is passed to ``run``."""

    steps: int = 2000
    """Training steps of the control point c (stochastic gradient steps on the expected objective)."""
    t_samples: int = 1
    """Values of t ~ U[0, 1] drawn per step; the step's loss is their mean (Garipov et al.: 1 per minibatch)."""
    init_perturbation: float = 0.0
    """c starts at the midpoint of the endpoints (the curve is then the straight segment) plus seeded Gaussian
    noise of this norm relative to the endpoints' distance (0: exactly the midpoint)."""
    tolerance: float = 1.0
    """The path is connected when its grid maximum is <= tolerance * L0 (>= 1)."""
    grid_size: int = 65
    """Points per piece on the checking grid, endpoints included (the Bezier curve has one piece, the chain two)."""
    chunk_steps: int = 500
    """Steps per chunk: each chunk starts a fresh optimizer, draws t and minibatches from a seed derived from
    (seed, chunk) and ends with a checkpoint, so a resumed run repeats an uninterrupted one (0: one chunk)."""
    history_every: int = 100
    """The mean training objective of every this many steps is recorded in objective_history."""
    bead_training: TrainConfig = field(default_factory=TrainConfig, metadata={"flag_prefix": "bead"})
    """How c is trained: optimizer, lr, batch_size, momentum and proximal (a pull towards c's start) are used, a task
    supplies its own; max_steps, check_every, dense_checks and stall_steps do not apply (c trains for steps steps)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed of c's start and of every chunk's t values and minibatches. A run sets it."""

    def __post_init__(self) -> None:
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))
        if not isinstance(self.bead_training, TrainConfig):
            raise ConfigError(f"bead_training must be a TrainConfig, got {type(self.bead_training).__name__}")
        for name in ("steps", "t_samples", "grid_size", "chunk_steps", "history_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1 (training steps of the control point), got {self.steps}; "
                              "for the untrained straight segment use greedy_dss with max_beads=0")
        if self.t_samples < 1:
            raise ConfigError(f"t_samples must be >= 1 (values of t drawn per step), got {self.t_samples}")
        if not (math.isfinite(self.init_perturbation) and self.init_perturbation >= 0):
            raise ConfigError(f"init_perturbation must be a finite number >= 0 (a fraction of the endpoints' "
                              f"distance; 0 starts at the midpoint), got {self.init_perturbation}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(f"tolerance must be >= 1 (connected when max <= tolerance * L0), got {self.tolerance}")
        if not 3 <= self.grid_size <= MAX_GRID_SIZE:
            raise ConfigError(f"grid_size must be between 3 and {MAX_GRID_SIZE:,} points per piece, got "
                              f"{self.grid_size}; certification refines the final path, so the grid need not be fine")
        if self.chunk_steps < 0:
            raise ConfigError(f"chunk_steps must be >= 0 (0: one chunk of all steps), got {self.chunk_steps}")
        if self.history_every < 1:
            raise ConfigError(f"history_every must be >= 1, got {self.history_every}")

    @property
    def chunk(self) -> int:
        """Steps per chunk (``chunk_steps``, or all steps when it is 0)."""
        return self.chunk_steps or self.steps


@dataclass
class CurveState:
    """Bookkeeping that, with the saved path (which holds c), lets a curve run resume (saved after every chunk)."""

    steps_done: int = 0
    history: list[list[float]] = field(default_factory=list)
    """``[step, mean objective of the history_every steps up to it]`` pairs."""
    recent: list[float] = field(default_factory=list)
    """The objective of the last (at most history_every) steps, for the final mean."""
    start_max_energy: float | None = None
    """Grid maximum of the straight segment between the endpoints (c's untrained start), for comparison."""
    energy_evaluations: int = 0
    training_s: float = 0.0
    evaluation_s: float = 0.0
    elapsed_s: float = 0.0
    diverged: bool = False
    finished: bool = False
    outcome: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurveState:
        check_state_fields(cls, data, "curve")
        data = dict(data)
        data["history"] = [[int(s), float(v)] for s, v in data.get("history", [])]
        data["recent"] = [float(v) for v in data.get("recent", [])]
        if data.get("start_max_energy") is not None:
            data["start_max_energy"] = float(data["start_max_energy"])
        return cls(**data)


def curve_point(kind: str, a: Mapping[str, Tensor], c: Mapping[str, Tensor], b: Mapping[str, Tensor],
                t: float) -> Point:
    """``phi(t)`` of curve ``kind`` (``"bezier"`` or ``"polychain"``), differentiable in ``c``.

    Every value is a new tensor (never ``a``'s or ``b``'s own, so a training forward may update the statistics
    it carries in place). Integer buffers are rounded, as on the path.
    """
    t = float(t)
    if kind == "bezier":
        weights = ((1 - t) ** 2, 2 * t * (1 - t), t * t)
    elif t <= 0.5:
        weights = (1 - 2 * t, 2 * t, 0.0)
    else:
        weights = (0.0, 2 - 2 * t, 2 * t - 1)
    out = {}
    for k in a:
        if a[k].is_floating_point() or a[k].is_complex():
            out[k] = weights[0] * a[k] + weights[1] * c[k] + weights[2] * b[k]
        else:
            mixed = weights[0] * a[k].double() + weights[1] * c[k].double() + weights[2] * b[k].double()
            out[k] = mixed.round().to(a[k].dtype)
    return out


class _Curve:
    """What the two methods share; subclasses set ``name``, ``summary`` and the path's shape."""

    trains: ClassVar[bool] = True
    Config: ClassVar[type] = CurveConfig
    State: ClassVar[type] = CurveState
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def make_path(self, a: Point, c: Point, b: Point) -> Path:
        raise NotImplementedError

    def control(self, path: Path) -> Point | None:
        """c from a path of this method's shape, or None if ``path`` does not have that shape."""
        raise NotImplementedError

    def run(self, start: Path, energy: Energy, *, threshold: float, config: CurveConfig,
            objective: Objective | None, state: CurveState | None = None, checkpoint: Checkpoint | None = None,
            progress: Progress | None = None) -> tuple[Path, Outcome]:
        if objective is None:
            raise ConfigError(f"{self.name} trains a control point and needs an objective (the training loss)")
        if not isinstance(config, CurveConfig):
            raise ConfigError(f"{self.name} takes a CurveConfig, got {type(config).__name__}")
        return _Training(self, start, energy, threshold, config, objective, state, checkpoint, progress).run()


class BezierCurve(_Curve):
    """The quadratic Bezier curve ``(1-t)^2 a + 2t(1-t) c + t^2 b`` with a trained control point (see the module)."""

    name: ClassVar[str] = "bezier"
    summary: ClassVar[str] = "quadratic Bezier curve, its control point trained on E_t[loss] (Garipov et al.)"

    def make_path(self, a, c, b):
        return Path([a, b], [Bezier([c])])

    def control(self, path):
        ok = (len(path.beads) == 2 and isinstance(path.pieces[0], Bezier) and len(path.pieces[0].controls) == 1)
        return dict(path.pieces[0].controls[0]) if ok else None


class PolyChain(_Curve):
    """The polygonal chain ``a -> c -> b`` with a trained middle bead (see the module)."""

    name: ClassVar[str] = "polychain"
    summary: ClassVar[str] = "two straight pieces a -> c -> b, c trained on E_t[loss] (Garipov et al.)"

    def make_path(self, a, c, b):
        return Path([a, c, b])

    def control(self, path):
        ok = len(path.beads) == 3 and all(isinstance(p, Straight) for p in path.pieces)
        return dict(path.beads[1]) if ok else None


class _Training:
    """One run of a curve method: c, its optimizer chunks, the final check."""

    def __init__(self, method: _Curve, start: Path, energy: Energy, threshold: float, config: CurveConfig,
                 objective: Objective, state: CurveState | None, checkpoint: Checkpoint | None,
                 progress: Progress | None) -> None:
        self.method, self.kind, self.energy, self.threshold = method, method.name, energy, threshold
        self.config, self.objective, self.checkpoint = config, objective, checkpoint
        self.say = progress or (lambda line: None)
        self.bar = Task()  # the training bar while run() trains (a no-op otherwise)
        self.a, self.b = start.beads[0], start.beads[-1]
        self.state = state or CurveState()
        self.init = self.initial_control()
        if state is None or state.steps_done == 0 and not state.finished:
            if len(start.beads) != 2 or not isinstance(start.pieces[0], Straight):
                raise ConfigError(f"{self.kind} starts from the straight segment between the two endpoints; the "
                                  f"start path has {start.n_beads} bead(s) and pieces "
                                  f"{[p.kind for p in start.pieces]} (to resume, pass the state saved with it)")
            self.c = {k: v.clone() for k, v in self.init.items()}
        else:
            c = method.control(start)
            if c is None:
                raise ConfigError(f"the {self.kind} state does not match the path (it has {start.n_beads} bead(s) and "
                                  f"pieces {[p.kind for p in start.pieces]}): resume with the path saved with it")
            self.c = c
        self.clock, self.elapsed0 = time.perf_counter(), self.state.elapsed_s

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.clock

    def initial_control(self) -> Point:
        """The midpoint of the endpoints, plus seeded noise of norm init_perturbation * |b - a| on the parameters."""
        a, b = self.a, self.b
        mid = curve_point("polychain", a, b, b, 0.25)  # (a + b) / 2, rounded for integer buffers
        scale = self.config.init_perturbation * distance(a, b)
        if scale == 0:
            return mid
        g = torch.Generator(device="cpu").manual_seed(derive_seed(self.config.seed, "curve", "init"))
        keys = [k for k in mid if not is_buffer_key(k)]
        noise = {k: torch.randn(mid[k].shape, generator=g, dtype=torch.float64) for k in keys}
        norm = math.sqrt(sum(float((n**2).sum()) for n in noise.values()))
        for k in keys:
            mid[k] = mid[k] + (scale / norm * noise[k]).to(mid[k].device, mid[k].dtype)
        return mid

    # -- training ----------------------------------------------------------------------------------------------
    def train_chunk(self, chunk: int, until: int) -> None:
        """Train from ``state.steps_done`` to ``until`` (within chunk ``chunk``) with a fresh optimizer."""
        config, state, objective = self.config, self.state, self.objective
        train = config.bead_training
        a = {k: v.detach() for k, v in self.a.items()}
        b = {k: v.detach() for k, v in self.b.items()}
        params = {k: v.detach().clone().requires_grad_(True) for k, v in self.c.items() if not is_buffer_key(k)}
        buffers = {k: v.detach() for k, v in self.c.items() if is_buffer_key(k)}
        origin = {k: v.detach() for k, v in self.init.items() if not is_buffer_key(k)}
        optimizer = make_optimizer(list(params.values()), train)
        batches = Minibatches(objective, next(iter(params.values())),
                              train.batch_size, derive_seed(config.seed, "curve", "chunk", chunk, "batches"))
        ts = torch.Generator(device="cpu").manual_seed(derive_seed(config.seed, "curve", "chunk", chunk, "t"))
        for _ in range(state.steps_done - chunk * config.chunk):  # extending a finished run inside its last chunk
            batches.next()
            torch.rand(config.t_samples, generator=ts, dtype=torch.float64)
        loss_kind, history_every = objective.loss, config.history_every
        while state.steps_done < until:
            x, y = batches.next()
            t_values = torch.rand(config.t_samples, generator=ts, dtype=torch.float64).tolist()
            optimizer.zero_grad(set_to_none=True)
            c = params | buffers
            loss = sum(metric_sum(loss_kind, self.energy.train_forward(curve_point(self.kind, a, c, b, t), x), y)
                       / metric_count(loss_kind, y) for t in t_values) / len(t_values)
            value = float(loss.detach())
            if not math.isfinite(value):
                state.diverged = True
                break
            if train.proximal:
                loss = loss + 0.5 * train.proximal * sum(((p - origin[k]) ** 2).sum() for k, p in params.items())
            loss.backward()
            optimizer.step()
            state.steps_done += 1
            state.recent = [*state.recent[-(history_every - 1):], value] if history_every > 1 else [value]
            if state.steps_done % history_every == 0:
                state.history.append([state.steps_done, sum(state.recent) / len(state.recent)])
                self.bar.update(state.steps_done, info=f"mean objective {state.history[-1][1]:.4g}")
        self.c = {k: (v if is_buffer_key(k) else params[k].detach().clone()) for k, v in self.c.items()}

    def fit_statistics(self, path: Path) -> str | None:
        """INTERPOLATE only: set c's BatchNorm statistics so the path's at t = 1/2 are those recomputed at phi(1/2)."""
        energy = self.energy
        if not energy.has_batchnorm:
            return None
        if energy.batchnorm is not BatchNormPolicy.INTERPOLATE:
            return f"train-mode batch statistics while training; evaluation: {energy.batchnorm.value} policy"
        names = [buffer_key(n) for n in statistic_names(energy.model)]
        mid = {k: v[0] for k, v in path.points(0, [0.5]).items()} if self.kind == "bezier" else dict(self.c)
        call = {(buffer_name(k) if is_buffer_key(k) else k): v for k, v in mid.items() if k not in names}
        ref = next(v for k, v in mid.items() if not is_buffer_key(k))
        inputs = data_like(self.objective.inputs[:BN_SAMPLES], self.objective.inputs[:1], ref)[0]
        size = self.config.bead_training.batch_size or len(inputs)
        stats = recompute_statistics(energy.model, call, [inputs[i : i + size] for i in range(0, len(inputs), size)])
        c, clipped, total = dict(self.c), 0, 0
        for key in names:
            s = stats[buffer_name(key)].to(c[key].dtype)
            if self.kind == "bezier":
                s = 2 * s - 0.5 * (self.a[key] + self.b[key])
                if key.endswith("running_var"):
                    clipped, total = clipped + int((s < 0).sum()), total + s.numel()
                    s = s.clamp_min(0)
            c[key] = s
        self.c = c
        note = f"; {clipped} of {total} variances clipped at 0 in c" if self.kind == "bezier" else ""
        return (f"train-mode batch statistics while training; c's statistics fitted so the path's at t=0.5 are those "
                f"recomputed at phi(0.5) from {len(inputs)} training inputs (interpolate policy){note}")

    # -- the run -----------------------------------------------------------------------------------------------
    def grid(self, path: Path) -> tuple[list[float], list[float]]:
        """Grid maximum and where it sits (t within the piece) for every piece."""
        tick, before = time.perf_counter(), self.energy.n_evaluations
        ts = torch.linspace(0.0, 1.0, self.config.grid_size, dtype=torch.float64)
        maxima, where = [], []
        for i in range(path.n_pieces):
            values = path.energies(i, ts, self.energy)
            k = int(torch.argmax(values))
            maxima.append(float(values[k]))
            where.append(float(ts[k]))
        self.state.energy_evaluations += self.energy.n_evaluations - before
        self.state.evaluation_s += time.perf_counter() - tick
        return maxima, where

    def run(self) -> tuple[Path, Outcome]:
        state, config, say = self.state, self.config, self.say
        if state.finished and state.outcome is not None and (state.steps_done >= config.steps or state.diverged):
            return self.method.make_path(self.a, self.c, self.b), Outcome.from_dict(state.outcome)
        state.finished, state.outcome = False, None
        if state.start_max_energy is None:
            state.start_max_energy = max(self.grid(Path([self.a, self.b]))[0])
        n_params = sum(v.numel() for k, v in self.c.items() if not is_buffer_key(k))
        say(f"{self.kind}: training c ({n_params:,} parameters) for {config.steps} steps, {config.t_samples} t "
            f"sample(s) per step, from step {state.steps_done}; the straight segment's grid maximum is "
            f"{state.start_max_energy:.4g} (L0 {self.threshold:.4g})")
        self.bar = open_task(self.say, f"{self.kind}: training c", total=config.steps)
        self.bar.update(state.steps_done)
        while state.steps_done < config.steps and not state.diverged:
            chunk = state.steps_done // config.chunk
            tick = time.perf_counter()
            self.train_chunk(chunk, min((chunk + 1) * config.chunk, config.steps))
            state.training_s += time.perf_counter() - tick
            state.elapsed_s = self.elapsed()
            mean = sum(state.recent) / len(state.recent) if state.recent else float("nan")
            say(f"{self.kind}: step {state.steps_done}/{config.steps}, mean objective {mean:.4g} over the last "
                f"{len(state.recent)} step(s)")
            if state.steps_done < config.steps and not state.diverged and self.checkpoint is not None:
                self.checkpoint(self.method.make_path(self.a, self.c, self.b), state)
        self.bar.close()
        return self.finish(n_params)

    def finish(self, n_params: int) -> tuple[Path, Outcome]:
        state, config, threshold = self.state, self.config, self.threshold
        path = self.method.make_path(self.a, self.c, self.b)
        batchnorm = self.fit_statistics(path)
        path = self.method.make_path(self.a, self.c, self.b)
        maxima, where = self.grid(path)
        worst = max(range(len(maxima)), key=lambda i: maxima[i])
        worst_max, n = maxima[worst], path.n_pieces
        t_max = (worst + where[worst]) / n
        level = config.tolerance * threshold
        at = f"max {worst_max:.4g} at t={t_max:.3g}" + (f" (piece {worst})" if n > 1 else "")
        if state.diverged:
            reason = CurveReason.DIVERGED
            message = (f"the training objective became non-finite at step {state.steps_done + 1}; the curve before it "
                       f"has grid {at}, threshold {level:.4g}")
        elif worst_max <= level:
            reason = CurveReason.CONNECTED
            message = (f"the trained {self.kind} stays below tolerance x L0 = {level:.4g} on a "
                       f"{config.grid_size}-point grid per piece ({at}; straight segment {state.start_max_energy:.4g})")
        else:
            reason = CurveReason.BARRIER_ABOVE_THRESHOLD
            message = (f"after {state.steps_done} steps the trained {self.kind} has grid {at} > tolerance x L0 = "
                       f"{level:.4g} (straight segment {state.start_max_energy:.4g})")
        self.say(message)
        state.elapsed_s = self.elapsed()
        final = sum(state.recent) / len(state.recent) if state.recent else None
        outcome = Outcome(
            connected=reason == CurveReason.CONNECTED, reason=reason, message=message, worst_barrier=worst_max,
            worst_segment=worst, elapsed_s=state.elapsed_s,
            extras={"curve": self.kind, "trained_points": 1, "trained_parameters": n_params,
                    "steps": state.steps_done, "t_samples": config.t_samples,
                    "final_mean_objective": final, "objective_history": state.history,
                    "energy_evaluations": state.energy_evaluations, "grid_size": config.grid_size,
                    "max_interpolated_energy": worst_max, "segment_max_energy": maxima, "max_energy_t": t_max,
                    "straight_max_energy": state.start_max_energy, "batchnorm_handling": batchnorm,
                    "bead_training_time_s": state.training_s, "segment_evaluation_time_s": state.evaluation_s})
        state.finished, state.outcome = True, outcome.to_dict()
        if self.checkpoint is not None:
            self.checkpoint(path, state)
        return path, outcome

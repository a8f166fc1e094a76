"""Breadth-first string evolution (Freeman & Bruna, Appendix A, steps 0-3).

Greedy DSS trains one bead at a time, to the final level at once. Appendix A's alternative evolves the
whole string together: every model on it is trained at the same time, their loss is kept about equal at
an instantaneous level ``L0(t)`` that is lowered towards ``L0``, and a model is inserted wherever the
interpolated loss between neighbours exceeds ``L0(t)``. Its selling point is that a disconnection shows
up early, as a high interpolated loss that *persists* while the beads train, instead of as an
exhausted depth budget at the end.

Here (every choice a setting of :class:`StringEvolutionConfig`; docs/appendix_a.md has the reasoning):

* the endpoints are the two given models and stay fixed (``connect`` checked them);
* the level starts at the initial segment's barrier (``level_start``) and, each time the whole string
  holds at the current level, drops to ``max(L0, level_decay * level)``;
* a round trains every bead above ``alpha * level`` towards it, all in one batched step per iteration
  (``torch.func.vmap`` of ``functional_call`` over stacked parameters, or a loop over beads where vmap
  cannot be used: ``batching``), then evaluates the segments and inserts a bead at ``t*`` of each one
  above ``tolerance * level``;
* a segment (with the segments split from it) that stays above the level for ``persistence``
  consecutive rounds is reported as a disconnection, reason ``persistent_barrier``.

The state is saved after every round (the optimizer restarts each round and each round's minibatches
are drawn from a seed derived from the round's number), so a resumed run gives the same path bit for
bit. Registered as the path method ``string_evolution``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..energy import Energy
from ..errors import ConfigError
from ..params import interpolate, stack_points
from ..path import Path, Straight
from ..progress import open_task
from ..seeding import derive_seed
from ..train import (
    Objective,
    TrainConfig,
)
from .base import Checkpoint, Outcome, Progress, check_state_fields
from .constrained_dss import as_enum
from .greedy_dss import MAX_GRID_SIZE, TStar, choose_tstar
from .string_training import VMAP_MIN_BEADS, Batching, train_string

__all__ = ["LevelStart", "Batching", "EvolutionReason", "StringEvolutionConfig", "EvolutionSegment",
           "StringEvolutionState", "StringEvolution", "train_string", "VMAP_MIN_BEADS"]


class LevelStart(str, Enum):
    """Where the instantaneous level L0(t) starts."""

    BARRIER = "barrier"
    """At the initial segment's grid maximum (never below L0): the string is lowered level by level."""
    THRESHOLD = "threshold"
    """At L0 itself: no lowering, a breadth-first DSS whose beads all train together."""


class EvolutionReason(str, Enum):
    """Why string evolution stopped."""

    CONNECTED = "connected"
    """The level reached L0 and every segment's grid maximum is <= tolerance * L0."""
    PERSISTENT_BARRIER = "persistent_barrier"
    """A segment stayed above tolerance * level for `persistence` consecutive rounds while the beads trained."""
    BEAD_BUDGET_EXHAUSTED = "bead_budget_exhausted"
    """Segments above the level need beads but the path would exceed max_beads."""
    ROUND_BUDGET_EXHAUSTED = "round_budget_exhausted"
    """max_rounds rounds were run without connecting."""
    TIME_EXHAUSTED = "time_exhausted"
    """The wall-time budget max_time_s ran out."""


@dataclass(frozen=True)
class StringEvolutionConfig:
    """Every setting of string evolution; all are recorded in results. The final level L0 is passed to ``run``."""

    alpha: float = 0.8
    """Beads above alpha * level are trained towards it, so all beads sit at about the same loss (as DSS's alpha)."""
    tolerance: float = 1.0
    """A segment holds at a level when its grid maximum is <= tolerance * level (>= 1)."""
    grid_size: int = 33
    """Points per segment on the interpolation grid, endpoints included."""
    tstar: TStar = TStar.ARGMAX
    """Where a bead is inserted on a segment above the level: at the maximum (argmax) or halfway (midpoint)."""
    tstar_margin: float = 0.05
    """ARGMAX keeps t* within [margin, 1 - margin]."""
    flat_tolerance: float = 1e-3
    """ARGMAX falls back to 0.5 when the profile's range is <= flat_tolerance * level."""
    level_start: LevelStart = LevelStart.BARRIER
    """Where the instantaneous level L0(t) starts (see LevelStart)."""
    level_decay: float = 0.5
    """Once the string holds at a level, the next is max(L0, level_decay * level); 0 jumps to L0 at once."""
    persistence: int = 6
    """Report a disconnection when a segment (or the segments split from it) stays above the level for this many
    consecutive rounds at one level (K). Connected cubic pairs reached 3 at the default level schedule (8 seeds at
    L0=0.05), hence 6. Starting at L0 (level_start=threshold) needs K above greedy DSS's depth (6 on one of them)."""
    max_rounds: int = 200
    """Most rounds (train, evaluate, insert)."""
    max_beads: int = 64
    """Most intermediate beads on the path."""
    max_time_s: float | None = None
    """Wall-time budget in seconds, summed over resumed sessions (None: unlimited)."""
    batching: Batching = Batching.AUTO
    """How a round's beads are trained together (see Batching)."""
    bead_training: TrainConfig = field(default_factory=TrainConfig, metadata={"flag_prefix": "bead"})
    """How beads are trained; max_steps is the cap per bead per round. A task supplies its own defaults."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed; round r draws its minibatches from a seed derived from (seed, r). A run sets it."""

    def __post_init__(self) -> None:
        for name, cls in (("tstar", TStar), ("level_start", LevelStart), ("batching", Batching)):
            object.__setattr__(self, name, as_enum(cls, getattr(self, name), name))
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(f"tolerance must be >= 1, got {self.tolerance}")
        if not 3 <= self.grid_size <= MAX_GRID_SIZE:
            raise ConfigError(f"grid_size must be between 3 and {MAX_GRID_SIZE:,}, got {self.grid_size}")
        if not 0 <= self.tstar_margin < 0.5:
            raise ConfigError(f"tstar_margin must be in [0, 0.5), got {self.tstar_margin}")
        if self.flat_tolerance < 0:
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if not 0 <= self.level_decay < 1:
            raise ConfigError(f"level_decay must be in [0, 1) so the level goes down, got {self.level_decay}")
        if self.persistence < 1 or self.max_rounds < 1 or self.max_beads < 0:
            raise ConfigError(f"persistence and max_rounds must be >= 1 and max_beads >= 0, got {self.persistence}, "
                              f"{self.max_rounds} and {self.max_beads}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s must be positive or None, got {self.max_time_s}")


@dataclass(frozen=True)
class EvolutionSegment:
    """One straight piece: its grid maximum (None: to evaluate) and for how many rounds it has been above."""

    max_energy: float | None = None
    argmax_t: float | None = None
    persistence: int = 0
    """Consecutive rounds at this level that this segment, or the one it was split from, was above the level."""


@dataclass
class StringEvolutionState:
    """Bookkeeping that, together with the Path, lets a run resume exactly (saved after every round)."""

    segments: list[EvolutionSegment] = field(default_factory=list)
    level: float | None = None
    round: int = 0
    beads_inserted: int = 0
    bead_births: list[int] | None = None
    """Aligned with ``path.beads``: 0 for the endpoints, k for the k-th inserted bead."""
    bead_log: list[dict[str, Any]] = field(default_factory=list)
    round_log: list[dict[str, Any]] = field(default_factory=list)
    bead_steps: int = 0
    """Training steps summed over beads and rounds."""
    batchings: list[str] = field(default_factory=list)
    """The batchings rounds used (vmap for several beads, loop for a single one under AUTO)."""
    elapsed_s: float = 0.0
    bead_training_s: float = 0.0
    segment_evaluation_s: float = 0.0
    finished: bool = False
    outcome: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StringEvolutionState:
        check_state_fields(cls, data, "string evolution")
        data = dict(data)
        data["segments"] = [EvolutionSegment(**{k: (float(v) if k != "persistence" and v is not None else v)
                                                for k, v in s.items()}) for s in data.get("segments", [])]
        return cls(**data)


# -- the method ---------------------------------------------------------------------------------------------
class StringEvolution:
    """Breadth-first string evolution as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "string_evolution"
    summary: ClassVar[str] = "breadth-first string evolution at a falling level, all beads trained together (App. A)"
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = StringEvolutionConfig
    State: ClassVar[type] = StringEvolutionState

    def run(self, start: Path, energy: Energy, *, threshold: float, config: StringEvolutionConfig,
            objective: Objective | None, state: StringEvolutionState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        if objective is None:
            raise ConfigError("string_evolution trains beads and needs an objective (the training loss)")
        return _Evolution(start, energy, threshold, config, objective, state, checkpoint, progress).run()


class _Evolution:
    """One run of string evolution: the path, its state and the round loop."""

    def __init__(self, path, energy, threshold, config, objective, state, checkpoint, progress) -> None:
        if any(not isinstance(p, Straight) for p in path.pieces):
            raise ConfigError("string_evolution works on strings of straight segments; the start path has curves")
        self.path, self.energy, self.threshold, self.config = path, energy, threshold, config
        self.objective, self.checkpoint = objective, checkpoint
        self.progress, self.say = progress, progress or (lambda message: None)
        self.state = state = state or StringEvolutionState()
        if state.bead_births is None:
            state.bead_births = [0] * len(path.beads)
        if not state.segments:
            state.segments = [EvolutionSegment() for _ in path.pieces]
        if len(state.bead_births) != len(path.beads) or len(state.segments) != path.n_pieces:
            raise ConfigError("the string evolution state does not match the path: resume with the state saved "
                              "together with this path")
        self.profiles: dict[int, tuple[Tensor, Tensor]] = {}
        self.clock, self.elapsed0 = time.perf_counter(), state.elapsed_s

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.clock

    def evaluate(self, i: int) -> None:
        tick = time.perf_counter()
        ts = torch.linspace(0.0, 1.0, self.config.grid_size, dtype=torch.float64)
        values = self.path.energies(i, ts, self.energy)
        k = int(torch.argmax(values))
        seg = self.state.segments[i]
        self.state.segments[i] = EvolutionSegment(float(values[k]), float(ts[k]), seg.persistence)
        self.profiles[i] = (ts, values)
        self.state.segment_evaluation_s += time.perf_counter() - tick

    def train_round(self, level: float) -> dict[str, Any]:
        """Train every interior bead above alpha * level towards it, together; mark the segments they touch."""
        path, state, target = self.path, self.state, self.config.alpha * level
        interior = list(range(1, len(path.beads) - 1))
        if not interior:
            return {"trained": 0, "steps": 0}
        energies = self.energy.evaluate(stack_points([path.beads[i] for i in interior])).tolist()
        active = [i for i, e in zip(interior, energies) if e > target]
        if not active:
            return {"trained": 0, "steps": 0}
        tick = time.perf_counter()
        with open_task(self.progress, f"round {state.round}: {len(active)} bead(s)",
                       total=self.config.bead_training.max_steps) as bar:
            def on_check(step: int, value: float) -> None:
                bar.update(step, info=f"highest bead energy {value:.4g} (target {target:.4g})")

            beads, statuses, used = train_string(
                [path.beads[i] for i in active], energy=self.energy, objective=self.objective, target=target,
                config=self.config.bead_training, seed=derive_seed(self.config.seed, "round", state.round),
                batching=self.config.batching, on_check=on_check)
        state.bead_training_s += time.perf_counter() - tick
        if used.value not in state.batchings:
            state.batchings = sorted([*state.batchings, used.value])
        for i, bead in zip(active, beads):
            path.beads[i] = bead
            for j in (i - 1, i):
                state.segments[j] = EvolutionSegment(persistence=state.segments[j].persistence)
        state.bead_steps += sum(s.steps for s in statuses)
        return {"trained": len(active), "steps": max(s.steps for s in statuses), "batching": used.value,
                "reached": sum(s.reached for s in statuses),
                "stuck": [s.reason for s in statuses if not s.reached]}

    def run(self) -> tuple[Path, Outcome]:
        state, config, threshold = self.state, self.config, self.threshold
        if state.finished and state.outcome is not None:
            return self.path, Outcome.from_dict(state.outcome)
        accept = config.tolerance
        if state.level is None:  # a fresh start: the level begins at the string's own barrier (or at L0)
            for i, seg in enumerate(state.segments):
                if seg.max_energy is None:
                    self.evaluate(i)
            barrier = max(s.max_energy for s in state.segments)
            state.level = max(threshold, barrier) if config.level_start is LevelStart.BARRIER else threshold
        reason, message = None, ""
        bar = open_task(self.progress, "string evolution: rounds", total=config.max_rounds)
        bar.update(state.round)
        while reason is None:
            level = state.level
            entry: dict[str, Any] = {"round": state.round, "level": level, **self.train_round(level)}
            for i, seg in enumerate(state.segments):
                if seg.max_energy is None:
                    self.evaluate(i)
            failing = [i for i, s in enumerate(state.segments) if s.max_energy > accept * level]
            entry["max_interpolated_energy"] = max(s.max_energy for s in state.segments)
            entry["failing"] = failing
            if not failing:
                if level <= threshold:
                    reason = EvolutionReason.CONNECTED
                    message = f"the level reached L0 and every segment stays below {accept * threshold:.4g}"
                else:
                    state.level = max(threshold, config.level_decay * level)
                    state.segments = [EvolutionSegment(s.max_energy, s.argmax_t, 0) for s in state.segments]
                    self.say(f"round {state.round}: the string holds at level {level:.4g}; lowering to "
                             f"{state.level:.4g}")
            else:
                reason, message = self.insert(failing, level, entry)
            state.round_log.append(entry)
            state.round += 1
            bar.update(state.round, info=f"max energy {entry['max_interpolated_energy']:.4g} at level {level:.4g} "
                                         f"(target {accept * threshold:.4g})")
            if reason is None and state.round >= config.max_rounds:
                reason = EvolutionReason.ROUND_BUDGET_EXHAUSTED
                message = f"{config.max_rounds} rounds (max_rounds) ran without connecting; level {state.level:.4g}"
            if reason is None and config.max_time_s is not None and self.elapsed() >= config.max_time_s:
                reason = EvolutionReason.TIME_EXHAUSTED
                message = f"the time budget max_time_s={config.max_time_s:g} is spent at level {state.level:.4g}"
            state.elapsed_s = self.elapsed()
            if reason is None and self.checkpoint is not None:
                self.checkpoint(self.path, state)
        bar.close()
        return self.finish(reason, message)

    def insert(self, failing: list[int], level: float, entry: dict[str, Any]):
        """Raise the persistence of segments above the level and split each at t*; or say why the run stops."""
        state, config, path = self.state, self.config, self.path
        for i in failing:
            state.segments[i] = EvolutionSegment(state.segments[i].max_energy, state.segments[i].argmax_t,
                                                 state.segments[i].persistence + 1)
        worst = max(failing, key=lambda i: (state.segments[i].persistence, state.segments[i].max_energy))
        seg = state.segments[worst]
        where = f"segment {worst} has barrier {seg.max_energy:.4g} > {config.tolerance * level:.4g}"
        self.say(f"round {state.round} at level {level:.4g}: {len(failing)} segment(s) above the level; {where} "
                 f"for {seg.persistence} round(s)")
        if seg.persistence >= config.persistence:
            return EvolutionReason.PERSISTENT_BARRIER, (
                f"{where} (level {level:.4g}, L0 {self.threshold:.4g}) and stayed above the level for "
                f"{seg.persistence} consecutive rounds (persistence={config.persistence}) while the beads trained")
        if path.n_beads + len(failing) > config.max_beads:
            return EvolutionReason.BEAD_BUDGET_EXHAUSTED, (
                f"{where}; {len(failing)} segment(s) need beads but the path has {path.n_beads} of "
                f"max_beads={config.max_beads}")
        for i in sorted(failing, reverse=True):  # right to left: indices to the left stay valid
            if i not in self.profiles:
                self.evaluate(i)
            ts, values = self.profiles.pop(i)
            t_star = choose_tstar(ts, values, config, level)
            bead = interpolate(path.beads[i], path.beads[i + 1], t_star)
            state.beads_inserted += 1
            state.bead_log.append({"round": state.round, "level": level, "segment": i, "t_star": t_star,
                                   "barrier": state.segments[i].max_energy,
                                   "persistence": state.segments[i].persistence,
                                   "start_energy": self.energy(bead)})
            path.insert_bead(i, bead)
            state.bead_births.insert(i + 1, state.beads_inserted)
            kept = state.segments[i].persistence
            state.segments[i : i + 1] = [EvolutionSegment(persistence=kept), EvolutionSegment(persistence=kept)]
        self.profiles.clear()
        entry["inserted"] = len(failing)
        return None, ""

    def finish(self, reason: EvolutionReason, message: str) -> tuple[Path, Outcome]:
        state, path = self.state, self.path
        for i, seg in enumerate(state.segments):
            if seg.max_energy is None:
                self.evaluate(i)
        worst = max(range(len(state.segments)), key=lambda j: state.segments[j].max_energy)
        worst_max = state.segments[worst].max_energy
        outcome = Outcome(
            connected=reason is EvolutionReason.CONNECTED, reason=reason.value, message=message,
            worst_barrier=worst_max, worst_segment=worst, elapsed_s=self.elapsed(),
            extras={"beads_trained": state.beads_inserted, "rounds": state.round, "level": state.level,
                    "levels": sorted({e["level"] for e in state.round_log}, reverse=True),
                    "max_persistence": max((e.get("persistence", 0) for e in state.bead_log), default=0),
                    "grid_size": self.config.grid_size, "max_interpolated_energy": worst_max,
                    "segment_max_energy": [s.max_energy for s in state.segments], "bead_steps": state.bead_steps,
                    "batching": state.batchings, "bead_log": state.bead_log, "round_log": state.round_log,
                    "bead_births": state.bead_births, "bead_training_time_s": state.bead_training_s,
                    "segment_evaluation_time_s": state.segment_evaluation_s})
        state.elapsed_s, state.finished, state.outcome = outcome.elapsed_s, True, outcome.to_dict()
        if self.checkpoint is not None:
            self.checkpoint(path, state)
        return path, outcome

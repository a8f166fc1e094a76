"""Greedy Dynamic String Sampling (Freeman & Bruna, Algorithm 1).

Starting from the segment between two endpoints whose energies are at most
``L0``, repeatedly take an unchecked segment, evaluate the energy on a grid of
``grid_size`` points along it, and accept it if the maximum is at most
``tolerance * L0``. Otherwise start a new bead at ``t*`` on the segment, train
it to ``alpha * L0`` and replace the segment by the two halves. Depth-first
order (the paper's recursion) always takes the leftmost unchecked segment;
breadth-first order takes the shallowest one, so the string is refined round
by round.

All state lives in the :class:`~modeconnect.path.Path` (beads and segment
records) and a small :class:`DSSState`, both handed to ``checkpoint`` after
every new bead, so an interrupted run resumes exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import torch

from ..energy import Energy
from ..errors import ConfigError, ThresholdError
from ..params import interpolate
from ..path import Path
from ..seeding import derive_seed
from ..train import Objective, TrainConfig, train_to_target

__all__ = ["TStar", "Order", "Reason", "DSSConfig", "DSSState", "DSSStatus", "choose_tstar", "greedy_dss"]


class TStar(str, Enum):
    """Where on a failing segment a new bead starts."""

    ARGMAX = "argmax"
    """The grid argmax of the interpolated energy within [margin, 1 - margin]; 0.5 if the profile is flat."""
    MIDPOINT = "midpoint"
    """Always t = 0.5 (slower but more stable, per the paper)."""


class Order(str, Enum):
    """Which unchecked segment is processed next."""

    DEPTH_FIRST = "depth_first"
    """The leftmost unchecked segment: the paper's recursion."""
    BREADTH_FIRST = "breadth_first"
    """The shallowest unchecked segment (leftmost among equals): refine the string round by round."""


class Reason(str, Enum):
    """Why greedy DSS stopped."""

    CONNECTED = "connected"
    """Every segment's grid maximum is at most tolerance * threshold."""
    BEAD_NOT_TRAINED = "bead_not_trained"
    """A new bead could not be trained to alpha * threshold within its step cap."""
    DEPTH_EXHAUSTED = "depth_exhausted"
    """A failing segment is already at max_depth."""
    BEAD_BUDGET_EXHAUSTED = "bead_budget_exhausted"
    """A failing segment needs a bead but the path already has max_beads."""
    TIME_EXHAUSTED = "time_exhausted"
    """The wall-time budget max_time_s ran out."""


def _enum(cls, value, name):
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(m.value for m in cls)}") from None


@dataclass(frozen=True)
class DSSConfig:
    """Every setting of greedy DSS; all are recorded in results."""

    threshold: float
    """L0: the energy level whose level set the path must stay in."""
    alpha: float = 0.8
    """New beads are trained to alpha * L0 (paper: alpha < 1 aids convergence; 0.8 connected every cubic
    pair we tried at L0=0.05 where 0.5 drove beads into one basin and hit the depth cap)."""
    tolerance: float = 1.0
    """A segment is accepted when its grid maximum is <= tolerance * L0 (>= 1)."""
    grid_size: int = 33
    """Points per segment on the acceptance grid, endpoints included."""
    tstar: TStar = TStar.ARGMAX
    """The t* rule (see :class:`TStar`)."""
    tstar_margin: float = 0.05
    """ARGMAX keeps t* within [margin, 1 - margin], so a bead never duplicates an endpoint."""
    flat_tolerance: float = 1e-3
    """ARGMAX falls back to 0.5 when the profile's range is <= flat_tolerance * L0."""
    order: Order = Order.DEPTH_FIRST
    """Which unchecked segment is processed next (see :class:`Order`)."""
    max_depth: int = 10
    """Most bead insertions nested in one original segment."""
    max_beads: int = 64
    """Most intermediate beads on the path."""
    max_time_s: float | None = None
    """Wall-time budget in seconds, summed over resumed sessions (None: unlimited)."""
    bead_training: TrainConfig = field(default_factory=TrainConfig)
    """How beads are trained (optimizer, lr, batch size, step cap)."""
    seed: int = 0
    """Base seed; bead k is trained with a seed derived from (seed, k)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tstar", _enum(TStar, self.tstar, "tstar"))
        object.__setattr__(self, "order", _enum(Order, self.order, "order"))
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError(f"threshold must be a positive finite number, got {self.threshold}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(
                f"tolerance must be >= 1 (segments pass when max <= tolerance * L0), got {self.tolerance}"
            )
        if self.grid_size < 3:
            raise ConfigError(f"grid_size must be >= 3 (both endpoints and one interior point), got {self.grid_size}")
        if not 0 <= self.tstar_margin < 0.5:
            raise ConfigError(f"tstar_margin must be in [0, 0.5), got {self.tstar_margin}")
        if self.flat_tolerance < 0:
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if self.max_depth < 0 or self.max_beads < 0:
            raise ConfigError(f"max_depth and max_beads must be >= 0, got {self.max_depth} and {self.max_beads}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s must be positive or None, got {self.max_time_s}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["tstar"], out["order"] = self.tstar.value, self.order.value
        out["bead_training"] = self.bead_training.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DSSConfig:
        return cls(**data)


@dataclass
class DSSState:
    """Bookkeeping that, together with the Path, lets a run resume exactly."""

    beads_trained: int = 0
    elapsed_s: float = 0.0
    bead_log: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    status: dict[str, Any] | None = None
    bead_births: list[int] | None = None
    bead_training_s: float = 0.0
    """Wall time spent training beads (their periodic energy checks included), summed over sessions."""
    segment_evaluation_s: float = 0.0
    """Wall time spent evaluating segment grids, summed over sessions."""
    """Aligned with ``path.beads``: 0 for the endpoints, k for the k-th trained bead. Beads are only ever
    inserted, so the string after stage s is the beads with birth <= s, in path order (the DSS snapshots)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DSSStatus:
    """How greedy DSS ended."""

    connected: bool
    reason: Reason
    message: str
    worst_barrier: float | None
    """Largest grid maximum over all segments of the final path."""
    worst_segment: int | None
    beads_trained: int
    elapsed_s: float
    endpoint_energies: list[float]
    """Energies of endpoint A and endpoint B (both checked to be finite and <= threshold)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason"] = self.reason.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DSSStatus:
        return cls(**{**data, "reason": Reason(data["reason"])})


def choose_tstar(ts: torch.Tensor, values: torch.Tensor, config: DSSConfig) -> float:
    """Apply the configured t* rule to a segment's grid profile.

    >>> ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    >>> cfg = DSSConfig(threshold=1.0)
    >>> choose_tstar(ts, -(ts - 0.3) ** 2, cfg)
    0.3
    >>> choose_tstar(ts, torch.zeros(11, dtype=torch.float64), cfg)   # flat profile
    0.5
    >>> choose_tstar(ts, ts, cfg)                                      # kept off the endpoint
    0.9
    """
    if config.tstar is TStar.MIDPOINT:
        return 0.5
    inside = (ts >= config.tstar_margin - 1e-12) & (ts <= 1 - config.tstar_margin + 1e-12)
    inside[0] = inside[-1] = False
    if not bool(inside.any()):
        return 0.5
    cand_t, cand_v = ts[inside], values[inside]
    finite = cand_v[torch.isfinite(cand_v)]
    all_finite = finite.numel() == cand_v.numel()
    if all_finite and float(finite.max() - finite.min()) <= config.flat_tolerance * config.threshold:
        return 0.5
    return round(float(cand_t[int(torch.argmax(cand_v))]), 12)


def _next_segment(path: Path, order: Order) -> int | None:
    pending = [i for i, s in enumerate(path.segments) if not s.evaluated]
    if not pending:
        return None
    if order is Order.DEPTH_FIRST:
        return pending[0]
    return min(pending, key=lambda i: (path.segments[i].depth, i))


def check_endpoints(path: Path, energy: Energy, threshold: float) -> list[float]:
    """Energies of both endpoints; raise if non-finite or above the threshold."""
    out = []
    for name, bead in (("endpoint A", path.beads[0]), ("endpoint B", path.beads[-1])):
        energy.check_point(bead, name)
        value = energy.require_finite(energy(bead), name)
        if value > threshold:
            raise ThresholdError(
                f"{name} has energy {value:.6g}, above the threshold {threshold:.6g}: a path inside the level set "
                "cannot start there; train the endpoint further or raise the threshold"
            )
        out.append(value)
    return out


def greedy_dss(
    path: Path,
    energy: Energy,
    objective: Objective,
    config: DSSConfig,
    *,
    state: DSSState | None = None,
    checkpoint: Callable[[Path, DSSState], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, DSSStatus]:
    """Run greedy DSS on ``path`` (modified in place and returned).

    Pass a two-bead path to start, or a path and ``state`` saved by ``checkpoint`` to resume.
    ``checkpoint(path, state)`` runs after every new bead and once at the end.
    """
    say = progress or (lambda message: None)
    state = state or DSSState()
    if state.bead_births is None:  # a fresh start: every bead already on the path belongs to stage 0
        state.bead_births = [0] * len(path.beads)
    if len(state.bead_births) != len(path.beads):
        raise ValueError(f"the DSS state records {len(state.bead_births)} bead births for a path of "
                         f"{len(path.beads)} beads: resume with the state saved together with this path")
    if state.finished and state.status is not None:
        return path, DSSStatus.from_dict(state.status)
    endpoint_energies = check_endpoints(path, energy, config.threshold)
    accept = config.tolerance * config.threshold
    target = config.alpha * config.threshold
    clock, elapsed0 = time.perf_counter(), state.elapsed_s

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - clock

    reason, message = Reason.CONNECTED, "every segment stays below tolerance * threshold"
    while (i := _next_segment(path, config.order)) is not None:
        tick = time.perf_counter()
        ts, values = path.evaluate_segment(i, energy, config.grid_size)
        state.segment_evaluation_s += time.perf_counter() - tick
        seg = path.segments[i]
        if seg.max_energy <= accept:
            say(f"segment {i} (depth {seg.depth}) ok: max {seg.max_energy:.4g} <= {accept:.4g}")
            continue
        where = f"segment {i} (depth {seg.depth}) has barrier {seg.max_energy:.4g} > {accept:.4g}"
        if seg.depth >= config.max_depth:
            reason, message = Reason.DEPTH_EXHAUSTED, f"{where} at the depth cap max_depth={config.max_depth}"
            break
        if path.n_beads >= config.max_beads:
            reason = Reason.BEAD_BUDGET_EXHAUSTED
            message = f"{where} but the path already has max_beads={config.max_beads}"
            break
        if config.max_time_s is not None and elapsed() >= config.max_time_s:
            reason = Reason.TIME_EXHAUSTED
            message = f"{where} and the time budget max_time_s={config.max_time_s:g} is spent"
            break
        t_star = choose_tstar(ts, values, config)
        start = interpolate(path.beads[i], path.beads[i + 1], t_star)
        bead_seed = derive_seed(config.seed, "bead", state.beads_trained)
        tick = time.perf_counter()
        bead, train = train_to_target(start, energy=energy, objective=objective, target=target,
                                      config=config.bead_training, seed=bead_seed)
        state.bead_training_s += time.perf_counter() - tick
        state.beads_trained += 1
        state.bead_log.append({"segment": i, "depth": seg.depth + 1, "t_star": t_star, "barrier": seg.max_energy,
                               "start_energy": energy(start),
                               **{f"train_{k}": v for k, v in train.to_dict().items()}})
        if not train.reached:
            reason = Reason.BEAD_NOT_TRAINED
            message = (f"{where}; the bead started at t*={t_star:.3g} reached energy {train.final_energy:.4g} after "
                       f"{train.steps} steps ({train.reason}), target alpha*L0={target:.4g}")
            break
        path.insert_bead(i, bead)
        state.bead_births.insert(i + 1, state.beads_trained)
        say(f"{where} -> bead {state.beads_trained} at t*={t_star:.3g} trained to {train.final_energy:.4g} "
            f"in {train.steps} steps ({path.n_beads} beads)")
        state.elapsed_s = elapsed()
        if checkpoint is not None:
            checkpoint(path, state)

    if reason is not Reason.CONNECTED:  # complete the picture: evaluate what is left unchecked
        tick = time.perf_counter()
        while (j := _next_segment(path, Order.DEPTH_FIRST)) is not None:
            path.evaluate_segment(j, energy, config.grid_size)
        state.segment_evaluation_s += time.perf_counter() - tick
    worst = max(range(len(path.segments)), key=lambda j: path.segments[j].max_energy)
    status = DSSStatus(connected=reason is Reason.CONNECTED, reason=reason, message=message,
                       worst_barrier=path.segments[worst].max_energy, worst_segment=worst,
                       beads_trained=state.beads_trained, elapsed_s=elapsed(),
                       endpoint_energies=endpoint_energies)
    state.elapsed_s, state.finished, state.status = status.elapsed_s, True, status.to_dict()
    if checkpoint is not None:
        checkpoint(path, state)
    return path, status

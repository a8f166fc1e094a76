"""Greedy Dynamic String Sampling (Freeman & Bruna, Algorithm 1).

Starting from the segment between two endpoints whose energies are at most
``L0``, repeatedly take an unchecked segment, evaluate the energy on a grid of
``grid_size`` points along it, and accept it if the maximum is at most
``tolerance * L0``. Otherwise start a new bead at ``t*`` on the segment, train
it to ``alpha * L0`` and replace the segment by the two halves. Depth-first
order (the paper's recursion) always takes the leftmost unchecked segment;
breadth-first order takes the shallowest one, so the string is refined round
by round.

The path holds the beads; the per-segment records (depth, grid maximum and
where it sits) and the bead log live in :class:`DSSState`. Both are handed to
``checkpoint`` after every new bead, so an interrupted run resumes exactly
where it stopped. Registered as the path method ``greedy_dss``.

How a single bead is trained (constraint, restart when stuck, the geometry the
log records) is in :mod:`~modeconnect.methods.dss_beads`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any, ClassVar

import torch

from ..energy import Energy
from ..errors import ConfigError
from ..path import Path, Straight
from ..progress import open_task, training_reporter
from ..seeding import derive_seed
from ..train import Objective, TrainConfig
from .base import Checkpoint, Outcome, Progress, as_enum
from .dss_beads import BeadConstraint, geometry_summary, persistence, train_bead, warn_about_endpoints, why_not_trained

__all__ = ["TStar", "Order", "Reason", "BeadConstraint", "DSSConfig", "SegmentRecord", "DSSState", "GreedyDSS",
           "choose_tstar", "greedy_dss", "MAX_GRID_SIZE"]

MAX_GRID_SIZE = 100_000
"""Largest accepted ``grid_size``: finer grids cost time without telling more (certification refines)."""


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
    PERSISTENT_BARRIER = "persistent_barrier"
    """A failing segment is at max_depth, every bead trained below alpha * L0, and every barrier a bead split
    was at least twice the acceptance level: the barrier moved with the beads instead of shrinking, which is
    what a disconnection looks like to DSS (Appendix E)."""
    BEAD_BUDGET_EXHAUSTED = "bead_budget_exhausted"
    """A failing segment needs a bead but the path already has max_beads."""
    TIME_EXHAUSTED = "time_exhausted"
    """The wall-time budget max_time_s ran out."""


@dataclass(frozen=True)
class DSSConfig:
    """Every setting of greedy DSS; all are recorded in results. The level L0 is passed to ``run``."""

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
    bead_training: TrainConfig = field(default_factory=TrainConfig, metadata={"flag_prefix": "bead"})
    """How beads are trained (optimizer, lr, batch size, step cap); a task supplies its own defaults."""
    bead_constraint: BeadConstraint = BeadConstraint.FREE
    """Where a bead may move while it trains: free, or only orthogonally to the segment it splits
    (hyperplane, Appendix A), so it cannot slide along the string (see BeadConstraint)."""
    restarts: int = 3
    """A stuck bead (zero gradient or stalled, e.g. started on a symmetric saddle where every step keeps two
    units equal, or with dead units) is restarted up to this many times; the first restart that is not stuck
    is kept (0: report it stuck at once)."""
    restart_shift: float = 0.1
    """Each restart starts this much further along the segment in t, towards one neighbour then the other
    (then twice as far): off a symmetric midpoint (permutation pairs: 120 of 120 starts trained, against 65 of
    120 for random noise alone)."""
    restart_perturbation: float = 0.01
    """Plus seeded random noise of this norm relative to the segment's length, for stuck points that a shift
    along the segment does not free (0: none)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed; bead k is trained with a seed derived from (seed, k). A run sets it from its own seed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tstar", as_enum(TStar, self.tstar, "tstar"))
        object.__setattr__(self, "order", as_enum(Order, self.order, "order"))
        object.__setattr__(self, "bead_constraint", as_enum(BeadConstraint, self.bead_constraint, "bead_constraint"))
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(
                f"tolerance must be >= 1 (segments pass when max <= tolerance * L0), got {self.tolerance}"
            )
        if not 3 <= self.grid_size <= MAX_GRID_SIZE:
            raise ConfigError(f"grid_size must be between 3 (both endpoints and one interior point) and "
                              f"{MAX_GRID_SIZE:,}, got {self.grid_size}; certification refines the final path, "
                              "so the acceptance grid need not be fine")
        if not 0 <= self.tstar_margin < 0.5:
            raise ConfigError(f"tstar_margin must be in [0, 0.5), got {self.tstar_margin}")
        if self.flat_tolerance < 0:
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if self.max_depth < 0 or self.max_beads < 0:
            raise ConfigError(f"max_depth and max_beads must be >= 0, got {self.max_depth} and {self.max_beads}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s must be positive or None, got {self.max_time_s}")
        if self.restarts < 0:
            raise ConfigError(f"restarts must be >= 0, got {self.restarts}")
        if not 0 <= self.restart_shift < 0.5:
            raise ConfigError(f"restart_shift must be in [0, 0.5) (a step in t along the segment), "
                              f"got {self.restart_shift}")
        if not 0 <= self.restart_perturbation <= 1:
            raise ConfigError(f"restart_perturbation must be in [0, 1] (a fraction of the segment's length), "
                              f"got {self.restart_perturbation}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["tstar"], out["order"] = self.tstar.value, self.order.value
        out["bead_constraint"] = self.bead_constraint.value
        out["bead_training"] = self.bead_training.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DSSConfig:
        return cls(**data)


@dataclass(frozen=True)
class SegmentRecord:
    """DSS's record of one straight piece: its nesting depth and, once evaluated, its grid maximum."""

    depth: int = 0
    """How many bead insertions separate it from the original endpoint-to-endpoint segment."""
    max_energy: float | None = None
    argmax_t: float | None = None
    grid_size: int | None = None

    @property
    def evaluated(self) -> bool:
        return self.max_energy is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentRecord:
        """Inverse of ``asdict`` after a JSON round trip, where non-finite floats are stored as strings."""
        fields_ = dict(data)
        for key in ("max_energy", "argmax_t"):
            if fields_.get(key) is not None:
                fields_[key] = float(fields_[key])
        return cls(**fields_)


@dataclass
class DSSState:
    """Bookkeeping that, together with the Path, lets a run resume exactly."""

    segments: list[SegmentRecord] = field(default_factory=list)
    """One record per piece of the path, in order (empty: a fresh start)."""
    beads_trained: int = 0
    elapsed_s: float = 0.0
    bead_log: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    outcome: dict[str, Any] | None = None
    bead_births: list[int] | None = None
    """Aligned with ``path.beads``: 0 for the endpoints, k for the k-th trained bead. Beads are only ever
    inserted, so the string after stage s is the beads with birth <= s, in path order (the DSS snapshots)."""
    bead_training_s: float = 0.0
    """Wall time spent training beads (their periodic energy checks included), summed over sessions."""
    segment_evaluation_s: float = 0.0
    """Wall time spent evaluating segment grids, summed over sessions."""

    @property
    def depth(self) -> int:
        return max((s.depth for s in self.segments), default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DSSState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"the saved DSS state has unknown field(s) {', '.join(unknown)}; it was written by "
                              "another version or edited by hand: delete the run's path/ directory to restart")
        data = dict(data)
        data["segments"] = [SegmentRecord.from_dict(s) for s in data.get("segments", [])]
        return cls(**data)


def choose_tstar(ts: torch.Tensor, values: torch.Tensor, config: DSSConfig, threshold: float) -> float:
    """Apply the configured t* rule to a segment's grid profile.

    >>> ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    >>> cfg = DSSConfig()
    >>> choose_tstar(ts, -(ts - 0.3) ** 2, cfg, 1.0)
    0.3
    >>> choose_tstar(ts, torch.zeros(11, dtype=torch.float64), cfg, 1.0)   # flat profile
    0.5
    >>> choose_tstar(ts, ts, cfg, 1.0)                                      # kept off the endpoint
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
    if all_finite and float(finite.max() - finite.min()) <= config.flat_tolerance * threshold:
        return 0.5
    return round(float(cand_t[int(torch.argmax(cand_v))]), 12)


def next_segment(records: list[SegmentRecord], order: Order) -> int | None:
    """The index of the next unchecked segment under ``order`` (None when every segment is checked)."""
    pending = [i for i, s in enumerate(records) if not s.evaluated]
    if not pending:
        return None
    if order is Order.DEPTH_FIRST:
        return pending[0]
    return min(pending, key=lambda i: (records[i].depth, i))


def evaluate_segment(path: Path, records: list[SegmentRecord], i: int, energy: Energy,
              grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate piece ``i`` on a uniform grid and record its maximum; returns ``(ts, energies)``."""
    ts = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    values = path.energies(i, ts, energy)
    k = int(torch.argmax(values))
    records[i] = replace(records[i], max_energy=float(values[k]), argmax_t=float(ts[k]), grid_size=grid_size)
    return ts, values


class GreedyDSS:
    """Greedy Dynamic String Sampling as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "greedy_dss"
    summary: ClassVar[str] = "greedy Dynamic String Sampling (Freeman & Bruna, Algorithm 1)"
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = DSSConfig
    State: ClassVar[type] = DSSState

    def run(self, start: Path, energy: Energy, *, threshold: float, config: DSSConfig,
            objective: Objective | None, state: DSSState | None = None, checkpoint: Checkpoint | None = None,
            progress: Progress | None = None) -> tuple[Path, Outcome]:
        if objective is None:
            raise ConfigError("greedy_dss trains beads and needs an objective (the training loss)")
        return greedy_dss(start, energy, objective, config, threshold=threshold, state=state,
                          checkpoint=checkpoint, progress=progress)


def greedy_dss(
    path: Path,
    energy: Energy,
    objective: Objective,
    config: DSSConfig,
    *,
    threshold: float,
    state: DSSState | None = None,
    checkpoint: Checkpoint | None = None,
    progress: Progress | None = None,
) -> tuple[Path, Outcome]:
    """Run greedy DSS on ``path`` (modified in place and returned) inside ``energy <= threshold``.

    Pass a two-bead path to start, or a path and ``state`` saved by ``checkpoint`` to resume.
    ``checkpoint(path, state)`` runs after every new bead and once at the end. The endpoints are
    expected to be checked by the caller (``connect`` does).
    """
    say = progress or (lambda message: None)
    state = state or DSSState()
    if any(not isinstance(p, Straight) for p in path.pieces):
        raise ConfigError("greedy_dss works on strings of straight segments; the start path has curved pieces")
    if state.bead_births is None:  # a fresh start: every bead already on the path belongs to stage 0
        state.bead_births = [0] * len(path.beads)
    if not state.segments:
        state.segments = [SegmentRecord() for _ in path.pieces]
    if len(state.bead_births) != len(path.beads) or len(state.segments) != path.n_pieces:
        raise ConfigError(f"the DSS state records {len(state.bead_births)} bead births and {len(state.segments)} "
                          f"segments for a path of {len(path.beads)} beads: resume with the state saved together "
                          "with this path")
    if state.finished and state.outcome is not None:
        return path, Outcome.from_dict(state.outcome)
    records = state.segments
    accept = config.tolerance * threshold
    target = config.alpha * threshold
    clock, elapsed0 = time.perf_counter(), state.elapsed_s

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - clock

    reason, message = Reason.CONNECTED, "every segment stays below tolerance * threshold"
    if state.beads_trained == 0:
        warn_about_endpoints(path, energy, target, say)
    while (i := next_segment(records, config.order)) is not None:
        tick = time.perf_counter()
        ts, values = evaluate_segment(path, records, i, energy, config.grid_size)
        state.segment_evaluation_s += time.perf_counter() - tick
        seg = records[i]
        if seg.max_energy <= accept:
            say(f"segment {i} (depth {seg.depth}) ok: max {seg.max_energy:.4g} <= {accept:.4g}")
            continue
        where = f"segment {i} (depth {seg.depth}) has barrier {seg.max_energy:.4g} > {accept:.4g}"
        if seg.depth >= config.max_depth:
            persistent, clause = persistence(state.bead_log, accept)
            reason = Reason.PERSISTENT_BARRIER if persistent else Reason.DEPTH_EXHAUSTED
            message = f"{where} at the depth cap max_depth={config.max_depth}{clause}"
            break
        if path.n_beads >= config.max_beads:
            reason = Reason.BEAD_BUDGET_EXHAUSTED
            message = f"{where} but the path already has max_beads={config.max_beads}"
            break
        if config.max_time_s is not None and elapsed() >= config.max_time_s:
            reason = Reason.TIME_EXHAUSTED
            message = f"{where} and the time budget max_time_s={config.max_time_s:g} is spent"
            break
        t_star = choose_tstar(ts, values, config, threshold)
        bead_seed = derive_seed(config.seed, "bead", state.beads_trained)
        tick = time.perf_counter()
        with open_task(progress, f"bead {state.beads_trained + 1}", total=config.bead_training.max_steps) as bar:
            bead, train, geometry = train_bead(
                path.beads[i], path.beads[i + 1], t_star, energy=energy, objective=objective, target=target,
                config=config.bead_training, constraint=config.bead_constraint,
                restarts=config.restarts, shift=config.restart_shift, perturbation=config.restart_perturbation,
                seed=bead_seed, ends=(path.beads[0], path.beads[-1]), on_check=training_reporter(bar, target))
        state.bead_training_s += time.perf_counter() - tick
        state.beads_trained += 1
        state.bead_log.append({"segment": i, "depth": seg.depth + 1, "t_star": t_star, "barrier": seg.max_energy,
                               **geometry, **{f"train_{k}": v for k, v in train.to_dict().items()}})
        if not train.reached:
            reason = Reason.BEAD_NOT_TRAINED
            why = why_not_trained(train.reason, geometry)
            message = (f"{where}; the bead started at t*={t_star:.3g} reached energy {train.final_energy:.4g} after "
                       f"{train.steps} steps ({why}), target alpha*L0={target:.4g}")
            break
        path.insert_bead(i, bead)
        records[i : i + 1] = [SegmentRecord(depth=seg.depth + 1), SegmentRecord(depth=seg.depth + 1)]
        state.bead_births.insert(i + 1, state.beads_trained)
        say(f"{where} -> bead {state.beads_trained} at t*={t_star:.3g} trained to {train.final_energy:.4g} "
            f"in {train.steps} steps ({path.n_beads} beads)")
        state.elapsed_s = elapsed()
        if checkpoint is not None:
            checkpoint(path, state)

    if reason is not Reason.CONNECTED:  # complete the picture: evaluate what is left unchecked
        tick = time.perf_counter()
        while (j := next_segment(records, Order.DEPTH_FIRST)) is not None:
            evaluate_segment(path, records, j, energy, config.grid_size)
        state.segment_evaluation_s += time.perf_counter() - tick
    worst = max(range(len(records)), key=lambda j: records[j].max_energy)
    outcome = Outcome(
        connected=reason is Reason.CONNECTED, reason=reason.value, message=message,
        worst_barrier=records[worst].max_energy, worst_segment=worst, elapsed_s=elapsed(),
        extras={"beads_trained": state.beads_trained, "depth": state.depth, "grid_size": config.grid_size,
                "max_interpolated_energy": records[worst].max_energy,
                "segment_max_energy": [r.max_energy for r in records], "bead_log": state.bead_log,
                "bead_births": state.bead_births, "bead_training_time_s": state.bead_training_s,
                **geometry_summary(state.bead_log),
                "segment_evaluation_time_s": state.segment_evaluation_s})
    state.elapsed_s, state.finished, state.outcome = outcome.elapsed_s, True, outcome.to_dict()
    if checkpoint is not None:
        checkpoint(path, state)
    return path, outcome

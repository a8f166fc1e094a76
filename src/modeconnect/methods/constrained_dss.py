"""Constrained Dynamic String Sampling (Freeman & Bruna, Appendix A).

Greedy DSS trains a new bead freely, so it may wander anywhere in the level set, far from its two
neighbours. Appendix A keeps it near them instead: the bead lives on (or near) the hyperplane
equidistant from its neighbours ``a`` and ``b``, ``H = {theta: |theta - a| = |theta - b|}``, with a
spring term pulling it towards them. Two ways of holding it there (``constraint``):

* ``project`` (the default; the slides' step ``theta_3 = argmin_{theta in H, E(theta) <= L0} |theta - theta_m|``):
  every optimizer step is followed by the exact orthogonal projection onto ``H``, and the spring term
  (``zeta``), which on ``H`` grows with ``|theta - theta_m|``, plays the role of the distance to the
  midpoint in the argmin;
* ``penalty`` (the paper's formula): the training loss is augmented by
  ``zeta * (|a - theta| + |b - theta|) + kappa * deviation(theta)`` and the bead may leave ``H``.

Everything else is greedy DSS (same segment records, t* rule, order and stopping rules; see
:mod:`.greedy_dss`): a segment whose grid maximum exceeds ``tolerance * L0`` gets a bead, trained to
``alpha * L0``. The bead log records where each bead went: its displacement from its start point, its
distance from the chord (the straight segment between the path's endpoints) and its offset from the
hyperplane. Registered as the path method ``constrained_dss``; docs/appendix_a.md says what the
appendix leaves open and which setting decides each point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..batchnorm import is_buffer_key
from ..energy import Energy
from ..errors import ConfigError
from ..params import Point, distance, interpolate
from ..path import Path, Straight
from ..progress import open_task, training_reporter
from ..seeding import derive_seed
from ..train import Objective, TrainConfig, TrainStatus, train_to_target
from .base import Checkpoint, Outcome, Progress, as_enum
from .dss_beads import persistence
from .greedy_dss import (
    MAX_GRID_SIZE,
    DSSState,
    Order,
    Reason,
    SegmentRecord,
    TStar,
    choose_tstar,
    evaluate_segment,
    next_segment,
)

__all__ = ["Constraint", "KappaForm", "ConstrainedDSSConfig", "ConstrainedDSSState", "ConstrainedDSS",
           "Hyperplane", "constraint_terms", "train_on_hyperplane", "chord_position", "as_enum"]


class Constraint(str, Enum):
    """How a new bead is held to the hyperplane equidistant from its neighbours."""

    PROJECT = "project"
    """Exact: project onto the hyperplane after every optimizer step (the slides' argmin step); kappa is moot."""
    PENALTY = "penalty"
    """Soft: add zeta * (spring) + kappa * (deviation) to the training loss (the paper's formula)."""


class KappaForm(str, Enum):
    """What the kappa term measures as the deviation from the hyperplane (PENALTY only)."""

    OFFSET = "offset"
    """|n . (theta - m)|: the Euclidean distance to the hyperplane (n its unit normal, m the midpoint)."""
    COSINE = "cosine"
    """|n . (theta - m)| / |theta - m|: the paper's literal (scale-free) form, with its typo (theta_{i-1} -
    theta_{i+1})/2 read as the midpoint (theta_{i-1} + theta_{i+1})/2. Its gradient vanishes on the normal
    line through m, where a bead started off-centre sits, so it cannot pull such a bead back."""


@dataclass(frozen=True)
class ConstrainedDSSConfig:
    """Every setting of constrained DSS; all are recorded in results. The level L0 is passed to ``run``."""

    constraint: Constraint = Constraint.PROJECT
    """How beads are held to the bisecting hyperplane (see Constraint). project: 8/8 cubic pairs at L0=0.05 with
    greedy DSS's step count; penalty gave shorter paths for 1.5x the steps and leaves the plane (docs/appendix_a.md)."""
    zeta: float = 1e-4
    """Spring constant: zeta * (|theta_prev - theta| + |theta_next - theta|) is added to the training loss (loss units
    per unit parameter distance; on the plane it pulls the bead towards the midpoint). 1e-4 shortened all 8 cubic
    paths at no extra steps; 1e-3 kept a bead from reaching its target."""
    kappa: float = 1e-2
    """Weight of the deviation-from-the-hyperplane term (PENALTY only; see kappa_form)."""
    kappa_form: KappaForm = KappaForm.OFFSET
    """What the kappa term measures (see KappaForm)."""
    alpha: float = 0.8
    """New beads are trained to alpha * L0 (as greedy DSS)."""
    tolerance: float = 1.0
    """A segment is accepted when its grid maximum is <= tolerance * L0 (>= 1)."""
    grid_size: int = 33
    """Points per segment on the acceptance grid, endpoints included."""
    tstar: TStar = TStar.MIDPOINT
    """Where on a failing segment a bead starts (argmax or midpoint). Midpoint: the start lies on the hyperplane;
    under PROJECT any start is projected to the midpoint anyway."""
    tstar_margin: float = 0.05
    """ARGMAX keeps t* within [margin, 1 - margin]."""
    flat_tolerance: float = 1e-3
    """ARGMAX falls back to 0.5 when the profile's range is <= flat_tolerance * L0."""
    order: Order = Order.DEPTH_FIRST
    """Which unchecked segment is processed next (depth_first: the paper's recursion)."""
    max_depth: int = 10
    """Most bead insertions nested in one original segment."""
    max_beads: int = 64
    """Most intermediate beads on the path."""
    max_time_s: float | None = None
    """Wall-time budget in seconds, summed over resumed sessions (None: unlimited)."""
    bead_training: TrainConfig = field(default_factory=TrainConfig, metadata={"flag_prefix": "bead"})
    """How beads are trained (optimizer, lr, batch size, step cap); a task supplies its own defaults."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed; bead k is trained with a seed derived from (seed, k). A run sets it from its own seed."""

    def __post_init__(self) -> None:
        for name, cls in (("constraint", Constraint), ("kappa_form", KappaForm), ("tstar", TStar), ("order", Order)):
            object.__setattr__(self, name, as_enum(cls, getattr(self, name), name))
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))
        for name in ("zeta", "kappa"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(f"tolerance must be >= 1 (pass: max <= tolerance * L0), got {self.tolerance}")
        if not 3 <= self.grid_size <= MAX_GRID_SIZE:
            raise ConfigError(f"grid_size must be between 3 and {MAX_GRID_SIZE:,}, got {self.grid_size}")
        if not 0 <= self.tstar_margin < 0.5:
            raise ConfigError(f"tstar_margin must be in [0, 0.5), got {self.tstar_margin}")
        if self.flat_tolerance < 0:
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if self.max_depth < 0 or self.max_beads < 0:
            raise ConfigError(f"max_depth and max_beads must be >= 0, got {self.max_depth} and {self.max_beads}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s must be positive or None, got {self.max_time_s}")


@dataclass
class ConstrainedDSSState(DSSState):
    """Greedy DSS's bookkeeping (segments, bead births and log, timings): constrained DSS needs nothing more."""


# -- the hyperplane and the constraint terms ---------------------------------------------------------------
class Hyperplane:
    """``{theta: |theta - a| = |theta - b|}``: through the midpoint ``m``, normal ``n = (b - a) / |b - a|``.

    Only parameters count (``buffer:`` keys are not coordinates of the landscape). Points are handled as one
    flat vector each: a few whole-vector operations per training step instead of a few per tensor.
    """

    def __init__(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
        self.keys = [k for k in a if not is_buffer_key(k)]
        self.a, self.b = self.flat(a), self.flat(b)
        self.midpoint = (self.a + self.b) / 2
        self.width = float(torch.linalg.vector_norm((self.b - self.a).double()))
        scale = 1.0 / self.width if self.width > 0 else 0.0  # identical neighbours: no plane, nothing to hold
        self.normal = (self.b - self.a) * scale
        sizes = [a[k].numel() for k in self.keys]
        self._normal_parts = {k: n.view_as(a[k]) for k, n in zip(self.keys, torch.split(self.normal, sizes))}

    def flat(self, theta: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([theta[k].reshape(-1) for k in self.keys])

    def offset(self, theta: Mapping[str, Tensor]) -> Tensor:
        """Signed distance ``n . (theta - m)`` (differentiable in ``theta``)."""
        return torch.dot(self.flat(theta) - self.midpoint, self.normal)

    @torch.no_grad()
    def project_(self, theta: Mapping[str, Tensor]) -> None:
        """Move ``theta`` (in place) to its orthogonal projection onto the plane."""
        off = self.offset(theta)
        for k, n in self._normal_parts.items():
            theta[k].sub_(off * n)


def constraint_terms(theta: Mapping[str, Tensor], a: Mapping[str, Tensor], b: Mapping[str, Tensor], *,
                     zeta: float, kappa: float, kappa_form: KappaForm | str = KappaForm.OFFSET,
                     plane: Hyperplane | None = None) -> dict[str, Tensor]:
    """The terms Appendix A adds to a bead's loss: ``spring = zeta * (|a - theta| + |b - theta|)`` and
    ``deviation = kappa * |n . (theta - m)|`` (OFFSET) or ``kappa * |n . (theta - m)| / |theta - m|`` (COSINE,
    0 at ``theta = m``). Differentiable in ``theta``; ``total`` is their sum. A term whose weight is 0 is not
    computed (it costs a training step's time on small models)."""
    plane = plane or Hyperplane(a, b)
    x = plane.flat(theta)
    zero = x.new_zeros(())
    spring = zeta * (torch.linalg.vector_norm(x - plane.a) + torch.linalg.vector_norm(x - plane.b)) if zeta else zero
    deviation = zero
    if kappa:
        off = torch.dot(x - plane.midpoint, plane.normal).abs()
        if as_enum(KappaForm, kappa_form, "kappa_form") is KappaForm.COSINE:
            radius = torch.linalg.vector_norm(x - plane.midpoint)
            off = torch.where(radius > 0, off / torch.clamp(radius, min=torch.finfo(radius.dtype).tiny), 0 * off)
        deviation = kappa * off
    return {"spring": spring, "deviation": deviation, "total": spring + deviation}


def train_on_hyperplane(start: Mapping[str, Tensor], a: Mapping[str, Tensor], b: Mapping[str, Tensor], *,
                        energy: Energy, objective: Objective, target: float, config: TrainConfig, seed: int,
                        constraint: Constraint, zeta: float, kappa: float,
                        kappa_form: KappaForm = KappaForm.OFFSET,
                        on_check: Callable[[int, float], None] | None = None) -> tuple[Point, TrainStatus]:
    """Train a bead between neighbours ``a`` and ``b`` until ``energy <= target`` (or a stop of train.py's).

    The loss is the objective plus :func:`constraint_terms` (kappa only under PENALTY). Under PROJECT the point
    is projected onto the bisecting hyperplane before the first step and after every step, so every point whose
    energy is checked, the returned one included, lies on it.
    """
    plane = Hyperplane(a, b)
    project = constraint is Constraint.PROJECT
    kappa = 0.0 if project else kappa
    terms = None
    if zeta or kappa:
        def terms(params: dict[str, Tensor]) -> Tensor:
            return constraint_terms(params, a, b, zeta=zeta, kappa=kappa, kappa_form=kappa_form, plane=plane)["total"]
    return train_to_target(start, energy=energy, objective=objective, target=target, config=config, seed=seed,
                           extra_loss=terms, project=plane.project_ if project else None, on_check=on_check)


def chord_position(theta: Mapping[str, Tensor], a: Mapping[str, Tensor],
                   b: Mapping[str, Tensor]) -> tuple[float, float]:
    """``(distance, t)``: how far ``theta`` is from the segment ``a``-``b`` and where its closest point sits."""
    keys = [k for k in a if not is_buffer_key(k)]
    d = {k: b[k].double() - a[k].double() for k in keys}
    length2 = sum(float((v**2).sum()) for v in d.values())
    along = sum(float(((theta[k].double() - a[k].double()) * d[k]).sum()) for k in keys)
    t = min(1.0, max(0.0, along / length2)) if length2 > 0 else 0.0
    return distance(theta, interpolate(a, b, t)), t


# -- the method ---------------------------------------------------------------------------------------------
class ConstrainedDSS:
    """Constrained DSS as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "constrained_dss"
    summary: ClassVar[str] = "DSS with beads held to the hyperplane between their neighbours (Appendix A)"
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = ConstrainedDSSConfig
    State: ClassVar[type] = ConstrainedDSSState

    def run(self, start: Path, energy: Energy, *, threshold: float, config: ConstrainedDSSConfig,
            objective: Objective | None, state: ConstrainedDSSState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        if objective is None:
            raise ConfigError("constrained_dss trains beads and needs an objective (the training loss)")
        say = progress or (lambda message: None)
        path, state = start, state or ConstrainedDSSState()
        if any(not isinstance(p, Straight) for p in path.pieces):
            raise ConfigError("constrained_dss works on strings of straight segments; the start path has curves")
        if state.bead_births is None:
            state.bead_births = [0] * len(path.beads)
        if not state.segments:
            state.segments = [SegmentRecord() for _ in path.pieces]
        if len(state.bead_births) != len(path.beads) or len(state.segments) != path.n_pieces:
            raise ConfigError("the constrained DSS state does not match the path: resume with the state saved "
                              "together with this path")
        if state.finished and state.outcome is not None:
            return path, Outcome.from_dict(state.outcome)
        records, accept, target = state.segments, config.tolerance * threshold, config.alpha * threshold
        clock, elapsed0 = time.perf_counter(), state.elapsed_s

        def elapsed() -> float:
            return elapsed0 + time.perf_counter() - clock

        reason, message = Reason.CONNECTED, "every segment stays below tolerance * threshold"
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
                reason, message = Reason.BEAD_BUDGET_EXHAUSTED, f"{where} but the path has max_beads={config.max_beads}"
                break
            if config.max_time_s is not None and elapsed() >= config.max_time_s:
                reason = Reason.TIME_EXHAUSTED
                message = f"{where} and the time budget max_time_s={config.max_time_s:g} is spent"
                break
            a, b = path.beads[i], path.beads[i + 1]
            t_star = choose_tstar(ts, values, config, threshold)
            start_point = interpolate(a, b, t_star)
            tick = time.perf_counter()
            with open_task(say, f"bead {state.beads_trained + 1}", total=config.bead_training.max_steps) as bar:
                bead, train = train_on_hyperplane(
                    start_point, a, b, energy=energy, objective=objective, target=target,
                    config=config.bead_training, seed=derive_seed(config.seed, "bead", state.beads_trained),
                    constraint=config.constraint, zeta=config.zeta, kappa=config.kappa,
                    kappa_form=config.kappa_form, on_check=training_reporter(bar, target))
            state.bead_training_s += time.perf_counter() - tick
            state.beads_trained += 1
            state.bead_log.append(_bead_record(bead, start_point, a, b, path, i, seg, t_star, energy, train))
            if not train.reached:
                reason = Reason.BEAD_NOT_TRAINED
                message = (f"{where}; the bead started at t*={t_star:.3g} reached energy {train.final_energy:.4g} "
                           f"after {train.steps} steps ({train.reason}), target alpha*L0={target:.4g}")
                break
            path.insert_bead(i, bead)
            records[i : i + 1] = [SegmentRecord(depth=seg.depth + 1), SegmentRecord(depth=seg.depth + 1)]
            state.bead_births.insert(i + 1, state.beads_trained)
            say(f"{where} -> bead {state.beads_trained} ({config.constraint.value}) trained to "
                f"{train.final_energy:.4g} in {train.steps} steps, moved {state.bead_log[-1]['displacement']:.3g}")
            state.elapsed_s = elapsed()
            if checkpoint is not None:
                checkpoint(path, state)

        if reason is not Reason.CONNECTED:  # complete the picture: evaluate what is left unchecked
            while (j := next_segment(records, Order.DEPTH_FIRST)) is not None:
                evaluate_segment(path, records, j, energy, config.grid_size)
        worst = max(range(len(records)), key=lambda j: records[j].max_energy)
        outcome = Outcome(
            connected=reason is Reason.CONNECTED, reason=reason.value, message=message,
            worst_barrier=records[worst].max_energy, worst_segment=worst, elapsed_s=elapsed(),
            extras={"beads_trained": state.beads_trained, "depth": state.depth, "grid_size": config.grid_size,
                    "constraint": config.constraint.value, "max_interpolated_energy": records[worst].max_energy,
                    "segment_max_energy": [r.max_energy for r in records], "bead_log": state.bead_log,
                    "bead_births": state.bead_births, "bead_training_time_s": state.bead_training_s,
                    "segment_evaluation_time_s": state.segment_evaluation_s})
        state.elapsed_s, state.finished, state.outcome = outcome.elapsed_s, True, outcome.to_dict()
        if checkpoint is not None:
            checkpoint(path, state)
        return path, outcome


def _bead_record(bead: Point, start: Point, a: Point, b: Point, path: Path, i: int, seg: SegmentRecord,
                 t_star: float, energy: Energy, train: TrainStatus) -> dict[str, Any]:
    """One bead-log entry: where the bead started, where it went and how it trained (JSON-safe).

    As greedy DSS's log, ``displacement`` (from its start), ``chord_distance`` (from the segment between the
    path's endpoints) and ``start_chord_distance`` are fractions of the endpoints' distance, so they compare
    across pairs; the ``_abs`` fields are the same in parameter units. ``hyperplane_offset`` is the signed
    distance from the plane equidistant from the neighbours (0 under PROJECT, up to rounding).
    """
    ends = (path.beads[0], path.beads[-1])
    span = distance(*ends)
    chord_distance, chord_t = chord_position(bead, *ends)
    start_chord_distance, _ = chord_position(start, *ends)
    moved = distance(bead, start)
    plane = Hyperplane(a, b)

    def rel(x: float) -> float:
        return x / span if span > 0 else 0.0

    return {"segment": i, "depth": seg.depth + 1, "t_star": t_star, "barrier": seg.max_energy,
            "start_energy": energy(start), "displacement": rel(moved), "chord_distance": rel(chord_distance),
            "start_chord_distance": rel(start_chord_distance), "displacement_abs": moved,
            "chord_distance_abs": chord_distance, "chord_t": chord_t,
            "hyperplane_offset": float(plane.offset(bead)),
            "neighbour_distances": [distance(bead, a), distance(bead, b)],
            **{f"train_{k}": v for k, v in train.to_dict().items()}}

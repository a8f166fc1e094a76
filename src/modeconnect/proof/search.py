"""Bisection in t: split the sub-intervals whose bound is above the level until none is, or the budget ends.

Each piece starts from ``initial_pieces`` equal sub-intervals. Every round splits each failing
sub-interval (bound above ``tolerance * threshold``) in two, highest bound first, as far as the budget
goes. A child's bound is the smaller of its own and its parent's (both are valid on the child), so the
path's bound never increases from one round to the next.

For the error rate the bookkeeping is per label: a label certainly correct (or certainly wrong) on a
sub-interval stays so on its halves, so a child only propagates the samples its parent left unsettled.
When a failing sub-interval has no unsettled sample left, its error is known exactly and is above the
level: bisection there stops.

A piece whose sampled maximum already exceeds the level cannot be proved; it gets the first partition's
bounds only (``stop == "sampled_above"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..certify import Certificate, certify
from ..errors import ConfigError
from ..metrics import Metric
from ..path import Path
from .bounder import Bounder
from .chain import Unsupported
from .results import Proof, ProofConfig, SegmentProof
from .weights import PieceWeights

__all__ = ["prove", "segment_bounds"]


@dataclass
class _Interval:
    t0: float
    t1: float
    bound: float = float("inf")
    settled_correct: int = 0
    """Error rate: certainly correct labels of the samples settled on this sub-interval (or an ancestor)."""
    open: Tensor | None = None
    """Error rate: indices of the samples not settled yet."""

    @property
    def width(self) -> float:
        return self.t1 - self.t0


class _Piece:
    """The bisection state of one piece."""

    def __init__(self, bounder: Bounder, weights: PieceWeights, config: ProofConfig) -> None:
        self.bounder, self.weights, self.config = bounder, weights, config
        self.labels = bounder.metric is Metric.ERROR_RATE
        self.n_bounds = 0

    def bound_fresh(self, intervals: list[_Interval]) -> None:
        """Bound sub-intervals that have no parent (all samples open), ``batch`` at a time."""
        for lo in range(0, len(intervals), self.config.batch):
            group = intervals[lo: lo + self.config.batch]
            everything = torch.arange(len(self.bounder.inputs), device=self.bounder.device)
            self._bound(group, everything, settled_correct=0, parent=float("inf"))

    def split(self, parents: list[_Interval], deadline: float | None) -> list[list[_Interval]]:
        """The two halves of every parent, bounded; stops early (returning fewer) past the deadline."""
        halves = []
        for parent in parents:
            mid = (parent.t0 + parent.t1) / 2
            halves.append([_Interval(parent.t0, mid), _Interval(mid, parent.t1)])
        if not self.labels:  # every sample every time: batch across parents
            flat = [(h, p) for pair, p in zip(halves, parents) for h in pair]
            done = 0
            for lo in range(0, len(flat), self.config.batch):
                group = flat[lo: lo + self.config.batch]
                self._bound([h for h, _ in group], None, 0, [p.bound for _, p in group])
                done = lo + len(group)
                if deadline is not None and time.perf_counter() > deadline:
                    break
            return halves[: done // 2]
        for k, (pair, parent) in enumerate(zip(halves, parents)):
            if deadline is not None and time.perf_counter() > deadline:
                return halves[:k]
            self._bound(pair, parent.open, parent.settled_correct, parent.bound)
        return halves

    def _bound(self, group: list[_Interval], samples: Tensor | None, settled_correct: int, parent) -> None:
        parents = parent if isinstance(parent, list) else [parent] * len(group)
        self.n_bounds += len(group)
        t0, t1 = [iv.t0 for iv in group], [iv.t1 for iv in group]
        if not self.labels:
            values = self.bounder.bound(self.weights, t0, t1)
            for iv, value, up in zip(group, values.tolist(), parents):
                iv.bound = min(value if value == value else float("inf"), up)
            return
        if samples is None or len(samples) == 0:
            for iv, up in zip(group, parents):
                iv.settled_correct, iv.open, iv.bound = settled_correct, samples, up
            return
        status = self.bounder.bound(self.weights, t0, t1, samples)
        for b, (iv, up) in enumerate(zip(group, parents)):
            correct, settled = status.correct[b], status.settled[b]
            iv.settled_correct = settled_correct + int(correct[settled].sum())
            iv.open = samples[~settled]
            iv.bound = min(float(self.bounder.error_bound(settled_correct + int(correct.sum()))), up)


def _failed_runs(intervals: list[_Interval], level: float) -> list[list[float]]:
    """Adjacent failing sub-intervals merged: ``[t0, t1, largest bound]``."""
    runs: list[list[float]] = []
    for iv in intervals:
        if iv.bound <= level:
            continue
        if runs and runs[-1][1] == iv.t0:
            runs[-1][1], runs[-1][2] = iv.t1, max(runs[-1][2], iv.bound)
        else:
            runs.append([iv.t0, iv.t1, iv.bound])
    return runs


def _prove_piece(state: _Piece, index: int, level: float, sampled_max: float, config: ProofConfig,
                 deadline: float | None, progress: Callable[[dict[str, Any]], None] | None) -> SegmentProof:
    edges = np.linspace(0.0, 1.0, config.initial_pieces + 1)
    intervals = [_Interval(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]
    state.bound_fresh(intervals)
    stop, round_ = ("sampled_above" if sampled_max > level else None), 0
    while stop is None:
        if progress is not None:
            progress({"segment": index, "round": round_, "n_subintervals": len(intervals),
                      "upper_bound": max(iv.bound for iv in intervals), "n_bounds": state.n_bounds,
                      "failing": sum(iv.bound > level for iv in intervals)})
        failing = [iv for iv in intervals if iv.bound > level]
        if not failing:
            stop = "proved"
            break
        if state.labels and all(iv.open is not None and len(iv.open) == 0 for iv in failing):
            stop = "certain_above"
            break
        splittable = [iv for iv in failing if iv.width > config.min_width
                      and not (state.labels and iv.open is not None and len(iv.open) == 0)]
        if not splittable:
            stop = "min_width"
            break
        room = (config.max_bounds - state.n_bounds) // 2
        if room < 1:
            stop = "budget"
            break
        if deadline is not None and time.perf_counter() > deadline:
            stop = "time"
            break
        splittable.sort(key=lambda iv: -iv.bound)
        chosen = splittable[:room]
        halves = state.split(chosen, deadline)
        replaced = {id(p): pair for p, pair in zip(chosen, halves)}
        intervals = [h for iv in intervals for h in replaced.get(id(iv), [iv])]
        round_ += 1
    upper = max(iv.bound for iv in intervals)
    return SegmentProof(upper_bound=upper, sampled_max=sampled_max, n_subintervals=len(intervals),
                        n_bounds=state.n_bounds, proved=upper <= level, stop=stop,
                        failed_intervals=_failed_runs(intervals, level))


def _check_level(threshold: Any, tolerance: Any) -> None:
    for name, value in (("threshold", threshold), ("tolerance", tolerance)):
        if not (isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)):
            raise ConfigError(f"prove needs a finite {name}, got {value!r}")
    if tolerance <= 0:
        raise ConfigError(f"prove tolerance must be positive, got {tolerance!r}")


def prove(path: Path, energy, config: ProofConfig | None = None, *, threshold: float, tolerance: float = 1.0,
          sampled: Certificate | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> Proof:
    """Prove (or fail to prove) that the energy stays at most ``tolerance * threshold`` along the whole path.

    Args:
        config: a :class:`ProofConfig` (defaults if None).
        threshold, tolerance: the level ``tolerance * threshold`` to prove.
        sampled: the path's sampled certificate, reported beside the bound (computed with
            :func:`~modeconnect.certify.certify`'s defaults if None). A piece whose sampled maximum exceeds
            the level is not bisected.
        progress: called after every bisection round with a dict (``segment``, ``round``,
            ``n_subintervals``, ``upper_bound``, ``n_bounds``, ``failing``).

    Returns a :class:`Proof`; for a network with a layer the bound cannot handle, the sampled certificate
    labelled ``kind="sampled"`` with ``unsupported`` naming the layer.
    """
    config = ProofConfig() if config is None else config
    _check_level(threshold, tolerance)
    level = tolerance * threshold
    try:
        bounder = Bounder(energy, config)
    except Unsupported as exc:
        sampled = sampled if sampled is not None else certify(path, energy, threshold=threshold, tolerance=tolerance)
        return Proof(kind="sampled", threshold=threshold, tolerance=tolerance, upper_bound=None,
                     sampled_max=sampled.max_energy, segments=[], certificate=sampled, config=config,
                     unsupported=str(exc), model_dtype=_dtype_name(energy))
    sampled = sampled if sampled is not None else certify(path, energy, threshold=threshold, tolerance=tolerance)
    if len(sampled.segment_max) != path.n_pieces:
        raise ConfigError(f"the sampled certificate has {len(sampled.segment_max)} pieces but the path has "
                          f"{path.n_pieces}: certify this path")
    deadline = None if config.max_seconds is None else time.perf_counter() + config.max_seconds
    segments = []
    for i in range(path.n_pieces):
        state = _Piece(bounder, bounder.piece(path, i), config)
        segments.append(_prove_piece(state, i, level, float(sampled.segment_max[i]), config, deadline, progress))
        _self_check(segments[-1], i, config)
    return Proof(kind="proof", threshold=threshold, tolerance=tolerance,
                 upper_bound=max(s.upper_bound for s in segments), sampled_max=sampled.max_energy,
                 segments=segments, certificate=sampled, config=config, model_dtype=_dtype_name(energy))


def _dtype_name(energy) -> str:
    first = next(v for v in energy.template.values() if v.is_floating_point())
    return str(first.dtype).removeprefix("torch.")


def _self_check(segment: SegmentProof, index: int, config: ProofConfig) -> None:
    """A bound below an energy actually sampled would be a bug: refuse to report it."""
    if config.slack > 0 and segment.upper_bound < segment.sampled_max - 1e-9 * max(1.0, abs(segment.sampled_max)):
        raise RuntimeError(f"internal error: the proof's bound on piece {index} ({segment.upper_bound!r}) is below "
                           f"the sampled maximum ({segment.sampled_max!r}); please report this")


def segment_bounds(path: Path, index: int, energy, edges, config: ProofConfig | None = None) -> np.ndarray:
    """Upper bounds of the energy on piece ``index`` over each ``[edges[k], edges[k + 1]]`` (no bisection).

    ``edges``: increasing positions in [0, 1]. Raises :class:`~.chain.Unsupported` for a network the bound
    cannot handle. The building block of :func:`prove`, exposed for studies of how bounds tighten.
    """
    config = ProofConfig() if config is None else config
    bounder = Bounder(energy, config)
    weights = bounder.piece(path, index)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0 or edges[-1] > 1:
        raise ConfigError("edges must be at least two increasing positions in [0, 1]")
    out = []
    for lo in range(0, len(edges) - 1, config.batch):
        t0, t1 = edges[:-1][lo: lo + config.batch], edges[1:][lo: lo + config.batch]
        result = bounder.bound(weights, t0, t1)
        if bounder.metric is Metric.ERROR_RATE:
            result = bounder.error_bound(result.correct.sum(1).double())
        out.append(np.nan_to_num(np.asarray(result, dtype=np.float64), nan=np.inf))
    return np.concatenate(out)

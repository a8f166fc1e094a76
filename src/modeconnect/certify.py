"""Certification: the largest energy found along a whole path by refined sampling, at a stated resolution.

Each piece is sampled on a uniform grid in its parameter ``t``, then refined at every local maximum of
the sampled profile. A local maximum is a *run* of equal samples -- one sample, or a plateau -- that is
higher than the samples on both sides of it. Plateaus matter: test error on a few hundred images is a
step function, and counting every sample of a plateau as its own maximum (the old ``>=`` rule) made
2,031 of 2,068 samples of an MNIST path "maxima", each refined separately, for 81-86% of a connect's time.

Refinement goes round by round until no gap is left or ``max_evaluations`` is spent: every gap wider
than ``resolution`` within or next to a maximum (between it and its lower neighbours) is cut into
``refine_points + 1`` equal parts (default 2: bisection, the fewest evaluations to locate a peak or the
edge of a step), or fewer if fewer bring it to ``resolution``. So the spacing ends just below the
resolution, between half of it and all of it, instead of overshooting; each round's new points go to
the energy in one batch. Small steps also suit a budget that runs out mid-round: no gap is left filled
from one end while its peak sits at the other.

The first grid has ``min(65, ceil(1 / resolution) + 1)`` points: a resolution coarser than 1/64 is
met by a uniform grid at once (and then holds everywhere on the piece); a finer one starts from 65
points, enough to see the coarse shape of the profile, and spends further evaluations only at maxima.

What is established (kept honest; ``Certificate.kind`` is ``"sampled"``):

* ``Certificate.resolution`` is the widest gap between consecutive samples *within and next to* every
  sampled local maximum of every piece: the samples of each plateau, its interior included (a narrow
  spike can hide between any two of them, at the highest level found), and the lower samples just
  outside it. It is at most the resolution asked unless the budget ran out (then it says how far it
  got), and more than half of it unless the first grid was already finer: it never overshoots.
* Hence, if the energy is L-Lipschitz in ``t`` and the true maximum of a piece lies within the bracket
  of one of its sampled local maxima, the reported maximum is within ``L * resolution / 2`` of it.
* Elsewhere -- on slopes and in valleys of the sampled profile -- a piece is sampled only as finely as
  its first grid (``Certificate.grid_spacing``): a barrier narrower than that can go unseen there.

So the certificate is the largest energy *found*: a lower estimate of the true maximum, not a proof of
an upper bound. A NaN energy counts as +inf and ends its piece's refinement (nothing can be higher).

>>> import torch
>>> from modeconnect.energy import Energy
>>> from modeconnect.path import Path
>>> net = torch.nn.Linear(1, 1, bias=False)
>>> x = torch.ones(4, 1)
>>> energy = Energy(net, x, torch.zeros(4, 1), "mae", strategy="loop")
>>> path = Path([{"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[3.0]])}])
>>> cert = certify(path, energy, resolution=1e-3, threshold=2.0)
>>> round(cert.max_energy, 6), 5e-4 < cert.resolution <= 1e-3, cert.certified, cert.kind
(3.0, True, False, 'sampled')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .path import Path

__all__ = ["CertifyConfig", "Certificate", "certify", "certify_segment"]

DEFAULT_GRID = 65
"""Points of the first grid when the resolution asked is finer than its spacing, 1/64."""
_SLACK = 1e-9
"""Relative slack on spacing comparisons, so that rounding (``linspace(0, 1, 21)``'s widest gap is
0.05 + 4e-17) neither calls a gap of exactly ``resolution`` too wide, nor adds a needless point, nor
reports the resolution as missed."""


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class CertifyConfig:
    """How a path is certified by refined sampling (every setting is recorded with the result)."""

    resolution: float = 1e-3
    """Target sample spacing in t within and next to every local maximum of the sampled profile."""
    initial_grid: int | None = None
    """Points of the first uniform grid per piece (endpoints included). None: ``min(65, ceil(1/resolution)
    + 1)``, the coarsest grid that either meets a coarse resolution at once or sees the profile's shape."""
    refine_points: int = 1
    """At most this many new points per too-wide gap of a maximum per round: 1 = bisection (fewest
    evaluations); more = fewer, larger batches. Never more than bring the gap to ``resolution``."""
    max_evaluations: int = 4000
    """Cap on evaluated points per piece; if hit, the certificate reports the resolution achieved."""

    def __post_init__(self) -> None:
        r = self.resolution
        if not (isinstance(r, Real) and not isinstance(r, bool) and 0 < r < 1):
            raise ConfigError(f"certify resolution must be in (0, 1), got {r!r}")
        if not (self.initial_grid is None or _is_int(self.initial_grid) and self.initial_grid >= 3):
            raise ConfigError(f"certify initial_grid must be None or an int >= 3, got {self.initial_grid!r}")
        if not (_is_int(self.refine_points) and self.refine_points >= 1):
            raise ConfigError(f"certify refine_points must be an int >= 1, got {self.refine_points!r}")
        if not (_is_int(self.max_evaluations) and self.max_evaluations >= self.grid_points):
            raise ConfigError(f"certify max_evaluations ({self.max_evaluations!r}) must be an int >= the "
                              f"initial grid ({self.grid_points} points)")

    @property
    def grid_points(self) -> int:
        """Points of the first grid actually used (``initial_grid``, or the default derived from the resolution)."""
        if self.initial_grid is not None:
            return self.initial_grid
        return min(DEFAULT_GRID, math.ceil(1.0 / self.resolution * (1 - _SLACK)) + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # fields only, so that it round-trips; the grid used is in the Certificate


@dataclass(frozen=True)
class Certificate:
    """The result of :func:`certify`: the largest energy found by refined sampling, *not* a proof.

    Within and next to every sampled local maximum (plateaus whole) samples are at most ``resolution``
    apart; elsewhere only ``grid_spacing`` apart, and a barrier narrower than that can be missed there.
    ``max_energy`` is therefore a lower estimate of the true maximum; ``kind`` says so in every record.
    """

    max_energy: float
    """Largest energy found anywhere on the path."""
    segment: int
    """Index of the piece holding that maximum."""
    t: float
    """Position of the maximum within its piece (0 = left bead, 1 = right bead); on a plateau, its left end."""
    resolution: float
    """Widest gap (in t) between consecutive samples within or next to any sampled local maximum (a
    plateau counts whole), over all pieces: the resolution achieved, larger than asked only if the budget
    ran out."""
    param_resolution: float
    """The same spacing as a parameter-space distance (spacing x piece length), worst over pieces."""
    segment_max: list[float]
    n_evaluations: int
    threshold: float | None = None
    """The level L0 the path was checked against (None: no verdict asked)."""
    tolerance: float = 1.0
    """The path passes when ``max_energy <= tolerance * threshold``."""
    kind: str = "sampled"
    """How the maximum was found: ``sampled`` (refined sampling at ``resolution``; a lower estimate of the
    true maximum, not an upper bound)."""
    grid_spacing: float | None = None
    """Spacing (in t) of the first uniform grid: away from the sampled maxima no finer sampling is promised."""

    @property
    def certified(self) -> bool | None:
        """Whether the largest sampled energy is within ``tolerance * threshold`` (None without a threshold)."""
        if self.threshold is None:
            return None
        return self.max_energy <= self.tolerance * self.threshold

    @property
    def statement(self) -> str:
        """One sentence saying what this certificate establishes."""
        grid = "" if self.grid_spacing is None else f", {self.grid_spacing:.2g} elsewhere"
        return (f"largest energy found by refined sampling, samples at most {self.resolution:.2g} apart in t "
                f"within and next to every sampled maximum{grid} ({self.n_evaluations} evaluations); "
                f"a sampled check, not a proof")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "certified": self.certified, "statement": self.statement}


def _maximum_gaps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gaps (index j: between samples j and j + 1) within and next to every local maximum.

    A local maximum is a run of equal samples higher than the samples on both sides; its gaps are the
    ones inside the run and the two to its lower neighbours. Returns ``(gap, level)``: each such gap and
    the value of its maximum. Two maxima never share a gap: a lower sample always lies between them.
    """
    n = len(values)
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    ends = np.concatenate([starts[1:] - 1, [n - 1]])
    level = values[starts]
    left = np.where(starts > 0, values[np.maximum(starts - 1, 0)], -np.inf)
    right = np.where(ends < n - 1, values[np.minimum(ends + 1, n - 1)], -np.inf)
    peak = (level > left) & (level > right)
    gaps = [np.arange(max(s - 1, 0), min(e, n - 2) + 1) for s, e in zip(starts[peak], ends[peak])]
    levels = [np.full(len(g), v) for g, v in zip(gaps, level[peak])]
    return np.concatenate(gaps), np.concatenate(levels)


def certify_segment(evaluate: Callable[[np.ndarray], np.ndarray], config: CertifyConfig
                    ) -> tuple[float, float, float, int]:
    """Refine one piece whose energy at ``ts`` is ``evaluate(ts)`` (NaN counts as +inf); see the module doc.

    ``evaluate`` is called once per round with all new positions (float64, sorted, never repeated).
    Returns ``(max_energy, argmax_t, achieved_resolution, n_evaluations)``.
    """
    r = config.resolution
    ts = np.linspace(0.0, 1.0, config.grid_points)
    values = np.nan_to_num(np.asarray(evaluate(ts), dtype=np.float64), nan=np.inf)
    while True:
        budget = config.max_evaluations - len(ts)
        gap, level = _maximum_gaps(values)
        width = ts[gap + 1] - ts[gap]
        coarse = width > r * (1 + _SLACK)
        if budget <= 0 or not coarse.any() or np.isinf(values.max()):
            break
        gap, level, width = gap[coarse], level[coarse], width[coarse]
        parts = np.clip(np.ceil(width / r * (1 - _SLACK)).astype(int), 2, config.refine_points + 1)
        # Highest maxima first, so that if the budget runs short it is spent where the energy is largest.
        order = np.lexsort((-width, -level))
        new = np.concatenate([np.linspace(ts[gap[k]], ts[gap[k] + 1], parts[k] + 1)[1:-1] for k in order])[:budget]
        new = np.unique(new[(new > 0) & (new < 1) & ~np.isin(new, ts)])  # no repeats (gaps near float eps)
        if new.size == 0:
            break
        new_values = np.nan_to_num(np.asarray(evaluate(new), dtype=np.float64), nan=np.inf)
        ts, values = np.concatenate([ts, new]), np.concatenate([values, new_values])
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
    gap, _ = _maximum_gaps(values)
    achieved = float(np.max(ts[gap + 1] - ts[gap]))
    achieved = min(achieved, r) if achieved <= r * (1 + _SLACK) else achieved  # rounding is not a shortfall
    k = int(np.argmax(values))
    return float(values[k]), float(ts[k]), achieved, len(ts)


def certify(path: Path, energy, config: CertifyConfig | None = None, *, threshold: float | None = None,
            tolerance: float = 1.0, on_evaluated: Callable[[int, int], None] | None = None,
            **settings: Any) -> Certificate:
    """Find the maximum energy along every piece of ``path`` by refined sampling (see the module doc).

    Args:
        config: a :class:`CertifyConfig`, or give its fields as keyword ``settings`` (``resolution=1e-2``);
            settings given with a config override its fields.
        threshold, tolerance: when given, the certificate's ``certified`` says whether
            ``max_energy <= tolerance * threshold``.
        on_evaluated: called after every batch of evaluations with ``(piece, evaluations so far)``, all pieces
            together (progress displays).
    """
    try:
        config = CertifyConfig(**settings) if config is None else replace(config, **settings)
    except TypeError as exc:
        raise ConfigError(f"unknown certification setting: {exc}") from None
    seg_max, seg_t, worst_t, worst_param, total = [], [], 0.0, 0.0, 0
    def evaluate(i: int, ts: np.ndarray) -> np.ndarray:
        values = path.energies(i, torch.from_numpy(ts), energy).numpy()
        evaluated[0] += len(ts)
        if on_evaluated is not None:
            on_evaluated(i, evaluated[0])
        return values

    evaluated = [0]
    for i, length in enumerate(path.segment_lengths):
        m, t, achieved, n = certify_segment(lambda ts, i=i: evaluate(i, ts), config)
        seg_max.append(m)
        seg_t.append(t)
        worst_t = max(worst_t, achieved)
        worst_param = max(worst_param, achieved * length)
        total += n
    k = int(np.argmax(seg_max))
    return Certificate(max_energy=seg_max[k], segment=k, t=seg_t[k], resolution=worst_t,
                       param_resolution=worst_param, segment_max=seg_max, n_evaluations=total,
                       threshold=threshold, tolerance=tolerance, grid_spacing=1.0 / (config.grid_points - 1))

"""Freeman & Bruna (2017), Theorem 2.4 and Corollary 2.5 measured: the energy gap of one pair of networks, and
the exponent of epsilon(m) against the width m. ``docs/width_scaling.md`` derives and discusses each definition.

For a pair (A, B) with endpoint level E = max(energy(A), energy(B)):

* :func:`line_gap`: eps_line = M_line - E, with M_line the certified maximum of the straight segment A-B;
* :func:`dss_gap`: greedy DSS at the levels L0 = E + g, g = eps_line / ratio^j for j = 1, 2, ... while
  g >= floor, beads trained to E + bead_fraction * g (so never below the endpoints' level); the scan goes down
  and stops at the first level where DSS does not connect or its certificate fails. eps_dss = min(eps_line,
  certified maximum - E over the levels passed), hence 0 <= eps_dss <= eps_line;
* the proof's own path: :func:`modeconnect.theory.construction.construction_gap`.

:func:`fit_exponent` fits log mean(eps) = a + b log m over the widths, with the textbook standard error of b
and a bootstrap over the pairs within each width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..certify import CertifyConfig, certify
from ..connect import connect
from ..energy import Energy
from ..errors import ConfigError
from ..params import Point
from ..path import Path
from ..train import Objective, TrainConfig

__all__ = ["LadderConfig", "line_gap", "dss_gap", "ExponentFit", "fit_exponent", "endpoint_level", "gap_above",
           "ROUNDING"]

ROUNDING = 1e-5
"""Gaps within this fraction of the endpoint level are float32 rounding (a piece of constant function evaluated
through different weights), reported as 0."""


def gap_above(maximum: float, level: float) -> float:
    """maximum - level, or 0 when it is below ``ROUNDING * level`` (never negative)."""
    gap = maximum - level
    return 0.0 if gap <= ROUNDING * abs(level) else gap


def endpoint_level(a: Point, b: Point, energy: Energy) -> tuple[list[float], float]:
    """The endpoints' energies and their maximum E, the level every gap is measured from."""
    ends = [float(energy(a)), float(energy(b))]
    return ends, max(ends)


def line_gap(a: Point, b: Point, energy: Energy, *, resolution: float = 1e-3) -> dict[str, Any]:
    """The straight line's gap: its certified maximum (refined sampling at ``resolution`` in t) minus the
    endpoint level E = max(energy(a), energy(b)); never negative (the endpoints lie on the line)."""
    ends, level = endpoint_level(a, b, energy)
    cert = certify(Path([a, b]), energy, CertifyConfig(resolution=resolution))
    return {"endpoint_energies": ends, "level": level, "line_max": cert.max_energy, "line_argmax_t": cert.t,
            "eps_line": gap_above(cert.max_energy, level), "resolution": resolution}


@dataclass(frozen=True)
class LadderConfig:
    """The DSS level ladder below the line's gap, and the DSS budget at each level (all recorded)."""

    ratio: float = 2.0
    """Successive gaps g_j = eps_line / ratio^j."""
    max_rungs: int = 6
    """Most DSS runs per pair."""
    floor: float = 1e-4
    """Smallest gap tried (absolute energy units): a pair that still connects there is reported as censored."""
    bead_fraction: float = 0.5
    """Beads are trained to E + bead_fraction * g, i.e. alpha = (E + bead_fraction g) / (E + g)."""
    resolution: float = 1e-2
    """Certification resolution (in t) of every DSS path."""
    max_beads: int = 8
    max_depth: int = 4
    grid_size: int = 17
    bead_training: TrainConfig = field(default_factory=lambda: TrainConfig(
        optimizer="adam", lr=0.01, check_every=25, max_steps=2000, stall_steps=500))
    """How DSS trains its beads."""
    max_time_s: float | None = None
    """Wall-time budget of each DSS run (None: unlimited)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and self.ratio > 1):
            raise ConfigError(f"ladder ratio must be > 1 (gaps shrink by it from rung to rung), got {self.ratio}")
        if self.max_rungs < 0:
            raise ConfigError(f"max_rungs must be >= 0, got {self.max_rungs}")
        if not (math.isfinite(self.floor) and self.floor > 0):
            raise ConfigError(f"floor must be a positive gap, got {self.floor}")
        if not 0 < self.bead_fraction < 1:
            raise ConfigError(f"bead_fraction must be in (0, 1) (beads sit strictly inside the gap), "
                              f"got {self.bead_fraction}")
        if not 0 < self.resolution <= 0.5:
            raise ConfigError(f"resolution must be in (0, 0.5], got {self.resolution}")
        if isinstance(self.bead_training, dict):
            object.__setattr__(self, "bead_training", TrainConfig(**self.bead_training))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bead_training"] = self.bead_training.to_dict()
        return out


def dss_gap(a: Point, b: Point, energy: Energy, objective: Objective, *, eps_line: float,
            config: LadderConfig = LadderConfig(), seed: int = 0,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Greedy DSS down the level ladder below ``eps_line`` (see the module docstring).

    Returns eps_dss, the record of every level tried, ``stopped`` (``"failed"``: DSS did not pass the last level
    tried; ``"floor"``: the next gap would be below ``config.floor``; ``"max_rungs"``: the ladder's length) and
    ``censored`` (DSS never failed, so the true DSS gap may be lower than eps_dss: the ladder ended first)."""
    if not (math.isfinite(eps_line) and eps_line >= 0):
        raise ConfigError(f"eps_line must be a finite gap >= 0 (line_gap's eps_line), got {eps_line}")
    say = progress or (lambda line: None)
    _, level = endpoint_level(a, b, energy)
    best, rungs, stopped = eps_line, [], "max_rungs"
    for j in range(1, config.max_rungs + 1):
        gap = eps_line / config.ratio**j
        if gap < config.floor:
            stopped = "floor"
            break
        threshold = level + gap
        start = time.perf_counter()
        result = connect(a, b, energy, threshold=threshold, method="greedy_dss", objective=objective,
                         certification=CertifyConfig(resolution=config.resolution),
                         alpha=(level + config.bead_fraction * gap) / threshold, max_beads=config.max_beads,
                         max_depth=config.max_depth, grid_size=config.grid_size, seed=seed + j,
                         bead_training=config.bead_training, max_time_s=config.max_time_s)
        cert = result.certificate
        passed = bool(result.connected and cert.certified)
        rungs.append({"gap": gap, "threshold": threshold, "connected": result.connected, "certified": cert.certified,
                      "passed": passed, "reason": result.outcome.reason, "n_beads": result.path.n_beads,
                      "certified_max": cert.max_energy, "seconds": round(time.perf_counter() - start, 3)})
        say(f"  DSS at gap {gap:.3g}: {'passed' if passed else 'failed'} ({result.outcome.reason}, "
            f"{result.path.n_beads} beads, certified max {cert.max_energy:.4g})")
        if not passed:
            stopped = "failed"
            break
        best = min(best, gap_above(cert.max_energy, level))
    return {"eps_dss": best, "level": level, "rungs": rungs, "stopped": stopped, "censored": stopped != "failed",
            "ladder": config.to_dict()}


@dataclass(frozen=True)
class ExponentFit:
    """Least-squares fit of log mean(eps) = intercept + slope * log m, one point per width."""

    slope: float
    intercept: float
    slope_se: float
    """Textbook standard error of the slope: sqrt(RSS / (W - 2) / sum (log m - mean)^2) over the W widths."""
    dof: int
    """W - 2: the residual degrees of freedom of the textbook error."""
    widths: list[float]
    """The widths fitted (those whose mean gap is positive)."""
    mean_gaps: list[float]
    excluded_widths: list[float]
    """Widths whose pairs all have gap 0 (connected at the endpoints' level): a log cannot hold them."""
    bootstrap_se: float | None = None
    """Standard deviation of the slope over resamples of the pairs within each width (None: not asked)."""

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """A ``level`` interval for the slope: the larger of the Student-t interval of the textbook error
        (W - 2 degrees of freedom) and the normal interval of the bootstrap error."""
        q = 0.5 + level / 2
        half = float(stats.t.ppf(q, self.dof)) * self.slope_se
        if self.bootstrap_se is not None:
            half = max(half, float(stats.norm.ppf(q)) * self.bootstrap_se)
        return self.slope - half, self.slope + half

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval95": list(self.interval())}


def _ols(logm: np.ndarray, loge: np.ndarray) -> tuple[float, float, float]:
    centred = logm - logm.mean()
    sxx = float(centred @ centred)
    slope = float(centred @ (loge - loge.mean()) / sxx)
    intercept = float(loge.mean() - slope * logm.mean())
    residuals = loge - intercept - slope * logm
    dof = len(loge) - 2
    s2 = float(residuals @ residuals) / dof if dof > 0 else float("nan")
    return slope, intercept, math.sqrt(s2 / sxx)


def _mean_curve(groups: dict[float, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ws = np.array([w for w, g in groups.items() if g.mean() > 0])
    return ws, np.array([groups[w].mean() for w in ws])


def fit_exponent(widths: Sequence[float], gaps: Sequence[float], *, bootstrap: int = 0,
                 seed: int = 0) -> ExponentFit:
    """Fit log mean gap = a + b log width, where the mean is over the pairs of each width (gaps of 0 count:
    they are pairs connected at their own level); see :class:`ExponentFit`. ``bootstrap`` resamples the pairs
    within each width that many times (seeded by ``seed``) and refits.

    >>> fit = fit_exponent([4, 8, 16, 32], [1.0, 0.5, 0.25, 0.125])
    >>> round(fit.slope, 6), round(fit.slope_se, 6)
    (-1.0, 0.0)
    """
    m = np.asarray(widths, dtype=np.float64)
    e = np.asarray(gaps, dtype=np.float64)
    if m.shape != e.shape or m.ndim != 1:
        raise ConfigError(f"widths and gaps must be two lists of one length, got {m.shape} and {e.shape}")
    if not (np.isfinite(m).all() and (m > 0).all()):
        raise ConfigError("widths must be positive numbers")
    if not (np.isfinite(e).all() and (e >= 0).all()):
        raise ConfigError("gaps must be finite and >= 0 (a gap is a maximum minus the endpoints' level)")
    groups = {float(w): e[m == w] for w in np.unique(m)}
    ws, means = _mean_curve(groups)
    if len(ws) < 3:
        raise ConfigError(f"an exponent fit needs >= 3 widths with a positive mean gap, got {len(ws)} "
                          f"(of {len(groups)} widths)")
    slope, intercept, se = _ols(np.log(ws), np.log(means))
    boot = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        slopes = []
        for _ in range(int(bootstrap)):
            resampled = {w: rng.choice(g, size=len(g), replace=True) for w, g in groups.items()}
            bw, bm = _mean_curve(resampled)
            if len(bw) >= 3:
                slopes.append(_ols(np.log(bw), np.log(bm))[0])
        boot = float(np.std(slopes, ddof=1)) if len(slopes) >= 2 else None
    return ExponentFit(slope, intercept, se, len(ws) - 2, ws.tolist(), means.tolist(),
                       sorted(set(groups) - set(ws.tolist())), boot)

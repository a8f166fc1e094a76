"""Freeman & Bruna (2017), Theorem 2.4 and Corollary 2.5 measured: the energy gap of one pair of two-layer ReLU
networks, three ways, and the exponent of epsilon(m) against the width m.

For a pair (A, B) with endpoint level E = max(energy(A), energy(B)) (``docs/width_scaling.md`` derives and
discusses each definition):

* :func:`line_gap`: eps_line = M_line - E, with M_line the certified maximum of the straight segment A-B;
* :func:`dss_gap`: greedy DSS at the levels L0 = E + g, g = eps_line / ratio^j for j = 1, 2, ... while
  g >= floor, beads trained to E + bead_fraction * g (so never below the endpoints' level); the scan goes down
  and stops at the first level where DSS does not connect or its certificate fails. eps_dss = min(eps_line,
  certified maximum - E over the levels passed), hence 0 <= eps_dss <= eps_line;
* :func:`construction_gap`: the proof's subpaths made concrete (:func:`construction_path`: refit, rotate units
  within alpha onto shared directions, merge, refit, swap in an oracle, and back down B's side);
  eps_construction = M - E for the best angle alpha tried.

:func:`fit_exponent` fits log eps = a + b log m by least squares with the textbook standard error of b and,
optionally, a bootstrap over pairs within each width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..certify import CertifyConfig, certify
from ..connect import connect
from ..energy import Energy
from ..errors import ConfigError
from ..params import Point
from ..path import Path
from ..train import Objective, TrainConfig

__all__ = ["LadderConfig", "line_gap", "dss_gap", "Construction", "construction_path", "construction_gap",
           "ExponentFit", "fit_exponent"]


def _endpoint_level(a: Point, b: Point, energy: Energy) -> tuple[list[float], float]:
    ends = [float(energy(a)), float(energy(b))]
    return ends, max(ends)


def line_gap(a: Point, b: Point, energy: Energy, *, resolution: float = 1e-3) -> dict[str, Any]:
    """The straight line's gap: its certified maximum (refined sampling at ``resolution`` in t) minus the
    endpoint level E = max(energy(a), energy(b)); never negative (the endpoints lie on the line)."""
    ends, level = _endpoint_level(a, b, energy)
    cert = certify(Path([a, b]), energy, CertifyConfig(resolution=resolution))
    return {"endpoint_energies": ends, "level": level, "line_max": cert.max_energy, "line_argmax_t": cert.t,
            "eps_line": max(0.0, cert.max_energy - level), "resolution": resolution}


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
    """Greedy DSS down the level ladder below ``eps_line`` (see the module docstring); returns eps_dss, the
    records of every level tried and whether the result is censored (DSS still passed at the last level tried
    because the ladder ended there, so the true gap may be lower)."""
    say = progress or (lambda line: None)
    _, level = _endpoint_level(a, b, energy)
    best, rungs, censored = max(0.0, eps_line), [], False
    for j in range(1, config.max_rungs + 1):
        gap = eps_line / config.ratio**j
        if gap < config.floor:
            censored = True
            break
        threshold = level + gap
        start = time.perf_counter()
        result = connect(a, b, energy, threshold=threshold, method="greedy_dss", objective=objective,
                         certification=CertifyConfig(resolution=config.resolution),
                         alpha=(level + config.bead_fraction * gap) / threshold, max_beads=config.max_beads,
                         max_depth=config.max_depth, grid_size=config.grid_size, seed=seed + j,
                         bead_training=config.bead_training, max_time_s=config.max_time_s)
        cert = result.certificate
        passed = bool(result.connected and cert is not None and cert.certified)
        rungs.append({"gap": gap, "threshold": threshold, "connected": result.connected, "certified": cert.certified,
                      "passed": passed, "reason": result.outcome.reason, "n_beads": result.path.n_beads,
                      "certified_max": cert.max_energy, "seconds": round(time.perf_counter() - start, 3)})
        say(f"  DSS at gap {gap:.3g}: {'passed' if passed else 'failed'} ({result.outcome.reason}, "
            f"{result.path.n_beads} beads, certified max {cert.max_energy:.4g})")
        if not passed:
            break
        best = min(best, max(0.0, cert.max_energy - level))
    else:
        censored = bool(rungs) and rungs[-1]["passed"]
    return {"eps_dss": best, "level": level, "rungs": rungs, "censored": censored, "ladder": config.to_dict()}


KEYS = ("0.weight", "0.bias", "2.weight", "2.bias")
"""The parameter names of ``Sequential(Linear(n, m), ReLU(), Linear(m, 1))``, the layout the construction reads."""


def _check_layout(point: Point, name: str) -> None:
    if set(point) != set(KEYS):
        raise ConfigError(f"{name}: the construction needs a two-layer ReLU net Sequential(Linear(n, m), ReLU(), "
                          f"Linear(m, 1)) with parameters {', '.join(KEYS)}; got {', '.join(sorted(point))}")
    m = point["0.weight"].shape[0]
    if point["0.bias"].shape != (m,) or point["2.weight"].shape != (1, m) or point["2.bias"].shape != (1,):
        raise ConfigError(f"{name}: shapes do not fit one hidden layer of width {m} and one output")


def _units(point: Point) -> torch.Tensor:
    """Each hidden unit's weight on the input augmented by 1: an (m, n + 1) float64 matrix."""
    return torch.cat([point["0.weight"], point["0.bias"].unsqueeze(1)], dim=1).double()


def _with(point: Point, *, units: torch.Tensor | None = None, beta: torch.Tensor | None = None,
          c: torch.Tensor | float | None = None) -> Point:
    """``point`` with its hidden units, output weights and/or output bias replaced (in the point's dtype)."""
    out = {k: v.clone() for k, v in point.items()}
    dtype = point["0.weight"].dtype
    if units is not None:
        out["0.weight"], out["0.bias"] = units[:, :-1].to(dtype).contiguous(), units[:, -1].to(dtype).contiguous()
    if beta is not None:
        out["2.weight"] = beta.to(dtype).reshape(1, -1)
    if c is not None:
        out["2.bias"] = torch.as_tensor(c, dtype=dtype).reshape(1)
    return out


def _refit(units: torch.Tensor, x: torch.Tensor, y: torch.Tensor, support: Sequence[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares output weights on the ``support`` units (zero elsewhere) and output bias (minimum-norm
    solution: a unit silent on the data gets 0). The MSE is convex in these, so the straight segment from any
    output layer to this one never rises above its start."""
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    idx = list(support)
    design = torch.cat([torch.relu(xa @ units[idx].T), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.lstsq(design, y.double().reshape(-1, 1), driver="gelsd").solution[:, 0]
    beta = torch.zeros(len(units), dtype=torch.float64)
    beta[idx] = coef[:-1]
    return beta, coef[-1]


def _compress(point: Point, x: torch.Tensor, y: torch.Tensor, alpha: float, need: int
              ) -> tuple[list[Point], list[int], int]:
    """Subpaths (1)-(2) of the proof on one side: the points refit, rotate, merge and refit-on-support, the free
    slots (zero output weight at the last point) and how many units alpha could free at most.

    Units silent on the data are free at no cost. The others are clustered greedily by angle (most important
    unit first, importance |beta_i| ||w_i||; a unit joins the nearest centre within alpha, else starts a
    cluster). Only as many members as ``need`` asks for are rotated onto their centres, cheapest first (cost
    |beta_i| ||w_i|| times the angle): rotating more would only add error."""
    units = _units(point)
    norms = units.norm(dim=1)
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    live = (norms > 1e-12) & (torch.relu(xa @ units.T).abs().sum(0) > 0)
    beta1, c1 = _refit(units, x, y, range(len(units)))
    refit = _with(point, beta=beta1, c=c1)
    directions = units / norms.clamp_min(1e-300).unsqueeze(1)
    weight = beta1.abs() * norms
    members: list[tuple[float, int, int]] = []  # (cost, unit, centre)
    centres: list[int] = []
    for i in sorted(torch.nonzero(live).flatten().tolist(), key=lambda i: -float(weight[i])):
        if centres:
            cosines = directions[centres] @ directions[i]
            j = int(cosines.argmax())
            angle = math.acos(float(cosines[j].clamp(-1, 1)))
            if angle <= alpha:
                members.append((float(weight[i]) * angle, i, centres[j]))
                continue
        centres.append(i)
    dead = [i for i in range(len(units)) if not bool(live[i])]
    members.sort()
    merged_members = members[:max(0, need - len(dead))]
    rotated_units, merged = units.clone(), beta1.clone()
    for _, i, c in merged_members:
        rotated_units[i] = norms[i] * directions[c]  # moves unit i by its angle to the centre, <= alpha
        merged[c] += beta1[i] * norms[i] / norms[c]  # same function: the two features are proportional
        merged[i] = 0.0
    merged[dead] = 0.0
    free = sorted(dead + [i for _, i, _ in merged_members])
    kept = [i for i in range(len(units)) if i not in set(free)]
    rotated = _with(refit, units=rotated_units)
    beta4, c4 = _refit(rotated_units, x, y, kept)
    points = [refit, rotated, _with(rotated, beta=merged), _with(rotated, beta=beta4, c=c4)]
    return points, free, len(dead) + len(members)


@dataclass
class Construction:
    """The proof's path between two networks (None when an alpha frees too few units), the label of each
    piece and how many units each side freed."""

    path: Path | None
    labels: list[str]
    freed_a: int
    """How many of A's units alpha could free (silent units plus cluster members); the path frees as many as the
    oracle needs."""
    freed_b: int


PIECES = ("refit A's output layer", "rotate A's units by <= alpha", "merge A's parallel units",
          "refit A on the kept units", "oracle units into A's free slots", "output layer A -> oracle",
          "copy the oracle into B's free slots", "hand the output weights over", "idle units to B's atoms",
          "output layer oracle -> B", "oracle out of B's free slots", "un-refit B on the kept units",
          "split B's merged units", "rotate B's units back", "back to B's output layer")
"""The pieces of :func:`construction_path`, in order (B's side is B's own construction reversed)."""


def construction_path(a: Point, b: Point, x: torch.Tensor, y: torch.Tensor, oracle: Point, *,
                      alpha: float) -> Construction:
    """The path of the proof of Theorem 2.4 (Appendix B.4), made concrete for ``Linear -> ReLU -> Linear`` nets
    on data (x, y) and the squared loss (``docs/width_scaling.md`` for the derivation and the departures).

    On each side: refit the output layer by least squares (convex: no rise); rotate every hidden unit onto the
    direction of its cluster's centre (greedy clustering by angle <= ``alpha``; the only pieces with no convexity
    bound: the proof's O(alpha) term); merge each cluster into its centre (the features are proportional, so the
    function is constant); refit on the centres. The freed units then take the ``oracle``'s units (constant: their
    output weights are 0), the output layer moves to the oracle's (convex), the oracle is handed from A's free
    slots to B's through the idle ones (constant), and B's side is run backwards. Both endpoints are reproduced
    exactly. Needs at least as many freed units on each side as the oracle has units.
    """
    for point, name in ((a, "model_a"), (b, "model_b"), (oracle, "oracle")):
        _check_layout(point, name)
    m, k = a["0.weight"].shape[0], oracle["0.weight"].shape[0]
    if b["0.weight"].shape != a["0.weight"].shape or oracle["0.weight"].shape[1] != a["0.weight"].shape[1]:
        raise ConfigError("model_a, model_b and the oracle must share the input dimension (and A, B the width)")
    if not (math.isfinite(alpha) and 0 <= alpha <= math.pi):
        raise ConfigError(f"alpha is an angle in [0, pi] radians, got {alpha}")
    side_a, free_a, can_a = _compress(a, x, y, alpha, k)
    side_b, free_b, can_b = _compress(b, x, y, alpha, k)
    if len(free_a) < k or len(free_b) < k or k >= m:
        return Construction(None, [], can_a, can_b)
    common = [i for i in free_a if i in set(free_b)][:k]
    slots_a = common + [i for i in free_a if i not in set(common)][:k - len(common)]
    slots_b = common + [i for i in free_b if i not in set(free_a)][:k - len(common)]
    o_units, o_beta, o_c = _units(oracle), oracle["2.weight"][0].double(), oracle["2.bias"][0].double()

    def with_oracle(last: Point, slots: list[int]) -> tuple[Point, Point]:
        units = _units(last)
        units[slots] = o_units
        beta = torch.zeros(m, dtype=torch.float64)
        beta[slots] = o_beta
        placed = _with(last, units=units)
        return placed, _with(placed, beta=beta, c=o_c)

    placed_a, oracle_a = with_oracle(side_a[-1], slots_a)
    placed_b, oracle_b = with_oracle(side_b[-1], slots_b)
    units = _units(oracle_a)
    units[slots_b] = o_units
    copied = _with(oracle_a, units=units)
    beta = torch.zeros(m, dtype=torch.float64)
    beta[slots_b] = o_beta
    handed = _with(copied, beta=beta)
    beads = [a, *side_a, placed_a, oracle_a, copied, handed, oracle_b, placed_b, *side_b[::-1], b]
    return Construction(Path(beads), list(PIECES), can_a, can_b)


def _where(labels: list[str], segment_max: list[float]) -> str:
    """The first piece that reaches the path's maximum (pieces of constant energy tie with their neighbour's
    end: the first one is where the energy got there)."""
    top = max(segment_max)
    return labels[next(i for i, v in enumerate(segment_max) if v >= top - 1e-9 * max(1.0, abs(top)))]


def construction_gap(a: Point, b: Point, energy: Energy, oracle: Point, *, alphas: Sequence[float],
                     resolution: float = 1e-2) -> dict[str, Any]:
    """The proof's path (:func:`~modeconnect.theory.width_construction.construction_path`) for each angle in
    ``alphas`` that frees enough units in both networks for ``oracle``; eps_construction is the lowest certified
    maximum minus E over them (None when no angle is feasible)."""
    _, level = _endpoint_level(a, b, energy)
    tried, best = [], None
    for alpha in alphas:
        built = construction_path(a, b, energy.inputs, energy.targets, oracle, alpha=float(alpha))
        record = {"alpha": float(alpha), "freed_a": built.freed_a, "freed_b": built.freed_b,
                  "feasible": built.path is not None}
        if built.path is not None:
            cert = certify(built.path, energy, CertifyConfig(resolution=resolution))
            record.update(certified_max=cert.max_energy, eps=max(0.0, cert.max_energy - level),
                          worst_piece=_where(built.labels, cert.segment_max), n_pieces=built.path.n_pieces)
            if best is None or record["eps"] < best["eps"]:
                best = record
        tried.append(record)
    return {"eps_construction": None if best is None else best["eps"], "alpha": None if best is None else
            best["alpha"], "worst_piece": None if best is None else best["worst_piece"], "level": level,
            "tried": tried, "resolution": resolution}


@dataclass(frozen=True)
class ExponentFit:
    """Least-squares fit of log eps = intercept + slope * log m."""

    slope: float
    intercept: float
    slope_se: float
    """Textbook standard error of the slope: sqrt(RSS / (N - 2) / sum (log m - mean)^2)."""
    n_points: int
    n_excluded: int
    """Gaps <= 0 (or non-finite) left out of the fit: a log cannot hold them."""
    residual_sd: float
    bootstrap_se: float | None = None
    """Standard deviation of the slope over resamples of the pairs within each width (None: not asked)."""

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """slope +- z * the larger of the two standard errors."""
        se = max(self.slope_se, self.bootstrap_se or 0.0)
        return self.slope - z * se, self.slope + z * se

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval95": list(self.interval())}


def _ols(logm: np.ndarray, loge: np.ndarray) -> tuple[float, float, float, float]:
    centred = logm - logm.mean()
    sxx = float(centred @ centred)
    slope = float(centred @ (loge - loge.mean()) / sxx)
    intercept = float(loge.mean() - slope * logm.mean())
    residuals = loge - intercept - slope * logm
    dof = len(loge) - 2
    s2 = float(residuals @ residuals) / dof if dof > 0 else float("nan")
    return slope, intercept, math.sqrt(s2 / sxx), math.sqrt(s2)


def fit_exponent(widths: Sequence[float], gaps: Sequence[float], *, bootstrap: int = 0,
                 seed: int = 0) -> ExponentFit:
    """Fit log gap = a + b log width over all pairs (one point per pair); see :class:`ExponentFit`.

    >>> fit = fit_exponent([4, 8, 16, 32], [1.0, 0.5, 0.25, 0.125])
    >>> round(fit.slope, 6), round(fit.slope_se, 6)
    (-1.0, 0.0)
    """
    m = np.asarray(widths, dtype=np.float64)
    e = np.asarray(gaps, dtype=np.float64)
    if m.shape != e.shape or m.ndim != 1:
        raise ConfigError(f"widths and gaps must be two lists of one length, got {m.shape} and {e.shape}")
    keep = np.isfinite(e) & (e > 0) & np.isfinite(m) & (m > 0)
    m, e = m[keep], e[keep]
    if len(m) < 3 or len(np.unique(m)) < 2:
        raise ConfigError(f"an exponent fit needs >= 3 positive gaps at >= 2 widths, got {len(m)} at "
                          f"{len(np.unique(m))} width(s)")
    logm, loge = np.log(m), np.log(e)
    slope, intercept, se, sd = _ols(logm, loge)
    boot = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        groups = [np.flatnonzero(m == w) for w in np.unique(m)]
        slopes = []
        for _ in range(int(bootstrap)):
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
            slopes.append(_ols(logm[idx], loge[idx])[0])
        boot = float(np.std(slopes, ddof=1))
    return ExponentFit(slope, intercept, se, int(len(m)), int((~keep).sum()), sd, boot)

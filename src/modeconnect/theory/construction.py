"""The path of the proof of Freeman & Bruna's Theorem 2.4 (Appendix B.4), made concrete for two-layer ReLU
networks ``Sequential(Linear(n, m), ReLU(), Linear(m, 1))`` on data (x, y) with the squared loss.

:func:`construction_path` builds it, :func:`construction_gap` certifies it for a few angles alpha and keeps the
best, :func:`nearest_unit_angles` measures the quantity the proof of Corollary 2.5 rests on (how close the
closest pairs of hidden units are). ``docs/width_scaling.md`` derives the pieces and states the departures.

>>> from modeconnect.tasks.teacher_student import teacher_point
>>> angles = nearest_unit_angles(teacher_point(input_dim=1))  # the 3-unit teacher's units in R^2
>>> len(angles), all(0 < t <= 3.1416 for t in angles)
(3, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..certify import CertifyConfig, certify
from ..energy import Energy
from ..errors import ConfigError
from ..params import Point
from ..path import Path
from .width_scaling import endpoint_level, gap_above

__all__ = ["Construction", "construction_path", "construction_gap", "nearest_unit_angles", "PIECES", "KEYS"]


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


RIDGES = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
"""Ridge strengths tried by the output-layer refits, strongest first (relative to the mean squared feature)."""


def _mse(design: torch.Tensor, coef: torch.Tensor, y: torch.Tensor) -> float:
    return float(((design @ coef - y) ** 2).mean())


def _refit(units: torch.Tensor, x: torch.Tensor, y: torch.Tensor, support: Sequence[int],
           ceiling: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output weights on the ``support`` units (zero elsewhere) and output bias.

    ``ceiling`` None: the minimum-norm least squares (the lowest MSE; a unit silent on the data gets 0).
    Otherwise the most regularised ridge fit (strengths :data:`RIDGES`, the bias unpenalised) whose MSE is at
    most halfway from the least-squares MSE up to ``ceiling`` (least squares itself if none is). The MSE is
    convex in these, so the straight segment from an output layer at MSE <= ceiling to this one never rises
    above the ceiling, and half the headroom is left for the rotations that follow.

    Why not always least squares: units with nearly the same kink on the data make it ill-conditioned, with
    huge cancelling output weights, and then rotating a unit by a tiny angle destroys the cancellation. The
    theorem keeps the output weights small with its penalty kappa ||beta||_1 (its constant C1 grows like
    1 / kappa); the ridge plays that role here, without changing the energy that is measured."""
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    idx = list(support)
    design = torch.cat([torch.relu(xa @ units[idx].T), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    target = y.double().reshape(-1, 1)
    coef = torch.linalg.lstsq(design, target, driver="gelsd").solution
    if ceiling is not None and idx:
        best = _mse(design, coef, target)
        allowed = best + 0.5 * max(0.0, ceiling - best)
        gram, rhs = design.T @ design, design.T @ target
        scale = float(gram.diagonal()[:-1].mean())
        penalty = torch.ones(len(idx) + 1, dtype=torch.float64)
        penalty[-1] = 0.0
        for ridge in RIDGES:
            if ridge == 0.0 or scale == 0.0:
                break
            trial = torch.linalg.solve(gram + ridge * scale * torch.diag(penalty), rhs)
            if _mse(design, trial, target) <= allowed:
                coef = trial
                break
    beta = torch.zeros(len(units), dtype=torch.float64)
    beta[idx] = coef[:-1, 0]
    return beta, coef[-1, 0]


def _point_mse(point: Point, units: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    out = torch.relu(xa @ units.T) @ point["2.weight"][0].double() + point["2.bias"][0].double()
    return float(((out - y.double().reshape(-1)) ** 2).mean())


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
    beta1, c1 = _refit(units, x, y, range(len(units)), _point_mse(point, units, x, y))
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
    merged_point = _with(rotated, beta=merged)
    beta4, c4 = _refit(rotated_units, x, y, kept)
    points = [refit, rotated, merged_point, _with(rotated, beta=beta4, c=c4)]
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
    """The piece responsible for the path's maximum: a rotation among the pieces that reach it (the only pieces
    that can raise the energy; the constant and convex pieces next to one share its end value), else the first
    piece that reaches it (an endpoint's own level, or a refit)."""
    top = max(segment_max)  # constant pieces agree with their neighbours only up to float32 rounding
    at_top = [i for i, v in enumerate(segment_max) if v >= top - 1e-6 * max(1e-3, abs(top))]
    rotations = [i for i in at_top if labels[i].startswith("rotate")]
    return labels[(rotations or at_top)[0]]


def construction_gap(a: Point, b: Point, energy: Energy, oracle: Point, *, alphas: Sequence[float],
                     resolution: float = 1e-2) -> dict[str, Any]:
    """The proof's path (:func:`construction_path`) for each angle in
    ``alphas`` that frees enough units in both networks for ``oracle``; eps_construction is the lowest certified
    maximum minus E over them (None when no angle is feasible)."""
    _, level = endpoint_level(a, b, energy)
    tried, best = [], None
    for alpha in alphas:
        built = construction_path(a, b, energy.inputs, energy.targets, oracle, alpha=float(alpha))
        record = {"alpha": float(alpha), "freed_a": built.freed_a, "freed_b": built.freed_b,
                  "feasible": built.path is not None}
        if built.path is not None:
            cert = certify(built.path, energy, CertifyConfig(resolution=resolution))
            record.update(certified_max=cert.max_energy, eps=gap_above(cert.max_energy, level),
                          worst_piece=_where(built.labels, cert.segment_max), n_pieces=built.path.n_pieces)
            if best is None or record["eps"] < best["eps"]:
                best = record
        tried.append(record)
    return {"eps_construction": None if best is None else best["eps"], "alpha": None if best is None else
            best["alpha"], "worst_piece": None if best is None else best["worst_piece"], "level": level,
            "tried": tried, "resolution": resolution}




def nearest_unit_angles(point: Point, *, x: torch.Tensor | None = None) -> list[float]:
    """For each hidden unit, the angle (radians) between its weight (w_i, b_i) in R^(n+1) and the nearest other
    unit's: the spacing the pigeonhole argument of Corollary 2.5 bounds by ~ m^(-1/n). Units with zero weight,
    or silent on every row of ``x`` when given, are left out (the proof frees them at no cost)."""
    _check_layout(point, "point")
    units = _units(point)
    keep = units.norm(dim=1) > 1e-12
    if x is not None:
        xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        keep &= torch.relu(xa @ units.T).sum(0) > 0
    live = units[keep]
    if len(live) < 2:
        return []
    d = live / live.norm(dim=1, keepdim=True)
    cosines = (d @ d.T).clamp(-1, 1)
    cosines.fill_diagonal_(-1.0)
    return torch.arccos(cosines.max(dim=1).values).tolist()

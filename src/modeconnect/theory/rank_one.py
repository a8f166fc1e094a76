"""The rank-one wall of the Gaussian-mixture counterexample (Freeman & Bruna 2017, Section 2.3.1).

Task ``gaussian-mixture`` (``docs/counterexample.md``): a network ``W2 relu(W1 x) + b`` with two hidden
units and no first-layer biases. ``det W1[:, :2]`` has opposite signs at the endpoints A and B, so every
continuous path crosses the *wall* ``det W1[:, :2] = 0``. On the wall the network depends on the data
plane through one projection ``s = u . x`` only, and its risk is at least 1/2 (the population bound).

This module makes the argument measurable:

* :func:`block_det` -- ``det W1[:, :2]`` of a point (or of a batch of points);
* :func:`wall_crossings` -- where a path crosses the wall (every piece scanned, each sign change bisected),
  with the energy there;
* :func:`rank_one_floor` -- the smallest energy on the wall *for a given sample* (input dimension 2): on
  the wall the output lies in the span of ``relu(s), relu(-s), 1``, so the floor is the least-squares
  residual minimised over the direction ``u`` (a grid of angles, refined around the best ones).

>>> import torch
>>> from modeconnect.tasks.gaussian_mixture import gaussian_mixture_task, mixture_endpoint_a
>>> task = gaussian_mixture_task(sigma=0.25, n_train=256)
>>> a = task.energy.point_of(mixture_endpoint_a(0.25))
>>> float(block_det(a)), float(block_det(task.derive_endpoint_b(a)))
(4.0, -4.0)
>>> floor = rank_one_floor(task.energy.inputs, task.energy.targets)
>>> 0.45 < floor["floor"] < 0.55
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..energy import Energy
from ..errors import ConfigError
from ..path import Path

__all__ = ["block_det", "wall_crossings", "rank_one_floor", "rank_one_risk", "FIRST_LAYER"]

FIRST_LAYER = "0.weight"
"""The parameter holding W1 in the task's network."""


def block_det(point: Mapping[str, Tensor]) -> Tensor:
    """``det W1[:, :2]`` (float64): a scalar for one point, ``[P]`` for a batch of ``P`` points."""
    w = point[FIRST_LAYER].double()
    if w.shape[-2] != 2 or w.shape[-1] < 2:
        raise ConfigError(f"{FIRST_LAYER} has shape {tuple(w.shape)}: the rank-one wall needs two hidden units "
                          "and at least two inputs")
    return w[..., 0, 0] * w[..., 1, 1] - w[..., 0, 1] * w[..., 1, 0]


def wall_crossings(path: Path, energy: Energy, *, scan: int = 257, bisections: int = 60) -> list[dict[str, Any]]:
    """Every point where ``path`` crosses ``det W1[:, :2] = 0`` (exact zeros of the scan included).

    Each piece is scanned at ``scan`` equally spaced t; each sign change is bisected ``bisections`` times
    (t to ~1e-18 of the piece). A crossing between scan points that returns to the same sign is not seen,
    but a path from A to B has an odd number of sign changes, so at least one is always found. Returns
    ``[{"piece", "t", "det", "energy"}]`` in path order.
    """
    if scan < 2:
        raise ConfigError(f"scan must be at least 2 points per piece, got {scan}")
    found: list[dict[str, Any]] = []
    for i in range(path.n_pieces):
        ts = torch.linspace(0.0, 1.0, scan, dtype=torch.float64)
        dets = block_det(path.points(i, ts))
        for j in range(scan):
            if j == 0 and i > 0:
                continue  # the previous piece's end, already seen
            if float(dets[j]) == 0.0:  # an exact zero (a bead on the wall, e.g. a swap-symmetric one)
                found.append(_crossing(path, energy, i, float(ts[j])))
            if j == scan - 1:
                break
            lo, hi, d_lo, d_hi = float(ts[j]), float(ts[j + 1]), float(dets[j]), float(dets[j + 1])
            if d_lo * d_hi >= 0:
                continue
            for _ in range(bisections):
                mid = 0.5 * (lo + hi)
                d_mid = float(block_det(path.points(i, [mid]))[0])
                if d_mid == 0.0:
                    lo = hi = mid
                    break
                if (d_mid > 0) == (d_lo > 0):
                    lo, d_lo = mid, d_mid
                else:
                    hi = mid
            found.append(_crossing(path, energy, i, 0.5 * (lo + hi)))
    return found


def _crossing(path: Path, energy: Energy, piece: int, t: float) -> dict[str, Any]:
    point = path.points(piece, [t])
    return {"piece": piece, "t": t, "det": float(block_det(point)[0]), "energy": float(energy.evaluate(point)[0])}


def _features(x: Tensor, angles: Tensor) -> Tensor:
    """``[G, n, 3]``: relu(s), relu(-s), 1 for s = u(angle) . x."""
    u = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [G, 2]
    s = (x @ u.T).T  # [G, n]
    return torch.stack([torch.relu(s), torch.relu(-s), torch.ones_like(s)], dim=2)


def rank_one_risk(x: Tensor, y: Tensor, angles: Tensor, *, chunk: int = 256) -> Tensor:
    """The least MSE of ``alpha relu(s) + beta relu(-s) + b`` (s = u . x) for each angle of u, float64 ``[G]``.

    Solved through the 3 x 3 normal equations (a pseudo-inverse where a feature vanishes on the sample)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ConfigError(f"rank_one_risk needs inputs of dimension 2 (got shape {tuple(x.shape)}): in higher "
                          "dimensions the wall's networks also see the noise coordinates")
    angles = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    n = len(y)
    out = []
    for lo in range(0, len(angles), chunk):
        f = _features(x, angles[lo:lo + chunk])  # [g, n, 3]
        gram = f.transpose(1, 2) @ f  # [g, 3, 3]
        rhs = f.transpose(1, 2) @ y  # [g, 3]
        coef = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)
        residual = f @ coef.unsqueeze(2) - y.reshape(1, -1, 1)
        out.append((residual.squeeze(2) ** 2).sum(dim=1) / n)
    return torch.cat(out)


def rank_one_floor(x: Tensor, y: Tensor, *, grid: int = 4096, refine: int = 8, rounds: int = 3) -> dict[str, Any]:
    """The smallest MSE any network on the wall reaches on the sample ``(x, y)`` (input dimension 2).

    Angles of u in [0, pi) (u and -u give the same span) on a grid of ``grid``, then ``rounds`` finer grids of
    257 angles around each of the ``refine`` best. Numerical: a minimum narrower than the final spacing
    (~ pi / grid * (2 / 256)^rounds) could be missed. Returns ``{"floor", "angle", "grid", "evaluations"}``.
    """
    if grid < 16 or refine < 1 or rounds < 0:
        raise ConfigError(f"rank_one_floor: grid must be >= 16, refine >= 1 and rounds >= 0 (got {grid}, {refine}, "
                          f"{rounds})")
    angles = torch.arange(grid, dtype=torch.float64) * (math.pi / grid)
    risks = rank_one_risk(x, y, angles)
    evaluations = grid
    best_risk, best_angle = float(risks.min()), float(angles[int(risks.argmin())])
    centres = angles[torch.argsort(risks)[:refine]].tolist()
    width = math.pi / grid
    for _ in range(rounds):
        next_centres = []
        for c in centres:
            local = torch.linspace(c - width, c + width, 257, dtype=torch.float64)
            values = rank_one_risk(x, y, local)
            evaluations += len(local)
            k = int(values.argmin())
            next_centres.append(float(local[k]))
            if float(values[k]) < best_risk:
                best_risk, best_angle = float(values[k]), float(local[k])
        centres, width = next_centres, width * 2 / 256
    return {"floor": best_risk, "angle": best_angle % math.pi, "grid": grid, "evaluations": evaluations}

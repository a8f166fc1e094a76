"""Training one DSS bead, and where it went: the bead-level half of greedy DSS.

A bead is meant to be the nearest point of the level set to where it starts on the string (the paper's
strings are within a few percent of straight). Plain training can wander far from there: an adaptive
optimizer moves every coordinate by about its learning rate per step, whether or not that coordinate
matters. :func:`train_bead` therefore offers, besides the training settings themselves (a proximal pull
towards the start, the check schedule: see :class:`~modeconnect.train.TrainConfig`):

* the hyperplane constraint (:attr:`BeadConstraint.HYPERPLANE`): the bead moves only orthogonally to
  the segment it splits, as in Appendix A's constrained DSS, where beads live on the hyperplane
  equidistant from their neighbours (here: the parallel hyperplane through the bead's start, which is
  that one for t* = 0.5), so it cannot slide along the string towards a neighbour;
* restarts when the bead is stuck (zero gradient or stalled), e.g. when it starts on a symmetric saddle
  such as the midpoint between a network and its permuted copy, where the swapped units coincide and
  every gradient step keeps them equal: from a point shifted along the segment, plus a seeded
  perturbation.

Every bead's geometry is recorded relative to the distance between the path's endpoints:
``displacement`` (from its start), ``chord_distance`` (from the endpoint-to-endpoint segment, where the
bead ended) and ``start_chord_distance`` (where it started, which is off the chord for deeper beads).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from ..batchnorm import is_buffer_key
from ..energy import Energy
from ..params import Point, interpolate
from ..path import Path
from ..seeding import derive_seed
from ..train import Objective, TrainConfig, TrainStatus, train_to_target

__all__ = ["BeadConstraint", "train_bead", "restart_ts", "chord_geometry", "perturb", "STUCK_EXPLANATIONS",
           "why_not_trained", "warn_about_endpoints", "geometry_summary", "persistence"]


class BeadConstraint(str, Enum):
    """Where a bead may move while it trains."""

    FREE = "free"
    """Anywhere: plain training (Freeman & Bruna's Algorithm 1)."""
    HYPERPLANE = "hyperplane"
    """Only orthogonally to the segment it splits (Appendix A's hyperplane, through the bead's start)."""


STUCK_EXPLANATIONS = {
    "zero_gradient": "every gradient was exactly zero: dead units, a flat region, a critical point, or an exact "
                     "minimum of the training loss above the target",
    "stalled": "the energy stopped improving: a plateau, dead units (a sample no unit responds to), or a "
               "symmetric start (e.g. two equal hidden units) that every gradient step preserves",
}
"""A sentence per stuck training reason, for failure messages."""


def _vector(point: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([point[k].detach().reshape(-1).double() for k in point if not is_buffer_key(k)])


def chord_geometry(a: Mapping[str, Tensor], b: Mapping[str, Tensor], points: list[Mapping[str, Tensor]]) -> list[float]:
    """Distance of each point from the segment [a, b], divided by ``|a - b|`` (0 when a == b)."""
    va, vb = _vector(a), _vector(b)
    u = vb - va
    uu = float(u @ u)
    if uu == 0.0:
        return [0.0 for _ in points]
    out = []
    for p in points:
        d = _vector(p) - va
        s = min(1.0, max(0.0, float(d @ u) / uu))
        out.append(float(torch.linalg.vector_norm(d - s * u)) / math.sqrt(uu))
    return out


def perturb(point: Mapping[str, Tensor], size: float, seed: int,
            normal: Mapping[str, Tensor] | None = None) -> Point:
    """``point`` plus seeded Gaussian noise of Euclidean norm ``size`` (orthogonal to ``normal`` if given).

    Buffers are left as they are. The same ``(point, size, seed)`` always gives the same result.
    """
    generator = torch.Generator().manual_seed(int(seed))
    keys = [k for k in point if not is_buffer_key(k)]
    noise = {k: torch.randn(point[k].shape, generator=generator, dtype=torch.float64) for k in keys}
    if normal is not None:
        n = {k: normal[k].double() for k in keys}
        nn_ = sum(float(torch.sum(v * v)) for v in n.values())
        if nn_ > 0:
            along = sum(float(torch.sum(noise[k] * n[k])) for k in keys) / nn_
            noise = {k: noise[k] - along * n[k] for k in keys}
    norm = math.sqrt(sum(float(torch.sum(v * v)) for v in noise.values()))
    scale = size / norm if norm > 0 else 0.0
    return {k: (point[k] + (scale * noise[k]).to(point[k].dtype) if k in noise else point[k].clone()) for k in point}


def restart_ts(t_star: float, shift: float, restarts: int, seed: int) -> list[float]:
    """Where each restart of a stuck bead starts on its segment: ``t_star`` moved by ``shift`` towards one
    neighbour, then the other (which one first is seeded), then twice as far, and so on, kept inside (0, 1).

    Moving along the segment leaves a symmetric point for a point of the string that is not symmetric: on the
    permutation pair's midpoint, a shift of 0.1 trained the bead from 120 of 120 starts (6 pairs, 20 draws
    each), where random noise of 0.1 x the segment's length alone trained it from 65 of 120.

    >>> restart_ts(0.5, 0.1, 4, seed=1) in ([0.4, 0.6, 0.3, 0.7], [0.6, 0.4, 0.7, 0.3])
    True
    """
    first = 1 if torch.randint(2, (1,), generator=torch.Generator().manual_seed(int(seed))).item() else -1
    out = []
    for attempt in range(restarts):
        sign = first if attempt % 2 == 0 else -first
        out.append(round(min(0.99, max(0.01, t_star + sign * shift * (attempt // 2 + 1))), 12))
    return out


def train_bead(left: Point, right: Point, t_star: float, *, energy: Energy, objective: Objective, target: float,
               config: TrainConfig, constraint: BeadConstraint, restarts: int, shift: float, perturbation: float,
               seed: int, ends: tuple[Point, Point], on_check: Callable[[int, float], None] | None = None,
               ) -> tuple[Point, TrainStatus, dict[str, Any]]:
    """Train a bead started at ``t_star`` on the segment ``left``-``right``; returns ``(bead, status, log)``.

    When training is stuck, it restarts up to ``restarts`` times (see :func:`restart_ts`), each from the
    segment point ``shift`` further along plus seeded noise of norm ``perturbation * |left - right|``
    (orthogonal to the segment under the hyperplane constraint); the first restart that is not stuck is
    kept. ``ends`` are the path's endpoints: geometry in ``log`` is relative to their distance, and the
    displacement is measured from the point the kept training started from. ``on_check`` is passed to
    :func:`~modeconnect.train.train_to_target` (progress displays; a restart starts again from step 0).
    """
    start = interpolate(left, right, t_star)
    normal = ({k: right[k] - left[k] for k in left if not is_buffer_key(k)}
              if constraint is BeadConstraint.HYPERPLANE else None)
    if normal is not None and not any(bool(v.any()) for v in normal.values()):
        normal = None  # identical neighbours: no segment direction to stay orthogonal to
    kwargs = dict(energy=energy, objective=objective, target=target, config=config, seed=seed,
                  hyperplane_normal=normal, on_check=on_check)
    bead, status = train_to_target(start, **kwargs)
    log: dict[str, Any] = {"start_energy": energy(start), "stuck_reason": None, "restarts": 0, "restart_t": None,
                           "restart_energy": None, "first_steps": status.steps}
    origin = start
    if status.stuck and (shift > 0 or perturbation > 0):
        log["stuck_reason"] = status.reason
        size = perturbation * float(torch.linalg.vector_norm(_vector(right) - _vector(left)))
        for attempt, t in enumerate(restart_ts(t_star, shift, restarts, derive_seed(seed, "restart"))):
            origin = perturb(interpolate(left, right, t), size, derive_seed(seed, "perturbation", attempt), normal)
            log.update(restarts=attempt + 1, restart_t=t, restart_energy=energy(origin))
            bead, status = train_to_target(origin, **kwargs)
            if not status.stuck:
                break
    elif status.stuck:
        log["stuck_reason"] = status.reason
    span = float(torch.linalg.vector_norm(_vector(ends[1]) - _vector(ends[0])))
    moved = float(torch.linalg.vector_norm(_vector(bead) - _vector(origin)))
    start_off, bead_off = chord_geometry(*ends, [origin, bead])
    log.update(displacement=moved / span if span > 0 else 0.0, chord_distance=bead_off,
               start_chord_distance=start_off)
    return bead, status, log


def why_not_trained(train_reason: str, log: dict[str, Any]) -> str:
    """Why a bead did not train, in words: a stuck bead says how, and whether restarts were tried."""
    first = log.get("stuck_reason")
    if first is None:
        return train_reason
    text = f"{first}: {STUCK_EXPLANATIONS[first]}"
    if not log.get("restarts"):
        return text + "; not restarted (restarts=0, or restart_shift and restart_perturbation both 0)"
    again = train_reason in STUCK_EXPLANATIONS
    return text + f"; after {log['restarts']} restart(s) from shifted, perturbed starts: {train_reason}" + (
        " again" if again else "")


def warn_about_endpoints(path: Path, energy: Energy, target: float, say: Callable[[str], None]) -> None:
    """Beads must reach alpha * L0; say so when an endpoint is not that good (their target is harder)."""
    worse = [e for e in (energy(path.beads[0]), energy(path.beads[-1])) if e > target]
    if worse:
        say(f"note: an endpoint has energy {max(worse):.4g} > alpha*L0={target:.4g}: beads must end up better "
            "than the endpoints (train endpoints further below L0, or raise alpha)")


def geometry_summary(log: list[dict[str, Any]]) -> dict[str, float | None]:
    """Largest displacement and chord distance of the beads on the path (None before any was inserted)."""
    kept = [entry for entry in log if entry.get("train_reached") and "displacement" in entry]
    return {"bead_displacement_max": max((e["displacement"] for e in kept), default=None),
            "bead_chord_distance_max": max((e["chord_distance"] for e in kept), default=None)}


def persistence(log: list[dict[str, Any]], accept: float) -> tuple[bool, str]:
    """Whether a depth-exhausted run shows a persistent barrier, and a clause saying why.

    That is what a disconnection looks like to DSS (Appendix E): every bead lands in the level set, yet each
    segment it creates keeps a barrier, which moves with the beads instead of shrinking. It is persistent when
    at least one bead was trained and every barrier a trained bead split was at least twice the acceptance
    level.
    """
    trained = [entry for entry in log if entry.get("train_reached")]
    if not trained:
        return False, ""
    low = min(entry["barrier"] for entry in trained)
    persistent = low >= 2 * accept
    verdict = ": a persistent barrier" if persistent else ""
    return persistent, (f"; all {len(trained)} bead(s) trained below alpha*L0, yet every barrier they split was at "
                        f"least {low:.4g} ({low / accept:.3g} x the acceptance level){verdict}")

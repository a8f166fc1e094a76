"""Certification: the maximum energy along a whole path, at a stated resolution.

Each segment is evaluated on a uniform grid, then refined around every local
maximum of the sampled profile until the sample spacing on both sides of each
local maximum is at most ``resolution`` (in units of the segment parameter
``t``) or the per-segment evaluation budget runs out. The certificate states
the largest energy found, where it is, and the resolution actually achieved
(in ``t`` and in parameter-space distance).

>>> import torch
>>> from modeconnect.energy import Energy
>>> from modeconnect.path import Path
>>> net = torch.nn.Linear(1, 1, bias=False)
>>> x = torch.ones(4, 1)
>>> energy = Energy(net, x, torch.zeros(4, 1), "mae", strategy="loop")
>>> path = Path([{"weight": torch.tensor([[-1.0]])}, {"weight": torch.tensor([[3.0]])}])
>>> cert = certify(path, energy, resolution=1e-3)
>>> round(cert.max_energy, 6), cert.resolution <= 1e-3
(3.0, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .path import Path

__all__ = ["Certificate", "certify", "certify_segment"]


@dataclass(frozen=True)
class Certificate:
    """The result of :func:`certify`."""

    max_energy: float
    """Largest energy found anywhere on the path."""
    segment: int
    """Index of the segment holding that maximum."""
    t: float
    """Position of the maximum within its segment (0 = left bead, 1 = right bead)."""
    resolution: float
    """Worst sample spacing (in t) next to any local maximum, over all segments."""
    param_resolution: float
    """The same spacing as a parameter-space distance (spacing x segment length), worst over segments."""
    segment_max: list[float]
    n_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local_maxima(values: np.ndarray) -> np.ndarray:
    left = np.concatenate([[-np.inf], values[:-1]])
    right = np.concatenate([values[1:], [-np.inf]])
    return np.flatnonzero((values >= left) & (values >= right))


def _spacing_around(ts: np.ndarray, i: int) -> float:
    gaps = []
    if i > 0:
        gaps.append(ts[i] - ts[i - 1])
    if i < len(ts) - 1:
        gaps.append(ts[i + 1] - ts[i])
    return max(gaps)


def certify_segment(a, b, energy, *, resolution: float = 1e-3, initial_grid: int = 65, refine_points: int = 8,
                    max_evaluations: int = 4000) -> tuple[float, float, float, int]:
    """Refine one segment; returns ``(max_energy, argmax_t, achieved_resolution, n_evaluations)``."""
    ts = np.linspace(0.0, 1.0, initial_grid)
    values = np.nan_to_num(energy.along_segment(a, b, torch.from_numpy(ts)).numpy(), nan=np.inf)
    while True:
        maxima = _local_maxima(values)
        coarse = [i for i in maxima if _spacing_around(ts, i) > resolution]
        budget = max_evaluations - len(ts)
        if not coarse or budget <= 0:
            break
        # Highest maxima first, so that if the budget runs short it is spent where the energy is largest.
        coarse.sort(key=lambda i: values[i], reverse=True)
        new = []
        for i in coarse:
            lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]
            new.append(np.linspace(lo, hi, refine_points + 2)[1:-1])
        candidates = np.concatenate(new)
        candidates = candidates[~np.isin(candidates, ts)]
        _, first = np.unique(candidates, return_index=True)
        # max_evaluations is a hard cap: keep at most `budget` new points (in priority order).
        new_ts = np.sort(candidates[np.sort(first)][:budget])
        if new_ts.size == 0:
            break
        new_values = np.nan_to_num(energy.along_segment(a, b, torch.from_numpy(new_ts)).numpy(), nan=np.inf)
        order = np.argsort(np.concatenate([ts, new_ts]), kind="stable")
        ts = np.concatenate([ts, new_ts])[order]
        values = np.concatenate([values, new_values])[order]
    achieved = max(_spacing_around(ts, i) for i in _local_maxima(values))
    k = int(np.argmax(values))
    return float(values[k]), float(ts[k]), float(achieved), len(ts)


def certify(path: Path, energy, *, resolution: float = 1e-3, initial_grid: int = 65, refine_points: int = 8,
            max_evaluations: int = 4000) -> Certificate:
    """Certify the maximum energy along every segment of ``path``.

    Args:
        resolution: target spacing in t next to every local maximum of the sampled profile.
        initial_grid: points of the first uniform grid per segment (endpoints included).
        refine_points: new points placed between the neighbours of a local maximum per refinement round.
        max_evaluations: cap on evaluated points per segment; if hit, the achieved resolution is reported.
    """
    if not 0 < resolution < 1:
        raise ConfigError(f"resolution must be in (0, 1), got {resolution}")
    if initial_grid < 3 or refine_points < 1 or max_evaluations < initial_grid:
        raise ConfigError("need initial_grid >= 3, refine_points >= 1 and max_evaluations >= initial_grid")
    seg_max, seg_t, worst_t, worst_param, total = [], [], 0.0, 0.0, 0
    for a, b, length in zip(path.beads[:-1], path.beads[1:], path.segment_lengths):
        m, t, achieved, n = certify_segment(a, b, energy, resolution=resolution, initial_grid=initial_grid,
                                            refine_points=refine_points, max_evaluations=max_evaluations)
        seg_max.append(m)
        seg_t.append(t)
        worst_t = max(worst_t, achieved)
        worst_param = max(worst_param, achieved * length)
        total += n
    k = int(np.argmax(seg_max))
    return Certificate(max_energy=seg_max[k], segment=k, t=seg_t[k], resolution=worst_t,
                       param_resolution=worst_param, segment_max=seg_max, n_evaluations=total)

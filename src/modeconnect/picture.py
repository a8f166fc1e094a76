"""The data of the string picture (Freeman & Bruna, Appendix D): a DSS string in 3 principal axes.

All beads of the *final* string are flattened (float64), centred on their mean and projected onto
their three principal axes. Every stage of the algorithm (the string after each accepted bead, from
the bead births DSS records) is drawn in those same axes, its segments sampled densely and coloured
by the energy, so snapshots and animations of one run share one coordinate system.

The result is a plain, JSON-serialisable dict (lists of floats; non-finite energies are ``None``)
that the plotting functions in :mod:`modeconnect.plots` read. This module imports neither
matplotlib nor plotly.

Projection is linear, so the projection of an interpolated point ``(1 - t) a + t b`` is exactly the
interpolation of the projections of ``a`` and ``b``; segments are projected that way.

>>> import torch
>>> from modeconnect import Energy
>>> net = torch.nn.Linear(1, 1)
>>> x = torch.linspace(0, 1, 8).unsqueeze(1)
>>> energy = Energy(net, x, 2 * x, metric="mse", strategy="loop")
>>> beads = [{"weight": torch.tensor([[w]]), "bias": torch.tensor([b])}
...          for w, b in [(2.0, 0.0), (1.0, 1.0), (2.0, 0.5)]]
>>> from modeconnect.path import Path
>>> pic = string_picture(Path(beads), energy, births=[0, 1, 0], points_per_segment=5, threshold=0.1)
>>> [s["bead_indices"] for s in pic["stages"]]
[[0, 2], [0, 1, 2]]
>>> [round(v, 3) for v in pic["explained_variance"]]
[0.934, 0.066, 0.0]
>>> len(pic["stages"][-1]["segments"][0]["coords"])
5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .batchnorm import is_buffer_key
from .errors import ConfigError
from .params import flatten

__all__ = ["PICTURE_FORMAT", "string_stages", "select_stages", "principal_axes", "string_picture"]

PICTURE_FORMAT = "modeconnect.string_picture"
_VERSION = 1


def string_stages(births: Sequence[int]) -> list[list[int]]:
    """Indices (into the path's beads) of the string after each stage, one list per distinct birth.

    ``births[i]`` is the stage at which bead ``i`` joined the string: 0 for both endpoints, ``k`` for
    the ``k``-th trained bead (a bead that failed its training is never inserted, so some ``k`` may
    be missing). The string after stage ``s`` is the beads with birth ``<= s`` in path order.

    >>> string_stages([0, 3, 1, 2, 0])
    [[0, 4], [0, 2, 4], [0, 2, 3, 4], [0, 1, 2, 3, 4]]
    >>> string_stages([0, 0])
    [[0, 1]]
    """
    births = [int(b) for b in births]
    if len(births) < 2:
        raise ConfigError(f"bead births need at least the two endpoints, got {len(births)} entries")
    if births[0] != 0 or births[-1] != 0:
        raise ConfigError(f"both endpoints must have birth 0, got {births[0]} and {births[-1]}")
    inner = births[1:-1]
    if any(b < 1 for b in inner):
        raise ConfigError(f"intermediate beads must have births >= 1, got {births}")
    if len(set(inner)) != len(inner):
        raise ConfigError(f"intermediate beads must have distinct births (one bead per stage), got {births}")
    return [[i for i, b in enumerate(births) if b <= stage] for stage in sorted(set(births))]


def select_stages(n_stages: int, max_stages: int | None) -> list[int]:
    """At most ``max_stages`` positions out of ``range(n_stages)``, evenly spread, first and last included.

    >>> select_stages(10, 4)
    [0, 3, 6, 9]
    >>> select_stages(3, None)
    [0, 1, 2]
    """
    if n_stages < 1:
        raise ConfigError("there are no stages to select from")
    if max_stages is None or max_stages >= n_stages:
        return list(range(n_stages))
    if max_stages < 2:
        raise ConfigError(f"max_stages must be >= 2 (the first and the last stage) or None, got {max_stages}")
    picks = {int(j * (n_stages - 1) / (max_stages - 1) + 0.5) for j in range(max_stages)}
    return sorted(picks)


def principal_axes(vectors: torch.Tensor, n_axes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """PCA of the rows of ``vectors`` (float64): ``(mean, axes [n_axes, D], explained [n_axes], n_real)``.

    Axes beyond the ``n_real`` non-degenerate ones are zero rows (explained variance 0). Each real axis
    has a sign fixed by making its largest-magnitude component positive (the first one among near
    ties), so the result does not depend on the SVD routine's sign choice.
    """
    x = vectors.to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    tol = max(x.shape) * torch.finfo(torch.float64).eps * (float(s[0]) if s.numel() else 0.0)
    n_real = min(n_axes, int((s > max(tol, 0.0)).sum()) if total > 0 else 0)
    axes = torch.zeros(n_axes, x.shape[1], dtype=torch.float64)
    explained = torch.zeros(n_axes, dtype=torch.float64)
    for k in range(n_real):
        v = vh[k].clone()
        mag = v.abs()
        pivot = int(torch.nonzero(mag >= mag.max() * (1 - 1e-9))[0])
        axes[k] = -v if v[pivot] < 0 else v
        explained[k] = float(s[k] ** 2) / total
    return mean, axes, explained, n_real


def _json_energy(value: float) -> float | None:
    return value if math.isfinite(value) else None


def string_picture(
    path,
    energy,
    births: Sequence[int] | None = None,
    points_per_segment: int = 17,
    max_stages: int | None = None,
    *,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The Appendix-D picture of ``path`` as a JSON-serialisable dict.

    Args:
        path: a :class:`~modeconnect.path.Path` (its beads are the final string).
        energy: an :class:`~modeconnect.energy.Energy`; evaluated on ``points_per_segment`` evenly
            spaced ``t`` in ``[0, 1]`` on every segment of every selected stage (segments shared by
            several stages are evaluated once).
        births: bead births aligned with ``path.beads`` (see :func:`string_stages`); ``None`` or empty
            gives a single stage, the final string.
        max_stages: keep at most this many stages, evenly spread, always the first and the last.
        threshold: the level L0, stored for the plots.

    Returns a dict with keys ``format, version, threshold, metric, explained_variance, axes_note,
    stages``; each stage has ``stage, bead_indices, beads, bead_energies, segments`` and each segment
    ``t, coords, energies``. Non-finite energies are stored as ``None``.
    """
    n = len(path.beads)
    if points_per_segment < 2:
        raise ConfigError(f"points_per_segment must be >= 2 (both ends of a segment), got {points_per_segment}")
    if births:
        if len(births) != n:
            raise ConfigError(f"{len(births)} bead births for a path of {n} beads: they must be aligned")
        stages = [(b, idx) for b, idx in zip(sorted(set(int(x) for x in births)), string_stages(births))]
    else:
        stages = [(0, list(range(n)))]
    stages = [stages[j] for j in select_stages(len(stages), max_stages)]

    # the picture is of the parameters: BatchNorm statistics carried in the points (INTERPOLATE) are left out
    vectors = torch.stack([flatten({k: v for k, v in b.items() if not is_buffer_key(k)}).to(torch.float64)
                           for b in path.beads])
    mean, axes, explained, n_real = principal_axes(vectors, 3)
    coords = (vectors - mean) @ axes.T  # [n, 3]

    note = (f"principal axes of the {n} beads of the final string ({vectors.shape[1]} parameters, float64, "
            "centred on their mean; each axis's largest component is positive)")
    if n_real < 3:
        missing = [str(k + 1) for k in range(n_real, 3)]
        pad = (f"axes {', '.join(missing[:-1])} and {missing[-1]} are" if len(missing) > 1
               else f"axis {missing[0]} is")
        note += f"; only {n_real} non-degenerate {'axis' if n_real == 1 else 'axes'}: {pad} zero padding"

    ts = torch.linspace(0.0, 1.0, points_per_segment, dtype=torch.float64)
    cache: dict[tuple[int, int], dict[str, Any]] = {}

    def segment(i: int, j: int) -> dict[str, Any]:
        if (i, j) not in cache:
            if j == i + 1 and path.pieces[i].kind != "straight":  # a curve: project its own points
                values = path.energies(i, ts, energy)
                along = path.points(i, ts)
                flat = torch.cat([along[k].reshape(len(ts), -1).to(torch.float64)
                                  for k in path.beads[0] if not is_buffer_key(k)], dim=1)
                points = (flat - mean) @ axes.T
            else:
                values = energy.along_segment(path.beads[i], path.beads[j], ts).to(torch.float64)
                points = torch.lerp(coords[i].unsqueeze(0), coords[j].unsqueeze(0), ts.unsqueeze(1))
            cache[(i, j)] = {"t": ts.tolist(), "coords": points.tolist(),
                             "energies": [_json_energy(float(v)) for v in values]}
        return cache[(i, j)]

    out_stages = []
    for stage, idx in stages:
        segs = [segment(i, j) for i, j in zip(idx[:-1], idx[1:])]
        bead_energies = [s["energies"][0] for s in segs] + [segs[-1]["energies"][-1]]
        out_stages.append({"stage": stage, "bead_indices": list(idx), "beads": coords[idx].tolist(),
                           "bead_energies": bead_energies, "segments": segs})

    return {
        "format": PICTURE_FORMAT,
        "version": _VERSION,
        "threshold": None if threshold is None else float(threshold),
        "metric": energy.describe().get("metric"),
        "explained_variance": explained.tolist(),
        "axes_note": note,
        "stages": out_stages,
    }

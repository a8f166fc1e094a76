"""Helpers shared by the figures: the optional matplotlib import, energy colour scale, stage access."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..picture import select_stages

try:  # matplotlib is optional (pip install 'modeconnect[plot]'): fail when a figure is asked for, not on import
    import matplotlib
    from matplotlib.figure import Figure
except ImportError:  # pragma: no cover - exercised only without matplotlib
    matplotlib = None
    Figure = None

CMAP = "jet"
"""Colormap of log energy, as in the paper: blue near (and below) the threshold, red for high energy."""
PLOTLY_CMAP = "Jet"

METRIC_NAMES = {"mae": "MAE", "mse": "MSE", "cross_entropy": "cross-entropy", "error_rate": "error %"}


def require_matplotlib() -> None:
    if matplotlib is None:
        raise ConfigError("matplotlib is not installed: pip install 'modeconnect[plot]'")


def new_figure(width: float, height: float) -> Figure:
    """A standalone Figure with an Agg canvas (no pyplot state, nothing shown)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def metric_label(metric: str | None, split: str | None = None) -> str:
    name = METRIC_NAMES.get(metric or "", metric or "energy")
    return f"{split} {name}" if split else name


def check_picture(picture: Mapping[str, Any]) -> None:
    if picture.get("format") != "modeconnect.string_picture" or not picture.get("stages"):
        raise ConfigError("not a string picture: build one with modeconnect.picture.string_picture")


def get_stage(picture: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """A stage by position (``-1``: the final string)."""
    check_picture(picture)
    stages = picture["stages"]
    if not -len(stages) <= stage < len(stages):
        raise ConfigError(f"stage {stage} out of range: the picture has {len(stages)} stage(s)")
    return stages[stage]


def stage_title(stage: Mapping[str, Any]) -> str:
    k = len(stage["bead_indices"]) - 2
    return f"after {k} bead{'' if k == 1 else 's'}"


def pick_positions(n_stages: int, n: int) -> list[int]:
    """At most ``n`` stage positions, evenly spread, first and last included (``n == 1``: the last only)."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    return [n_stages - 1] if n == 1 else select_stages(n_stages, n)


def _values(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


class EnergyScale:
    """The log10 colour scale shared by every stage of one picture.

    ``vmin``/``vmax`` span all finite positive energies of all stages (and the threshold, when
    given); energies <= 0 are clipped to the smallest positive one, non-finite ones map to ``vmax``.
    """

    def __init__(self, picture: Mapping[str, Any]) -> None:
        check_picture(picture)
        vals = np.concatenate([_values(seg["energies"]) for st in picture["stages"] for seg in st["segments"]])
        finite = vals[np.isfinite(vals)]
        positive = finite[finite > 0]
        self.threshold = picture.get("threshold")
        self.floor = float(positive.min()) if positive.size else 1e-12
        logs = list(np.log10(positive)) if positive.size else [0.0]
        if self.threshold is not None and self.threshold > 0:
            logs.append(math.log10(self.threshold))
        self.vmin, self.vmax = float(min(logs)), float(max(logs))
        if self.vmax - self.vmin < 1e-6:
            self.vmin, self.vmax = self.vmin - 0.5, self.vmax + 0.5
        self.has_nonfinite = bool((~np.isfinite(vals)).any())

    def log(self, values: Sequence[float | None]) -> np.ndarray:
        v = _values(values)
        finite = np.isfinite(v)
        return np.where(finite, np.log10(np.maximum(np.where(finite, v, 1.0), self.floor)), self.vmax)

    @property
    def norm(self):
        require_matplotlib()
        from matplotlib.colors import Normalize

        return Normalize(self.vmin, self.vmax)

    def colorbar(self, fig: Figure, mappable, ax, **kw):
        """A colorbar labelled ``log10 energy`` with the threshold marked (when known)."""
        cbar = fig.colorbar(mappable, ax=ax, **kw)
        cbar.set_label("log10 energy" + ("  (non-finite shown at max)" if self.has_nonfinite else ""))
        if self.threshold is not None and self.threshold > 0:
            y = math.log10(self.threshold)
            cbar.ax.axhline(y, color="white", lw=4)
            cbar.ax.axhline(y, color="black", lw=1.5)
            cbar.ax.text(1.02, y, " L0", transform=cbar.ax.get_yaxis_transform(), va="center", ha="left",
                         fontsize=8, clip_on=False)
        return cbar

    def mappable(self):
        require_matplotlib()
        from matplotlib.cm import ScalarMappable

        return ScalarMappable(norm=self.norm, cmap=CMAP)


def stage_arrays(stage: Mapping[str, Any], scale: EnergyScale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense coordinates ``[m, 3]``, their log energies ``[m]`` and segment ids ``[m]`` of one stage."""
    coords = np.concatenate([np.asarray(seg["coords"], dtype=float) for seg in stage["segments"]])
    logs = np.concatenate([scale.log(seg["energies"]) for seg in stage["segments"]])
    ids = np.concatenate([np.full(len(seg["t"]), k) for k, seg in enumerate(stage["segments"])])
    return coords, logs, ids


def axis_labels(picture: Mapping[str, Any]) -> list[str]:
    ev = picture.get("explained_variance") or [0.0, 0.0, 0.0]
    return [f"PC{k + 1} ({_percent(float(v))})" if v > 0 else f"PC{k + 1} (none: padding)" for k, v in enumerate(ev)]


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%" if fraction >= 0.01 else f"{100 * fraction:.2g}%"


def limits(picture: Mapping[str, Any], pad: float = 0.06) -> list[tuple[float, float]]:
    """Axis limits covering every stage (all stages live in the hull of the final beads)."""
    pts = np.concatenate([np.asarray(st["beads"], dtype=float) for st in picture["stages"]])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    big = max(float((hi - lo).max()), 1e-12)
    out = []
    for k in range(3):
        width = float(hi[k] - lo[k])
        if width <= 1e-9 * big:  # a degenerate (zero-padded) axis: centre it in a box as wide as the widest
            centre = float(hi[k] + lo[k]) / 2
            out.append((centre - 0.5 * big, centre + 0.5 * big))
        else:
            out.append((float(lo[k]) - pad * width, float(hi[k]) + pad * width))
    return out

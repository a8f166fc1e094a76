"""The interpolated energy along a string, segment by segment, against the threshold L0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._common import Figure, get_stage, metric_label, new_figure, stage_title

__all__ = ["profile_figure"]


def profile_figure(picture: Mapping[str, Any], stage: int = -1) -> Figure:
    """Energy along one stage of the string (default: the final one) against position ``segment index + t``.

    Beads sit at integer positions (dots and faint vertical lines), A at 0 and B at the number of
    segments. The threshold is a dashed horizontal line labelled ``L0 = ...``; stretches above it are
    shaded. The y axis is logarithmic when the finite positive energies span more than 2 decades.
    Non-finite energies are drawn as red crosses on the top edge.
    """
    st = get_stage(picture, stage)
    threshold = picture.get("threshold")
    fig = new_figure(9.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = [], []
    for k, seg in enumerate(st["segments"]):
        xs.append(k + np.asarray(seg["t"], dtype=float))
        ys.append(np.array([np.nan if e is None else e for e in seg["energies"]], dtype=float))
    x, y = np.concatenate(xs), np.concatenate(ys)
    finite = np.isfinite(y)
    positive = y[finite & (y > 0)]
    span_values = list(positive) + ([threshold] if threshold and threshold > 0 else [])
    log_y = len(span_values) > 0 and max(span_values) / min(span_values) > 100
    for xk, yk in zip(xs, ys):
        ax.plot(xk, yk, color="tab:blue", lw=1.6)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1.2, label=f"L0 = {threshold:.4g}", gid="threshold")
        label = "above L0"
        for xk, yk in zip(xs, ys):  # per segment, so shading never bridges two segments
            ok = np.isfinite(yk)
            if (ok & (yk > threshold)).any():
                ax.fill_between(xk, threshold, np.where(ok, yk, threshold), where=ok & (yk > threshold),
                                interpolate=True, color="tab:red", alpha=0.25, lw=0, label=label)
                label = None
    n_seg = len(st["segments"])
    bead_x = np.arange(n_seg + 1, dtype=float)
    bead_y = np.array([np.nan if e is None else e for e in st["bead_energies"]], dtype=float)
    for bx in bead_x:
        ax.axvline(bx, color="0.85", lw=0.7, zorder=0)
    ax.scatter(bead_x, bead_y, color="black", s=16, zorder=3, label="beads")
    if log_y:
        ax.set_yscale("log")
    if not finite.all():
        top = ax.get_ylim()[1]
        ax.scatter(x[~finite], np.full(int((~finite).sum()), top), marker="x", color="red", clip_on=False,
                   zorder=4, label="non-finite")
        ax.set_ylim(top=top)
    ax.set_xlim(-0.02 * n_seg, n_seg * 1.02)
    for name, bx in (("A", 0), ("B", n_seg)):
        ax.annotate(name, (bx, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontweight="bold")
    if n_seg <= 20:
        ax.set_xticks(bead_x)
    ax.set_xlabel("position along the string (segment index + t; beads at integers)")
    ax.set_ylabel(f"interpolated energy ({metric_label(picture.get('metric'))})")
    worst = np.nanmax(np.where(finite, y, np.inf)) if y.size else float("nan")
    final = stage in (-1, len(picture["stages"]) - 1)
    ax.set_title(f"energy along the string {stage_title(st)}" + (" (final)" if final else "")
                 + f": max {worst:.4g}", fontsize=10, pad=14)
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3, which="both")
    return fig

"""The energy sweep figure (Freeman & Bruna, Figures 2-6): geometry of the connecting paths vs level L0.

Left: normalized geodesic length (path length / endpoint distance); right: number of beads.
Mean over the connected pairs with standard-error bars at each level, individual pairs as faint
dots, the success rate ``connected/pairs`` written by each point. Energy decreases to the right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import Figure, metric_label, new_figure

__all__ = ["sweep_figure"]

_PANELS = (
    ("normalized_length", "normalized geodesic length", "tab:blue"),
    ("n_beads", "number of beads", "tab:green"),
)


def sweep_figure(table: Mapping[str, Any]) -> Figure:
    """Two panels from a sweep table (``levels``, ``rows``, ``aggregates``); see the module docstring.

    Levels where no pair connected have no point but still show ``0/n`` at the bottom of each panel.
    The x axis is logarithmic when the levels span at least a factor 10, and inverted.
    """
    aggregates = list(table.get("aggregates") or [])
    if not aggregates:
        raise ConfigError("the sweep table has no aggregate rows: nothing to plot")
    energy = table.get("energy") or {}
    xlabel = f"energy level L0 ({metric_label(energy.get('metric'), energy.get('split'))}) — decreasing →"
    levels = np.array([float(a["level"]) for a in aggregates])
    log_x = levels.min() > 0 and levels.max() / levels.min() >= 10
    fig = new_figure(11.0, 4.4)
    for col, (key, title, colour) in enumerate(_PANELS):
        ax = fig.add_subplot(1, 2, col + 1)
        pair_x = [float(r["level"]) for r in table.get("rows") or [] if r.get("connected") and r.get(key) is not None]
        pair_y = [float(r[key]) for r in table.get("rows") or [] if r.get("connected") and r.get(key) is not None]
        if pair_x:
            ax.scatter(pair_x, pair_y, s=12, color=colour, alpha=0.25, lw=0, label="pairs", zorder=1)
        have = [a for a in aggregates if a.get(f"{key}_mean") is not None]
        if have:
            ax.errorbar([float(a["level"]) for a in have], [float(a[f"{key}_mean"]) for a in have],
                        yerr=[float(a.get(f"{key}_stderr") or 0.0) for a in have], color=colour, marker="o",
                        ms=5, capsize=3, lw=1.5, label="mean ± s.e.", gid=f"{key}_mean", zorder=3)
        if log_x:
            ax.set_xscale("log")
        lo, hi = float(levels.min()), float(levels.max())
        if log_x:
            pad = (hi / lo) ** 0.06
            ax.set_xlim(hi * pad, lo / pad)  # inverted: energy decreases to the right
        else:
            pad = 0.06 * (hi - lo) if hi > lo else 0.1 * abs(hi) or 1.0
            ax.set_xlim(hi + pad, lo - pad)
        ax.set_xticks(sorted(set(levels.tolist())))
        ax.set_xticks([], minor=True)
        ax.set_xticklabels([f"{v:g}" for v in sorted(set(levels.tolist()))])
        for a in aggregates:
            text = f"{a['n_connected']}/{a['n_pairs']}"
            mean = a.get(f"{key}_mean")
            if mean is None:
                ax.annotate(text, (float(a["level"]), 0.0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                            textcoords="offset points", ha="center", fontsize=8, color="tab:red")
            else:
                ax.annotate(text, (float(a["level"]), float(mean)), xytext=(6, 6), textcoords="offset points",
                            fontsize=8, color="0.25")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(title)
        ax.set_title(title + " (connected/pairs by each point)", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        if have or pair_x:
            ax.legend(fontsize=8, loc="upper left")
    task = table.get("task")
    if task:
        fig.suptitle(f"{task}: paths found by DSS across energy levels", fontsize=11)
    return fig

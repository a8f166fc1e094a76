"""The comparison figure: every method's energy profile along normalised arc length, on the same pairs.

One line per (method, pair), coloured by method (solid: connected, dashed: not), the level L0 as a
horizontal line and the region above it shaded; the legend gives each method's connected/pairs. When some
profile rises above 5 x L0 the energy axis is symmetric-logarithmic above L0 (linear below), so the paths
near the level stay readable beside a high barrier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import Figure, metric_label, new_figure

__all__ = ["compare_figure"]


def compare_figure(table: Mapping[str, Any], profiles: Mapping[str, Any]) -> Figure:
    """Energy against normalised arc length for every unit of a comparison (``table`` and ``profiles.json``)."""
    if not profiles:
        raise ConfigError("the comparison has no stored energy profiles: nothing to plot (re-run its command)")
    methods = list(table.get("methods") or sorted({p["method"] for p in profiles.values()}))
    colours = {m: f"C{k % 10}" for k, m in enumerate(methods)}
    counts = {a["method"]: (a["n_connected"], a["n_pairs"] - a["n_endpoint_failed"])
              for a in table.get("aggregates") or []}
    fig = new_figure(7.5, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    labelled: set[str] = set()
    top = 0.0
    for key in sorted(profiles):
        prof = profiles[key]
        s = np.asarray(prof["s"], dtype=float)
        e = np.asarray([np.inf if v is None else v for v in prof["energy"]], dtype=float)
        finite = e[np.isfinite(e)]
        top = max(top, float(finite.max()) if finite.size else 0.0)
        method = prof["method"]
        label = None
        if method not in labelled:
            labelled.add(method)
            done, tried = counts.get(method, (None, None))
            label = method + ("" if done is None else f" ({done}/{tried} connected)")
        ax.plot(s, e, color=colours.get(method, "k"), lw=1.3, alpha=0.85, ls="-" if prof["connected"] else "--",
                label=label, gid=f"profile:{key}")
    threshold = table.get("threshold")
    if threshold is not None:
        ax.axhline(float(threshold), color="k", lw=1, ls=":", label=f"L0 = {float(threshold):g}")
        ax.axhspan(float(threshold), max(top, float(threshold)) * 1.05, color="tab:red", alpha=0.06, lw=0)
        level = float(threshold)
        if top > 5 * level > 0:  # a far higher profile (e.g. a failed construction) would flatten the rest
            ax.set_yscale("symlog", linthresh=level, linscale=2.0)
            ticks = [0.0, level / 2, level] + [m * level for m in (2, 5, 10, 20, 50, 100, 200, 500) if m * level <= top]
            ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    energy = table.get("energy") or {}
    ax.set_xlabel("normalised arc length along the path")
    ax.set_ylabel(metric_label(energy.get("metric"), energy.get("split")))
    ax.set_xlim(0, 1)
    align = table.get("align")
    ax.set_title(f"{table.get('task', '?')}: every method on the same {table.get('pairs', '?')} pair(s)"
                 + ("" if align in (None, "none") else f", {align} alignment"))
    ax.legend(fontsize=8, loc="best")
    return fig

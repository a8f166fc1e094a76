"""Figures of a component count (``modeconnect components``): the graph of certified connections per level
and the number of components against the level.

Graph: one panel per level, models on a circle (ordered so that the components of the lowest level sit
together), nodes coloured by their component at that level, certified connections run at that level as solid
lines, connections inherited from a lower level as thin lines, failed attempts as grey dotted lines. Models
that did not train are grey crosses. Count: components against the level (energy decreases to the right,
as in the sweep figure), with the number of models as a dashed line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import Figure, metric_label, new_figure

__all__ = ["components_figures", "graph_figure", "count_figure"]


def _check(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if record.get("format") != "modeconnect.components":
        raise ConfigError("not a components record: build one with `modeconnect components`")
    levels = list(record.get("by_level") or [])
    if not levels:
        raise ConfigError("the components record has no level yet: nothing to plot (re-run its command)")
    return levels


def _layout(record: Mapping[str, Any], levels: list[Mapping[str, Any]]) -> dict[int, tuple[float, float]]:
    """Model -> position on the unit circle; the lowest level's components are contiguous arcs."""
    order = [m for comp in levels[0]["components"] for m in comp]
    order += [m["model"] for m in record["models"] if m["model"] not in order]
    n = max(len(order), 1)
    return {m: (math.cos(math.pi / 2 - 2 * math.pi * k / n), math.sin(math.pi / 2 - 2 * math.pi * k / n))
            for k, m in enumerate(order)}


def graph_figure(record: Mapping[str, Any]) -> Figure:
    """The graph of certified connections, one panel per level (see the module docstring)."""
    levels = _check(record)
    pos = _layout(record, levels)
    failed_models = [m["model"] for m in record["models"] if m["status"] != "trained"]
    cols = min(len(levels), 4)
    rows = math.ceil(len(levels) / cols)
    fig = new_figure(3.4 * cols, 3.6 * rows)
    for k, entry in enumerate(levels):
        ax = fig.add_subplot(rows, cols, k + 1)
        colour = {m: f"C{c % 10}" for c, comp in enumerate(entry["components"]) for m in comp}
        for e in entry["failed"]:
            (xa, ya), (xb, yb) = pos[e["a"]], pos[e["b"]]
            ax.plot([xa, xb], [ya, yb], color="0.6", lw=1.0, ls=":", zorder=1, gid=f"failed:{e['a']}-{e['b']}")
        for e in entry["edges"]:
            (xa, ya), (xb, yb) = pos[e["a"]], pos[e["b"]]
            inherited = e.get("inherited_from") is not None
            ax.plot([xa, xb], [ya, yb], color=colour[e["a"]], lw=1.2 if inherited else 2.6,
                    alpha=0.55 if inherited else 1.0, zorder=2, gid=f"edge:{e['a']}-{e['b']}")
        for m, (x, y) in pos.items():
            if m in failed_models:
                ax.scatter([x], [y], marker="x", color="0.5", s=50, zorder=3)
                continue
            ax.scatter([x], [y], s=260, color=colour.get(m, "0.5"), edgecolors="k", linewidths=0.8, zorder=3)
            ax.text(x, y, str(m), ha="center", va="center", fontsize=8, color="white", zorder=4,
                    fontweight="bold")
        ax.set_title(f"L = {entry['level']:g}: {entry['n_components']} component"
                     f"{'' if entry['n_components'] == 1 else 's'}" + ("" if entry["complete"] else " (unfinished)"),
                     fontsize=10)
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_aspect("equal")
        ax.set_axis_off()
    energy = record.get("energy") or {}
    fig.suptitle(f"{record['task']}: certified connections ({metric_label(energy.get('metric'), energy.get('split'))})"
                 "\nthick: run at this level, thin: certified at a lower level, dotted: failed", fontsize=9)
    return fig


def count_figure(record: Mapping[str, Any]) -> Figure:
    """Number of components against the level."""
    levels = _check(record)
    x = np.array([float(e["level"]) for e in levels])
    y = np.array([int(e["n_components"]) for e in levels])
    trained = sum(m["status"] == "trained" for m in record["models"])
    fig = new_figure(5.5, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, y, marker="o", color="tab:blue", lw=1.6, label="components found", gid="count")
    for xi, yi, e in zip(x, y, levels):
        if not e["complete"]:
            ax.annotate("unfinished", (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.axhline(trained, color="k", ls="--", lw=1, label=f"models ({trained})")
    if x.min() > 0 and x.max() / x.min() >= 10:
        ax.set_xscale("log")
    if len(x) > 1:
        ax.invert_xaxis()
    ax.set_ylim(0, trained + 1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    energy = record.get("energy") or {}
    ax.set_xlabel(f"energy level L ({metric_label(energy.get('metric'), energy.get('split'))}) — decreasing →")
    ax.set_ylabel("connected components (upper bound)")
    ax.set_title(f"{record['task']}: components of the level set among {trained} models", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def components_figures(record: Mapping[str, Any]) -> dict[str, Figure]:
    """``{"graph": ..., "count": ...}`` for a components record (``components.json``)."""
    return {"graph": graph_figure(record), "count": count_figure(record)}

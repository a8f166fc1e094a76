"""Figure of ``modeconnect reproduce freeman-bruna-width-scaling``: epsilon(m) against m on log-log axes."""

from __future__ import annotations

import math
from typing import Any

from ._common import new_figure

__all__ = ["width_scaling_figures"]

_STYLE = {"line": ("straight line", "o-"), "dss": ("DSS ladder", "s-"), "construction": ("proof's path", "^-"),
          "best": ("best path", "D-"), "aligned": ("line after weight matching", "v--")}


def _curve(table: list[dict[str, Any]], n: int, name: str) -> tuple[list[float], list[float], list[float]]:
    rows = sorted((r for r in table if r["n"] == n and r["definition"] == name and r["mean"] > 0),
                  key=lambda r: r["m"])
    se = [r["se"] if isinstance(r["se"], (int, float)) and math.isfinite(r["se"]) else 0.0 for r in rows]
    return [r["m"] for r in rows], [r["mean"] for r in rows], se


def _zeros(table: list[dict[str, Any]], n: int, name: str) -> list[float]:
    """Widths where every pair of this definition has gap 0 (not drawable on a log axis)."""
    return sorted(r["m"] for r in table if r["n"] == n and r["definition"] == name and r["mean"] <= 0)


def _reference(ax, widths: list[float], anchor: float, n: int) -> None:
    """The rates m^(-1/n) and m^(-1/(n+1)) from the first point of a curve, over its widths."""
    if not widths:
        return
    lo, hi = min(widths), max(widths)
    for d, style in ((n, ":"), (n + 1, "-.")):
        ax.plot([lo, hi], [anchor, anchor * (hi / lo) ** (-1.0 / d)], style, color="black", lw=1,
                label=f"$m^{{-1/{d}}}$")


def width_scaling_figures(results: dict[str, Any]) -> dict[str, Any]:
    """One panel per input dimension n: the mean gap of each definition (error bars: standard error over
    pairs; zero means are not drawn) and the reference rates; a second figure for the nearest-unit angle."""
    dims = results["settings"]["input_dims"]
    table, fits = results["table"], results["fits"]
    gaps = new_figure(4.2 * len(dims), 3.8)
    for ax, n in zip(gaps.subplots(1, len(dims), squeeze=False)[0], dims):
        for name, (label, style) in _STYLE.items():
            ms, means, se = _curve(table, n, name)
            color = f"C{list(_STYLE).index(name)}"
            if ms:
                fit = fits[str(n)].get(name, {})
                slope = f" (b = {fit['slope']:.2f})" if "slope" in fit else ""
                low = [min(e, 0.9 * v) for e, v in zip(se, means)]  # a log axis cannot show a bar through 0
                ax.errorbar(ms, means, yerr=[low, se], fmt=style, ms=4, capsize=2, label=label + slope,
                            color=color, alpha=0.6 if name == "aligned" else 1.0)
            zeros = _zeros(table, n, name)
            if zeros:  # every pair at its own level: drawn as hollow markers on the bottom edge
                ax.plot(zeros, [0.02 + 0.03 * list(_STYLE).index(name)] * len(zeros), style[0], mfc="none",
                        color=color, transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"{label}: gap 0 (bottom edge)")
        ms, means, _ = _curve(table, n, "dss")
        if ms:
            _reference(ax, ms, means[0], n)
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="gap epsilon (MSE above the endpoints)",
               title=f"input dimension n = {n}")
        ax.legend(fontsize=7)
    angles = new_figure(4.2 * len(dims), 3.4)
    for ax, n in zip(angles.subplots(1, len(dims), squeeze=False)[0], dims):
        ms, means, se = _curve(table, n, "angle")
        if ms:
            fit = fits[str(n)].get("angle", {})
            slope = f" (b = {fit['slope']:.2f})" if "slope" in fit else ""
            ax.errorbar(ms, means, yerr=se, fmt="o-", ms=4, capsize=2, label="median nearest-unit angle" + slope)
            _reference(ax, ms, means[0], n)
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="angle (radians)", title=f"n = {n}")
        ax.legend(fontsize=7)
    return {"width_scaling": gaps, "unit_angles": angles}

"""Figure of ``modeconnect reproduce freeman-bruna-kernel-bound``: the ReLU kernel between the bounds of (7)."""

from __future__ import annotations

import math
from typing import Any

from ._common import new_figure

__all__ = ["kernel_bound_figures"]


def _series(rows: list[dict[str, Any]], distribution: str, pair: str, plane: int) -> dict[str, list[float]]:
    chosen = sorted((r for r in rows if r["distribution"] == distribution and r["pair"] == pair
                     and r["plane"] == plane), key=lambda r: r["alpha"])
    return {k: [r[k] for r in chosen] for k in ("alpha", "kernel", "upper", "lower_paper", "lower_sharp",
                                                 "kernel_se", "sigma_norm")}


def kernel_bound_figures(results: dict[str, Any]) -> dict[str, Any]:
    """One panel per (distribution, pair kind): [w1, w2]_Z / ||Sigma_X|| against alpha with the upper bound, the
    paper's lower bound and the sharper one (random pairs: the first plane drawn); a last panel with the closed
    form against the Monte Carlo estimate (error bars: 2 standard errors)."""
    rows = results["rows"]
    kinds = list(dict.fromkeys(r["distribution"] for r in rows))
    panels = [(k, p) for k in kinds for p in ("random", "data")]
    fig = new_figure(3.4 * (len(panels) + 1) / 2 + 1, 6.4)
    axes = fig.subplots(2, math.ceil((len(panels) + 1) / 2), squeeze=False).flatten()
    for ax, (kind, pair) in zip(axes, panels):
        s = _series(rows, kind, pair, 0)
        scale = s["sigma_norm"][0] if s["sigma_norm"] else 1.0
        deg = [a * 180 / math.pi for a in s["alpha"]]
        ax.fill_between(deg, [v / scale for v in s["lower_sharp"]], [v / scale for v in s["upper"]], color="C0",
                        alpha=0.15, lw=0)
        ax.plot(deg, [v / scale for v in s["upper"]], "-", color="C0", label="upper bound (7)")
        ax.plot(deg, [v / scale for v in s["lower_sharp"]], "--", color="C0", label="sharper lower bound")
        ax.plot(deg, [v / scale for v in s["lower_paper"]], ":", color="C3", label="lower bound (7)")
        ax.plot(deg, [v / scale for v in s["kernel"]], "k.", ms=4, label="$[w_1, w_2]_Z$")
        top = max(v / scale for v in s["upper"]) if s["upper"] else 1.0
        ax.set(xlabel="angle alpha (degrees)", ylabel="kernel / $\\|\\Sigma_X\\|$", title=f"{kind}, {pair} plane",
               ylim=(-0.25 * top, 1.1 * top))
    axes[0].legend(fontsize=7)
    mc = results["monte_carlo"]
    ax = axes[len(panels)]
    deg = [r["alpha"] * 180 / math.pi for r in mc]
    ax.plot(deg, [r["exact"] for r in mc], "-", color="C0", label="closed form (arc-cosine)")
    ax.errorbar(deg, [r["mc"] for r in mc], yerr=[2 * r["se"] for r in mc], fmt="k.", ms=4, capsize=2,
                label="Monte Carlo, 2 s.e.")
    ax.set(xlabel="angle alpha (degrees)", ylabel="$[w_1, w_2]_Z$", title="N(0, I): closed form vs Monte Carlo")
    ax.legend(fontsize=7)
    for extra in axes[len(panels) + 1:]:
        extra.set_visible(False)
    return {"kernel_bound": fig}

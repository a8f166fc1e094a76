"""Figures of the Kuditipudi et al. reproductions (``modeconnect reproduce kuditipudi-fig2|kuditipudi-fig3``)."""

from __future__ import annotations

from typing import Any

from ._common import new_figure

__all__ = ["fig2_figures"]


def fig2_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Figure 2's three panels: best-of-masks dropout error against p; the error along the straight line to a
    p = 0.2 dropout version; the error of narrow nets against their width."""
    fig = new_figure(12, 3.6)
    left, centre, right = fig.subplots(1, 3)
    ps = [r["p"] for r in results["left"]]
    left.plot(ps, [r["best"] for r in results["left"]], "o-", label="best of masks")
    left.plot(ps, [r["median"] for r in results["left"]], "s--", alpha=0.6, label="median mask")
    left.axhline(results["full_error"], color="grey", lw=0.8, label="no dropout")
    left.set(xlabel="dropout fraction p", ylabel="test error %", title="dropout stability")
    left.legend(fontsize=8)
    line = results["centre"]
    centre.plot(line["t"], line["error"], ".-")
    centre.set(xlabel="t (0: the net, 1: its p = 0.2 dropout version)", ylabel="test error %",
               title="straight line to a dropout version")
    widths = [r["width"] for r in results["right"]]
    right.plot(widths, [r["error"] for r in results["right"]], "o-")
    right.set(xscale="log", xlabel="filters per layer", ylabel="test error %", title="narrow nets")
    right.set_xticks(widths, [str(w) for w in widths])
    return {"figure2": fig}

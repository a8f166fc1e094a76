"""Figures of the Kuditipudi et al. reproductions (``modeconnect reproduce kuditipudi-fig2|kuditipudi-fig3``)."""

from __future__ import annotations

from typing import Any

from ._common import new_figure

__all__ = ["fig2_figures", "fig3_figures"]


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


_QUANTITIES = (("layer_cushion", "layer cushion $\\mu_i$"), ("minimal_interlayer_cushion", "min. interlayer cushion"),
               ("activation_contraction", "activation contraction $c_i$"),
               ("interlayer_smoothness", "interlayer smoothness $\\rho_i$"))


def fig3_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Figure 3 analogue: the four noise-stability quantities as per-layer distributions over samples, and the
    training loss / accuracy along the Theorem 3 path against direct interpolation."""
    import math

    fig = new_figure(13, 3.2)
    noise = results["noise"]
    axes = fig.subplots(1, 4)
    for ax, (key, title) in zip(axes, _QUANTITIES):
        rows = noise.get(key, [])
        values = [[float(v) for v in r["values"]] for r in rows]  # JSON keeps inf and nan as strings
        data = [[v for v in vs if math.isfinite(v)] or [math.nan] for vs in values]
        if data:
            ax.boxplot(data, tick_labels=[str(r["i"]) for r in rows], showfliers=False)
        ax.set(title=title, xlabel="layer i")
        if key == "interlayer_smoothness":
            ax.set_yscale("log")
    paths = new_figure(10, 3.6)
    loss_ax, acc_ax = paths.subplots(1, 2)
    direct = results["direct"]
    theorem3 = results.get("theorem3")
    if theorem3 and "s" not in theorem3:  # the method ran but built no path (its reason is in the claims)
        theorem3 = None
    span = theorem3["n_pieces"] if theorem3 else 1
    scale = [s * span for s in direct["s"]]  # direct interpolation drawn over the same horizontal range
    loss_ax.plot(scale, direct["loss"], "--", label="direct interpolation")
    acc_ax.plot(scale, direct["accuracy"], "--", label="direct interpolation")
    if theorem3:
        loss_ax.plot(theorem3["s"], theorem3["loss"], ".-", label=f"Theorem 3 path ({span} segments)")
        acc_ax.plot(theorem3["s"], theorem3["accuracy"], ".-", label=f"Theorem 3 path ({span} segments)")
    loss_ax.set(xlabel="segment", ylabel="training loss (cross-entropy)", title="loss along the paths")
    acc_ax.set(xlabel="segment", ylabel="training accuracy %", title="accuracy along the paths")
    loss_ax.legend(fontsize=8)
    return {"noise_stability": fig, "paths": paths}

"""Figure of the Section 2.3.1 reproduction (``modeconnect reproduce freeman-bruna-counterexample``)."""

from __future__ import annotations

from typing import Any

from ._common import new_figure

__all__ = ["counterexample_figures"]

_MARKERS = "osD^vP*X"


def counterexample_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Two panels against sigma: the barrier each method found next to the proven bound, the sample's rank-one
    floor and the straight line's barrier; the endpoints' energy (sample and closed form) against L0."""
    fig = new_figure(11, 4.0)
    left, right = fig.subplots(1, 2)
    samples = sorted(results["samples"], key=lambda s: s["sigma"])
    sigmas = [s["sigma"] for s in samples]
    methods = list(dict.fromkeys(r["method"] for r in results["runs"]))
    for k, method in enumerate(methods):
        rows = sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["sigma"])
        left.plot([r["sigma"] for r in rows], [r["barrier"] for r in rows], marker=_MARKERS[k % len(_MARKERS)],
                  lw=1.2, label=method)
    left.plot(sigmas, [s["line_barrier"] for s in samples], color="grey", ls=":", lw=1.2, label="straight line")
    left.axhline(results["bound"], color="black", ls="--", lw=1.2, label=f"proven bound {results['bound']:g}")
    floors = [s["floor"] for s in samples]
    if all(f is not None for f in floors):
        left.plot(sigmas, floors, color="black", lw=0.8, alpha=0.6, label="sample's rank-one floor")
    left.plot(sigmas, [s["threshold"] for s in samples], color="tab:blue", ls="-.", lw=0.8, label="L0")
    left.set(yscale="log", xlabel="sigma (component standard deviation)", ylabel="barrier (largest MSE on the path)",
             title="every method's barrier vs the bound")
    left.legend(fontsize=7, ncol=2)
    right.plot(sigmas, [max(s["energy_a"], 1e-16) for s in samples], "o-", label="A (= B) on the sample")
    right.plot(sigmas, [max(s["risk_a"], 1e-16) for s in samples], "k--", lw=1, label="A's population risk")
    right.plot(sigmas, [s["threshold"] for s in samples], color="tab:blue", ls="-.", lw=0.8, label="L0")
    right.axhline(results["bound"], color="black", ls="--", lw=0.8, alpha=0.5)
    right.set(yscale="log", xlabel="sigma", ylabel="MSE", title="endpoints: risk -> 0 as sigma -> 0")
    right.legend(fontsize=8)
    return {"counterexample": fig}

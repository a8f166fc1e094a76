"""Figures of the Proposition 2.2 reproduction (``modeconnect reproduce freeman-bruna-linear``)."""

from __future__ import annotations

from typing import Any

from ._common import new_figure

__all__ = ["linear_figures"]


def _profile_panel(ax, case: dict[str, Any], title: str) -> None:
    line = case["line"]
    ax.plot(line["t"], line["energy"], color="grey", lw=1.2, label="straight line A-B")
    dss = case["dss"]
    ax.plot(dss["profile"]["s"], dss["profile"]["energy"], color="tab:orange", lw=1.2,
            label=f"greedy DSS ({dss['n_beads']} beads; x = length fraction)")
    cons = case["construction"]
    if "profile" in cons:
        ax.plot(cons["profile"]["t"], cons["profile"]["energy"], color="tab:blue", lw=1.8,
                label="Prop. 2.2 construction")
    else:
        ax.text(0.5, 0.5, f"construction: not applicable\n({cons['not_applicable']})", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="tab:blue")
    ax.axhline(case["lambda"], color="tab:blue", ls="--", lw=0.9, label="lambda = max(E(A), E(B))")
    ax.axhline(case["threshold"], color="black", ls=":", lw=0.9, label="L0")
    ax.set(yscale="log", xlabel="t", ylabel="energy", title=title)


def linear_figures(results: dict[str, Any]) -> dict[str, Any]:
    """``profiles``: energy along the straight line, the construction and greedy DSS's path for the first pair
    of each configuration and the two special cases, and the descent to a global minimiser; ``ratios``: each
    path's maximum over lambda, every pair."""
    configs = [c["name"] for c in results["configs"]]
    firsts = [next(p for p in results["pairs"] if p["label"].startswith(name + " pair")) for name in configs]
    cases = [(p, p["label"]) for p in firsts] + [(results["flipped"], "K=3 vs its sign-flipped copy"),
                                                  (results["one_one_one"], "1-1-1 net vs its negation")]
    fig = new_figure(17, 7)
    axes = fig.subplots(2, 4).ravel()
    for ax, (case, title) in zip(axes, cases):
        _profile_panel(ax, case, title)
    axes[0].legend(fontsize=7, loc="upper right")
    descent = results.get("descent")
    if descent:
        ax = axes[len(cases)]
        ax.plot(descent["profile"]["t"], descent["profile"]["energy"], color="tab:blue", lw=1.8)
        ax.axhline(descent["risk_floor"], color="black", ls=":", lw=0.9, label="least-squares minimum")
        ax.set(yscale="log", xlabel="t", ylabel="energy", title="K=3: untrained net to a global minimiser")
        ax.legend(fontsize=7)
    for ax in axes[len(cases) + (1 if descent else 0):]:
        ax.set_visible(False)
    ratios = new_figure(7, 3.8)
    ax = ratios.subplots()
    for k, name in enumerate(configs):
        pairs = [p for p in results["pairs"] if p["label"].startswith(name + " pair")]
        for j, p in enumerate(pairs):
            x = k + 0.08 * (j - (len(pairs) - 1) / 2)
            lam = p["lambda"]
            ax.plot(x - 0.25, p["line_max"] / lam, "s", color="grey", label="straight line" if k + j == 0 else None)
            ax.plot(x, p["construction"]["construction_max_energy"] / lam, "o", color="tab:blue",
                    label="construction (exact, dense t)" if k + j == 0 else None)
            ax.plot(x + 0.25, p["dss"]["certified_max"] / lam, "^", color="tab:orange",
                    label="greedy DSS (certified max)" if k + j == 0 else None)
    ax.axhline(1.0, color="tab:blue", ls="--", lw=0.9)
    ax.set_xticks(range(len(configs)), configs)
    ax.set(yscale="log", ylabel="max energy along the path / lambda", title="every pair: path maximum over lambda")
    ax.legend(fontsize=8)
    return {"profiles": fig, "ratios": ratios}

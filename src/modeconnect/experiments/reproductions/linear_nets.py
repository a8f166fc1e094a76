"""Freeman & Bruna (2017), Proposition 2.2: level sets of deep linear networks are connected, by construction.

For each configuration (K = 2, 3, 4 layers with the plain empirical risk, and K = 2 with the ridge penalty) and
each pair, two networks are trained to 0.9 L0 (the task's default level) from independent seeds and joined by

* the straight segment A-B (sampled on 257 values of t);
* the Proposition 2.2 construction (method ``linear_construction``), sampled exactly on its dense grid, with
  lambda = max(E(A), E(B)), the bound the proof gives;
* greedy DSS (method ``greedy_dss``) at the same L0.

Both paths are certified by refined sampling. Two extra cases show where the argument needs care: a network
and its sign-flipped copy (layers 2 and 3 negated, same function; the straight pivot line passes through
zero, the paper's t(1-t)V bump avoids it), and the 1-1-1 network (hidden width = min(input, output), allowed by
the proposition's n_j >= min(n_1, n_K)) where (w_1, w_2) and (-w_1, -w_2) lie in different components of every
level set below E[y^2]: the construction reports ``orientation`` and greedy DSS finds no path. Last, the
proposition's "strictly decreasing path to the lowest level": the construction from an untrained K = 3 net to a
global minimiser (the least-squares map factored through the layers), sampled in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch

from ...connect import connect
from ...methods.greedy_dss import DSSConfig
from ...methods.linear_construction import LinearConstructionConfig, construct
from ...path import Path
from ...seeding import derive_seed
from ...tasks import make_task
from ...theory.linear_paths import factor_through
from ...train import train_to_target
from ..reproduce import UnitCache, claim

FIGURE = "modeconnect.plots.repro_linear:linear_figures"

CONFIGS = [
    {"name": "K=2", "task": "linear", "depth": 2},
    {"name": "K=3", "task": "linear", "depth": 3},
    {"name": "K=4", "task": "linear", "depth": 4},
    {"name": "K=2 ridge", "task": "linear-ridge", "depth": 2},
]
FULL = {"pairs": 4, "dense_points": 1025, "line_points": 129, "seed": 0, "dss_max_beads": 64}
QUICK = {"pairs": 1, "dense_points": 129, "line_points": 33, "seed": 0, "dss_max_beads": 16}
PROFILE_POINTS = 17
"""Energy samples per straight piece in the stored DSS profiles."""


def _endpoint(task, seed: int) -> dict[str, torch.Tensor]:
    start = task.energy.point_of(task.make_model(seed))
    point, status = train_to_target(start, energy=task.energy, objective=task.objective,
                                    target=0.9 * task.default_threshold, config=task.endpoint_training, seed=seed)
    if not status.reached:
        raise RuntimeError(f"{task.name}: endpoint seed {seed} stopped at {status.final_energy:.4g} ({status.reason})")
    return point


def _r(value: float) -> float:
    """Six significant digits: profiles are for figures, the claims use the unrounded maxima."""
    return float(f"{value:.6g}")


def _path_profile(path: Path, energy) -> dict[str, list[float]]:
    """Energies along every piece of ``path`` against the fraction of its length."""
    grid = torch.linspace(0, 1, PROFILE_POINTS, dtype=torch.float64)
    lengths = path.segment_lengths
    total = sum(lengths) or 1.0
    s, e, done = [], [], 0.0
    for i, length in enumerate(lengths):
        values = path.energies(i, grid, energy)
        s += [round((done + float(t) * length) / total, 5) for t in grid]
        e += [_r(float(v)) for v in values]
        done += length
    return {"s": s, "energy": e}


def _pair(cfg: dict[str, Any], index: int, settings: dict[str, Any], say) -> dict[str, Any]:
    task = make_task(cfg["task"], depth=cfg["depth"])
    threshold = task.default_threshold
    seeds = [derive_seed(settings["seed"], cfg["name"], index, w) for w in ("a", "b")]
    a, b = (_endpoint(task, s) for s in seeds)
    return _connect_both(task, a, b, threshold, settings, say, f"{cfg['name']} pair {index}")


def _connect_both(task, a, b, threshold, settings, say, label) -> dict[str, Any]:
    energy = task.energy
    ts = torch.linspace(0, 1, settings["line_points"], dtype=torch.float64)
    line = [_r(float(v)) for v in energy.along_segment(a, b, ts)]
    lc_cfg = LinearConstructionConfig(dense_points=settings["dense_points"], seed=settings["seed"])
    lc = connect(a, b, energy, threshold=threshold, method="linear_construction", config=lc_cfg)
    ex = lc.outcome.extras
    out: dict[str, Any] = {"label": label, "threshold": threshold, "endpoint_energies": lc.endpoint_energies,
                           "lambda": ex["lambda"], "line": {"t": [round(float(t), 5) for t in ts], "energy": line},
                           "line_max": max(line), "construction": {
                               "reason": lc.outcome.reason, "connected": lc.connected,
                               "certified": bool(lc.certificate and lc.certificate.certified),
                               "certified_max": lc.certificate.max_energy if lc.certificate else None,
                               "normalized_length": lc.path.normalized_length, "n_beads": lc.path.n_beads,
                               "time_s": lc.wall_time_s, **{k: ex.get(k) for k in (
                                   "construction_max_energy", "construction_max_energy_f64", "lambda_f64",
                                   "within_bound", "strictly_below_inside", "product_error_max", "not_applicable",
                                   "construction_interior_max_f64",
                                   "construction")}}}
    if lc.outcome.reason != "not_applicable":
        dense = torch.linspace(0, 1, len(ex["construction_profile"]), dtype=torch.float64)
        out["construction"]["profile"] = {"t": [round(float(t), 5) for t in dense],
                                          "energy": [_r(v) for v in ex["construction_profile"]]}
    dss_cfg = DSSConfig(bead_training=task.bead_training, max_beads=settings["dss_max_beads"], seed=settings["seed"])
    dss = connect(a, b, energy, threshold=threshold, method="greedy_dss", config=dss_cfg, objective=task.objective)
    out["dss"] = {"reason": dss.outcome.reason, "connected": dss.connected,
                  "certified": bool(dss.certificate and dss.certificate.certified),
                  "certified_max": dss.certificate.max_energy if dss.certificate else None,
                  "normalized_length": dss.path.normalized_length, "n_beads": dss.path.n_beads,
                  "time_s": dss.wall_time_s, "profile": _path_profile(dss.path, energy)}
    say(f"{label}: lambda {out['lambda']:.4g}, construction max {out['construction']['construction_max_energy']} "
        f"({lc.outcome.reason}), DSS certified max {out['dss']['certified_max']:.4g} ({dss.outcome.reason}, "
        f"{dss.path.n_beads} beads), straight line max {out['line_max']:.4g}")
    return out


def _flipped(settings: dict[str, Any], say) -> dict[str, Any]:
    """A K = 3 network against its copy with layers 2 and 3 negated (the same function)."""
    task = make_task("linear", depth=3)
    a = _endpoint(task, derive_seed(settings["seed"], "flipped"))
    b = {"0.weight": a["0.weight"].clone(), "1.weight": -a["1.weight"], "2.weight": -a["2.weight"]}
    out = _connect_both(task, a, b, task.default_threshold, settings, say, "K=3 sign-flipped copy")
    no_bump = connect(a, b, task.energy, threshold=task.default_threshold, method="linear_construction",
                      config=LinearConstructionConfig(dense_points=settings["dense_points"], bump_scale=0.0))
    out["no_bump_reason"] = no_bump.outcome.extras.get("not_applicable", no_bump.outcome.reason)
    return out


def _one_one_one(settings: dict[str, Any], say) -> dict[str, Any]:
    """The 1-1-1 network: (w1, w2) against (-w1, -w2)."""
    task = make_task("linear", depth=2, width=1, input_dim=1, output_dim=1)
    a = _endpoint(task, derive_seed(settings["seed"], "111"))
    b = {k: -v for k, v in a.items()}
    out = _connect_both(task, a, b, task.default_threshold, settings, say, "1-1-1 network vs its negation")
    y = task.energy.targets.double()
    out["energy_at_zero_product"] = float((y**2).mean())
    return out


def _descent(settings: dict[str, Any], say) -> dict[str, Any]:
    """From an untrained K = 3 network to a global minimiser (the least-squares map factored through the
    layers): the proposition's strictly decreasing path, sampled exactly in float64."""
    task = make_task("linear", depth=3)
    energy, sizes = task.energy, task.options["sizes"]
    a = energy.point_of(task.make_model(derive_seed(settings["seed"], "descent")))
    x, y = energy.inputs.double(), energy.targets.double()
    best = factor_through(torch.linalg.lstsq(x, y).solution.T, sizes)
    b = {f"{i}.weight": w.float() for i, w in enumerate(best)}
    keys = [f"{i}.weight" for i in range(len(best))]
    dense = torch.linspace(0, 1, settings["dense_points"], dtype=torch.float64)
    curve, _ = construct([a[k].double() for k in keys], best, ridge=0.0,
                         config=LinearConstructionConfig(seed=settings["seed"]), dense=dense)
    values = energy.evaluate(dict(zip(keys, curve.weights_batch(dense)))).tolist()
    steps = [v1 - v0 for v0, v1 in zip(values, values[1:])]
    lc = connect(a, b, energy, threshold=1.01 * energy(a), method="linear_construction",
                 config=LinearConstructionConfig(dense_points=settings["dense_points"], seed=settings["seed"]))
    say(f"descent: from energy {values[0]:.4g} to the minimum {values[-1]:.6g}, largest step {max(steps):.3g}")
    return {"start_energy": values[0], "end_energy": values[-1], "risk_floor": task.options["risk_floor"],
            "largest_step": max(steps), "n_points": len(values), "certified": bool(lc.certificate.certified),
            "profile": {"t": [round(float(t), 5) for t in dense[::16]], "energy": [_r(v) for v in values[::16]]}}


def run(out: FsPath, *, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    cache = UnitCache(out)
    torch.set_num_threads(1)  # tiny models: a second thread only synchronises
    key = f"d{settings['dense_points']}-l{settings['line_points']}-b{settings['dss_max_beads']}-s{settings['seed']}"
    pairs = [cache.get_or_compute(f"pair-{cfg['name'].replace(' ', '_')}-{i}-{key}",
                                  lambda cfg=cfg, i=i: _pair(cfg, i, settings, progress))
             for cfg in CONFIGS for i in range(settings["pairs"])]
    flipped = cache.get_or_compute(f"flipped-{key}", lambda: _flipped(settings, progress))
    tiny = cache.get_or_compute(f"111-{key}", lambda: _one_one_one(settings, progress))
    descent = cache.get_or_compute(f"descent-{key}", lambda: _descent(settings, progress))
    _table(out, pairs + [flipped, tiny])
    pairs = [_without_profiles(p) if not p["label"].endswith(" pair 0") else p for p in pairs]  # the figure's
    return {"settings": settings, "configs": CONFIGS, "pairs": pairs, "flipped": flipped, "one_one_one": tiny,
            "descent": descent, "claims": _claims(pairs, flipped, tiny, descent)}


def _without_profiles(case: dict[str, Any]) -> dict[str, Any]:
    """A pair's record without its energy profiles (the figure draws the first pair of each configuration)."""
    out = {k: v for k, v in case.items() if k != "line"}
    out["construction"] = {k: v for k, v in case["construction"].items() if k != "profile"}
    out["dss"] = {k: v for k, v in case["dss"].items() if k != "profile"}
    return out


def _table(out: FsPath, cases: list[dict[str, Any]]) -> None:
    rows = ["case,L0,lambda,line_max,construction_reason,construction_max_f64,construction_certified_max,"
            "construction_norm_length,construction_beads,construction_s,dss_reason,dss_certified_max,"
            "dss_norm_length,dss_beads,dss_s"]
    for p in cases:
        c, d = p["construction"], p["dss"]
        applicable = c["reason"] != "not_applicable"
        rows.append(",".join(str(v) for v in (
            p["label"], p["threshold"], f"{p['lambda']:.6g}", f"{p['line_max']:.6g}",
            c.get("not_applicable") or c["reason"],
            f"{c['construction_max_energy_f64']:.6g}" if applicable else "",
            f"{c['certified_max']:.6g}" if applicable else "", f"{c['normalized_length']:.4g}" if applicable else "",
            c["n_beads"] if applicable else "", f"{c['time_s']:.3f}", d["reason"], f"{d['certified_max']:.6g}",
            f"{d['normalized_length']:.4g}", d["n_beads"], f"{d['time_s']:.3f}")))
    (out / "table.csv").write_text("\n".join(rows) + "\n")


def _claims(pairs, flipped, tiny, descent) -> list[dict[str, Any]]:
    c = [p["construction"] for p in pairs]
    worst = max(x["construction_max_energy_f64"] / x["lambda_f64"] for x in c)
    inside = max(x["construction_interior_max_f64"] / x["lambda_f64"] for x in c)
    strict = sum(bool(x["strictly_below_inside"]) for x in c)
    ridge = [p for p in pairs if "ridge" in p["label"]]
    certified = [p["label"] for p in pairs if not (p["construction"]["certified"] and p["dss"]["certified"])]
    line_over = [p["line_max"] / p["threshold"] for p in pairs]
    return [
        claim("the constructed path never exceeds lambda = max(E(A), E(B)) (exact construction, float64, dense t)",
              all(x["within_bound"] for x in c),
              f"{len(c)} pairs at K = 2, 3, 4 and K = 2 ridge; largest max / lambda = {worst:.12f} (at an "
              f"endpoint); for 0 < t < 1 at most {inside:.6f} lambda, strictly below lambda on {strict} of {len(c)}"),
        claim("along the construction the network's end-to-end map is (1 - t) M^A + t M^B (kappa = 0) or the "
              "endpoint's product, then that line (ridge)", max(x["product_error_max"] for x in c) < 1e-10,
              f"largest relative error {max(x['product_error_max'] for x in c):.2e}"),
        claim("with the ridge penalty (K = 2) the nuclear-norm factorisation path stays below lambda",
              bool(ridge) and all(p["construction"]["within_bound"] for p in ridge),
              "; ".join(f"{p['label']}: max {p['construction']['construction_max_energy_f64']:.6g} <= lambda "
                        f"{p['construction']['lambda_f64']:.6g}" for p in ridge)),
        claim("the straight segment between the same trained endpoints leaves the level set on every pair",
              all(p["line_max"] > p["threshold"] for p in pairs),
              f"straight-line max / L0 from {min(line_over):.1f} to {max(line_over):.1f}"),
        claim("the construction's beaded path and greedy DSS's path are both certified below L0 on every pair",
              not certified, "all certified" if not certified else f"not certified: {', '.join(certified)}"),
        claim("a network and its sign-flipped copy: without the t(1-t)V bump the pivot line becomes singular; "
              "with it the construction connects", flipped["no_bump_reason"] == "singular_pivot"
              and flipped["construction"]["within_bound"] and flipped["construction"]["certified"],
              f"no bump: {flipped['no_bump_reason']}; with the bump: max "
              f"{flipped['construction']['construction_max_energy_f64']:.4g} <= lambda {flipped['lambda']:.4g}, "
              f"straight line {flipped['line_max']:.4g}"),
        claim("n_j = min(n_1, n_K) is not enough: the 1-1-1 network and its negation are not connected below "
              "E[y^2] (the construction reports the orientation obstruction; greedy DSS finds no path)",
              tiny["construction"]["not_applicable"] == "orientation" and not tiny["dss"]["connected"]
              and tiny["threshold"] < tiny["energy_at_zero_product"],
              f"L0 {tiny['threshold']:.4g} < E[y^2] = {tiny['energy_at_zero_product']:.4g}; "
              f"DSS: {tiny['dss']['reason']} with {tiny['dss']['n_beads']} beads, "
              f"certified max {tiny['dss']['certified_max']:.4g}"),
        claim("any theta is joined to the lowest level by a strictly decreasing path (the construction towards a "
              "global minimiser, K = 3)", descent["largest_step"] < 0
              and abs(descent["end_energy"] - descent["risk_floor"]) <= 1e-9 * descent["risk_floor"],
              f"from an untrained net at {descent['start_energy']:.4g} to {descent['end_energy']:.6g} (least-squares "
              f"minimum {descent['risk_floor']:.6g}); every one of {descent['n_points'] - 1} steps in t decreases "
              f"(largest {descent['largest_step']:.2e})"),
    ]

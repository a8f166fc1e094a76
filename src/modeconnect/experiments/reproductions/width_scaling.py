"""Freeman & Bruna (2017), Theorem 2.4 and Corollary 2.5: the energy gap epsilon(m) of two-layer ReLU networks
against their width m, for input dimensions n = 1, 2, 4 (``docs/width_scaling.md``).

Task: ``teacher-student`` (a 3-unit ReLU teacher, 256 Gaussian inputs, unit-variance targets; energy = training
MSE). For each n and width m, ``pairs`` pairs of students are trained from independent initialisations to the
level ``level`` (Adam, full batch, at most ``max_steps`` steps); a pair whose endpoints miss it is recorded and
left out of the fits. For each pair, with E the higher endpoint energy:

* ``line``: eps_line, the certified maximum of the straight segment minus E;
* ``dss``: eps_dss, greedy DSS down a ladder of levels E + eps_line / 2^j (:func:`~modeconnect.theory.
  width_scaling.dss_gap`; a pair that never fails is marked censored);
* ``construction``: the proof's path (:mod:`modeconnect.theory.construction`) with the teacher as the oracle,
  best of a few angles alpha;
* ``best``: the lowest of the three, our tightest upper bound on the pair's true gap (the theorem's epsilon
  bounds that gap: it says a path with maximum <= max(E, epsilon) exists);
* ``aligned``: the straight line to B with its units permuted to A's (weight matching). It does not end at B,
  so it is no path of the theorem; shown because it is what the permutation picture predicts shrinks with m;
* ``angle``: the median over units of the angle to the nearest other unit (in R^(n+1)), the quantity the
  proof of Corollary 2.5 rests on.

Each definition's mean over pairs is fitted as C m^b per n (:func:`~modeconnect.theory.width_scaling.
fit_exponent`, bootstrap over pairs) and compared with b = -1/n (and -1/(n+1), the paper's rate with the bias
counted in the weight dimension).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch

from ...align import align
from ...errors import ConfigError
from ...tasks import make_task
from ...tasks.teacher_student import teacher_point
from ...theory.construction import construction_gap, nearest_unit_angles
from ...theory.width_scaling import LadderConfig, dss_gap, fit_exponent, line_gap
from ...train import TrainConfig, train_to_target
from ..reproduce import UnitCache, claim

FIGURE = "modeconnect.plots.repro_width_scaling:width_scaling_figures"

FULL = {"input_dims": [1, 2, 4], "widths": [8, 16, 32, 64, 128, 256], "pairs": 4, "level": 0.002,
        "n_train": 256, "teacher_width": 3, "max_steps": 6000, "lr": 0.01, "max_rungs": 12, "floor_fraction": 0.01,
        "max_beads": 8, "alphas": [0.05, 0.1, 0.2, 0.4, 0.8], "line_resolution": 1e-3, "bootstrap": 500, "seed": 0}
QUICK = {**FULL, "input_dims": [1, 2], "widths": [8, 16, 32], "pairs": 1, "level": 0.02, "max_steps": 1000,
         "max_rungs": 1, "alphas": [0.8], "bootstrap": 20}
DEFINITIONS = ("line", "dss", "construction", "best", "aligned", "angle")
"""What each pair reports (the module docstring says what each is)."""


def _ladder(settings: dict[str, Any]) -> LadderConfig:
    return LadderConfig(max_rungs=settings["max_rungs"], floor=settings["floor_fraction"] * settings["level"],
                        max_beads=settings["max_beads"])


def _pair_key(settings: dict[str, Any], n: int, m: int, pair: int) -> str:
    relevant = {k: v for k, v in settings.items() if k not in ("input_dims", "widths", "pairs", "bootstrap")}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]
    return f"pair-n{n}-m{m}-p{pair}-{digest}"


def _train(task, seed: int, settings: dict[str, Any]):
    config = TrainConfig(optimizer="adam", lr=settings["lr"], check_every=10, max_steps=settings["max_steps"])
    start = task.energy.point_of(task.make_model(seed))
    return train_to_target(start, energy=task.energy, objective=task.objective, target=settings["level"],
                           config=config, seed=seed)


def _endpoints(settings: dict[str, Any], n: int, m: int, pair: int):
    """The pair's task and its two trained endpoints (deterministic: full-batch training from fixed seeds)."""
    options = {"width": m, "input_dim": n, "teacher_width": settings["teacher_width"], "n_train": settings["n_train"]}
    task = make_task("teacher-student", **options)
    seed = settings["seed"] + 1000 * n + 2 * pair
    return task, options, seed, _train(task, seed, settings), _train(task, seed + 1, settings)


def _measure_pair(settings: dict[str, Any], n: int, m: int, pair: int) -> dict[str, Any]:
    begin = time.perf_counter()
    task, _, seed, (a, status_a), (b, status_b) = _endpoints(settings, n, m, pair)
    record: dict[str, Any] = {"n": n, "m": m, "pair": pair, "seeds": [seed, seed + 1],
                              "endpoint_steps": [status_a.steps, status_b.steps]}
    reached = max(status_a.final_energy, status_b.final_energy) <= settings["level"]
    record["reached"] = bool(reached)
    if not reached:
        record.update(endpoint_energies=[status_a.final_energy, status_b.final_energy],
                      seconds=round(time.perf_counter() - begin, 2))
        return record
    energy = task.energy
    line = line_gap(a, b, energy, resolution=settings["line_resolution"])
    dss = dss_gap(a, b, energy, task.objective, eps_line=line["eps_line"], config=_ladder(settings), seed=seed)
    aligned = align(a, b, task.make_model(0), "weight").point
    record.update(endpoint_energies=line["endpoint_energies"], level=line["level"], line=line["eps_line"],
                  dss=dss["eps_dss"], dss_censored=dss["censored"], dss_stopped=dss["stopped"],
                  dss_rungs=len(dss["rungs"]),
                  aligned=line_gap(a, aligned, energy, resolution=settings["line_resolution"])["eps_line"])
    angles = nearest_unit_angles(a, x=energy.inputs) + nearest_unit_angles(b, x=energy.inputs)
    record["angle"] = statistics.median(angles) if angles else None
    record["seconds"] = round(time.perf_counter() - begin, 2)
    return record


CONSTRUCTION_VERSION = 3
"""Part of the construction units' key: 3 = output-layer refits regularised (ridge, half the headroom kept)
and the worst piece named as the rotation that causes it; 1 (plain least squares) blew up on ill-conditioned
narrow students."""


def _measure_construction(settings: dict[str, Any], n: int, m: int, pair: int) -> dict[str, Any]:
    """The proof's path for the pair (its endpoints trained again: the training is deterministic)."""
    task, options, _, (a, _), (b, _) = _endpoints(settings, n, m, pair)
    built = construction_gap(a, b, task.energy, teacher_point(**options), alphas=settings["alphas"])
    return {"construction": built["eps_construction"], "construction_alpha": built["alpha"],
            "construction_worst_piece": built["worst_piece"]}


def _pair(cache: UnitCache, settings: dict[str, Any], n: int, m: int, pair: int) -> dict[str, Any]:
    key = _pair_key(settings, n, m, pair)
    row = dict(cache.get_or_compute(key, lambda: _measure_pair(settings, n, m, pair)))
    if row["reached"]:
        row.update(cache.get_or_compute(f"construction-v{CONSTRUCTION_VERSION}-{key}",
                                        lambda: _measure_construction(settings, n, m, pair)))
        row["best"] = min(v for v in (row["line"], row["dss"], row["construction"]) if v is not None)
    return row


def _summary(rows: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
    """Per (n, m, definition): mean, standard error and counts; per (n, definition): the exponent fit."""
    table, fits = [], {}
    for n in settings["input_dims"]:
        fits[str(n)] = {}
        for name in DEFINITIONS:
            widths, values = [], []
            for m in settings["widths"]:
                vals = [r[name] for r in rows if r["n"] == n and r["m"] == m and r["reached"]
                        and r.get(name) is not None]
                if vals:
                    mean = statistics.fmean(vals)
                    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
                    table.append({"n": n, "m": m, "definition": name, "mean": mean, "se": se, "pairs": len(vals),
                                  "zeros": sum(v <= 0 for v in vals)})
                widths += [m] * len(vals)
                values += vals
            try:
                fit = fit_exponent(widths, values, bootstrap=settings["bootstrap"], seed=settings["seed"])
                fits[str(n)][name] = fit.to_dict()
            except ConfigError as exc:
                fits[str(n)][name] = {"error": str(exc)}
    return table, fits


def _exponent_detail(fit: dict[str, Any], n: int) -> str:
    if "error" in fit:
        return fit["error"]
    low, high = fit["interval95"]
    return (f"fitted exponent {fit['slope']:.3f}, 95% interval [{low:.3f}, {high:.3f}] over widths "
            f"{', '.join(f'{w:g}' for w in fit['widths'])}; -1/n = {-1 / n:.3f}, -1/(n+1) = {-1 / (n + 1):.3f}")


def _claims(fits: dict, rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    claims = []
    for n in settings["input_dims"]:
        rate = -1.0 / n
        reached = [r for r in rows if r["n"] == n and r["reached"]]
        share = {}
        for m in settings["widths"]:
            at = [r for r in reached if r["m"] == m]
            if at:
                share[m] = (sum(r["best"] == 0 for r in at), len(at))
        widest = max(share) if share else None
        text = "; ".join(f"m={m}: {k} of {t}" for m, (k, t) in share.items())
        claims.append(claim(f"n = {n}: Theorem 2.4's path exists at max(E, epsilon) with epsilon(m) <= E at the "
                            "largest width: there, every pair is connected at its own level E by one of our paths",
                            widest is not None and share[widest][0] == share[widest][1],
                            f"pairs with a path at their own level (gap 0), per width: {text}"))
        dss = fits[str(n)]["dss"]
        censored = sum(bool(r.get("dss_censored")) for r in reached)
        detail = f"DSS gap: {_exponent_detail(dss, n)}; {censored} of {len(reached)} pair(s) censored"
        if "error" in dss:
            claims.append(claim(f"n = {n}: the DSS gap decreases with the width m", False, detail))
        else:
            low, high = dss["interval95"]
            claims.append(claim(f"n = {n}: the DSS gap decreases with the width m (fitted exponent < 0)",
                                high < 0, detail))
            claims.append(claim(f"n = {n}: the DSS gap decays at least as fast as m^(-1/n) (Corollary 2.5's "
                                "O(m^(-1/n)): the interval reaches -1/n or below)", low <= rate, detail))
        angle = fits[str(n)]["angle"]
        if "error" not in angle:
            a_low, a_high = angle["interval95"]
            claims.append(claim(f"n = {n}: the nearest-unit angle, the proof's mechanism, scales as m^(-1/n)",
                                a_low <= rate <= a_high, f"angle: {_exponent_detail(angle, n)}"))
    return claims


def run(out: FsPath, *, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    cache = UnitCache(out)
    torch.set_num_threads(1)  # tiny networks: a second thread only synchronises
    rows = []
    for n in settings["input_dims"]:
        for m in settings["widths"]:
            for pair in range(settings["pairs"]):
                rows.append(_pair(cache, settings, n, m, pair))
            done = [r for r in rows if r["n"] == n and r["m"] == m]
            shown = ", ".join("missed the level" if not r["reached"] else
                              f"line {r['line']:.3g} dss {r['dss']:.3g} best {r['best']:.3g}" for r in done)
            progress(f"n={n} m={m}: {shown}")
    table, fits = _summary(rows, settings)
    lines = ["n,m,definition,mean,se,pairs,zeros"]
    lines += [",".join([str(t["n"]), str(t["m"]), t["definition"], f"{t['mean']:.6g}",
                        "" if t["se"] is None else f"{t['se']:.3g}", str(t["pairs"]), str(t["zeros"])])
              for t in table]
    (out / "table.csv").write_text("\n".join(lines) + "\n")
    missed = sum(not r["reached"] for r in rows)
    return {"settings": settings, "scale": f"{len(settings['input_dims'])} input dimensions x "
            f"{len(settings['widths'])} widths x {settings['pairs']} pairs, 3-unit teacher, {settings['n_train']} "
            f"inputs, endpoints at training MSE <= {settings['level']:g} (unit-variance targets); {missed} pair(s) "
            "missed the level", "pairs": rows, "table": table, "fits": fits,
            "claims": _claims(fits, rows, settings)}

"""Benchmark: greedy DSS vs constrained DSS vs string evolution on the same endpoint pairs.

Run from the repository root:

    .venv/bin/python benchmarks/methods.py                     # cubic, seeds 0-3, the three methods
    .venv/bin/python benchmarks/methods.py --seeds 0-7 --quick # fewer repeats
    .venv/bin/python benchmarks/methods.py --sweep constraint  # constrained DSS: project vs penalty, zeta
    .venv/bin/python benchmarks/methods.py --sweep evolution   # string evolution: level schedule, batching
    MODECONNECT_DATA=/work/shared/data .venv/bin/python benchmarks/methods.py --task mnist --seeds 0

The endpoints of each seed are trained once, exactly as ``modeconnect connect --seed S`` trains them, and
every method (or variant) connects the same pair through ``modeconnect.connect.connect`` with the task's
bead training, then the path is certified (certification time is reported apart and not counted). Per
pair and method it prints: connected/certified, the reason, beads on the path, beads trained, method
time, beads trained per second and the normalized length; then per method the totals, and the ratios
against greedy DSS measured in the same run (time per pair, beads per second). Timings depend on the
machine's load (printed): compare ratios, not seconds, across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.certify import CertifyConfig  # noqa: E402
from modeconnect.connect import connect  # noqa: E402
from modeconnect.methods import METHODS  # noqa: E402
from modeconnect.seeding import derive_seed  # noqa: E402
from modeconnect.settings import apply_overrides  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402
from modeconnect.train import train_to_target  # noqa: E402

VARIANTS = {
    "methods": [("greedy_dss", "greedy_dss", {}), ("constrained_dss", "constrained_dss", {}),
                ("string_evolution", "string_evolution", {})],
    "constraint": [("greedy_dss", "greedy_dss", {}),
                   ("project zeta=0", "constrained_dss", {"constraint": "project", "zeta": 0.0}),
                   ("project zeta=1e-4", "constrained_dss", {"constraint": "project", "zeta": 1e-4}),
                   ("project zeta=3e-4", "constrained_dss", {"constraint": "project", "zeta": 3e-4}),
                   ("penalty zeta=0 kappa=1e-2", "constrained_dss", {"constraint": "penalty", "zeta": 0.0,
                                                                     "kappa": 1e-2}),
                   ("penalty zeta=1e-4 kappa=1e-2", "constrained_dss", {"constraint": "penalty", "zeta": 1e-4,
                                                                        "kappa": 1e-2}),
                   ("penalty zeta=1e-4 kappa=3e-3", "constrained_dss", {"constraint": "penalty", "zeta": 1e-4,
                                                                        "kappa": 3e-3})],
    "evolution": [("greedy_dss", "greedy_dss", {}),
                  ("evolution (defaults)", "string_evolution", {}),
                  ("evolution loop", "string_evolution", {"batching": "loop"}),
                  ("evolution vmap", "string_evolution", {"batching": "vmap"}),
                  ("evolution decay=0.25", "string_evolution", {"level_decay": 0.25}),
                  ("evolution start=L0", "string_evolution", {"level_start": "threshold"}),
                  ("evolution start=L0 K=10", "string_evolution", {"level_start": "threshold", "persistence": 10}),
                  ("evolution midpoint", "string_evolution", {"tstar": "midpoint"})],
}


def endpoint_pair(task, seed: int, threshold: float):
    """The endpoints ``modeconnect connect --task T --seed S --threshold L0`` trains (same seeds, same targets)."""
    points = []
    for which in ("a", "b"):
        if which == "b" and task.derive_endpoint_b is not None:
            points.append(task.derive_endpoint_b(points[0]))
            continue
        s = derive_seed(seed, "endpoint", which)
        point, status = train_to_target(task.energy.point_of(task.make_model(s)), energy=task.energy,
                                        objective=task.objective, target=task.endpoint_fraction * threshold,
                                        config=task.endpoint_training, seed=s)
        if not status.reached:
            raise SystemExit(f"seed {seed}: endpoint {which} did not train ({status.reason})")
        points.append(point)
    return points


def method_config(task, name: str, settings: dict, seed: int):
    cls = METHODS[name]
    config = replace(cls.Config(), bead_training=task.bead_training, seed=seed)
    return apply_overrides(config, settings)


def bead_steps(extras: dict) -> int:
    """Training steps summed over beads: a load-independent measure of the work done (string evolution's batched
    steps move several beads each; they are counted once per bead)."""
    if "bead_steps" in extras:
        return int(extras["bead_steps"])
    return sum(int(b.get("train_steps", 0)) for b in extras.get("bead_log", []))


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="cubic")
    parser.add_argument("--threshold", type=float, default=None, help="L0 (default: the task's own)")
    parser.add_argument("--seeds", default="0-3", help="e.g. 0-7 or 0,2,5")
    parser.add_argument("--sweep", choices=sorted(VARIANTS), default="methods")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the task's own)")
    parser.add_argument("--n-eval", type=int, default=None, help="real tasks: evaluation subset size")
    parser.add_argument("--n-train", type=int, default=None, help="real tasks: training examples")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("n_eval", args.n_eval), ("n_train", args.n_train)) if v is not None}
    task = make_task(args.task, **options)
    torch.set_num_threads(args.threads or task.threads or torch.get_num_threads())
    threshold = args.threshold or task.default_threshold
    variants = VARIANTS[args.sweep]
    print(f"task {task.name}, L0 = {threshold:g}, seeds {args.seeds}, torch threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    header = (f"{'seed':>4}  {'variant':<30} {'conn':>4} {'cert':>4} {'reason':<22} {'beads':>5} {'trained':>7} "
              f"{'steps':>7} {'persist':>7} {'time s':>7} {'beads/s':>8} {'norm len':>8} {'cert s':>6}")
    print(header)
    for seed in parse_seeds(args.seeds):
        tick = time.perf_counter()
        a, b = endpoint_pair(task, seed, threshold)
        print(f"# seed {seed}: endpoints trained in {time.perf_counter() - tick:.1f} s")
        for label, name, settings in variants:
            config = method_config(task, name, settings, seed)
            result = connect(a, b, task.energy, threshold=threshold, method=name, config=config,
                             objective=task.objective, certification=CertifyConfig(resolution=task.certify_resolution))
            out = result.outcome
            row = {"connected": out.connected, "certified": bool(result.certificate and result.certificate.certified),
                   "reason": out.reason, "beads": result.path.n_beads, "trained": out.extras.get("beads_trained", 0),
                   "time": out.elapsed_s, "norm": result.path.normalized_length if out.connected else float("nan"),
                   "cert": result.certification_time_s, "steps": bead_steps(out.extras),
                   "persist": out.extras.get("max_persistence", out.extras.get("depth", 0))}
            rows[label].append(row)
            print(f"{seed:>4}  {label:<30} {'yes' if row['connected'] else 'NO':>4} "
                  f"{'yes' if row['certified'] else 'NO':>4} {row['reason']:<22} {row['beads']:>5} {row['trained']:>7} "
                  f"{row['steps']:>7} {row['persist']:>7} "
                  f"{row['time']:>7.2f} {row['trained'] / row['time'] if row['time'] else 0:>8.2f} "
                  f"{row['norm']:>8.4f} {row['cert']:>6.2f}", flush=True)
    summarize(rows)


def summarize(rows: dict[str, list[dict]]) -> None:
    """Totals per variant and ratios against greedy DSS from the same run."""
    print("\nper variant (over all pairs):")
    print(f"{'variant':<30} {'connected':>9} {'certified':>9} {'s/pair':>7} {'beads/s':>8} {'beads':>6} {'steps':>7} "
          f"{'norm len':>8} {'time vs greedy':>15} {'beads/s vs greedy':>18} {'steps vs greedy':>16}")
    base = rows.get("greedy_dss")
    base_time = sum(r["time"] for r in base) / len(base) if base else None
    base_rate = sum(r["trained"] for r in base) / sum(r["time"] for r in base) if base else None
    base_steps = statistics.mean(r["steps"] for r in base) if base else None
    for label, rs in rows.items():
        total = sum(r["time"] for r in rs)
        per_pair, rate = total / len(rs), sum(r["trained"] for r in rs) / total if total else 0.0
        norms = [r["norm"] for r in rs if r["connected"]]
        ratio_t = f"{per_pair / base_time:.2f}x" if base_time else "-"
        ratio_r = f"{rate / base_rate:.2f}x" if base_rate else "-"
        steps = statistics.mean(r["steps"] for r in rs)
        ratio_s = f"{steps / base_steps:.2f}x" if base_steps else "-"
        print(f"{label:<30} {sum(r['connected'] for r in rs):>4}/{len(rs):<4} {sum(r['certified'] for r in rs):>4}/"
              f"{len(rs):<4} {per_pair:>7.2f} {rate:>8.2f} {statistics.mean(r['beads'] for r in rs):>6.1f} "
              f"{steps:>7.0f} "
              f"{statistics.mean(norms) if norms else float('nan'):>8.4f} {ratio_t:>15} {ratio_r:>18} {ratio_s:>16}")


if __name__ == "__main__":
    main()

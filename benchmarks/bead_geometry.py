"""Benchmark: how far DSS beads wander, and how long the strings get, with the old and the new defaults.

Run from the repository root:

    .venv/bin/python benchmarks/bead_geometry.py                                  # cubic, seeds 0-4 (~1 min)
    .venv/bin/python benchmarks/bead_geometry.py --data-dir /work/shared/data     # + MNIST at 2%, seed 0
    .venv/bin/python benchmarks/bead_geometry.py --data-dir ../shared/data --mnist-seeds 0,1,2 --skip-cubic
    .venv/bin/python benchmarks/bead_geometry.py --polynomial quadratic --cubic-threshold 0.001 --cubic-seeds 0,1

For each pair (endpoints trained from the run's derived seeds, exactly as ``modeconnect connect`` does) it runs
greedy DSS twice:

* **before**: the defaults this issue replaced: endpoints trained to L0 itself, checked every
  ``check_every`` steps only; beads trained with the old settings (cubic: Adam lr 0.01, 5,000 steps; MNIST:
  Adam lr 1e-3, 2,000 steps), checked every 25 steps, no stall detection and no restarts;
* **after**: the current task and DSS defaults (endpoint margin, dense early checks, MNIST beads by SGD,
  bead budgets at least the endpoints', restarts of stuck beads).

It prints, per pair and before/after: whether DSS connected, the normalized length, the number of beads,
the largest bead displacement from its start and the largest distance of a bead from the endpoint chord
(both relative to the endpoint distance), and the endpoints' energies; then the after/before ratios
(< 1: shorter strings, beads nearer the chord). No certification is run: lengths are DSS's own strings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.methods import DSSConfig, greedy_dss  # noqa: E402
from modeconnect.path import Path as BeadPath  # noqa: E402
from modeconnect.seeding import derive_seed  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402
from modeconnect.tasks.base import Task  # noqa: E402
from modeconnect.train import TrainConfig, train_to_target  # noqa: E402

OLD_BEADS = {
    "cubic": TrainConfig(optimizer="adam", lr=0.01, check_every=25, max_steps=5000),
    "quadratic": TrainConfig(optimizer="adam", lr=0.01, check_every=25, max_steps=5000),
    "mnist": TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=25, max_steps=2000),
}
"""Bead training before this issue (both tasks' endpoint training is unchanged but for the dense checks)."""


def old_defaults(task: Task) -> Task:
    """The task as it was: endpoints trained to L0, no dense checks, the old bead training."""
    with warnings.catch_warnings():  # the old polynomial defaults are exactly what the budget warning is about
        warnings.simplefilter("ignore")
        return replace(task, endpoint_fraction=1.0, endpoint_training=replace(task.endpoint_training, dense_checks=0),
                       bead_training=OLD_BEADS[task.name])


def endpoints(task: Task, threshold: float, seed: int) -> list[dict]:
    points = []
    for which in ("a", "b"):
        s = derive_seed(seed, "endpoint", which)
        point, status = train_to_target(task.energy.point_of(task.make_model(s)), energy=task.energy,
                                        objective=task.objective, target=task.endpoint_fraction * threshold,
                                        config=task.endpoint_training, seed=s)
        if not status.reached:
            raise SystemExit(f"{task.name} seed {seed}: endpoint {which} did not train ({status.reason})")
        points.append(point)
    return points


def measure(task: Task, threshold: float, seed: int, config: DSSConfig) -> dict:
    tick = time.perf_counter()
    a, b = endpoints(task, threshold, seed)
    path, outcome = greedy_dss(BeadPath([a, b]), task.energy, task.objective, replace(config, seed=seed),
                               threshold=threshold)
    extras = outcome.extras
    return {"connected": outcome.connected, "reason": outcome.reason,
            "length": path.normalized_length if outcome.connected else float("nan"), "beads": path.n_beads,
            "displacement": extras["bead_displacement_max"] or 0.0,
            "chord": extras["bead_chord_distance_max"] or 0.0,
            "endpoints": (task.energy(a), task.energy(b)), "seconds": time.perf_counter() - tick}


def compare(name: str, threshold: float, seeds: list[int], **options) -> list[tuple[dict, dict]]:
    new = make_task(name, **options)
    old = old_defaults(new)
    rows = []
    print(f"\n{name} at L0 = {threshold:g} (endpoint fraction before 1.0, after {new.endpoint_fraction})")
    print(f"{'seed':>4} {'':>6} {'conn':>5} {'norm. length':>12} {'beads':>5} {'displ. max':>10} "
          f"{'chord max':>9} {'endpoints':>18} {'time':>7}")
    previous = torch.get_num_threads()
    torch.set_num_threads(new.threads or previous)
    try:
        for seed in seeds:
            pair = (measure(old, threshold, seed, DSSConfig(bead_training=old.bead_training, restarts=0)),
                    measure(new, threshold, seed, DSSConfig(bead_training=new.bead_training)))
            for label, r in zip(("before", "after"), pair):
                ends = ", ".join(f"{e:.4g}" for e in r["endpoints"])
                print(f"{seed:>4} {label:>6} {'yes' if r['connected'] else 'NO':>5} {r['length']:>12.4f} "
                      f"{r['beads']:>5} {r['displacement']:>10.4f} {r['chord']:>9.4f} {ends:>18} "
                      f"{r['seconds']:>6.1f}s" + ("" if r["connected"] else f"  ({r['reason']})"))
            rows.append(pair)
    finally:
        torch.set_num_threads(previous)
    summarize(rows)
    return rows


def summarize(rows: list[tuple[dict, dict]]) -> None:
    both = [(b, a) for b, a in rows if b["connected"] and a["connected"]]
    print(f"connected before {sum(b['connected'] for b, _ in rows)} of {len(rows)}, "
          f"after {sum(a['connected'] for _, a in rows)} of {len(rows)}")
    if not both:
        return
    for key, what in (("length", "normalized length"), ("displacement", "bead displacement max"),
                      ("chord", "bead chord distance max")):
        before = statistics.mean(b[key] for b, _ in both)
        after = statistics.mean(a[key] for _, a in both)
        ratio = after / before if before else float("nan")
        extra = f" (excess over straight: {(after - 1) / (before - 1):.3f}x)" if key == "length" and before > 1 else ""
        print(f"  {what:<26} mean before {before:.4f}  after {after:.4f}  ratio after/before {ratio:.3f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polynomial", choices=("cubic", "quadratic"), default="cubic",
                        help="the fast task to compare on (default: cubic)")
    parser.add_argument("--cubic-seeds", default="0,1,2,3,4", help="comma-separated run seeds for it")
    parser.add_argument("--cubic-threshold", type=float, default=0.05, help="its level L0")
    parser.add_argument("--skip-cubic", action="store_true", help="skip the polynomial comparison")
    parser.add_argument("--data-dir", default=None, help="directory holding mnist/: adds the MNIST comparison")
    parser.add_argument("--mnist-seeds", default="0", help="comma-separated run seeds for MNIST")
    parser.add_argument("--mnist-threshold", type=float, default=2.0)
    args = parser.parse_args()
    if not args.skip_cubic:
        compare(args.polynomial, args.cubic_threshold, [int(s) for s in args.cubic_seeds.split(",")])
    if args.data_dir:
        compare("mnist", args.mnist_threshold, [int(s) for s in args.mnist_seeds.split(",")], data_dir=args.data_dir)


if __name__ == "__main__":
    main()

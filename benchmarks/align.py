"""Benchmark: permutation alignment (weight / activation matching) and REPAIR on independently trained endpoints.

Run from the repository root:

    .venv/bin/python benchmarks/align.py                 # 3 cubic MLP pairs, then 2 MNIST convnet pairs (~1.5 min)
    .venv/bin/python benchmarks/align.py --skip-mnist    # cubic only (~20 s)
    .venv/bin/python benchmarks/align.py --pairs 5       # more cubic pairs
    .venv/bin/python benchmarks/align.py --skip-cubic --mnist-task mnist-mlp   # the 784-512-512-512-10 MLP
    .venv/bin/python benchmarks/align.py --skip-cubic --mnist-task cifar10 --batchnorm recompute --mnist-pairs 1

For each pair of endpoints (trained from different seeds with ``train_to_target``, exactly as
``modeconnect connect`` trains them: to ``endpoint_fraction * threshold`` with the task's endpoint training)
it prints, per alignment method (none / weight / activation):

  * the L2 distance between A and B (parameters only) before and after alignment;
  * the largest energy on the straight segment A -> aligned B, on a 33-point grid (``Energy.along_segment``),
    and the same with REPAIR applied at every interior grid point (statistics from the first 256 training
    inputs; ``none`` + REPAIR is not meaningful, since unit ``c`` of A and B are unrelated);
  * the alignment time (the REPAIR time per 33-point segment in brackets).

Data for MNIST: ``$MODECONNECT_DATA`` or /work/shared/data. The energy of ``cubic`` is the test MAE
(threshold 0.05), of ``mnist`` the test error in % on 500 images (threshold 3), of ``mnist-mlp`` the same (threshold 4).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.align import AlignMethod, Repair, align  # noqa: E402
from modeconnect.errors import ConfigError  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402
from modeconnect.train import train_to_target  # noqa: E402

GRID = torch.linspace(0, 1, 33, dtype=torch.float64)


def train(task, seed: int):
    start = task.energy.point_of(task.make_model(seed))
    target = task.endpoint_fraction * task.default_threshold
    point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=target,
                                    config=task.endpoint_training, seed=seed)
    if not status.reached:
        raise SystemExit(f"{task.name} endpoint seed {seed} reached only {status.final_energy:.4g} > {target:.4g}")
    return point, status


def repaired_max(task, a, b, inputs) -> tuple[float, float]:
    start = time.perf_counter()
    repair = Repair(task.energy.model, a, b, inputs)
    values = [task.energy(repair(float(t))) for t in GRID]
    return max(values), time.perf_counter() - start


def bench_pair(task, a, b, inputs) -> list[dict]:
    rows = []
    for method in AlignMethod:
        result = align(a, b, task.energy.model, method, inputs=inputs, seed=0)
        segment = task.energy.along_segment(a, result.point, GRID)
        row = {"method": method.value, "d_before": result.distance_before, "d_after": result.distance_after,
               "max": float(segment.max()), "seconds": result.seconds, "iterations": result.iterations}
        if method is not AlignMethod.NONE:
            try:
                row["repair_max"], row["repair_seconds"] = repaired_max(task, a, result.point, inputs)
            except ConfigError as exc:  # e.g. BatchNorm statistics recomputed, not carried by the points
                print(f"  (REPAIR skipped for {method.value}: {exc})")
        rows.append(row)
    return rows


def show(title: str, rows: list[dict], endpoint_energies: tuple[float, float], threshold: float) -> None:
    print(f"\n{title}: endpoint energies {endpoint_energies[0]:.4g} / {endpoint_energies[1]:.4g}, "
          f"threshold {threshold:g}")
    print(f"  {'method':<11}{'dist before':>12}{'dist after':>12}{'max E on segment':>18}{'+ REPAIR':>10}"
          f"{'align s':>9}{'(REPAIR s)':>12}")
    for r in rows:
        rep = f"{r['repair_max']:10.4g}" if "repair_max" in r else f"{'-':>10}"
        rep_s = f"{r['repair_seconds']:11.2f}" if "repair_seconds" in r else f"{'-':>11}"
        sweeps = f" ({r['iterations']} sweeps)" if r["iterations"] else ""
        print(f"  {r['method']:<11}{r['d_before']:12.4f}{r['d_after']:12.4f}{r['max']:18.4g}{rep}"
              f"{r['seconds']:9.3f} {rep_s}{sweeps}")


def run_task(task, pairs: int, n_inputs: int) -> None:
    inputs = task.objective.inputs[:n_inputs]
    for k in range(pairs):
        clock = time.perf_counter()
        (a, sa), (b, sb) = train(task, 2 * k), train(task, 2 * k + 1)
        trained = time.perf_counter() - clock
        rows = bench_pair(task, a, b, inputs)
        show(f"{task.name} pair {k} (seeds {2 * k}, {2 * k + 1}; trained in {trained:.1f} s)", rows,
             (sa.final_energy, sb.final_energy), task.default_threshold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="cubic endpoint pairs (default 3)")
    parser.add_argument("--mnist-pairs", type=int, default=2, help="MNIST endpoint pairs (default 2)")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--skip-cubic", action="store_true")
    parser.add_argument("--mnist-task", default="mnist", choices=["mnist", "mnist-mlp", "cifar10"],
                        help="the real task: the MNIST convnet (default), the 784-512-512-512-10 MLP, or the CIFAR-10 "
                             "subset convnet (with --batchnorm)")
    parser.add_argument("--batchnorm", choices=["recompute", "interpolate", "freeze"], default=None,
                        help="cifar10 only: add BatchNorm with this policy for the energy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are small)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    if not args.skip_cubic:
        run_task(make_task("cubic"), args.pairs, 256)
    if not args.skip_mnist:
        os.environ.setdefault("MODECONNECT_DATA", "/work/shared/data")
        options = {"batchnorm": args.batchnorm} if args.batchnorm else {}
        run_task(make_task(args.mnist_task, **options), args.mnist_pairs, 256)


if __name__ == "__main__":
    main()

"""Benchmark: the Proposition 2.2 construction against greedy DSS on the same pair of deep linear networks.

Run from the repository root:

    .venv/bin/python benchmarks/linear_construction.py                   # K = 2, 3, 4 and the ridge K = 2
    .venv/bin/python benchmarks/linear_construction.py --repeats 5 --width 8

For each configuration one pair of endpoints is trained (seeds 1 and 2, to 0.9 L0 of the task's default level),
then both methods connect it, interleaved in the same process, ``repeats`` times each (one untimed warm-up of
each first):

* ``linear_construction`` with its defaults (no training; the exact curve sampled at 1025 values of t, beads
  at 33 values, refined where a chord cuts a corner);
* ``greedy_dss`` with the task's bead training (beads trained by Adam).

Timed: the method's run (``connect(..., certify_path=False)``), so certification, the same for both, is out.
It prints the median wall time of each, their ratio (DSS / construction), each path's maximum energy against
lambda = max(E(A), E(B)), and the number of beads. The construction's time is dominated by its dense sample
of the exact curve (``--dense-points``), which DSS does not do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.connect import connect  # noqa: E402
from modeconnect.methods.greedy_dss import DSSConfig  # noqa: E402
from modeconnect.methods.linear_construction import LinearConstructionConfig  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402
from modeconnect.train import train_to_target  # noqa: E402


def endpoint(task, seed):
    start = task.energy.point_of(task.make_model(seed))
    point, status = train_to_target(start, energy=task.energy, objective=task.objective,
                                    target=0.9 * task.default_threshold, config=task.endpoint_training, seed=seed)
    assert status.reached, status
    return point


def bench(label: str, task, repeats: int, dense: int) -> None:
    a, b = endpoint(task, 1), endpoint(task, 2)
    lam = max(task.energy(a), task.energy(b))
    runs = {
        "construction": lambda: connect(a, b, task.energy, threshold=task.default_threshold,
                                        method="linear_construction", certify_path=False,
                                        config=LinearConstructionConfig(dense_points=dense)),
        "greedy_dss": lambda: connect(a, b, task.energy, threshold=task.default_threshold, method="greedy_dss",
                                      objective=task.objective, certify_path=False,
                                      config=DSSConfig(bead_training=task.bead_training)),
    }
    times = {k: [] for k in runs}
    last = {}
    for run in runs.values():  # warm-up (vmap's first call)
        run()
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, run in runs.items():
            clock = time.perf_counter()
            last[name] = run()
            times[name].append(time.perf_counter() - clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    c, d = last["construction"], last["greedy_dss"]
    print(f"{label:<14} construction {med['construction']:7.3f} s ({c.path.n_beads:3d} beads, max/lambda "
          f"{c.outcome.worst_barrier / lam:6.3f})   greedy DSS {med['greedy_dss']:7.3f} s ({d.path.n_beads:3d} beads, "
          f"max/lambda {d.outcome.worst_barrier / lam:6.3f}, {d.outcome.reason})   "
          f"ratio DSS / construction {med['greedy_dss'] / med['construction']:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--dense-points", type=int, default=1025)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}, "
          f"width {args.width}, dense points {args.dense_points}, median of {args.repeats}")
    for label, name, depth in (("K=2", "linear", 2), ("K=3", "linear", 3), ("K=4", "linear", 4),
                               ("K=2 ridge", "linear-ridge", 2)):
        bench(label, make_task(name, depth=depth, width=args.width), args.repeats, args.dense_points)


if __name__ == "__main__":
    main()

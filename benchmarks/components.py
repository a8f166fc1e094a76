"""Pairs connected per minute by ``modeconnect components`` with 1 and with K local workers.

Runs the same component count twice into fresh directories, in-process (one thread) and on a local pool of
K workers (one thread each), and times the executor's work by phase: model training and connections. Prints
connections per minute of connection time for both, their ratio (measured in this process, so both runs see
the same machine), the ideal ratio the round schedule allows (a round of r units takes ceil(r / K) unit-times
on K workers, if units took equal time) and whether both records agree (they must: the schedule does not
depend on the executor).

    .venv/bin/python benchmarks/components.py              # cubic, 8 models, L = 0.05, 2 workers
    .venv/bin/python benchmarks/components.py --quick      # 4 models
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from modeconnect.experiments import ConnectRunConfig
from modeconnect.experiments.components import ComponentsConfig, run_components
from modeconnect.experiments.connect_run import TIMING_FIELDS
from modeconnect.experiments.executors import Executor, available_cpus, idle_cpus, make_executor


class Timed(Executor):
    """Delegates to ``inner`` and adds up the wall time of its ``map`` calls per unit function."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.seconds, self.units = inner, {}, {}

    def describe(self) -> str:
        return self.inner.describe()

    def map(self, fn, arg_tuples):
        clock = time.perf_counter()
        for item in self.inner.map(fn, arg_tuples):
            yield item
        name = fn.__name__
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - clock
        self.units[name] = self.units.get(name, 0) + len(arg_tuples)

    def close(self, abort: bool = False) -> None:
        self.inner.close(abort)


def numbers(record: dict) -> list:
    return [[{k: v for k, v in e.items() if k not in TIMING_FIELDS} for e in lv["edges"] + lv["failed"]]
            + [lv["components"], lv["rounds"]] for lv in record["by_level"]]


def timed(config: ComponentsConfig, workers: int) -> tuple[Timed, dict, float]:
    with tempfile.TemporaryDirectory() as out:
        with Timed(make_executor("local", workers, threads=1)) as executor:
            clock = time.perf_counter()
            record = run_components(config, out, executor=executor)
            return executor, record, time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cubic")
    parser.add_argument("--level", type=float, default=0.05)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = 4 if args.quick else args.models
    config = ComponentsConfig(ConnectRunConfig(task=args.task), levels=(args.level,), models=models)
    idle = idle_cpus()
    print(f"components: {args.task}, L = {args.level:g}, {models} models; {available_cpus()} CPUs, "
          f"{'?' if idle is None else f'{idle:.1f}'} idle at the start")
    runs = {}
    for workers in (1, args.workers):
        runs[workers] = timed(config, workers)
    rounds = [len(r) for lv in runs[1][1]["by_level"] for r in lv["rounds"]]
    ideal = sum(rounds) / sum(math.ceil(r / args.workers) for r in rounds)
    print(f"rounds of {rounds} connections")
    print(f"{'executor':38s} {'models s':>9s} {'connect s':>10s} {'total s':>8s} {'pairs/min':>10s}")
    rate = {}
    for workers, (executor, _, total) in runs.items():
        seconds, units = executor.seconds.get("connect_models", 0.0), executor.units.get("connect_models", 0)
        rate[workers] = 60.0 * units / seconds if seconds else float("nan")
        label = "in-process (1 thread)" if workers == 1 else f"local pool ({workers} workers, 1 thread each)"
        print(f"{label:38s} {executor.seconds.get('train_model', 0.0):9.2f} {seconds:10.2f} {total:8.2f} "
              f"{rate[workers]:10.1f}")
    print(f"ratio of pairs per minute, {args.workers} workers / 1: {rate[args.workers] / rate[1]:.2f}x "
          f"(ideal for these rounds with equal units: {ideal:.2f}x)")
    print(f"records identical: {numbers(runs[1][1]) == numbers(runs[args.workers][1])}")


if __name__ == "__main__":
    main()

"""A sweep's wall time with K local workers against in-process, and where the time goes.

Runs the same sweep three times into fresh directories: in-process with the
default threads (which a task may cap: the polynomial tasks run on one), in-process
with one thread, and on a local pool of K workers (each with its share of the
threads). Prints both wall times, their ratio, whether the two
tables agree (they must: numbers do not depend on the executor), and the split
of the pairs' time between endpoint training, bead training, segment
evaluation (DSS grids) and certification.

    .venv/bin/python benchmarks/sweep_parallel.py            # the issue's sweep: 5 levels x 4 pairs
    .venv/bin/python benchmarks/sweep_parallel.py --quick    # 2 levels x 2 pairs
"""

from __future__ import annotations

import argparse
import tempfile
import time

from modeconnect.experiments import ConnectRunConfig
from modeconnect.experiments.connect_run import TIMING_FIELDS
from modeconnect.experiments.executors import available_cpus, make_executor
from modeconnect.experiments.sweep import SweepConfig, run_sweep

PARTS = [("endpoint training", "endpoint_time_s"), ("bead training", "bead_training_time_s"),
         ("segment evaluation", "segment_evaluation_time_s"), ("certification", "certification_time_s")]


def numbers(table: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in table["rows"]]


def timed(config: SweepConfig, workers: int, threads: int | None = None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        clock = time.perf_counter()
        with make_executor("local", workers, threads=threads) as executor:
            table = run_sweep(config, out, executor=executor)
        return time.perf_counter() - clock, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="quadratic")
    parser.add_argument("--levels", default="0.1,0.05,0.02,0.01,0.005")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 levels x 2 pairs")
    args = parser.parse_args()
    levels = (0.1, 0.05) if args.quick else tuple(float(v) for v in args.levels.split(","))
    pairs = 2 if args.quick else args.pairs
    config = SweepConfig(ConnectRunConfig(task=args.task), levels, pairs=pairs)

    print(f"sweep: {args.task}, levels {list(levels)}, {pairs} pairs per level; {available_cpus()} CPUs")
    serial_s, serial = timed(config, 1)
    single_s, single = timed(config, 1, threads=1)
    pool_s, pool = timed(config, args.workers)
    print(f"{'executor':40s} {'wall s':>8s} {'speed-up':>9s}")
    print(f"{'in-process (default threads): baseline':40s} {serial_s:8.2f} {1.0:8.2f}x")
    print(f"{'in-process (1 thread)':40s} {single_s:8.2f} {serial_s / single_s:8.2f}x")
    print(f"{f'local pool ({args.workers} workers, {max(1, available_cpus() // args.workers)} thread each)':40s} "
          f"{pool_s:8.2f} {serial_s / pool_s:8.2f}x   ({single_s / pool_s:.2f}x the 1-thread in-process run)")
    print(f"tables identical: {numbers(serial) == numbers(pool) == numbers(single)}")

    rows = [r for r in serial["rows"] if r["status"] != "endpoint_failed"]
    total = {label: sum(float(r.get(key) or 0.0) for r in rows) for label, key in PARTS}
    pair_time = sum(float(r["wall_time_s"]) + float(r["endpoint_time_s"]) for r in rows)
    print(f"\nwhere the in-process run's pair time went ({pair_time:.2f} s over {len(rows)} pairs; "
          "bead training includes its periodic energy checks):")
    for label, seconds in total.items():
        print(f"  {label:20s} {seconds:7.2f} s  {100 * seconds / pair_time:5.1f}%")
    other = pair_time - sum(total.values())
    print(f"  {'other (DSS logic, saving)':20s} {other:7.2f} s  {100 * other / pair_time:5.1f}%")
    print("\nper level (in-process): seconds in bead training / segment evaluation / certification")
    for agg in serial["aggregates"]:
        print(f"  L0={agg['level']:<7g} {agg['bead_training_time_s_total']:6.2f} / "
              f"{agg['segment_evaluation_time_s_total']:6.2f} / {agg['certification_time_s_total']:6.2f}")


if __name__ == "__main__":
    main()

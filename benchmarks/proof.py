"""Benchmark: proving a path's energy bound (modeconnect.proof.prove) vs certifying it by sampling.

Run from the repository root:

    .venv/bin/python benchmarks/proof.py --data-dir /work/shared/data     # cubic x 3 + MNIST (~3-6 min on 2 cores)
    .venv/bin/python benchmarks/proof.py --cache /tmp/proof-paths         # build the paths once, reuse them
    .venv/bin/python benchmarks/proof.py --skip-mnist                     # cubic only (~1 min)
    .venv/bin/python benchmarks/proof.py --mnist-path RUN/path            # a saved MNIST path (threshold 3)
    .venv/bin/python benchmarks/proof.py --compare-dtypes                 # also prove MNIST in float32

Paths: made by the connect experiment itself (``run_connect``, greedy DSS), as the CLI would:
``cubic`` at threshold 0.05 for seeds 1, 2, 3 (``--cubic-seeds``), and ``mnist`` at threshold 3 (test error in
percent on the task's 500 test images, convnet conv 8 / conv 16 / fc 64) for seed 0. MNIST needs its data
(``--data-dir`` or ``$MODECONNECT_DATA``).

What it prints, one row per path (all methods on the same path in the same process):
  * ``sampled s``: :func:`modeconnect.certify.certify` at the task's resolution (cubic 1e-3, MNIST 1e-2), best of
    ``--repeats``; ``prove s``: :func:`modeconnect.proof.prove` given that certificate (so the proof's time
    excludes the sampling), best of ``--repeats``; ``ratio`` = prove / sampled (the goal: <= 10 on MNIST);
  * ``sampled max``, ``upper bound`` and ``gap/L0`` = (upper_bound - sampled_max) / L0: how far the proof's bound
    sits above what sampling found (0 for error rates proved to the exact count);
  * ``proved`` and, if not, why each failing piece stopped; ``bounds``: sub-interval bounds computed (the
    budget spent); ``subint``: sub-intervals of the final partitions;
  * at the end: the fraction of paths proved, and whether the goal holds: the MNIST path proved within 10x
    the sampled certification's time.

Timings are noisy on a shared machine (the load average is printed at the start and the end); the ratio
is taken within one process, one after the other, so both suffer the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path as FsPath

import torch

sys.path.insert(0, str(FsPath(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.certify import certify  # noqa: E402
from modeconnect.experiments import ConnectRunConfig, run_connect  # noqa: E402
from modeconnect.path import Path  # noqa: E402
from modeconnect.proof import ProofConfig, prove  # noqa: E402


def get_path(name: str, config: ConnectRunConfig, saved: str | None, workdir: FsPath, say) -> Path:
    """A saved path, or one made by ``run_connect`` in ``workdir`` (reused there if already made)."""
    if saved:
        say(f"{name}: loading {saved}")
        return Path.load(saved)
    out = workdir / name
    start = time.perf_counter()
    say(f"{name}: connect (task {config.task}, threshold {config.threshold:g}, seed {config.seed}) in {out}")
    result = run_connect(config, str(out))
    say(f"  connected: {result['connected']}, {result['n_pieces']} piece(s), sampled max "
        f"{result.get('worst_barrier')}, {time.perf_counter() - start:.1f} s")
    return Path.load(out / "path")


def best_of(repeats: int, run):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


def bench(name: str, path: Path, energy, threshold: float, resolution: float, config: ProofConfig,
          repeats: int) -> dict:
    t_sampled, cert = best_of(repeats, lambda: certify(path, energy, resolution=resolution, threshold=threshold))
    t_prove, proof = best_of(repeats, lambda: prove(path, energy, config, threshold=threshold, sampled=cert))
    return {"name": name, "pieces": path.n_pieces, "sampled_s": t_sampled, "prove_s": t_prove,
            "ratio": t_prove / t_sampled, "sampled_max": proof.sampled_max, "upper_bound": proof.upper_bound,
            "gap": proof.gap, "proved": proof.proved, "bounds": proof.n_bounds, "subint": proof.n_subintervals,
            "stops": sorted({s.stop for s in proof.segments if not s.proved}), "dtype": config.dtype,
            "statement": proof.statement}


def show(rows: list[dict]) -> None:
    header = ("path", "dtype", "pieces", "sampled s", "prove s", "ratio", "sampled max", "upper bound", "gap/L0",
              "proved", "bounds", "subint")
    table = [(r["name"], r["dtype"], r["pieces"], f"{r['sampled_s']:.3g}", f"{r['prove_s']:.3g}",
              f"{r['ratio']:.2f}x", f"{r['sampled_max']:.6g}", f"{r['upper_bound']:.6g}", f"{r['gap']:.3g}",
              "yes" if r["proved"] else "NO (" + ", ".join(r["stops"]) + ")", r["bounds"], r["subint"])
             for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *table]) for i in range(len(header))]
    print("\n" + "  ".join(f"{h:<{w}}" for h, w in zip(header, widths)))
    for x in table:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(x, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="data directory holding mnist/ (default $MODECONNECT_DATA)")
    parser.add_argument("--mnist-path", default=None, help="a saved MNIST path directory (RUN/path), threshold 3")
    parser.add_argument("--cubic-path", default=None, help="a saved cubic path directory (replaces the seeds)")
    parser.add_argument("--cubic-seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the cubic paths")
    parser.add_argument("--cache", default=None, help="make the paths in this directory and reuse them next time")
    parser.add_argument("--skip-mnist", action="store_true", help="cubic paths only")
    parser.add_argument("--compare-dtypes", action="store_true", help="also prove the MNIST path in float32")
    parser.add_argument("--initial-pieces", type=int, default=ProofConfig().initial_pieces)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per method (best is kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data_dir:
        os.environ["MODECONNECT_DATA"] = args.data_dir
    say = lambda line: print(line, flush=True)  # noqa: E731
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs")
    workdir = FsPath(args.cache) if args.cache else FsPath(tempfile.mkdtemp(prefix="proof-bench-"))
    config = ProofConfig(initial_pieces=args.initial_pieces)

    rows = []
    cubic_runs = [(f"cubic-{s}", ConnectRunConfig(task="cubic", threshold=0.05, seed=s)) for s in args.cubic_seeds]
    if args.cubic_path:
        cubic_runs = [("cubic", ConnectRunConfig(task="cubic", threshold=0.05))]
    for name, run in cubic_runs:
        path = get_path(name, run, args.cubic_path, workdir, say)
        task = run.resolve().task
        rows.append(bench(name, path, task.energy, 0.05, task.certify_resolution, config, max(args.repeats, 3)))
    if not args.skip_mnist:
        run = ConnectRunConfig(task="mnist", threshold=3.0, seed=0)
        path = get_path("mnist", run, args.mnist_path, workdir, say)
        task = run.resolve().task
        rows.append(bench("mnist", path, task.energy, 3.0, task.certify_resolution, config, args.repeats))
        if args.compare_dtypes:
            from dataclasses import replace
            rows.append(bench("mnist", path, task.energy, 3.0, task.certify_resolution,
                              replace(config, dtype="float32"), args.repeats))

    show(rows)
    for r in rows:
        print(f"  {r['name']} ({r['dtype']}): {r['statement']}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (timings are trustworthy only on an idle machine)")
    default = [r for r in rows if r["dtype"] == config.dtype]
    print(f"paths proved: {sum(r['proved'] for r in default)} of {len(default)}")
    mnist = [r for r in default if r["name"] == "mnist"]
    if mnist:
        m = mnist[0]
        verdict = "HOLDS" if m["proved"] and m["ratio"] <= 10 else "DOES NOT HOLD"
        print(f"goal {verdict}: MNIST path proved ({'yes' if m['proved'] else 'NO'}) within 10x the sampled "
              f"certification's time ({m['ratio']:.2f}x: {m['prove_s']:.1f} s vs {m['sampled_s']:.1f} s)")


if __name__ == "__main__":
    main()

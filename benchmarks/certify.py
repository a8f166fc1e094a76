"""Benchmark: certification of a path before (the >= local-maximum rule) and after (plateaus as one maximum).

Run from the repository root:

    .venv/bin/python benchmarks/certify.py --data-dir /work/shared/data   # ~3 min on 2 cores (or $MODECONNECT_DATA)
    .venv/bin/python benchmarks/certify.py --cache /tmp/certify-paths     # build the paths once, reuse them
    .venv/bin/python benchmarks/certify.py --skip-mnist                   # cubic only (~30 s)
    .venv/bin/python benchmarks/certify.py --mnist-path RUN/path --cubic-path RUN/path   # saved paths

What it prints, per path (one row per method, all on the same path in the same run):
  * ``legacy``: the algorithm before this change, copied here as :func:`legacy_certify_segment` (every
    sample >= both neighbours is a local maximum; 8 new points between its neighbours per round);
  * ``current``: :func:`modeconnect.certify.certify_segment` at the task's resolution (MNIST 1e-2, cubic 1e-3);
  * ``uniform``: a plain uniform grid at spacing <= the resolution, a reference for the maximum found;
  * per method: evaluations (counted by a wrapper around the energy, not taken from the algorithms);
    calls to the energy (one batch per piece per round; on tiny models a call's overhead, not the
    evaluations, sets the time); seconds (best of ``--repeats``, interleaved); the ratios legacy / method
    of both (> 1: fewer / faster than legacy); the resolution reached (each method's own measure: legacy,
    the spacing next to its >= maxima; current, the widest gap within and next to a sampled maximum;
    uniform, its spacing); the largest energy found and where (piece, t); and how many of the final
    samples each rule calls a maximum (``>= maxima``: samples >= both neighbours; ``run maxima``: runs of
    equal samples above both neighbours);
  * per path, whether legacy and current found the same maximum or by how much they differ; at the end,
    whether the target holds: >= 4x fewer evaluations on MNIST with the same maximum found.

Paths: by default the benchmark builds them (so that it does not depend on the CLI): two endpoints of the
task trained to the threshold (MNIST: 2% test error on its 500 test images; cubic: 0.05), joined by a small
greedy string: a bead trained to the threshold at the worst point of the worst piece on a 33-point grid,
at most ``--beads`` of them (default 2, so 3 pieces; the MNIST path then still peaks at 2.6%, and
``--beads 4`` brings it to about 2.2% in twice the time). Timings are noisy on a shared 2-core machine;
the evaluation counts are exact. One MNIST evaluation (500 images) costs 20-50 ms here, so the legacy
algorithm and the path's training take most of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path as FsPath

import numpy as np
import torch

sys.path.insert(0, str(FsPath(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.certify import CertifyConfig, certify_segment  # noqa: E402
from modeconnect.path import Path  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402
from modeconnect.train import train_to_target  # noqa: E402


def legacy_certify_segment(evaluate: Callable[[np.ndarray], np.ndarray], *, resolution: float,
                           initial_grid: int = 65, refine_points: int = 8, max_evaluations: int = 4000
                           ) -> tuple[float, float, float, int]:
    """The certification algorithm before this change, verbatim but for the settings' packaging.

    Every sample >= both neighbours is a local maximum (so every sample of a plateau is one), and each
    round places ``refine_points`` new points between the neighbours of every maximum whose spacing is
    still above ``resolution``. Returns ``(max_energy, argmax_t, achieved_resolution, n_evaluations)``.
    """

    def local_maxima(values):
        left = np.concatenate([[-np.inf], values[:-1]])
        right = np.concatenate([values[1:], [-np.inf]])
        return np.flatnonzero((values >= left) & (values >= right))

    def spacing_around(ts, i):
        gaps = []
        if i > 0:
            gaps.append(ts[i] - ts[i - 1])
        if i < len(ts) - 1:
            gaps.append(ts[i + 1] - ts[i])
        return max(gaps)

    ts = np.linspace(0.0, 1.0, initial_grid)
    values = np.nan_to_num(evaluate(ts), nan=np.inf)
    while True:
        maxima = local_maxima(values)
        coarse = [i for i in maxima if spacing_around(ts, i) > resolution]
        budget = max_evaluations - len(ts)
        if not coarse or budget <= 0:
            break
        coarse.sort(key=lambda i: values[i], reverse=True)
        new = []
        for i in coarse:
            lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]
            new.append(np.linspace(lo, hi, refine_points + 2)[1:-1])
        candidates = np.concatenate(new)
        candidates = candidates[~np.isin(candidates, ts)]
        _, first = np.unique(candidates, return_index=True)
        new_ts = np.sort(candidates[np.sort(first)][:budget])
        if new_ts.size == 0:
            break
        new_values = np.nan_to_num(evaluate(new_ts), nan=np.inf)
        order = np.argsort(np.concatenate([ts, new_ts]), kind="stable")
        ts = np.concatenate([ts, new_ts])[order]
        values = np.concatenate([values, new_values])[order]
    achieved = max(spacing_around(ts, i) for i in local_maxima(values))
    k = int(np.argmax(values))
    return float(values[k]), float(ts[k]), float(achieved), len(ts)


def uniform_segment(evaluate, *, resolution: float) -> tuple[float, float, float, int]:
    """Reference: a uniform grid at spacing <= ``resolution`` (the same return as the others)."""
    ts = np.linspace(0.0, 1.0, int(np.ceil(1 / resolution - 1e-9)) + 1)
    values = np.nan_to_num(evaluate(ts), nan=np.inf)
    k = int(np.argmax(values))
    return float(values[k]), float(ts[k]), float(ts[1] - ts[0]), len(ts)


class Recorder:
    """Wraps a piece's energy: counts evaluations and keeps every (t, value) sampled."""

    def __init__(self, path: Path, index: int, energy) -> None:
        self.path, self.index, self.energy = path, index, energy
        self.ts, self.values = [], []

    def __call__(self, ts: np.ndarray) -> np.ndarray:
        values = self.path.energies(self.index, torch.from_numpy(np.asarray(ts, dtype=np.float64)), self.energy)
        self.ts.append(np.asarray(ts, dtype=np.float64))
        self.values.append(values.numpy())
        return values.numpy()

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        ts, values = np.concatenate(self.ts), np.concatenate(self.values)
        order = np.argsort(ts, kind="stable")
        return ts[order], values[order]


def maxima_counts(values: np.ndarray) -> tuple[int, int]:
    """How many samples the legacy rule (>= both neighbours) calls maxima, and how many maxima (runs of
    equal samples higher than both neighbours) the current rule sees."""
    padded = np.concatenate([[-np.inf], values, [-np.inf]])
    legacy = int(np.sum((values >= padded[:-2]) & (values >= padded[2:])))
    starts = np.flatnonzero(np.diff(padded) != 0)  # first sample of each run (padding makes the ends runs)
    runs = padded[np.concatenate([[0], starts + 1])]  # -inf, each run's level, -inf
    current = int(np.sum((runs[1:-1] > runs[:-2]) & (runs[1:-1] > runs[2:])))
    return legacy, current


def run_method(name, segment_fn, path: Path, energy) -> dict:
    recorders = [Recorder(path, i, energy) for i in range(path.n_pieces)]
    start = time.perf_counter()
    results = [segment_fn(rec) for rec in recorders]
    seconds = time.perf_counter() - start
    k = int(np.argmax([r[0] for r in results]))
    counted = sum(len(np.concatenate(rec.ts)) for rec in recorders)
    assert counted == sum(r[3] for r in results), f"{name}: reported evaluations differ from those counted"
    legacy_maxima, current_maxima = map(sum, zip(*(maxima_counts(rec.samples()[1]) for rec in recorders)))
    return {"name": name, "evaluations": counted, "calls": sum(len(rec.ts) for rec in recorders),
            "seconds": seconds, "max": results[k][0], "piece": k, "t": results[k][1],
            "resolution": max(r[2] for r in results), "legacy_maxima": legacy_maxima, "current_maxima": current_maxima}


def build_path(task, threshold: float, seeds: tuple[int, int], max_beads: int, say) -> Path:
    """Two endpoints trained to ``threshold`` and a small greedy string between them (see the module doc)."""
    start_time, ends = time.perf_counter(), []
    for seed in seeds:
        point, status = train_to_target(task.energy.point_of(task.make_model(seed)), energy=task.energy,
                                        objective=task.objective, target=threshold,
                                        config=task.endpoint_training, seed=seed)
        ends.append(point)
        say(f"  endpoint (seed {seed}): energy {task.energy(point):.4g}")
    beads, grid = ends, torch.linspace(0, 1, 33, dtype=torch.float64)
    for n in range(max_beads):
        path = Path(beads)
        profiles = [path.energies(i, grid, task.energy) for i in range(path.n_pieces)]
        worst = int(np.argmax([float(p.max()) for p in profiles]))
        if float(profiles[worst].max()) <= threshold:
            break
        t = grid[int(torch.argmax(profiles[worst]))].reshape(1)
        start = {k: v[0] for k, v in path.points(worst, t).items()}
        bead, _ = train_to_target(start, energy=task.energy, objective=task.objective, target=threshold,
                                  config=task.bead_training, seed=100 + n)
        beads = [*beads[: worst + 1], bead, *beads[worst + 1:]]
        say(f"  bead {n + 1} at t={float(t):.3f} of piece {worst} (grid max {float(profiles[worst].max()):.4g}): "
            f"energy {task.energy(bead):.4g}")
    say(f"  built in {time.perf_counter() - start_time:.1f} s")
    return Path(beads)


def get_path(name: str, task, threshold: float, saved: str | None, args, say) -> Path:
    """A saved path (``--NAME-path``), a cached one (``--cache``), or one built now (and cached)."""
    cached = FsPath(args.cache) / f"{name}-beads{args.beads}" if args.cache else None
    source = saved or (cached if cached is not None and cached.exists() else None)
    say(f"{name} path (threshold {threshold:g}): " + (f"loaded from {source}" if source else "building"))
    if source:
        return Path.load(source)
    path = build_path(task, threshold, (1, 2), args.beads, say)
    if cached is not None:
        path.save(cached)
    return path


def bench_path(label: str, path: Path, energy, resolution: float, repeats: int) -> list[dict]:
    config = CertifyConfig(resolution=resolution)
    methods = {
        "legacy": lambda ev: legacy_certify_segment(ev, resolution=resolution),
        "current": lambda ev: certify_segment(ev, config),
        "uniform": lambda ev: uniform_segment(ev, resolution=resolution),
    }
    best: dict[str, dict] = {}
    for _ in range(repeats):  # interleaved, so that load drift hits all methods alike
        for name, fn in methods.items():
            row = run_method(name, fn, path, energy)
            if name not in best or row["seconds"] < best[name]["seconds"]:
                best[name] = row
    rows = list(best.values())
    legacy = best["legacy"]
    print(f"\n{label}: {path.n_pieces} piece(s), resolution {resolution:g} in t "
          f"(current starts from a {config.grid_points}-point grid)")
    header = ("method", "evals", "legacy/evals", "calls", "seconds", "legacy/time", "reached", "max found",
              "at (piece, t)", ">= maxima", "run maxima")
    table = [(r["name"], r["evaluations"], f"{legacy['evaluations'] / r['evaluations']:.2f}x", r["calls"],
              f"{r['seconds']:.3g}",
              f"{legacy['seconds'] / r['seconds']:.2f}x", f"{r['resolution']:.3g}", f"{r['max']:.6g}",
              f"({r['piece']}, {r['t']:.4f})", r["legacy_maxima"], r["current_maxima"]) for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *table]) for i in range(len(header))]
    print("  ".join(f"{h:<{w}}" for h, w in zip(header, widths)))
    for x in table:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(x, widths)))
    current = best["current"]
    diff = current["max"] - legacy["max"]
    print("same maximum found by legacy and current" if diff == 0 else
          f"maxima differ: current - legacy = {diff:+.4g} ({diff / abs(legacy['max']) * 100:+.3g}% of legacy)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="data directory holding mnist/ (default $MODECONNECT_DATA)")
    parser.add_argument("--mnist-path", default=None, help="a saved MNIST path directory (RUN/path) to certify")
    parser.add_argument("--cubic-path", default=None, help="a saved cubic path directory (RUN/path) to certify")
    parser.add_argument("--cache", default=None, help="keep built paths in this directory and reuse them next time")
    parser.add_argument("--skip-mnist", action="store_true", help="cubic path only")
    parser.add_argument("--beads", type=int, default=2, help="most beads of a built path (default 2: 3 pieces)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per method (best is kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    say = lambda line: print(line, flush=True)  # noqa: E731
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs")

    results = {}
    cubic = make_task("cubic")
    path = get_path("cubic", cubic, 0.05, args.cubic_path, args, say)
    results["cubic"] = bench_path("cubic", path, cubic.energy, cubic.certify_resolution, max(args.repeats, 5))
    if not args.skip_mnist:
        mnist = make_task("mnist", data_dir=args.data_dir)
        path = get_path("mnist", mnist, 2.0, args.mnist_path, args, say)
        results["mnist"] = bench_path("MNIST", path, mnist.energy, mnist.certify_resolution, args.repeats)

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (timings are trustworthy only on an idle machine)")
    if "mnist" in results:
        legacy, current = results["mnist"][0], results["mnist"][1]
        ratio = legacy["evaluations"] / current["evaluations"]
        same = current["max"] == legacy["max"]
        verdict = "HOLDS" if ratio >= 4 and same else "DOES NOT HOLD"
        print(f"target {verdict}: >= 4x fewer evaluations on MNIST ({ratio:.2f}x) with the same maximum found "
              f"({'yes' if same else 'NO'})")


if __name__ == "__main__":
    main()

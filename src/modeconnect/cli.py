"""Command line: ``modeconnect connect``, ``sweep``, ``plot DIR`` and ``show DIR``.

Thin by design: arguments -> config dataclasses -> experiment functions.
Flags are derived from the settings schema (:mod:`modeconnect.cli_settings`), so defaults and help live
in one place. ``connect`` and ``sweep`` parse in two phases: ``--method`` first, then that method's flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .cli_components import ComponentsDirectory, add_components_parser, components_command, show_components
from .cli_reproduce import add_reproduce_parser, reproduce_command
from .cli_settings import (
    add_proof_flags,
    add_run_flags,
    join_negative_values,
    method_from_argv,
    methods_epilog,
    proof_overrides_from,
    run_config_from,
)
from .connect import time_split
from .errors import DatasetError, ModeconnectError
from .experiments.connect_run import run_connect
from .experiments.dropout_run import add_dropout_parser, dropout_command
from .experiments.executors import ExecutorKind, make_executor
from .experiments.noise_run import add_noise_parser, noise_command
from .experiments.store import RunDirectory, SweepDirectory
from .experiments.sweep import SweepConfig, parse_levels, run_sweep
from .progress import Reporter, closing_bars, open_task


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="where the real tasks' datasets live (DIR/mnist, "
                        "DIR/cifar10-subset, DIR/ptb); default: $MODECONNECT_DATA")


def _use_data_dir(args: argparse.Namespace) -> None:
    # The loaders read MODECONNECT_DATA; setting it here also reaches worker processes (and local Ray workers).
    # The directory is a property of the machine, not of the run, so it is not part of any run's identity.
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        from .tasks.datasets import DATA_ENV_VAR

        if not os.path.isdir(data_dir):
            what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
            raise DatasetError(f"--data-dir {data_dir} {what}; pass the directory that holds the datasets "
                               "(e.g. DIR/mnist, DIR/cifar10-subset, DIR/ptb)")
        os.environ[DATA_ENV_VAR] = os.path.abspath(data_dir)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="cpu|cuda|auto",
                        help="where endpoints are trained and paths found and certified: cpu, cuda (cuda:N) or auto "
                             "(a GPU when one is visible); default: $MODECONNECT_DEVICE, else cpu. Not part of a "
                             "run's identity: a run resumes on any device")


def _use_device(args: argparse.Namespace) -> None:
    # checked now (a missing GPU is a one-line error before any work) and handed to worker processes like
    # the data directory
    device = getattr(args, "device", None)
    if device is not None:
        from .device import DEVICE_ENV_VAR, resolve_device

        resolve_device(device)
        os.environ[DEVICE_ENV_VAR] = device


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``connect`` and ``sweep`` carry the flags of ``method`` (default: the default method)."""
    from .methods import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    parser = argparse.ArgumentParser(prog="modeconnect", description="Connect neural networks inside loss level sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    connect = sub.add_parser("connect", help="train two endpoints of a task and connect them with a path method",
                             description="Train two endpoints from two seeds, connect them with a path method "
                                         f"(--method, default {DEFAULT_METHOD}), check the path by refined "
                                         "sampling and print a summary.",
                             epilog=methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(connect, method)
    connect.add_argument("--out", metavar="DIR", help="run directory (config, env, endpoints, path, result); "
                         "re-running the same command on it resumes")
    _add_data_dir(connect)
    _add_device(connect)
    connect.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    connect.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    sweep = sub.add_parser(
        "sweep", help="normalized length and bead count over energy levels, N pairs per level",
        description="For each level, connect N independent pairs of endpoints (seeds derived from --seed) with "
                    "a path method and certify; write a table (one row per pair, one aggregate row per level) and "
                    "the two-panel figure. Re-running the same command continues an interrupted sweep.",
        epilog=methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--levels", required=True, metavar="L1,L2,...",
                       help="energy levels L0, comma-separated (e.g. 0.1,0.05,0.02)")
    sweep.add_argument("--pairs", type=int, default=4, metavar="N", help="pairs per level (default: 4)")
    add_run_flags(sweep, method, skip=("threshold",), helps={"seed": "base seed; pair j's seed is derived from it"})
    sweep.add_argument("--workers", type=int, default=1, metavar="K",
                       help="pairs run at once: 1 runs in this process, K > 1 a local process pool (default: 1)")
    sweep.add_argument("--executor", choices=[k.value for k in ExecutorKind], default="local",
                       help="local (this machine) or ray (default: local)")
    sweep.add_argument("--address", metavar="ADDR", help="address of a running Ray cluster (with --executor ray)")
    sweep.add_argument("--threads", type=int, metavar="T",
                       help="torch threads per worker (default: this machine's CPUs / workers)")
    sweep.add_argument("--out", metavar="DIR", required=True, help="sweep directory")
    _add_data_dir(sweep)
    _add_device(sweep)
    sweep.add_argument("--no-figures", action="store_true", help="write the table only")
    sweep.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    compare = sub.add_parser(
        "compare", help="every path method on the same endpoint pairs: one table, one figure",
        description="For each of N pairs (seeds derived from --seed), train the endpoints once and connect them with "
                    "every method in --methods (each with its own defaults and the task's bead training); certify "
                    "every path; write a table (connected, sampled max, normalized length, trained points and "
                    "parameters, wall time, energy evaluations) and the energy profiles along normalised arc "
                    "length. Re-running the same command continues.",
        epilog=methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("--methods", required=True, metavar="M1,M2,...",
                         help="path methods, comma-separated (e.g. greedy_dss,bezier,neb); the first trains the "
                              "endpoints")
    compare.add_argument("--pairs", type=int, default=2, metavar="N", help="endpoint pairs (default: 2)")
    compare.add_argument("--setting", action="append", default=[], metavar="METHOD.NAME=VALUE",
                         help="a setting of one method (repeatable), e.g. neb.max_time_s=600 or bezier.steps=500; "
                              "`modeconnect connect --method METHOD --help` lists a method's settings")
    add_run_flags(compare, DEFAULT_METHOD, skip=("method",), groups=("endpoint", "certify", "proof"),
                  helps={"seed": "base seed; pair j's seed is derived from it"})
    compare.add_argument("--workers", type=int, default=1, metavar="K",
                         help="runs at once: 1 runs in this process, K > 1 a local process pool (default: 1)")
    compare.add_argument("--executor", choices=[k.value for k in ExecutorKind], default="local",
                         help="local (this machine) or ray (default: local)")
    compare.add_argument("--address", metavar="ADDR", help="address of a running Ray cluster (with --executor ray)")
    compare.add_argument("--threads", type=int, metavar="T",
                         help="torch threads per worker (default: this machine's CPUs / workers)")
    compare.add_argument("--out", metavar="DIR", required=True, help="comparison directory")
    _add_data_dir(compare)
    _add_device(compare)
    compare.add_argument("--no-figures", action="store_true", help="write the table only")
    compare.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    plot = sub.add_parser("plot", help="draw the figures of a sweep or run directory",
                          description="A sweep directory gets the two-panel figure (normalized length and beads vs "
                                      "level). A run directory gets the energy profile along its path and the "
                                      "string picture (3D + 2D projections, snapshots, GIF, interactive HTML).")
    plot.add_argument("dir", metavar="DIR")
    plot.add_argument("--format", default="png", choices=["png", "pdf", "svg"], help="image format (default: png)")
    plot.add_argument("--no-html", action="store_true", help="skip the interactive HTML view (needs plotly)")
    plot.add_argument("--no-gif", action="store_true", help="skip the GIF animation")
    _add_data_dir(plot)
    plot.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    data = sub.add_parser("data", help="list, check or fetch the datasets of the real tasks")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    listing = data_sub.add_parser("list", help="the known datasets, their files and whether the data directory "
                                  "holds them")
    _add_data_dir(listing)
    check = data_sub.add_parser("check", help="verify the files of datasets in the data directory (SHA-256)")
    check.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: every one present)")
    _add_data_dir(check)
    fetch = data_sub.add_parser("fetch", help="download a dataset from a mirror, verifying every file",
                                description="Download DATASET's files from URL/NAME/FILE into DIR/NAME/, verify each "
                                            "against its recorded SHA-256 and move it into place only then.")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument("--from", dest="base_url", required=True, metavar="URL", help="the mirror's base URL")
    fetch.add_argument("--timeout", type=float, default=30.0, metavar="S", help="network timeout in seconds")
    fetch.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    _add_data_dir(fetch)
    prove = sub.add_parser("prove", help="bound the energy over every continuous piece of a finished run's path",
                           description="Rebuild a finished run's task and energy from its config.json, load its "
                                       "path and prove (or fail to prove) that the energy stays within tolerance x "
                                       "L0 at every point, not just the sampled ones. Writes DIR/proof.json.")
    prove.add_argument("dir", metavar="DIR")
    add_proof_flags(prove)
    _add_data_dir(prove)
    prove.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    prove.add_argument("--json", action="store_true", help="print the proof record as JSON")
    add_dropout_parser(sub, _add_data_dir)
    add_noise_parser(sub, _add_data_dir)
    add_reproduce_parser(sub, _add_data_dir)
    add_components_parser(sub, _add_data_dir, method)
    show = sub.add_parser("show", help="print the result of a finished run or sweep directory")
    show.add_argument("dir", metavar="DIR")
    show.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return parser


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def _alignment_note(alignment: dict[str, Any] | None) -> str:
    if not alignment:
        return ""
    return (f", after {alignment['method']} alignment of B (distance {_fmt(alignment['distance_before'])} -> "
            f"{_fmt(alignment['distance_after'])})")


def _proof_line(proof: dict[str, Any]) -> str:
    if proof["kind"] != "proof":
        return f"proof              none: {proof['unsupported']} is not supported; only the sampled check above holds"
    level = proof["tolerance"] * proof["threshold"]
    verdict = "PROVED" if proof["proved"] else "NOT proved"
    return (f"proof              {verdict}: energy <= {_fmt(proof['upper_bound'])} "
            f"{'<=' if proof['proved'] else '>'} {_fmt(level)} at every point of the path "
            f"({proof['n_subintervals']} sub-intervals, gap to the sampled max {_fmt(proof['gap'], '.2g')} x L0)")


def format_summary(result: dict[str, Any], where: str | None = None) -> str:
    """A human-readable block for a result record."""
    energy = result.get("energy", {})
    verdict = "yes" if result["connected"] else f"NO ({result['reason']})"
    pieces = ", ".join(result.get("piece_kinds") or ["straight"])
    beads = f"{result['n_beads']} intermediate, {result.get('n_pieces', result['n_beads'] + 1)} piece(s) ({pieces})"
    if result.get("depth") is not None:
        beads += f", depth {result['depth']}"
    if result.get("beads_trained") is not None:
        beads += f", {result['beads_trained']} trained"
    lines = [
        f"task               {result.get('task', '?')}: L0 = {_fmt(result['threshold'])} "
        f"({energy.get('split', '?')} {energy.get('metric', 'energy')}), tolerance {_fmt(result['tolerance'])}",
        f"method             {result.get('method', 'greedy_dss')}" + _alignment_note(result.get("alignment")),
        f"connected          {verdict}: {result['message']}",
        f"beads              {beads}",
    ]
    if result["connected"]:
        lines.append(f"normalized length  {_fmt(result['normalized_length'])} (path {_fmt(result['path_length'])} / "
                     f"distance {_fmt(result['distance'])})")
    else:
        lines.append(f"normalized length  n/a: not connected (distance {_fmt(result['distance'])})")
    if result.get("grid_size") is not None:
        lines.append(f"max energy (grid)  {_fmt(result.get('max_interpolated_energy'))} on a "
                     f"{result['grid_size']}-point grid per segment")
    if result.get("certified_max_energy") is not None:
        lines.append(
            f"sampled max        {_fmt(result['certified_max_energy'])} "
            f"({'within' if result['certified'] else 'ABOVE'} tolerance x L0) by refined sampling at resolution "
            f"{_fmt(result['certification_resolution'], '.2g')} in t, "
            f"{_fmt(result['certification_param_resolution'], '.2g')} in parameter distance (not a proof)")
    if result.get("proof") is not None:
        lines.append(_proof_line(result["proof"]))
    lines += [
        "endpoint energies  " + ", ".join(_fmt(e) for e in result["endpoint_energies"]),
        f"wall time          {_fmt(result['wall_time_s'], '.1f')} s",
        f"time split         {time_split(result)}",
    ]
    if (evaluation := _evaluation_line(energy)) is not None:
        lines.append(evaluation)
    if where:
        lines.append(f"saved in           {where}")
    return "\n".join(lines)


def _evaluation_line(energy: dict[str, Any]) -> str | None:
    """How the energy was evaluated, when something was measured: the strategy and the torch threads, and how
    to repeat the run bit for bit (results can differ in their last bits between thread counts)."""
    parts = []
    if energy.get("strategy") == "auto" and energy.get("chosen_strategy"):
        parts.append(f"strategy {energy['chosen_strategy']} (measured)")
    if energy.get("threads") == "auto" and energy.get("chosen_threads"):
        n = energy["chosen_threads"]
        parts.append(f"{n} torch thread{'s' if n != 1 else ''} (measured; MODECONNECT_THREADS={n} pins it "
                     "to repeat this run bit for bit)")
    return f"evaluation         {', '.join(parts)}" if parts else None


_Progress = Reporter  # timestamped lines, live bars on a terminal (modeconnect.progress)


def _connect(args: argparse.Namespace) -> int:
    config = run_config_from(args)
    try:
        result = run_connect(config, args.out, progress=_Progress(args.quiet))
    except KeyboardInterrupt:
        where = f"progress is saved in {args.out}; re-run the same command to resume" if args.out else \
            "nothing was saved (no --out)"
        print(f"\nmodeconnect: interrupted: {where}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_summary(result, f"{args.out}/result.json" if args.out else None))
    return 0


def format_table(table: dict[str, Any]) -> str:
    """The aggregate rows of a sweep table as aligned text."""
    metric = table.get("energy", {}).get("metric", "energy")
    lines = [f"sweep of {table['task']}: {table['pairs']} pair(s) per level, energy = {metric}",
             f"{'L0':>10} {'connected':>10} {'norm. length':>20} {'beads':>16} {'depth':>6} {'connect time':>13}"]

    def pm(mean: float | None, err: float | None, spec: str) -> str:
        if mean is None:
            return "n/a"
        return format(mean, spec) + ("" if err is None else " ± " + format(err, spec))

    for agg in table["aggregates"]:
        tried = agg["n_pairs"] - agg["n_endpoint_failed"]
        lines.append(f"{agg['level']:>10g} {agg['n_connected']:>4d} of {tried:<3d} "
                     f"{pm(agg['normalized_length_mean'], agg['normalized_length_stderr'], '.4f'):>20} "
                     f"{pm(agg['n_beads_mean'], agg['n_beads_stderr'], '.2f'):>16} "
                     f"{_fmt(agg['depth_mean'], '.1f'):>6} {_fmt(agg['wall_time_s_mean'], '.1f'):>12}s"
                     + (f"  ({agg['n_endpoint_failed']} pair(s) whose endpoints did not train)"
                        if agg["n_endpoint_failed"] else ""))
    return "\n".join(lines)


def _sweep(args: argparse.Namespace) -> int:
    config = SweepConfig(base=run_config_from(args, threshold=None), levels=parse_levels(args.levels), pairs=args.pairs,
                         seed=getattr(args, "seed", 0))
    progress = _Progress(args.quiet)
    try:
        with make_executor(args.executor, args.workers, address=args.address, threads=args.threads) as executor:
            table = run_sweep(config, args.out, executor=executor, progress=progress)
    except KeyboardInterrupt:
        print(f"\nmodeconnect: interrupted: finished pairs and every pair's last bead are saved in {args.out}; "
              "re-run the same command to continue", file=sys.stderr)
        return 130
    print(format_table(table))
    print(f"table              {args.out}/table.csv, {args.out}/table.json")
    if not args.no_figures:
        for file in _draw(args.out, "png", html=False, gif=False, say=progress):
            print(f"figure             {file}")
    return 0


def format_comparison(table: dict[str, Any]) -> str:
    """The per-method rows of a comparison table as aligned text."""
    energy = table.get("energy", {})
    align = table.get("align") or "none"
    lines = [f"comparison on {table['task']}: L0 = {_fmt(table['threshold'])} ({energy.get('metric', 'energy')}), "
             f"{table['pairs']} pair(s), alignment {align}",
             f"{'method':<20} {'connected':>9} {'certified':>9} {'sampled max':>12} {'norm. length':>13} "
             f"{'trained pts':>11} {'trained params':>14} {'wall time':>10} {'energy evals':>12}"]
    for agg in table["aggregates"]:
        tried = agg["n_pairs"] - agg["n_endpoint_failed"]
        lines.append(f"{agg['method']:<20} {agg['n_connected']:>4d} of {tried:<2d} {agg['n_certified']:>5d} of "
                     f"{tried:<2d} {_fmt(agg['certified_max_energy_mean']):>12} "
                     f"{_fmt(agg['normalized_length_mean']):>13} {_fmt(agg['trained_points_mean'], '.1f'):>11} "
                     f"{_fmt(agg['trained_parameters_mean'], '.0f'):>14} {_fmt(agg['wall_time_s_mean'], '.1f'):>9}s "
                     f"{_fmt(agg['method_energy_evaluations_mean'], '.0f'):>12}")
    lines.append("(means over the pairs whose endpoints trained; normalized length over the connected ones; "
                 "sampled max is refined sampling, not a proof)")
    return "\n".join(lines)


def _compare(args: argparse.Namespace) -> int:
    from .experiments.compare import CompareConfig, parse_methods, parse_settings, run_compare

    config = CompareConfig(base=run_config_from(args), methods=parse_methods(args.methods), pairs=args.pairs,
                           seed=getattr(args, "seed", 0), settings=parse_settings(args.setting))
    progress = _Progress(args.quiet)
    try:
        with make_executor(args.executor, args.workers, address=args.address, threads=args.threads) as executor:
            table = run_compare(config, args.out, executor=executor, progress=progress)
    except KeyboardInterrupt:
        print(f"\nmodeconnect: interrupted: finished runs and every run's last checkpoint are saved in {args.out}; "
              "re-run the same command to continue", file=sys.stderr)
        return 130
    print(format_comparison(table))
    print(f"table              {args.out}/table.csv, {args.out}/table.json")
    if not args.no_figures:
        for file in _draw(args.out, "png", html=False, gif=False, say=progress):
            print(f"figure             {file}")
    return 0


def _draw(directory: str, fmt: str, *, html: bool, gif: bool, say) -> list[str]:
    from .figures import draw_directory  # matplotlib is optional: imported only when drawing

    return draw_directory(directory, fmt=fmt, html=html, gif=gif, progress=say)


def _plot(args: argparse.Namespace) -> int:
    for file in _draw(args.dir, args.format, html=not args.no_html, gif=not args.no_gif,
                      say=_Progress(args.quiet)):
        print(file)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    def draw(directory: str, fmt: str) -> list[str]:
        return _draw(directory, fmt, html=False, gif=False, say=_Progress(args.quiet))

    return reproduce_command(args, _Progress(args.quiet), draw)


def _show(args: argparse.Namespace) -> int:
    from .cli_reproduce import format_claims
    from .experiments.compare import CompareDirectory
    from .experiments.reproduce import is_reproduction, read_reproduction

    if is_reproduction(args.dir):
        record = read_reproduction(args.dir)
        print(json.dumps(record, indent=2, sort_keys=True) if args.json else format_claims(record))
        return 0
    if ComponentsDirectory.is_components(args.dir):
        return show_components(args.dir, args.json)
    if CompareDirectory.is_comparison(args.dir):
        table = CompareDirectory.read_table(args.dir)
        print(json.dumps(table, indent=2, sort_keys=True) if args.json else format_comparison(table))
        return 0
    if SweepDirectory.is_sweep(args.dir):
        table = SweepDirectory.read_table(args.dir)
        print(json.dumps(table, indent=2, sort_keys=True) if args.json else format_table(table))
        return 0
    result = RunDirectory.read_result(args.dir)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_summary(result, args.dir))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .tasks import datasets

    if args.data_command == "list":
        root = None
        if args.data_dir is not None or os.environ.get(datasets.DATA_ENV_VAR):
            root = datasets.resolve_data_dir(args.data_dir)
        for name, files in datasets.known_datasets().items():
            here = "" if root is None else ("  [present]" if (root / name).is_dir() else "  [absent]")
            print(f"{name:16s} {', '.join(files)}{here}")
        return 0
    if args.data_command == "fetch":
        reporter, bars = _Progress(args.quiet), {}

        def show(rel: str, done: int, total: int | None) -> None:  # one bar (in MB) per file, a line when done
            bar = bars.get(rel) or bars.setdefault(rel, open_task(reporter, rel, total and round(total / 1e6, 1)))
            bar.update(round(done / 1e6, 1))
            if total and done == total:
                bars.pop(rel).close()
                reporter(f"{rel}: {done / 1e6:.1f} MB")

        for file in datasets.fetch_dataset(args.name, args.data_dir, base_url=args.base_url, progress=show,
                                           timeout=args.timeout):
            print(file)
        return 0
    root = datasets.resolve_data_dir(args.data_dir)
    names = args.names or [n for n in datasets.known_datasets() if (root / n).is_dir()]
    if not names:
        print(f"no known dataset folder in {root}; expected one of: {', '.join(datasets.known_datasets())}")
        return 1
    bad = 0
    for name in names:
        for line, ok in datasets.check_dataset(name, root):
            bad += not ok
            print(line)
    return 1 if bad else 0


def _prove(args: argparse.Namespace) -> int:
    from .experiments.prove_run import prove_run

    record = prove_run(args.dir, proof_overrides_from(args), progress=_Progress(args.quiet))
    print(json.dumps(record, indent=2, sort_keys=True) if args.json else
          _proof_line(record) + "\n" + record["statement"] + f"\nsaved in           {args.dir}/proof.json")
    return 0


_COMMANDS = {"dropout": dropout_command, "noise-stability": noise_command,
             "prove": _prove, "connect": _connect, "sweep": _sweep, "compare": _compare, "plot": _plot, "show": _show,
             "data": _data, "reproduce": _reproduce, "components": components_command}


def main(argv: Sequence[str] | None = None) -> int:
    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser(method_from_argv(argv)).parse_args(argv)
    try:
        _use_data_dir(args)
        _use_device(args)
        with closing_bars():
            return _COMMANDS[args.command](args)
    except ModeconnectError as exc:
        print(f"modeconnect: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`modeconnect show DIR --json | head`): stop quietly, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

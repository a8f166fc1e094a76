"""``modeconnect components``: count the connected components of a level set among N trained models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .cli_settings import add_run_flags, methods_epilog, run_config_from
from .errors import ConfigError
from .experiments.components import (
    COMPONENTS_CSV,
    COMPONENTS_JSON,
    ComponentsConfig,
    ComponentsDirectory,
    run_components,
)
from .experiments.executors import ExecutorKind, make_executor
from .experiments.sweep import parse_levels

__all__ = ["add_components_parser", "components_command", "show_components", "format_components",
           "parse_level_options"]


def add_components_parser(sub, add_data_dir: Callable[[argparse.ArgumentParser], None],
                          method: str | None = None) -> None:
    """Add the ``components`` subcommand to ``sub``, with the run flags of ``method`` (default: the default)."""
    from .methods import DEFAULT_METHOD

    parser = sub.add_parser(
        "components", help="count the connected components of a level set among N trained models",
        description="Train N models of a task (seeds derived from --seed) to the task's endpoint fraction of the "
                    "lowest level, then at each level connect pairs of models only across the components found so "
                    "far (rounds of a matching of components; a union-find merges on every connection that the "
                    "method made and refined sampling certified). Writes components.json, components.csv and "
                    "the figures (graph of certified connections per level, components vs level). Re-running the "
                    "same command continues.",
        epilog=methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=float, metavar="L", help="one energy level L0")
    parser.add_argument("--levels", metavar="L1,L2,...", help="several energy levels, comma-separated (instead of "
                        "--level); a connection certified at a lower level counts at the higher ones")
    parser.add_argument("--models", type=int, default=8, metavar="N", help="models trained (default: 8)")
    parser.add_argument("--tries", type=int, default=2, metavar="K",
                        help="failed connections between two components, at one level, before they are left apart "
                             "at that level (default: 2)")
    add_run_flags(parser, method or DEFAULT_METHOD, skip=("threshold",),
                  helps={"seed": "base seed; model i's seed and every connection's seed are derived from it"})
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="units run at once: 1 runs in this process, K > 1 a local process pool (default: 1)")
    parser.add_argument("--executor", choices=[k.value for k in ExecutorKind], default="local",
                        help="local (this machine) or ray (default: local)")
    parser.add_argument("--address", metavar="ADDR", help="address of a running Ray cluster (with --executor ray)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="torch threads per worker (default: this machine's CPUs / workers)")
    parser.add_argument("--out", metavar="DIR", required=True, help="components directory")
    add_data_dir(parser)
    parser.add_argument("--device", metavar="cpu|cuda|auto",
                        help="where models are trained and paths found (default: $MODECONNECT_DEVICE, else cpu)")
    parser.add_argument("--no-figures", action="store_true", help="write the data files only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")


def parse_level_options(level: float | None, levels: str | None) -> tuple[float, ...]:
    """The levels given as ``--level L`` or ``--levels L1,L2,...`` (exactly one of them)."""
    if (level is None) == (levels is None):
        raise ConfigError("give exactly one of --level L or --levels L1,L2,... (the energy level(s) to count at)")
    return (float(level),) if level is not None else parse_levels(levels)


def format_components(record: dict[str, Any]) -> str:
    """The number of components against the level, with each component's members, as aligned text."""
    energy = record.get("energy") or {}
    alive = sum(m["status"] == "trained" for m in record["models"])
    lines = [f"components of {record['task']} ({energy.get('split', '?')} {energy.get('metric', 'energy')}): "
             f"{alive} of {record['n_models']} models trained to {record['model_level']:g}, method "
             f"{record['method']}, up to {record['tries']} failed tries per pair of components",
             f"{'L':>10} {'components':>10} {'connections run':>16} {'rounds':>7}  members"]
    for e in record["by_level"]:
        members = " | ".join(" ".join(map(str, c)) for c in e["components"])
        lines.append(f"{e['level']:>10g} {e['n_components']:>10d} {e['n_units']:>16d} {len(e['rounds']):>7d}  "
                     f"{members}" + ("" if e["complete"] else "  (unfinished)"))
    failed = [m for m in record["models"] if m["status"] != "trained"]
    if failed:
        lines.append(f"models that did not train: {', '.join(str(m['model']) for m in failed)}")
    lines.append("(a connection counts when the method connected and refined sampling certified it; the count is "
                 "an upper bound: a failed connection is no proof of a barrier)")
    return "\n".join(lines)


def components_command(args: argparse.Namespace) -> int:
    from . import cli  # its progress lines and figure drawing, shared with every command

    config = ComponentsConfig(base=run_config_from(args, threshold=None),
                              levels=parse_level_options(args.level, args.levels), models=args.models,
                              seed=getattr(args, "seed", 0), tries=args.tries)
    progress = cli._Progress(args.quiet)
    try:
        with make_executor(args.executor, args.workers, address=args.address, threads=args.threads) as executor:
            record = run_components(config, args.out, executor=executor, progress=progress)
    except KeyboardInterrupt:
        print(f"\nmodeconnect: interrupted: trained models and finished connections are saved in {args.out}; "
              "re-run the same command to continue", file=sys.stderr)
        return 130
    print(format_components(record))
    print(f"saved in           {args.out}/{COMPONENTS_JSON}, {args.out}/{COMPONENTS_CSV}")
    if not args.no_figures:
        for file in cli._draw(args.out, "png", html=False, gif=False, say=progress):
            print(f"figure             {file}")
    return 0


def show_components(directory: str, as_json: bool) -> int:
    """``modeconnect show DIR`` on a components directory."""
    record = ComponentsDirectory.read_record(directory)
    print(json.dumps(record, indent=2, sort_keys=True) if as_json else format_components(record))
    return 0

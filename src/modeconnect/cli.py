"""Command line: ``modeconnect connect ...`` and ``modeconnect show DIR``.

Thin by design: arguments -> :class:`ConnectRunConfig` -> :func:`run_connect`.
Flags are derived from the config dataclass, so defaults and help live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import ModeconnectError
from .experiments.connect_run import ConnectRunConfig, run_connect
from .experiments.store import RunDirectory
from .strings.greedy import Order, TStar
from .tasks import TASKS

_TYPES = {"str": str, "int": int, "float": float}
_CHOICES = {"task": list(TASKS), "tstar": [m.value for m in TStar], "order": [m.value for m in Order],
            "activation": ["sigmoid", "relu", "tanh"]}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(ConnectRunConfig):
        base = str(f.type).replace(" | None", "")
        default = f.default
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=_TYPES[base], default=default,
            choices=_CHOICES.get(f.name), metavar=None if f.name in _CHOICES else base.upper(),
            help=f.metadata.get("help", "") + ("" if default is None else f" (default: {default})"),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modeconnect", description="Connect neural networks inside loss level sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    connect = sub.add_parser("connect", help="train two endpoints of a task and connect them with greedy DSS",
                             description="Train two endpoints from two seeds, connect them with greedy Dynamic "
                                         "String Sampling, certify the path and print a summary.")
    _add_config_flags(connect)
    connect.add_argument("--out", metavar="DIR", help="run directory (config, env, endpoints, path, result); "
                         "re-running the same command on it resumes")
    connect.add_argument("--quiet", action="store_true", help="no progress lines")
    connect.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    show = sub.add_parser("show", help="print the result of a finished run directory")
    show.add_argument("dir", metavar="DIR")
    show.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return parser


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def format_summary(result: dict[str, Any], where: str | None = None) -> str:
    """A human-readable block for a result record."""
    energy = result.get("energy", {})
    verdict = "yes" if result["connected"] else f"NO ({result['reason']})"
    lines = [
        f"task               {result.get('task', '?')}: L0 = {_fmt(result['threshold'])} "
        f"({energy.get('split', '?')} {energy.get('metric', 'energy')}), tolerance {_fmt(result['tolerance'])}",
        f"connected          {verdict}: {result['message']}",
        f"beads              {result['n_beads']} intermediate, depth {result['depth']}, "
        f"{result['beads_trained']} trained",
        f"normalized length  {_fmt(result['normalized_length'])} (path {_fmt(result['path_length'])} / "
        f"distance {_fmt(result['distance'])})",
        f"max energy (grid)  {_fmt(result['max_interpolated_energy'])} on a {result['grid_size']}-point grid "
        f"per segment",
    ]
    if result.get("certified_max_energy") is not None:
        lines.append(
            f"certified max      {_fmt(result['certified_max_energy'])} "
            f"({'within' if result['certified'] else 'ABOVE'} tolerance x L0) at resolution "
            f"{_fmt(result['certification_resolution'], '.2g')} in t, "
            f"{_fmt(result['certification_param_resolution'], '.2g')} in parameter distance")
    lines += [
        "endpoint energies  " + ", ".join(_fmt(e) for e in result["endpoint_energies"]),
        f"wall time          {_fmt(result['wall_time_s'], '.1f')} s",
    ]
    if where:
        lines.append(f"saved in           {where}")
    return "\n".join(lines)


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet, self.start = quiet, time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def _connect(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ConnectRunConfig)}
    config = ConnectRunConfig(**values)
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


def _show(args: argparse.Namespace) -> int:
    result = RunDirectory.read_result(args.dir)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_summary(result, args.dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _connect(args) if args.command == "connect" else _show(args)
    except ModeconnectError as exc:
        print(f"modeconnect: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

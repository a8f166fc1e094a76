"""``modeconnect reproduce``: run a paper's experiment by name, or list them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .errors import ConfigError
from .experiments.reproduce import REPRODUCTIONS, get_reproduction, run_reproduction

__all__ = ["add_reproduce_parser", "reproduce_command", "format_claims", "format_listing"]


def add_reproduce_parser(sub, add_data_dir: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = sub.add_parser(
        "reproduce", help="run one of the papers' experiments by name (--list shows them)",
        description="Run a named reproduction of a paper's experiment or theorem into --out DIR: its data files "
                    "(results.json, table.csv), reproduction.json (the paper's claims, whether our numbers "
                    "agree, and the numbers) and its figures. Re-running the same command resumes.")
    parser.add_argument("name", nargs="?", metavar="NAME", help="the reproduction to run")
    parser.add_argument("--list", action="store_true", help="list the reproductions and exit")
    parser.add_argument("--out", metavar="DIR", help="reproduction directory")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller version (fewer seeds, points and steps) for a first look or a test")
    parser.add_argument("--no-figures", action="store_true", help="write the data files only")
    parser.add_argument("--format", default="png", choices=["png", "pdf", "svg"], help="image format (default: png)")
    add_data_dir(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")


def format_listing() -> str:
    width = max(len(name) for name in REPRODUCTIONS)
    lines = []
    for name, spec in sorted(REPRODUCTIONS.items()):
        data = ", needs --data-dir" if spec.needs_data else ""
        lines.append(f"{name:<{width}}  {spec.summary}\n{'':<{width}}  {spec.paper}; about {spec.minutes:g} "
                     f"min on 2 CPU cores{data}")
    return "\n".join(lines)


def format_claims(record: dict) -> str:
    quick = ", quick" if record.get("quick") else ""
    lines = [f"{record['name']}: {record['paper']} ({record['elapsed_s']:.1f} s{quick})"]
    for item in record["claims"]:
        mark = "holds " if item["holds"] else "FAILS "
        lines.append(f"  [{mark}] {item['claim']}\n           {item['detail']}")
    return "\n".join(lines)


def reproduce_command(args: argparse.Namespace, progress, draw) -> int:
    if args.list:
        print(format_listing())
        return 0
    if not args.name:
        raise ConfigError("name a reproduction (`modeconnect reproduce NAME --out DIR`) or pass --list")
    get_reproduction(args.name)
    if not args.out:
        raise ConfigError(f"--out DIR is required: where reproduction {args.name!r} writes its results")
    try:
        record = run_reproduction(args.name, args.out, quick=args.quick, progress=progress)
    except KeyboardInterrupt:
        print(f"\nmodeconnect: interrupted: finished units are saved in {args.out}; re-run the same command "
              "to resume", file=sys.stderr)
        return 130
    files = [] if args.no_figures else draw(args.out, args.format)
    if args.json:
        print(json.dumps({k: v for k, v in record.items() if k != "results"}, indent=2, sort_keys=True))
    else:
        print(format_claims(record))
        print(f"saved in           {args.out}/reproduction.json, {args.out}/results.json")
        for file in files:
            print(f"figure             {file}")
    return 0

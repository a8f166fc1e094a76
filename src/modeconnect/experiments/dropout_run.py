"""The ``dropout`` experiment: dropout stability of a task's trained endpoint (Kuditipudi et al. 2019, Definition 1).

``modeconnect dropout --task T --p P --masks K --out DIR`` trains endpoint A (or B) exactly as ``connect`` does
with the same ``--seed`` (same derived seed, same target ``endpoint_fraction * L0``, same endpoint training),
or loads it from a finished connect run (``--from-run DIR``), samples ``K`` masks keeping ``floor(h (1 - p))``
units per hidden layer, evaluates every ``theta_i`` and writes ``DIR/masks.safetensors``,
``DIR/dropout.json`` (:func:`~modeconnect.kuditipudi.dropout.load_dropout` reads both back) and
``DIR/endpoint.safetensors`` (reused when the same command is run again).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path as FsPath
from typing import Any

from ..errors import ConfigError
from ..kuditipudi.dropout import DropoutConfig, dropout_stability, save_dropout
from ..kuditipudi.units import hidden_units
from .connect_run import ConnectRunConfig, thread_limit
from .endpoint_store import single_endpoint

__all__ = ["run_dropout", "add_dropout_parser", "dropout_command"]



def run_dropout(task: str, *, p: float = 0.5, masks: int = 20, out: str | None = None, threshold: float | None = None,
                seed: int = 0, endpoint: str = "a", rescale: float | None = None, mask_seed: int = 0,
                from_run: str | None = None, endpoint_training: Mapping[str, Any] | None = None,
                task_options: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the dropout stability of a task's endpoint; returns (and with ``out`` writes) the record."""
    say = progress or (lambda message: None)
    if endpoint not in ("a", "b"):
        raise ConfigError(f"endpoint must be 'a' or 'b', got {endpoint!r}")
    config = DropoutConfig(p=p, masks=masks, rescale=rescale, mask_seed=mask_seed)
    run = ConnectRunConfig(task=task, threshold=threshold, seed=seed, endpoint_training=dict(endpoint_training or {}),
                           **dict(task_options or {})).resolve()
    directory = FsPath(out) if out is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    with thread_limit(run.task.threads):
        spec = hidden_units(run.task.energy.model)
        point = single_endpoint(run, endpoint, directory, from_run, say)
        sampled, report = dropout_stability(point, run.task.energy, spec, config, progress=say)
    best = report.best_mask
    record = {"task": run.task.name, "seed": seed, "endpoint": endpoint, "threshold": run.threshold,
              "from_run": from_run, "energy_description": run.task.energy.describe(),
              "stable": report.stable(run.threshold), "wall_time_s": time.perf_counter() - clock}
    if directory is not None:
        save_dropout(directory, sampled, report, extra=record)
    say(f"theta_1 over {report.n_masks} masks: min {report.full['min']:.4g}, median {report.full['median']:.4g}, "
        f"max {report.full['max']:.4g}; best mask {best} gives theta_i energies "
        f"{', '.join(f'{e:.4g}' for e in report.energies[best])}")
    return {**report.to_dict(), **record}


# -- command line -----------------------------------------------------------------------------
def add_dropout_parser(sub, add_data_dir: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """Add the ``dropout`` subcommand to ``sub`` (the CLI's subparsers)."""
    from ..cli_settings import add_endpoint_source_flags

    parser = sub.add_parser(
        "dropout", help="dropout stability of a trained endpoint (Kuditipudi et al. 2019, Definition 1)",
        description="Train endpoint A (or B) of a task as `connect` would with the same --seed (or load it from a "
                    "connect run), sample masks keeping floor(h (1 - p)) units of every hidden layer (channels "
                    "for convolutions), rescale the kept ones by r and report the energies of theta_1 .. theta_{d-1} "
                    "(dropout from layer i on): best mask, min / median / max and every value. Writes "
                    "DIR/masks.safetensors and DIR/dropout.json.")
    add_endpoint_source_flags(parser, seed_help="run seed, as for connect (default: 0)",
                              threshold_help="energy level L0: endpoints are trained to the task's fraction of it, "
                                             "and stability is judged against it (default: the task's own)")
    parser.add_argument("--p", type=float, default=0.5, help="drop fraction (default: 0.5)")
    parser.add_argument("--masks", type=int, default=20, help="masks sampled (default: 20)")
    parser.add_argument("--rescale", type=float, default=None, help="factor r on kept units (default: 1 / (1 - p))")
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of the masks (default: 0)")
    parser.add_argument("--out", metavar="DIR", required=True, help="where masks, numbers and the endpoint go")
    add_data_dir(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    return parser


def dropout_command(args: argparse.Namespace) -> int:
    """Run ``modeconnect dropout`` from parsed arguments."""
    from ..progress import Reporter

    say = Reporter(args.quiet)  # timestamped lines, live bars on a terminal

    from ..cli_settings import endpoint_source_from

    training, options = endpoint_source_from(args)
    record = run_dropout(args.task, p=args.p, masks=args.masks, out=args.out, threshold=args.threshold,
                         seed=args.seed, endpoint=args.endpoint, rescale=args.rescale, mask_seed=args.mask_seed,
                         from_run=args.from_run, endpoint_training=training, task_options=options, progress=say)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))
        return 0
    full = record["full"]
    lines = [f"task               {record['task']}: endpoint {record['endpoint'].upper()} (seed {record['seed']}), "
             f"energy {record['energy']:.4g}, L0 = {record['threshold']:.4g}",
             f"dropout            p = {record['p']:g}, r = {record['r']:.4g}, kept {record['kept']} of "
             f"{record['sizes']} units in {record['layers']}, {record['n_masks']} masks",
             f"theta_1            best {full['min']:.4g} (mask {full['best_mask']}), median {full['median']:.4g}, "
             f"max {full['max']:.4g}"]
    for row in record["layerwise"]:
        lines.append(f"theta_{row['i']:<12d} from {row['from_layer']}: best {row['min']:.4g}, median "
                     f"{row['median']:.4g}, max {row['max']:.4g}")
    lines += [f"one mask for all i mask {record['best_mask']}: "
              f"{', '.join(f'{e:.4g}' for e in record['best_mask_energies'])} -> "
              f"{'dropout stable' if record['stable'] else 'NOT dropout stable'} at L0",
              f"saved in           {args.out}/dropout.json, {args.out}/masks.safetensors"]
    print("\n".join(lines))
    return 0

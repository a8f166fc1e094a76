"""The ``noise-stability`` experiment: Kuditipudi et al. (2019)'s noise stability of a task's trained endpoint.

``modeconnect noise-stability --task T --out DIR`` trains endpoint A (or B) exactly as ``connect`` does with the
same ``--seed`` (same derived seed, target ``endpoint_fraction * L0`` and endpoint training), or loads it from
``DIR/endpoint.safetensors`` (written by an earlier run of the same settings; the ``dropout`` command uses the
same files and identity, so the two share an endpoint in one directory) or from a finished connect run
(``--from-run``). It then measures the quantities of Definitions 2-4 on ``--samples`` training samples
(:func:`~modeconnect.kuditipudi.noise.noise_stability`), writes ``DIR/noise_stability.json``
(:func:`load_noise_stability` reads it back) and prints the per-layer table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path as FsPath
from typing import Any

import torch

from .._io import read_json, write_json
from ..errors import ConfigError, StoreError
from ..kuditipudi.noise import (
    NoiseStabilityConfig,
    NoiseStabilityReport,
    format_report,
    noise_stability,
    select_samples,
)
from ..params import load_point_into
from ..settings import apply_overrides
from .connect_run import ConnectRunConfig, thread_limit
from .endpoint_store import single_endpoint

__all__ = ["run_noise_stability", "load_noise_stability", "add_noise_parser", "noise_command", "RESULT_FILE"]

RESULT_FILE = "noise_stability.json"


def run_noise_stability(task: str, *, config: NoiseStabilityConfig | None = None, out: str | None = None,
                        threshold: float | None = None, seed: int = 0, endpoint: str = "a",
                        from_run: str | None = None, endpoint_training: Mapping[str, Any] | None = None,
                        task_options: Mapping[str, Any] | None = None, device: str = "cpu",
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the noise stability of a task's endpoint on training samples; returns (and with ``out`` writes)
    the record: :meth:`NoiseStabilityReport.to_dict` plus a ``run`` block (task, seed, endpoint, its energy)."""
    say = progress or (lambda message: None)
    if endpoint not in ("a", "b"):
        raise ConfigError(f"endpoint must be 'a' or 'b', got {endpoint!r}")
    config = config or NoiseStabilityConfig(seed=seed)
    run = ConnectRunConfig(task=task, threshold=threshold, seed=seed, endpoint_training=dict(endpoint_training or {}),
                           **dict(task_options or {})).resolve()
    directory = FsPath(out) if out is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    with thread_limit(run.task.threads):
        point = single_endpoint(run, endpoint, directory, from_run, say)
        energy = run.task.energy(point)
        model = load_point_into(run.task.make_model(0), point)
        inputs = run.task.objective.inputs
        indices = select_samples(len(inputs), config.samples, config.seed)
        say(f"endpoint {endpoint.upper()}: energy {energy:.4g}; measuring noise stability on {len(indices)} of "
            f"{len(inputs)} training samples")
        report = noise_stability(model, inputs[indices].to(device), config, sample_indices=indices, progress=say)
    record = {**report.to_dict(),
              "run": {"task": run.task.name, "seed": seed, "endpoint": endpoint, "threshold": run.threshold,
                      "from_run": from_run, "endpoint_energy": energy, "energy": run.task.energy.describe(),
                      "task_options": dict(task_options or {}), "device": device}}
    if directory is not None:
        write_json(directory / RESULT_FILE, record)
        say(f"wrote {directory / RESULT_FILE}")
    return record


def load_noise_stability(path: str | FsPath) -> tuple[NoiseStabilityReport, dict[str, Any]]:
    """Read ``noise_stability.json`` (a file, or the directory holding it): the report and the whole record."""
    path = FsPath(path)
    if path.is_dir():
        path = path / RESULT_FILE
    if not path.exists():
        raise StoreError(f"{path} does not exist; run `modeconnect noise-stability --out DIR` first")
    record = read_json(path)
    return NoiseStabilityReport.from_dict(record), record


# -- command line -----------------------------------------------------------------------------
def _config_specs():
    from ..settings import setting_specs

    return [spec for spec in setting_specs(NoiseStabilityConfig) if spec.path != ("seed",)]


def add_noise_parser(sub, add_data_dir: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """Add the ``noise-stability`` subcommand to ``sub`` (the CLI's subparsers)."""
    from ..cli_settings import _help, _parse_value, add_endpoint_source_flags

    parser = sub.add_parser(
        "noise-stability", help="noise stability of a trained endpoint (Kuditipudi et al. 2019, Definitions 2-4)",
        description="Train endpoint A (or B) of a task as `connect` would with the same --seed (or load it from DIR "
                    "or a connect run), then measure on --samples training samples: layer cushions, interlayer "
                    "cushions (spectral norm of the Jacobian by power iteration), activation contraction, "
                    "interlayer smoothness under Algorithm 1's dropout and the overall epsilon. Writes "
                    "DIR/noise_stability.json and prints a per-layer table (min / median / max over the samples).")
    add_endpoint_source_flags(parser, seed_help="run seed, as for connect; also seeds the samples, start vectors "
                                                "and dropout draws (default: 0)",
                              threshold_help="energy level L0: the endpoint is trained to the task's fraction of "
                                             "it (default: the task's own)")
    group = parser.add_argument_group("measurement")
    for spec in _config_specs():
        group.add_argument("--" + spec.flag, dest=f"noise:{spec.path[0]}", type=_parse_value(spec),
                           default=argparse.SUPPRESS, choices=spec.choices,
                           metavar=None if spec.choices else spec.type.__name__.upper(), help=_help(spec, None))
    parser.add_argument("--device", default="cpu", help="torch device of the measurement (default: cpu)")
    parser.add_argument("--out", metavar="DIR", required=True, help="where the endpoint and noise_stability.json go")
    add_data_dir(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines or bars (the result still prints)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    return parser


def noise_command(args: argparse.Namespace) -> int:
    """Run ``modeconnect noise-stability`` from parsed arguments."""
    from ..progress import Reporter

    say = Reporter(args.quiet)  # timestamped lines, live bars on a terminal

    from ..cli_settings import endpoint_source_from

    values = vars(args)
    training, options = endpoint_source_from(args)
    measure = {dest.partition(":")[2]: v for dest, v in values.items() if dest.startswith("noise:")}
    config = apply_overrides(NoiseStabilityConfig(seed=args.seed), measure)
    if args.device != "cpu" and not torch.cuda.is_available() and args.device.startswith("cuda"):
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    record = run_noise_stability(args.task, config=config, out=args.out, threshold=args.threshold, seed=args.seed,
                                 endpoint=args.endpoint, from_run=args.from_run, endpoint_training=training,
                                 task_options=options, device=args.device, progress=say)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))
        return 0
    run = record["run"]
    print(f"task {run['task']}: endpoint {run['endpoint'].upper()} (seed {run['seed']}), energy "
          f"{run['endpoint_energy']:.4g}, L0 = {run['threshold']:.4g}")
    print(format_report(NoiseStabilityReport.from_dict(record)))
    print(f"saved in {args.out}/{RESULT_FILE}")
    return 0

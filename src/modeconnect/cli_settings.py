"""Command-line flags derived from the settings schema (part of the command-line layer).

``connect`` and ``sweep`` take the run settings of :class:`ConnectRunConfig`, the chosen method's own
``Config`` (no prefix: ``--alpha``; its bead training as ``--bead-lr``), the endpoint training
(``--endpoint-lr``) and the certification settings (``--certify-resolution``). Every flag's type,
choices, default and help come from the dataclass that declares the setting, so nothing is said twice.
Flags a user does not give are absent from the namespace, and the run config records only what was given;
the task and the method fill in the rest (see ``ConnectRunConfig.resolve``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from .certify import CertifyConfig
from .experiments.connect_run import TASK_OPTIONS, ConnectRunConfig
from .methods import DEFAULT_METHOD, METHODS
from .proof import ProofConfig
from .settings import SettingSpec, field_docs, setting_specs
from .tasks import TASKS
from .train import TrainConfig

__all__ = ["add_run_flags", "add_proof_flags", "proof_overrides_from", "run_config_from", "method_from_argv",
           "methods_epilog", "join_negative_values"]

_RUN_CHOICES = {"task": tuple(TASKS), "align": ("none", "weight", "activation"),
                "activation": ("sigmoid", "relu", "tanh"),
                "batchnorm": ("recompute", "interpolate", "freeze")}
_RUN_TYPES = {"task": str, "threshold": float, "seed": int, "method": str, "align": str, "activation": str,
              "data_seed": int,
              "n_eval": int, "n_train": int, "batchnorm": str, "width": int, "depth": int, "input_dim": int,
              "sigma": float}
_GROUPS = ("method", "endpoint", "certify", "proof")


def _parse_value(spec: SettingSpec):
    """The argparse ``type`` of a setting: ``none`` for optional settings, booleans as true/false."""
    def parse(text: str) -> Any:
        if spec.optional and text.lower() in ("none", "null"):
            return None
        if spec.type is bool:
            if text.lower() in ("true", "yes", "1"):
                return True
            if text.lower() in ("false", "no", "0"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        try:
            value = spec.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if spec.type is int else 'a number'}, "
                                             f"got {text!r}") from None
        if spec.type is float and math.isnan(value):
            raise argparse.ArgumentTypeError("expected a number, got nan")
        return value

    parse.__name__ = spec.type.__name__
    return parse


def _help(spec: SettingSpec, default_note: str | None) -> str:
    shown = default_note or ("none" if spec.default is None else spec.default)
    return f"{spec.help} (default: {shown})".strip().replace("%", "%%")  # argparse formats help with %


def _group_specs(method: str) -> list[tuple[str, SettingSpec]]:
    cls = METHODS.get(method, METHODS[DEFAULT_METHOD])
    out = [("method", s) for s in setting_specs(cls.Config)]
    out += [("endpoint", s) for s in setting_specs(TrainConfig, "endpoint-")]
    out += [("certify", s) for s in setting_specs(CertifyConfig, "certify-")]
    out += [("proof", s) for s in setting_specs(ProofConfig, "proof-")]
    return out


def _task_default_note(group: str, spec: SettingSpec) -> str | None:
    if group == "method" and spec.path[0] in ("bead_training", "narrow_training"):
        return "the task's own"
    if group == "endpoint":
        return "the task's own"
    if group == "certify" and spec.path == ("resolution",):
        return "the task's own"
    return None


def add_run_flags(parser: argparse.ArgumentParser, method: str, *, skip: Sequence[str] = (),
                  helps: dict[str, str] | None = None, groups: Sequence[str] = _GROUPS) -> None:
    """Add the run settings and ``method``'s, endpoint training's and certification's settings as flags
    (only the setting ``groups`` named; ``skip`` leaves out run settings)."""
    docs = field_docs(ConnectRunConfig)
    choices = {**_RUN_CHOICES, "method": tuple(METHODS)}  # read now: a method may be registered after import
    run = parser.add_argument_group("run settings")
    for name, kind in _RUN_TYPES.items():
        if name in skip:
            continue
        default = ConnectRunConfig.__dataclass_fields__[name].default
        shown = f" (default: {default})" if default is not None else ""
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=argparse.SUPPRESS,
                         choices=choices.get(name), metavar=None if name in choices else kind.__name__.upper(),
                         help=(helps or {}).get(name, docs.get(name, "")) + shown)
    if "prove" not in skip:
        run.add_argument("--prove", action="store_true", default=argparse.SUPPRESS,
                         help=docs.get("prove", ""))
    titles = {"method": f"settings of method {method}", "endpoint": "endpoint training",
              "certify": "certification (refined sampling)", "proof": "proof (sound bound, with --prove)"}
    sections = {g: parser.add_argument_group(titles[g]) for g in groups}
    for group, spec in _group_specs(method):
        if group not in sections:
            continue
        sections[group].add_argument(
            "--" + spec.flag, dest=f"{group}:{'.'.join(spec.path)}", type=_parse_value(spec),
            default=argparse.SUPPRESS, choices=spec.choices,
            metavar=None if spec.choices else spec.type.__name__.upper(),
            help=_help(spec, _task_default_note(group, spec)))


def run_config_from(args: argparse.Namespace, **fixed: Any) -> ConnectRunConfig:
    """The run config holding exactly the settings given on the command line (plus ``fixed``)."""
    values: dict[str, Any] = {name: getattr(args, name) for name in _RUN_TYPES if hasattr(args, name)}
    nested: dict[str, dict[str, Any]] = {"method": {}, "endpoint": {}, "certify": {}, "proof": {}}
    for dest, value in vars(args).items():
        group, sep, dotted = dest.partition(":")
        if not sep or group not in nested:
            continue
        node = nested[group]
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    values.update(method_settings=nested["method"], endpoint_training=nested["endpoint"], certify=nested["certify"],
                  proof=nested["proof"])
    if getattr(args, "prove", False):
        values["prove"] = True
    values.update(fixed)
    for key in TASK_OPTIONS:
        values.setdefault(key, None)
    return ConnectRunConfig(**values)


def add_proof_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--proof-*`` flags alone (for ``modeconnect prove DIR``)."""
    group = parser.add_argument_group("proof settings")
    for spec in setting_specs(ProofConfig, "proof-"):
        group.add_argument("--" + spec.flag, dest=f"proof:{'.'.join(spec.path)}", type=_parse_value(spec),
                           default=argparse.SUPPRESS, choices=spec.choices,
                           metavar=None if spec.choices else spec.type.__name__.upper(), help=_help(spec, None))


def proof_overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The proof settings given on the command line."""
    return {dest.partition(":")[2]: value for dest, value in vars(args).items() if dest.startswith("proof:")}


def method_from_argv(argv: Sequence[str]) -> str:
    """The ``--method`` given in ``argv`` (phase one of two-phase parsing), else the default method."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=DEFAULT_METHOD)
    known, _ = pre.parse_known_args(list(argv))
    return known.method if known.method in METHODS else DEFAULT_METHOD


def methods_epilog() -> str:
    lines = ["path methods (--method NAME; `--method NAME --help` lists that method's settings):"]
    lines += [f"  {name:20s} {cls.summary}" for name, cls in METHODS.items()]
    return "\n".join(lines)


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """Write ``--flag -inf`` as ``--flag=-inf``: argparse takes ``-inf`` (or ``-1e-3``) for an option otherwise.

    >>> join_negative_values(["--threshold", "-inf", "--seed", "3"])
    ['--threshold=-inf', '--seed', '3']
    """
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-") and _is_number(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def add_endpoint_source_flags(parser: argparse.ArgumentParser, *, seed_help: str, threshold_help: str) -> None:
    """Flags of commands that measure one endpoint of a task (``dropout``, ``noise-stability``): the task and
    its options, the run seed and level, which endpoint, ``--from-run`` and the endpoint training group."""
    parser.add_argument("--task", choices=tuple(TASKS), default="mnist-kuditipudi",
                        help="the task (default: mnist-kuditipudi)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--threshold", type=float, default=None, help=threshold_help)
    parser.add_argument("--endpoint", choices=("a", "b"), default="a", help="which endpoint (default: a)")
    parser.add_argument("--from-run", metavar="DIR", help="take the endpoint from this connect run directory")
    for name, kind in (("data-seed", int), ("n-eval", int), ("n-train", int), ("activation", str)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="as for connect")
    group = parser.add_argument_group("endpoint training")
    for spec in setting_specs(TrainConfig, "endpoint-"):
        group.add_argument("--" + spec.flag, dest=f"endpoint:{'.'.join(spec.path)}", type=_parse_value(spec),
                           default=argparse.SUPPRESS, choices=spec.choices,
                           metavar=None if spec.choices else spec.type.__name__.upper(),
                           help=_help(spec, "the task's own"))


def endpoint_source_from(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(endpoint training overrides, task options)`` given by :func:`add_endpoint_source_flags`' flags."""
    training = {dest.partition(":")[2]: v for dest, v in vars(args).items() if dest.startswith("endpoint:")}
    options = {k: getattr(args, k) for k in ("data_seed", "n_eval", "n_train", "activation")
               if getattr(args, k, None) is not None}
    return training, options

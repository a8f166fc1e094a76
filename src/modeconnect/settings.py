"""One settings schema: frozen config dataclasses, their JSON form, overrides, and what flags derive from.

Every configurable thing (a path method's ``Config``, :class:`~modeconnect.train.TrainConfig`,
:class:`~modeconnect.certify.CertifyConfig`) is a frozen dataclass whose fields carry a default, a type
and a docstring, and which validates itself in ``__post_init__``. This module reads that schema once,
so that nothing is declared twice:

* :func:`to_dict` / :func:`from_dict`: JSON round trip of nested configs (enums by value), refusing
  unknown keys with the dotted name of the key;
* :func:`apply_overrides`: a config with some (nested) fields replaced, validated again;
* :func:`setting_specs`: one :class:`SettingSpec` per leaf field (dotted path, type, default, help,
  choices), from which the command line builds its flags without this module knowing about argparse.

A field's metadata may say ``{"flag": False}`` (not a user setting) or ``{"flag_prefix": "bead"}`` (the
prefix of a nested config's flags: ``bead_training.lr`` becomes ``--bead-lr``).

>>> from modeconnect.train import TrainConfig
>>> cfg = apply_overrides(TrainConfig(), {"lr": 0.5})
>>> cfg.lr, to_dict(cfg)["optimizer"]
(0.5, 'adam')
>>> [s.flag for s in setting_specs(TrainConfig)][:3]
['optimizer', 'lr', 'batch-size']
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["SettingSpec", "to_dict", "from_dict", "apply_overrides", "setting_specs", "field_docs", "leaves"]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, accepts None)`` for ``X | None`` / ``Optional[X]``; other types unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                text = " ".join(nxt.value.value.split())
                text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # :class:`TStar` -> TStar
                docs[node.target.id] = text.replace("``", "")
    return docs


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-able data: nested configs as dicts, enums by value."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Build ``cls`` from :func:`to_dict`'s output; unknown keys and bad values raise a ConfigError naming them."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"settings{' of ' + where if where else ''} must be a mapping of names to values, "
                          f"got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        full = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ConfigError(f"unknown setting(s) {full}; {cls.__name__} has: {', '.join(sorted(names))}")
    hints = _hints(cls)
    values = {}
    for name, value in data.items():
        inner, _ = _unwrap_optional(hints[name])
        if _is_config(inner) and isinstance(value, Mapping):
            value = from_dict(inner, value, f"{where}.{name}" if where else name)
        values[name] = value
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__} setting{' in ' + where if where else ''}: {exc}") from None


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """``config`` with the (possibly nested) fields in ``overrides`` replaced, validated again."""
    merged = to_dict(config)

    def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    return from_dict(type(config), merge(merged, overrides))


def leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(leaves(value, name))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class SettingSpec:
    """One user-settable leaf of a config schema."""

    path: tuple[str, ...]
    """Field names from the root config down to this leaf (``("bead_training", "lr")``)."""
    flag: str
    """The flag's name without dashes (``bead-lr``)."""
    type: type
    """``int``, ``float``, ``str`` or ``bool`` (enums are ``str`` with ``choices``)."""
    default: Any
    optional: bool
    """Whether ``None`` is an accepted value."""
    choices: tuple[str, ...] | None
    help: str


def setting_specs(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> list[SettingSpec]:
    """Every user-settable leaf field of config class ``cls`` (nested configs flattened with their prefix)."""
    hints, docs, out = _hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("flag", True) is False:
            continue
        inner, optional = _unwrap_optional(hints[f.name])
        if _is_config(inner):
            sub = f.metadata.get("flag_prefix", f.name.replace("_", "-"))
            out += setting_specs(inner, f"{prefix}{sub}-", path + (f.name,))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        choices = None
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            choices, base = tuple(m.value for m in inner), str
            default = default.value if isinstance(default, enum.Enum) else default
        elif inner in (int, float, str, bool):
            base = inner
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: settings of type {inner!r} have no flag form")
        out.append(SettingSpec(path=path + (f.name,), flag=prefix + f.name.replace("_", "-"), type=base,
                               default=default, optional=optional, choices=choices, help=docs.get(f.name, "")))
    return out

"""Path methods and their registry: the one place a new method touches.

``METHODS`` maps a name to a class following :class:`~modeconnect.methods.base.PathMethod`. To add a
method, write ``methods/<name>.py`` and add one line here; ``connect(..., method=name)``, the
``--method`` flag, the run directory and ``modeconnect connect --help`` pick it up from this dict.
A test (or a user's own code) can also call :func:`register` for a method that lives elsewhere.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Checkpoint, Outcome, PathMethod, Progress
from .constrained_dss import ConstrainedDSS
from .curves import BezierCurve, PolyChain
from .greedy_dss import DSSConfig, DSSState, GreedyDSS, Order, Reason, SegmentRecord, TStar, choose_tstar, greedy_dss
from .kuditipudi_dropout import KuditipudiDropout
from .kuditipudi_narrow import KuditipudiNarrow
from .kuditipudi_noise import KuditipudiNoise
from .linear_construction import LinearConstruction
from .neb import NEB
from .string_evolution import StringEvolution

__all__ = ["METHODS", "DEFAULT_METHOD", "get_method", "register", "PathMethod", "Outcome", "Checkpoint", "Progress",
           "DSSConfig", "DSSState", "GreedyDSS", "Order", "Reason", "SegmentRecord", "TStar", "choose_tstar",
           "greedy_dss"]

METHODS: dict[str, type] = {
    GreedyDSS.name: GreedyDSS,
    ConstrainedDSS.name: ConstrainedDSS,
    StringEvolution.name: StringEvolution,
    BezierCurve.name: BezierCurve,
    PolyChain.name: PolyChain,
    NEB.name: NEB,
    KuditipudiDropout.name: KuditipudiDropout,
    KuditipudiNoise.name: KuditipudiNoise,
    KuditipudiNarrow.name: KuditipudiNarrow,
    LinearConstruction.name: LinearConstruction,
}
"""Every registered path method, by name."""

DEFAULT_METHOD = GreedyDSS.name


def get_method(name: str) -> type:
    """The method class registered as ``name``, or a ConfigError listing the registered names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown path method {name!r}; choose one of: {', '.join(METHODS)}") from None


def register(method: type, *, replace: bool = False) -> type:
    """Add ``method`` to the registry under ``method.name`` (usable as a class decorator)."""
    for attr in ("name", "Config", "State", "run", "summary", "trains"):
        if not hasattr(method, attr):
            raise ConfigError(f"{method.__name__} is not a path method: it lacks {attr!r} (see PathMethod)")
    if method.name in METHODS and not replace and METHODS[method.name] is not method:
        raise ConfigError(f"a path method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method registered with :func:`register` (tests use this to clean up)."""
    METHODS.pop(name, None)

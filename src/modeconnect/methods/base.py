"""The seam every path method plugs into: :class:`PathMethod`, :class:`Outcome`, the run context.

A path method only makes a path. It receives a start path (the two checked endpoints, or a saved path
and its state to resume), the energy and the threshold, and returns the path it found and an
:class:`Outcome`. Endpoint checks, certification, geometry, storage and plots happen outside, so every
method gets them for free and results compare side by side.

A method is a class with

* ``name``: the registry key (``connect(..., method=name)``, ``modeconnect connect --method name``);
* ``Config``: a frozen dataclass of its settings, validated in ``__post_init__``; every field has a
  default and a docstring, so CLI flags and recorded configs derive from it;
* ``State``: a dataclass of resumable bookkeeping with ``to_dict`` / ``from_dict`` (saved with the path
  after every checkpoint under the method's name);
* ``run(start, energy, *, threshold, config, objective, state, checkpoint, progress)``;
* optionally ``check_energy(energy)`` (a static method): raise ConfigError when the method cannot apply to
  the energy's model at all; a run calls it when it resolves its config, before endpoints are trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..energy import Energy
from ..errors import ConfigError
from ..path import Path
from ..train import Objective

__all__ = ["Outcome", "PathMethod", "Checkpoint", "Progress", "as_enum", "check_state_fields", "ConstructionState",
           "finish_construction"]

Checkpoint = Callable[[Path, Any], None]
"""``checkpoint(path, state)``: called by a method whenever its state is worth saving, and once at the end."""
Progress = Callable[[str], None]
"""``progress(line)``: a human-readable line about what the method is doing."""


def as_enum(cls, value, name: str):
    """``cls(value)`` for a setting read from a flag or a file, or a ConfigError listing the choices."""
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(m.value for m in cls)}") from None


def check_state_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Refuse a saved state with fields the dataclass ``cls`` does not have (a file from another version or
    another method), naming them and what to do."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"the saved {what} state has unknown field(s) {', '.join(unknown)}; "
                          "delete the run's path/ directory to restart")


@dataclass(frozen=True)
class Outcome:
    """How a path method ended. ``reason`` is one of the method's own reason values."""

    connected: bool
    """True when the method believes its path stays within tolerance * threshold (by its own check;
    certification re-checks the path independently)."""
    reason: str
    """Why it stopped: ``connected``, or a method-specific value (e.g. ``depth_exhausted``)."""
    message: str
    """A sentence for a person: what happened, where, and with which numbers."""
    worst_barrier: float | None = None
    """Largest energy the method saw along its final path (its own check, e.g. a grid maximum)."""
    worst_segment: int | None = None
    """Index of the piece holding ``worst_barrier``."""
    elapsed_s: float = 0.0
    """Wall time of the method, summed over resumed sessions."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Method-specific records (DSS: beads trained, depth, grid maxima, ...), JSON-safe."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


@runtime_checkable
class PathMethod(Protocol):
    """What the registry holds (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    State: ClassVar[type]
    summary: ClassVar[str]
    """One line for ``modeconnect connect --help``."""
    trains: ClassVar[bool]
    """Whether the method trains points (and so needs an objective and a bead training config)."""

    def run(self, start: Path, energy: Energy, *, threshold: float, config: Any, objective: Objective | None,
            state: Any | None, checkpoint: Checkpoint | None, progress: Progress | None) -> tuple[Path, Outcome]:
        ...


@dataclass
class ConstructionState:
    """The state of a constructed (not trained) path: it is built in one go, so the state records only that it
    finished, how, and in how long (the constructions of Kuditipudi et al. and of the linear networks)."""

    finished: bool = False
    outcome: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConstructionState:
        check_state_fields(cls, data, "construction")
        return cls(**data)


def finish_construction(path: Path, outcome: Outcome, state: ConstructionState,
                        checkpoint: Checkpoint | None) -> tuple[Path, Outcome]:
    """Record ``outcome`` in ``state``, checkpoint once, and return what a method's ``run`` returns."""
    state.finished, state.outcome, state.elapsed_s = True, outcome.to_dict(), outcome.elapsed_s
    if checkpoint is not None:
        checkpoint(path, state)
    return path, outcome

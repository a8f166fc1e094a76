"""Task: a model family, its training objective, its default energy and sensible defaults."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..params import Point
from ..train import Objective, TrainConfig

__all__ = ["Task", "budget_warning", "METHOD_DEFAULT_KEYS"]

METHOD_DEFAULT_KEYS = ("threshold", "endpoint_training", "method_settings")
"""What a task may set for one path method (``Task.method_defaults``)."""


def budget_warning(name: str, bead: TrainConfig, endpoint: TrainConfig) -> str | None:
    """A sentence when beads get fewer training steps than endpoints (None when they do not).

    A bead is trained to alpha * L0 <= the endpoints' target, from a point usually worse than a trained
    network: a smaller step budget makes bead_not_trained a matter of budget, not of the landscape (the
    quadratic at MAE 0.001 stopped that way in 6 of 8 pairs with 5,000 bead steps against 20,000).
    """
    if bead.max_steps >= endpoint.max_steps:
        return None
    return (f"task {name!r}: beads get max_steps={bead.max_steps} but endpoints {endpoint.max_steps}; a bead's "
            "target is no easier than the endpoints', so raise the bead step cap (--bead-max-steps)")


@dataclass(frozen=True, eq=False)
class Task:
    """Everything needed to train endpoints and connect them.

    ``make_model(seed)`` returns a freshly initialised model (initialisation drawn
    from ``seed`` through a private generator). If ``derive_endpoint_b`` is set,
    the second endpoint is computed from the first (e.g. a permuted copy)
    instead of being trained from its own seed.
    """

    name: str
    description: str
    make_model: Callable[[int], nn.Module]
    objective: Objective
    energy: Energy
    default_threshold: float
    endpoint_training: TrainConfig
    bead_training: TrainConfig
    endpoint_fraction: float = 1.0
    """Endpoints are trained to endpoint_fraction * threshold. The paper trains them to the threshold, but an
    endpoint at the edge of the level set forces every bead (trained to alpha * L0) to end up better than both
    endpoints, and the string to leave the level set as soon as it leaves one (PTB: endpoint A at perplexity
    398 for L0 = 400 kept a barrier next to it through ten beads). Real tasks use 0.9."""
    derive_endpoint_b: Callable[[Point], Point] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    certify_resolution: float = 1e-3
    """Default certification resolution in t. Step-like energies (test error on a few hundred images) have
    many flat local maxima, each refined down to the resolution: real tasks use 1e-2 (MNIST at 3%: 20 s
    instead of 458 s of certification)."""
    threads: int | None = None
    """Most torch threads worth using for this task's model (None: as many as the process has). Tiny models
    run fastest on one: a second thread only adds synchronisation (11x slower sweeps measured on 2 cores)."""
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Defaults this task sets for one path method, ``{method: {"threshold": L0, "endpoint_training": {...},
    "method_settings": {...}}}``, applied under the user's own settings (a flag or a config value always wins)
    and recorded like every resolved setting. For a method whose endpoints must be made differently, e.g.
    Kuditipudi et al.'s Theorem 1 path, which needs endpoints whose dropout versions are in the level set."""

    def __post_init__(self) -> None:
        if not 0 < self.endpoint_fraction <= 1:
            raise ConfigError(f"task {self.name!r}: endpoint_fraction must be in (0, 1] (endpoints are trained to "
                              f"endpoint_fraction * L0), got {self.endpoint_fraction}")
        if self.bead_training.max_steps < self.endpoint_training.max_steps:
            warnings.warn(budget_warning(self.name, self.bead_training, self.endpoint_training), stacklevel=3)
        for method, defaults in self.method_defaults.items():
            unknown = sorted(set(defaults) - set(METHOD_DEFAULT_KEYS))
            if unknown:
                raise ConfigError(f"task {self.name!r}: method_defaults[{method!r}] has unknown key(s) "
                                  f"{', '.join(unknown)}; use {', '.join(METHOD_DEFAULT_KEYS)}")
            threshold = defaults.get("threshold")
            if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < float("inf")):
                raise ConfigError(f"task {self.name!r}: method_defaults[{method!r}] threshold must be a positive "
                                  f"finite number, got {threshold!r}")

    def defaults_for(self, method: str) -> dict[str, Any]:
        """The task's defaults for ``method`` (empty when it sets none): see ``method_defaults``."""
        return dict(self.method_defaults.get(method, {}))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "options": dict(self.options),
                "energy": self.energy.describe(), "objective": self.objective.describe(),
                "endpoint_fraction": self.endpoint_fraction, "threads": self.threads,
                "certify_resolution": self.certify_resolution,
                **({"method_defaults": self.method_defaults} if self.method_defaults else {}),
                "endpoint_b": "derived from endpoint A" if self.derive_endpoint_b else "trained from its own seed"}

"""Task: a model family, its training objective, its default energy and sensible defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..energy import Energy
from ..params import Point
from ..train import Objective, TrainConfig

__all__ = ["Task"]


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
    """Endpoints are trained to endpoint_fraction * threshold (the paper trains them to the threshold)."""
    derive_endpoint_b: Callable[[Point], Point] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    certify_resolution: float = 1e-3
    """Default certification resolution in t. Step-like energies (test error on a few hundred images) have
    many flat local maxima, each refined down to the resolution: real tasks use 1e-2 (MNIST at 3%: 20 s
    instead of 458 s of certification)."""
    threads: int | None = None
    """Most torch threads worth using for this task's model (None: as many as the process has). Tiny models
    run fastest on one: a second thread only adds synchronisation (11x slower sweeps measured on 2 cores)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "options": dict(self.options),
                "energy": self.energy.describe(), "objective": self.objective.describe(),
                "endpoint_fraction": self.endpoint_fraction, "threads": self.threads,
                "certify_resolution": self.certify_resolution,
                "endpoint_b": "derived from endpoint A" if self.derive_endpoint_b else "trained from its own seed"}

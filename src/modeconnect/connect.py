"""``connect``: the library entry point. Two models in, a certified Path out.

>>> import torch
>>> from modeconnect import Energy, Objective, connect
>>> x = torch.linspace(-1, 1, 32).unsqueeze(1)
>>> y = 2 * x + 1
>>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
>>> with torch.no_grad():
...     _ = a.weight.fill_(2.1), a.bias.fill_(0.95), b.weight.fill_(1.9), b.bias.fill_(1.05)
>>> result = connect(a, b, Energy(a, x, y, "mse"), threshold=0.05, objective=Objective(x, y, "mse"))
>>> result.connected, result.path.n_beads, result.path.normalized_length
(True, 0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from .certify import Certificate, certify
from .energy import Energy
from .errors import ConfigError
from .params import Point, check_compatible, point_from_module
from .path import Path
from .strings.greedy import DSSConfig, DSSState, DSSStatus, greedy_dss
from .train import Objective

__all__ = ["Connection", "connect", "connect_path", "summarize"]


@dataclass
class Connection:
    """A path found between two models, how the search ended, and its certificate."""

    path: Path
    status: DSSStatus
    certificate: Certificate | None
    config: DSSConfig
    certification_time_s: float = 0.0

    @property
    def connected(self) -> bool:
        return self.status.connected

    @property
    def wall_time_s(self) -> float:
        """Time spent connecting (summed over resumed sessions) and certifying."""
        return self.status.elapsed_s + self.certification_time_s

    def summary(self) -> dict[str, Any]:
        return summarize(self.path, self.status, self.certificate, self.config, self.wall_time_s)


def summarize(path: Path, status: DSSStatus, certificate: Certificate | None, config: DSSConfig,
              wall_time_s: float) -> dict[str, Any]:
    """The flat result record written to ``result.json`` and printed by the CLI."""
    accept = config.tolerance * config.threshold
    out = {
        "connected": status.connected,
        "reason": status.reason.value,
        "message": status.message,
        "threshold": config.threshold,
        "tolerance": config.tolerance,
        "alpha": config.alpha,
        "normalized_length": path.normalized_length,
        "path_length": path.length,
        "distance": path.chord,
        "n_beads": path.n_beads,
        "depth": path.depth,
        "beads_trained": status.beads_trained,
        "max_interpolated_energy": path.max_interpolated_energy,
        "worst_segment": status.worst_segment,
        "grid_size": config.grid_size,
        "endpoint_energies": list(status.endpoint_energies),
        "wall_time_s": wall_time_s,
        "certified": None,
        "certified_max_energy": None,
        "certification_resolution": None,
        "certification_param_resolution": None,
        "certified_max_location": None,
    }
    if certificate is not None:
        out.update({
            "certified": certificate.max_energy <= accept,
            "certified_max_energy": certificate.max_energy,
            "certification_resolution": certificate.resolution,
            "certification_param_resolution": certificate.param_resolution,
            "certified_max_location": {"segment": certificate.segment, "t": certificate.t},
        })
    return out


def _as_point(model: nn.Module | Mapping[str, Tensor], name: str, energy: Energy) -> Point:
    if isinstance(model, nn.Module):
        # its parameters, plus BatchNorm statistics where the energy's policy carries them in points
        return point_from_module(model, energy.batchnorm)
    if isinstance(model, Mapping):
        return {k: v.detach().clone() for k, v in model.items()}
    raise ConfigError(f"{name} must be an nn.Module or a dict of parameter tensors, got {type(model).__name__}")


def connect(
    model_a: nn.Module | Mapping[str, Tensor],
    model_b: nn.Module | Mapping[str, Tensor],
    energy: Energy,
    *,
    threshold: float,
    objective: Objective,
    config: DSSConfig | None = None,
    certify_path: bool = True,
    resolution: float = 1e-3,
    progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> Connection:
    """Connect two models of one architecture inside the level set ``energy <= threshold``.

    Args:
        model_a, model_b: the endpoints (modules or parameter dicts); never modified.
        energy: what the threshold applies to (see :class:`~modeconnect.energy.Energy`).
        threshold: L0. Both endpoints must already be at or below it.
        objective: the training loss used to train new beads (usually on training data).
        config: a full :class:`DSSConfig`; or give its fields as keyword ``settings``
            (``alpha=0.5, tstar="midpoint", max_beads=20, ...``).
        certify_path: re-check the final path on an adaptively refined grid.
        resolution: certification resolution in segment units t.
        progress: called with a line of text at every DSS step.
    """
    if config is None:
        try:
            config = DSSConfig(threshold=threshold, **settings)
        except TypeError as exc:
            raise ConfigError(f"unknown DSS setting: {exc}") from None
    elif settings or config.threshold != threshold:
        config = replace(config, threshold=threshold, **settings)
    a, b = _as_point(model_a, "model_a", energy), _as_point(model_b, "model_b", energy)
    check_compatible(a, b, "model_a", "model_b")
    energy.check_point(a, "model_a")
    return connect_path(Path([a, b]), energy, objective, config, certify_path=certify_path, resolution=resolution,
                        progress=progress)


def connect_path(
    path: Path,
    energy: Energy,
    objective: Objective,
    config: DSSConfig,
    *,
    state: DSSState | None = None,
    checkpoint: Callable[[Path, DSSState], None] | None = None,
    certify_path: bool = True,
    resolution: float = 1e-3,
    progress: Callable[[str], None] | None = None,
) -> Connection:
    """Run greedy DSS on ``path`` (two endpoints, or a saved string with its ``state`` to resume), then certify.

    ``checkpoint(path, state)`` runs after every new bead and at the end (see
    :func:`~modeconnect.strings.greedy.greedy_dss`).
    """
    path, status = greedy_dss(path, energy, objective, config, state=state, checkpoint=checkpoint,
                              progress=progress)
    if not certify_path:
        return Connection(path, status, None, config)
    if progress is not None:
        progress(f"certifying {len(path.segments)} segment(s) at resolution {resolution:g}")
    start = time.perf_counter()
    certificate = certify(path, energy, resolution=resolution)
    return Connection(path, status, certificate, config, time.perf_counter() - start)

"""BatchNorm running statistics along paths: the policy and the functional helpers behind it.

A BatchNorm layer with running statistics keeps buffers (``running_mean``, ``running_var``) that are
not parameters but depend on them: interpolating the parameters of two trained networks leaves the
statistics of neither meaningful. A :class:`BatchNormPolicy` says what the statistics are at every
evaluated point; it is a named setting of the :class:`~modeconnect.energy.Energy` (and of
:func:`~modeconnect.params.point_from_module`) and is recorded by ``Energy.describe()``.

Under ``INTERPOLATE`` the statistics travel inside the point under keys ``BUFFER_PREFIX + name``
(``"buffer:1.running_mean"``); :func:`~modeconnect.params.distance` (and so every path length) skips
those keys, so path geometry is always measured on the parameters only.
``num_batches_tracked`` is never part of a point (it only counts training steps).

Every other buffer (a registered scale, the power-iteration vectors ``_u``/``_v`` of
``torch.nn.utils.parametrizations.spectral_norm``, ...) is part of the model's function just as much as
its parameters, but no policy can rebuild it, so every point carries it under the same ``buffer:`` keys
whatever the policy (:func:`plain_buffer_names`). Taking it from the energy's template model instead
would evaluate every point with the template's values.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
>>> [name for name, _ in batchnorm_layers(net)]
['1']
>>> statistic_names(net)
['1.running_mean', '1.running_var']
>>> x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
>>> params = dict(net.named_parameters())
>>> stats = recompute_statistics(net, params, [x[:4], x[4:]])
>>> manual = torch.stack([net[0](x[:4]).mean(0), net[0](x[4:]).mean(0)]).mean(0)
>>> torch.allclose(stats["1.running_mean"], manual)
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigError

__all__ = [
    "BatchNormPolicy",
    "BatchNormSetup",
    "BUFFER_PREFIX",
    "as_policy",
    "batchnorm_layers",
    "statistic_names",
    "plain_buffer_names",
    "is_buffer_key",
    "buffer_key",
    "buffer_name",
    "statistics_point",
    "plain_buffers_point",
    "split_point",
    "batch_statistics_mode",
    "fresh_statistics",
    "recompute_statistics",
]

BUFFER_PREFIX = "buffer:"
"""Prefix of the keys under which a point carries buffers (BatchNorm statistics under ``INTERPOLATE``, and
every buffer that is not a BatchNorm statistic)."""


class BatchNormPolicy(str, Enum):
    """What a BatchNorm layer's running statistics are at an evaluated point."""

    RECOMPUTE = "recompute"
    """At every evaluated point, recompute the statistics from a fixed set of training batches (a train-mode
    forward with cumulative averaging, i.e. ``momentum=None``), then evaluate in eval mode. Points hold
    parameters only. The most faithful choice; costs one forward over those batches per point."""
    INTERPOLATE = "interpolate"
    """The statistics are part of the point (keys ``buffer:<name>``) and are interpolated with it; at
    ``t = 0`` and ``t = 1`` each endpoint's own eval-mode function is reproduced exactly. Training a bead
    updates them as usual (running average with the layer's momentum). Path lengths use parameters only."""
    FREEZE = "freeze"
    """One fixed set of statistics at every point (by default the template model's; or given explicitly,
    e.g. endpoint A's). Points hold parameters only. Cheap, but the statistics fit at most one point."""


def as_policy(value: str | BatchNormPolicy | None) -> BatchNormPolicy | None:
    """Parse a policy name (``None`` stays ``None``) with an error listing the valid names."""
    if value is None:
        return None
    try:
        return BatchNormPolicy(value)
    except ValueError:
        names = ", ".join(p.value for p in BatchNormPolicy)
        raise ConfigError(f"unknown BatchNorm policy {value!r}; choose one of: {names}") from None


def batchnorm_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every BatchNorm-like layer of ``module`` that keeps running statistics."""
    return [(name, sub) for name, sub in module.named_modules()
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats]


def statistic_names(module: nn.Module) -> list[str]:
    """Full buffer names of the running means and variances (``num_batches_tracked`` excluded)."""
    out = []
    for name, _ in batchnorm_layers(module):
        prefix = f"{name}." if name else ""
        out += [f"{prefix}running_mean", f"{prefix}running_var"]
    return out


def plain_buffer_names(module: nn.Module) -> list[str]:
    """Names of the buffers that are not owned by a BatchNorm layer with running statistics.

    A BatchNorm layer's buffers (statistics and ``num_batches_tracked``) are governed by the policy; the
    rest have no policy that could recompute them, so points carry them (see the module docstring).
    Ownership is decided by identity, so a buffer is classified once even if it is registered twice.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> net.register_buffer("scale", torch.ones(()))
    >>> plain_buffer_names(net)
    ['scale']
    """
    owned = {id(b) for _, layer in batchnorm_layers(module) for b in layer.buffers(recurse=False)}
    return [name for name, b in module.named_buffers() if id(b) not in owned]


def is_buffer_key(key: str) -> bool:
    """Whether a point key holds a buffer (a BatchNorm statistic or a plain buffer) rather than a parameter."""
    return key.startswith(BUFFER_PREFIX)


def buffer_key(name: str) -> str:
    """The point key of buffer ``name``."""
    return BUFFER_PREFIX + name


def buffer_name(key: str) -> str:
    """The buffer name behind point key ``key``."""
    return key[len(BUFFER_PREFIX):]


def statistics_point(module: nn.Module) -> dict[str, Tensor]:
    """The module's running statistics as point entries (detached clones under ``buffer:`` keys)."""
    buffers = dict(module.named_buffers())
    return {buffer_key(name): buffers[name].detach().clone() for name in statistic_names(module)}


def plain_buffers_point(module: nn.Module) -> dict[str, Tensor]:
    """The module's plain (non-BatchNorm) buffers as point entries (detached clones under ``buffer:`` keys)."""
    buffers = dict(module.named_buffers())
    return {buffer_key(name): buffers[name].detach().clone() for name in plain_buffer_names(module)}


def split_point(point: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(parameters, buffers)`` of a point; the buffers keyed by their buffer names (the tensors are shared)."""
    params = {k: v for k, v in point.items() if not is_buffer_key(k)}
    stats = {buffer_name(k): v for k, v in point.items() if is_buffer_key(k)}
    return params, stats


@contextlib.contextmanager
def batch_statistics_mode(module: nn.Module, *, cumulative: bool = False) -> Iterator[None]:
    """Put the BatchNorm layers of ``module`` in train mode (batch statistics) for the duration.

    With ``cumulative`` the layers' ``momentum`` is set to ``None`` (running statistics become the plain
    average over the batches seen). Modes and momenta are restored on exit; other layers are untouched.
    """
    layers = [layer for _, layer in batchnorm_layers(module)]
    saved = [(layer.training, layer.momentum) for layer in layers]
    try:
        for layer in layers:
            layer.train(True)
            if cumulative:
                layer.momentum = None
        yield
    finally:
        for layer, (training, momentum) in zip(layers, saved):
            layer.train(training)
            layer.momentum = momentum


def fresh_statistics(module: nn.Module, like: Tensor) -> dict[str, Tensor]:
    """New statistics buffers for every BatchNorm layer: means 0, variances 1, counters 0 (dtype of ``like``)."""
    buffers = dict(module.named_buffers())
    out = {}
    for name, _ in batchnorm_layers(module):
        prefix = f"{name}." if name else ""
        out[f"{prefix}running_mean"] = torch.zeros_like(buffers[f"{prefix}running_mean"], dtype=like.dtype,
                                                        device=like.device)
        out[f"{prefix}running_var"] = torch.ones_like(buffers[f"{prefix}running_var"], dtype=like.dtype,
                                                      device=like.device)
        out[f"{prefix}num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=like.device)
    return out


def recompute_statistics(module: nn.Module, params: Mapping[str, Tensor], batches: Iterable[Tensor]
                         ) -> dict[str, Tensor]:
    """Running statistics of ``module`` at ``params``: the average over ``batches`` of each batch's statistics.

    A train-mode forward per batch with cumulative averaging (``momentum=None``) into fresh buffers passed
    through ``functional_call``, so neither the module's own buffers nor ``params`` change. ``params`` may
    also hold the point's other buffers (by buffer name): they take part in the forward passes. Returns the
    means and (unbiased) variances keyed by buffer name.
    """
    ref = next(v for v in params.values() if v.is_floating_point())
    stats = fresh_statistics(module, ref)
    batches = list(batches)
    if not batches:
        raise ConfigError("recomputing BatchNorm statistics needs at least one batch of training inputs")
    with torch.no_grad(), batch_statistics_mode(module, cumulative=True):
        for x in batches:
            functional_call(module, {**params, **stats}, (x,))
    return {k: v for k, v in stats.items() if not k.endswith("num_batches_tracked")}


@dataclass
class BatchNormSetup:
    """What an :class:`~modeconnect.energy.Energy` needs to give every point its BatchNorm statistics under
    its policy: the training batches (RECOMPUTE) or the fixed statistics and their source (FREEZE)."""

    policy: BatchNormPolicy | None
    batches: list[Tensor] = field(default_factory=list)
    statistics: dict[str, Tensor] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def configure(cls, model: nn.Module, policy: BatchNormPolicy | None, bn_batches: Iterable[Tensor] | None,
                  bn_statistics: Mapping[str, Tensor] | None, bn_source: str | None) -> BatchNormSetup:
        """Check the energy's ``bn_*`` arguments against ``policy`` (None: no BatchNorm statistics) and keep them."""
        given = {"bn_batches": bn_batches, "bn_statistics": bn_statistics, "bn_source": bn_source}
        allowed = {BatchNormPolicy.RECOMPUTE: {"bn_batches"},
                   BatchNormPolicy.FREEZE: {"bn_statistics", "bn_source"}}.get(policy, set())
        wrong = [k for k, v in given.items() if v is not None and k not in allowed]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)} only apply(ies) to a model with BatchNorm statistics under the "
                              f"{'recompute' if 'bn_batches' in wrong else 'freeze'} policy (this energy: "
                              f"{'no BatchNorm layers' if policy is None else policy.value})")
        if policy is BatchNormPolicy.RECOMPUTE:
            batches = list(bn_batches) if bn_batches is not None else []
            if not batches:
                raise ConfigError("batchnorm='recompute' needs bn_batches: a few batches of training inputs to "
                                  "recompute the statistics from at every point")
            return cls(policy, batches=batches)
        if policy is BatchNormPolicy.FREEZE:
            names = statistic_names(model)
            source = bn_statistics if bn_statistics is not None else dict(model.named_buffers())
            missing = [n for n in names if n not in source]
            if missing:
                raise ConfigError(f"bn_statistics lacks {', '.join(missing)}: give every running_mean and "
                                  "running_var of the model")
            return cls(policy, statistics={n: source[n].detach().clone() for n in names},
                       source=bn_source or ("given" if bn_statistics is not None else "template model"))
        return cls(policy)

    def describe(self, model: nn.Module) -> dict[str, Any] | None:
        """The policy and its settings, for results files (``None`` without BatchNorm statistics)."""
        if self.policy is None:
            return None
        out: dict[str, Any] = {"policy": self.policy.value, "layers": [n for n, _ in batchnorm_layers(model)]}
        if self.policy is BatchNormPolicy.RECOMPUTE:
            out.update(n_batches=len(self.batches), batch_sizes=sorted({len(b) for b in self.batches}),
                       averaging="cumulative (momentum=None), train-mode forward")
        elif self.policy is BatchNormPolicy.FREEZE:
            out["source"] = self.source
        else:
            out["geometry"] = "path lengths and distances use parameters only (buffer: keys excluded)"
        return out

    def statistics_at(self, model: nn.Module, point: Mapping[str, Tensor], names: set[str]) -> dict[str, Tensor]:
        """The statistics at ``point`` (keyed by buffer name; ``names``: the model's statistic names), on the
        point's device and (floating) dtype."""
        if self.policy is None:
            return {}
        params, buffers = split_point(point)
        if self.policy is BatchNormPolicy.INTERPOLATE:
            return {k: v for k, v in buffers.items() if k in names}
        ref = next(iter(params.values()))
        if self.policy is BatchNormPolicy.RECOMPUTE:
            batches = [x.to(ref.device, ref.dtype) if x.is_floating_point() else x.to(ref.device)
                       for x in self.batches]
            return recompute_statistics(model, {**params, **buffers}, batches)
        return {k: v.to(ref.device, ref.dtype) for k, v in self.statistics.items()}

    def statistics_batched(self, model: nn.Module, chunk: Mapping[str, Tensor], names: set[str]) -> dict[str, Tensor]:
        """:meth:`statistics_at` for a chunk of points (a leading point dimension on every value and result)."""
        if self.policy in (None, BatchNormPolicy.INTERPOLATE):
            return self.statistics_at(model, chunk, names)
        n = next(iter(chunk.values())).shape[0]
        if self.policy is BatchNormPolicy.FREEZE:
            return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in self.statistics_at(model, chunk, names).items()}
        per_point = [self.statistics_at(model, {k: v[i] for k, v in chunk.items()}, names) for i in range(n)]
        return {k: torch.stack([s[k] for s in per_point]) for k in per_point[0]}

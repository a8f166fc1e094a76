"""Bounds of an energy over batches of sub-intervals of one piece: the network, the data and the metric.

:class:`Bounder` is built once per energy: it reads the network as a chain of supported layers (raising
:class:`~.chain.Unsupported` otherwise), converts the evaluation data to the computation format and
fixes the rounding allowance. :meth:`Bounder.bound` then propagates the Taylor models of a piece's
parameters over ``B`` sub-intervals through the chain, in chunks of samples sized to a memory budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..batchnorm import BatchNormPolicy, buffer_key
from ..metrics import Metric, metric_count
from ..path import Path
from . import losses
from .chain import Unsupported, parameter_keys, plan, pool_before_relu
from .layers import Context, propagate
from .results import ProofConfig
from .weights import PieceWeights

__all__ = ["Bounder"]

_COPIES = 12
"""Tensors of an activation's size alive at once during a layer's propagation (c, g, r, stacked
products, magnitudes): sizes the sample chunks."""


class Bounder:
    """Everything fixed for one energy; :meth:`bound` does the work."""

    def __init__(self, energy, config: ProofConfig) -> None:
        self.metric: Metric = energy.metric
        self.policy: BatchNormPolicy | None = energy.batchnorm
        self.steps = pool_before_relu(plan(energy.model, self.policy))
        self.keys = parameter_keys(self.steps, self.policy)
        template = next(v for v in energy.template.values() if v.is_floating_point())
        self.model_dtype = template.dtype
        self.dtype = getattr(torch, config.dtype)
        self.device = template.device
        self.unit = config.slack * (torch.finfo(self.model_dtype).eps + torch.finfo(self.dtype).eps) / 2
        self.memory = config.memory_mb * 2**20
        inputs, targets = energy.inputs.to(self.device), energy.targets.to(self.device)
        self.inputs = inputs.to(self.dtype) if inputs.is_floating_point() else inputs
        self.targets = targets.to(self.dtype) if targets.is_floating_point() else targets
        if self.metric.counts_labels and self.targets.is_floating_point():
            raise Unsupported(f"metric {self.metric.value} with floating-point targets")
        self.count = metric_count(self.metric, self.targets)
        self.largest, self.per_sample_outputs = self._sizes(energy)
        self.frozen = {k: v.to(self.device, self.dtype) for k, v in energy.bn_statistics.items()}

    def _sizes(self, energy) -> tuple[int, int]:
        """Largest per-sample activation size along the chain, and the output size (a plain forward of one
        sample)."""
        x = energy.inputs[:1].to(self.device)
        largest = x[0].numel()
        with torch.no_grad():
            for step in self.steps:
                x = step.layer(x)
                largest = max(largest, x[0].numel())
        return largest, x[0].numel()

    def piece(self, path: Path, index: int) -> PieceWeights:
        piece = path.pieces[index]
        nodes = [path.beads[index], *piece.controls, path.beads[index + 1]]
        return PieceWeights.of(nodes, self.keys, self.dtype)

    def _context(self, weights: PieceWeights, t0: Tensor, t1: Tensor) -> Context:
        floors = {}
        if self.policy is BatchNormPolicy.INTERPOLATE:
            floors = {k: weights.nodes[k].amin(0).clamp(min=0) for k in self.keys
                      if k.endswith("running_var") and k.startswith(buffer_key(""))}
        # a curve of degree n has |g| up to n times its nodes' size: scale the allowance with it
        return Context(params=weights.restrict(t0, t1), absmax=weights.absmax, floors=floors, frozen=self.frozen,
                       unit=self.unit * weights.degree, batch=len(t0))

    def chunk(self, batch: int) -> int:
        """Samples per propagation for ``batch`` sub-intervals at once."""
        per_sample = self.largest * batch * _COPIES * torch.finfo(self.dtype).bits // 8
        return max(1, int(self.memory // max(per_sample, 1)))

    def bound(self, weights: PieceWeights, t0: Sequence[float], t1: Sequence[float],
              samples: Tensor | None = None) -> Tensor | losses.Labels:
        """Bounds over the sub-intervals ``[t0[b], t1[b]]``.

        Continuous metrics: upper bounds of the energy, ``[B]`` (float64), over all samples. Error rate: the
        :class:`~.losses.Labels` of ``samples`` (indices; default all), ``[B, len(samples)]``.
        """
        t0 = torch.as_tensor(t0, dtype=self.dtype, device=self.device).reshape(-1)
        t1 = torch.as_tensor(t1, dtype=self.dtype, device=self.device).reshape(-1)
        ctx = self._context(weights, t0, t1)
        x, y = self.inputs, self.targets
        if samples is not None:
            x, y = x[samples], y[samples]
        step = self.chunk(len(t0))
        labels: list[losses.Labels] = []
        sums = None
        with torch.no_grad():
            for lo in range(0, len(x), step):
                z = propagate(self.steps, x[lo: lo + step], ctx, self.policy)
                if self.metric is Metric.ERROR_RATE:
                    labels.append(losses.label_status(z, y[lo: lo + step]))
                else:
                    part = losses.continuous_sums(self.metric, z, y[lo: lo + step], self.unit)
                    sums = part if sums is None else sums + part
        if self.metric is Metric.ERROR_RATE:
            if not labels:
                empty = torch.zeros(len(t0), 0, dtype=torch.long, device=self.device)
                return losses.Labels(empty, empty.bool())
            return losses.Labels(torch.cat([p.correct for p in labels], 1), torch.cat([p.settled for p in labels], 1))
        terms = self.count + self.per_sample_outputs  # additions behind the energy's sum, per unit
        return losses.finish(self.metric, sums, self.count, self.unit, terms).double().cpu()

    def error_bound(self, correct_labels: Tensor | int) -> Tensor | float:
        """The error rate (percent) allowed by a count of certainly correct labels."""
        return 100.0 * (self.count - correct_labels) / self.count


"""Metrics an Energy or a training objective can use.

Every metric is computed as a *sum over samples* of a per-sample value, so
that evaluation can run over sample batches and divide by the sample count at
the end. For regression metrics the per-sample value is the mean over the
output entries.

>>> import torch
>>> out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
>>> float(metric_sum(Metric.MAE, out, y)) / 2
2.0
>>> float(metric_sum("mse", out, y)) / 2
5.0
"""

from __future__ import annotations

from enum import Enum

import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

__all__ = ["Metric", "metric_sum", "as_metric"]


class Metric(str, Enum):
    """What an energy or a training objective measures."""

    MSE = "mse"
    """Mean squared error: mean over samples of the mean over output entries of (output - target)^2."""
    MAE = "mae"
    """Mean absolute error: like MSE with |output - target| (the authors' polynomial energy)."""
    CROSS_ENTROPY = "cross_entropy"
    """Mean cross-entropy of logits (dimension 1) against integer class targets."""
    ERROR_RATE = "error_rate"
    """Classification error in percent (0-100) of argmax over dimension 1; not differentiable."""

    @property
    def differentiable(self) -> bool:
        return self is not Metric.ERROR_RATE


def as_metric(value: str | Metric) -> Metric:
    """Parse a metric name with a clear error listing the valid names."""
    try:
        return Metric(value)
    except ValueError:
        names = ", ".join(m.value for m in Metric)
        raise ConfigError(f"unknown metric {value!r}; choose one of: {names}") from None


def metric_sum(metric: str | Metric, outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum over the samples (dimension 0) of the per-sample metric. Works under ``torch.func.vmap``."""
    metric = as_metric(metric)
    n = outputs.shape[0]
    if metric in (Metric.MSE, Metric.MAE) and outputs.shape != targets.shape:
        raise ConfigError(
            f"model outputs have shape {tuple(outputs.shape)} but targets have shape {tuple(targets.shape)}; "
            f"{metric.value} needs them equal (e.g. targets of shape [n, 1] for one output)"
        )
    if metric is Metric.MSE:
        return ((outputs - targets) ** 2).reshape(n, -1).mean(dim=1).sum()
    if metric is Metric.MAE:
        return (outputs - targets).abs().reshape(n, -1).mean(dim=1).sum()
    if metric is Metric.CROSS_ENTROPY:
        return F.cross_entropy(outputs, targets, reduction="sum")
    # ERROR_RATE
    return (outputs.argmax(dim=1) != targets).to(outputs.dtype).sum() * 100.0

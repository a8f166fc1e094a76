"""Metrics an Energy or a training objective can use.

Every metric is computed as a *sum over units* of a per-unit value, so that
evaluation can run over sample batches, divide by the unit count at the end
(:func:`metric_count`) and then apply the metric's final transform
(:meth:`Metric.finalize`, the identity except for perplexity). The unit is the
sample for regression metrics (whose per-sample value is the mean over the
output entries) and the *label* for classification metrics: one per sample for
class targets ``[n]`` with logits ``[n, C]``, one per token for sequence
targets ``[n, T]`` with logits ``[n, T, C]``.

>>> import torch
>>> out, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
>>> float(metric_sum(Metric.MAE, out, y)) / 2
2.0
>>> float(metric_sum("mse", out, y)) / 2
5.0
>>> logits, tokens = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)   # uniform over 4 words
>>> n = metric_count("perplexity", tokens)
>>> n, round(Metric.PERPLEXITY.finalize(float(metric_sum("perplexity", logits, tokens)) / n), 6)
(6, 4.0)
"""

from __future__ import annotations

import math
from enum import Enum

import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError

__all__ = ["Metric", "metric_sum", "metric_count", "as_metric"]


class Metric(str, Enum):
    """What an energy or a training objective measures."""

    MSE = "mse"
    """Mean squared error: mean over samples of the mean over output entries of (output - target)^2."""
    MAE = "mae"
    """Mean absolute error: like MSE with |output - target| (the authors' polynomial energy)."""
    CROSS_ENTROPY = "cross_entropy"
    """Mean cross-entropy (nats) of logits against integer targets: per sample, or per token for sequences."""
    ERROR_RATE = "error_rate"
    """Classification error in percent (0-100) of the argmax over the class dimension; not differentiable."""
    PERPLEXITY = "perplexity"
    """exp of the mean per-token cross-entropy (language models); not a training loss (train cross_entropy)."""

    @property
    def differentiable(self) -> bool:
        """Whether training may minimise it (perplexity is, but exp of a mean is minimised as its cross-entropy)."""
        return self not in (Metric.ERROR_RATE, Metric.PERPLEXITY)

    @property
    def counts_labels(self) -> bool:
        """True when the metric is averaged over labels (``targets.numel()``), False when over samples."""
        return self in (Metric.CROSS_ENTROPY, Metric.ERROR_RATE, Metric.PERPLEXITY)

    @property
    def unit(self) -> str:
        """What the mean runs over, for results files: ``"sample"`` or ``"label"`` (a token for sequences)."""
        return "label" if self.counts_labels else "sample"

    def finalize(self, mean):
        """The metric's value from the mean of its per-unit values (a float or a tensor): ``exp`` for
        perplexity, unchanged otherwise."""
        if self is not Metric.PERPLEXITY:
            return mean
        if isinstance(mean, Tensor):
            return mean.exp()
        return math.exp(mean) if mean < 709.0 else math.inf


def as_metric(value: str | Metric) -> Metric:
    """Parse a metric name with a clear error listing the valid names."""
    try:
        return Metric(value)
    except ValueError:
        names = ", ".join(m.value for m in Metric)
        raise ConfigError(f"unknown metric {value!r}; choose one of: {names}") from None


def metric_count(metric: str | Metric, targets: Tensor) -> int:
    """How many units :func:`metric_sum` sums over for these targets (samples, or labels/tokens)."""
    metric = as_metric(metric)
    return targets.numel() if metric.counts_labels else targets.shape[0]


def _class_last(outputs: Tensor, targets: Tensor, metric: Metric) -> tuple[Tensor, Tensor]:
    """Logits as ``[units, C]`` and targets as ``[units]`` (sequence outputs ``[n, T, C]`` are flattened)."""
    if outputs.ndim != targets.ndim + 1 or outputs.shape[: targets.ndim] != targets.shape:
        raise ConfigError(
            f"{metric.value} needs logits of shape targets.shape + (classes,), got logits {tuple(outputs.shape)} "
            f"and targets {tuple(targets.shape)} (e.g. [n, C] with [n], or [n, T, V] with [n, T])"
        )
    return outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)


def metric_sum(metric: str | Metric, outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum over the units (see :func:`metric_count`) of the per-unit metric. Works under ``torch.func.vmap``.

    For perplexity the sum is that of the per-token cross-entropy; :meth:`Metric.finalize` applies the ``exp``
    to its mean.
    """
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
    logits, labels = _class_last(outputs, targets, metric)
    if metric in (Metric.CROSS_ENTROPY, Metric.PERPLEXITY):
        return F.cross_entropy(logits, labels, reduction="sum")
    # ERROR_RATE
    return (logits.argmax(dim=1) != labels).to(outputs.dtype).sum() * 100.0

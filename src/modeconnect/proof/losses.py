"""From bounds on the network's outputs to a bound on the energy over a sub-interval.

The outputs are Taylor models ``z(s) = c + g s + e`` (|e| <= r) for ``s`` in [-1, 1].

* Error rate (not continuous): a label is *certainly correct* on the sub-interval when every margin
  ``z_y - z_k`` (k != y), taken as a Taylor model so that shared ``s`` terms cancel, has a positive lower
  bound: then the argmax is ``y`` throughout (strictly greater, so ties cannot flip it). The error's upper
  bound counts the labels that are not certainly correct. Labels whose margin to some class is certainly
  negative are *certainly wrong*; with the certainly correct ones they are *settled* and need no further
  bisection.
* Cross-entropy, MSE, MAE (continuous): each per-unit loss ``l(z)`` is convex in the outputs, and
  ``c + g s`` is affine in ``s``, so ``sum_units l(c + g s)`` is convex in ``s`` and takes its maximum over
  [-1, 1] at ``s = -1`` or ``s = 1``. The remainder ``e`` adds at most: ``max_k r_k + r_y`` to the
  cross-entropy (``logsumexp`` is 1-Lipschitz in the max norm, ``-z_y`` moves by at most ``r_y``); ``r`` to
  an absolute error; ``2 |c + g s - y| r + r^2`` to a squared error. So the bound is
  ``max(S(-1), S(1)) + R``: exact up to the remainder, instead of a sum of per-sample worst cases that
  would each pick their own ``s``.
* Perplexity is ``exp`` of the mean cross-entropy, increasing, so ``exp`` of its bound.

Rounding: the energy sums non-negative per-unit losses in the model's format (relative error at most
``gamma_n``), and computes each cross-entropy with a ``logsumexp`` whose error is a few roundings of the
largest logit; both get the allowance of :mod:`.layers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics import Metric
from .taylor import Taylor

__all__ = ["Sums", "Labels", "continuous_sums", "label_status", "finish"]


@dataclass
class Sums:
    """A continuous metric's sums over the units of some samples, per sub-interval ``[B]``."""

    at_minus: Tensor
    at_plus: Tensor
    rest: Tensor

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.at_minus + other.at_minus, self.at_plus + other.at_plus, self.rest + other.rest)


@dataclass
class Labels:
    """Per sample and sub-interval ``[B, n]``: labels certainly correct, and whether every label is settled."""

    correct: Tensor
    settled: Tensor


def _parts(z: Taylor) -> tuple[Tensor, Tensor, Tensor]:
    zero = torch.zeros_like(z.c)
    return z.c, zero if z.g is None else z.g, zero if z.r is None else z.r


def _by_label(z: Taylor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Outputs as ``[N, B, U, C]`` (U labels per sample) and targets as ``[N, 1, U, 1]``."""
    n, b = z.c.shape[:2]
    classes = z.c.shape[-1]
    c, g, r = (t.reshape(n, b, -1, classes) for t in _parts(z))
    return c, g, r, targets.reshape(n, 1, -1, 1).expand(n, b, -1, 1)


def label_status(z: Taylor, targets: Tensor) -> Labels:
    c, g, r, y = _by_label(z, targets)
    cy, gy, ry = c.gather(3, y), g.gather(3, y), r.gather(3, y)
    spread = (gy - g).abs() + ry + r
    low, high = (cy - c) - spread, (cy - c) + spread
    own = torch.zeros_like(low, dtype=torch.bool).scatter(3, y, True)
    correct = low.masked_fill(own, float("inf")).amin(3) > 0          # [N, B, U]
    wrong = high.masked_fill(own, float("inf")).amin(3) < 0
    return Labels(correct.sum(2).T, (correct | wrong).all(2).T)


def continuous_sums(metric: Metric, z: Taylor, targets: Tensor, unit: float) -> Sums:
    """The sums (over this chunk's units, before dividing by the unit count) for a continuous metric."""
    c, g, r = _parts(z)
    n, b = c.shape[:2]
    if metric in (Metric.CROSS_ENTROPY, Metric.PERPLEXITY):
        c4, g4, r4, y = _by_label(z, targets)

        def ce(logits):
            return (torch.logsumexp(logits, 3, keepdim=True) - logits.gather(3, y)).sum((0, 2, 3))

        size = (c4.abs() + g4.abs() + r4).amax(3)
        rounding = unit * (c4.shape[-1] + 8) * (2 * size + math.log(c4.shape[-1]) + 1)
        rest = (r4.amax(3) + r4.gather(3, y)[..., 0] + rounding).sum((0, 2))
        return Sums(ce(c4 - g4), ce(c4 + g4), rest)
    y = targets.unsqueeze(1)
    per_sample = c[0, 0].numel()
    minus, plus = c - g - y, c + g - y
    if metric is Metric.MSE:
        at = [(e**2).reshape(n, b, -1).sum((0, 2)) for e in (minus, plus)]
        rest = 2 * torch.maximum(minus.abs(), plus.abs()) * r + r**2
    else:
        at = [e.abs().reshape(n, b, -1).sum((0, 2)) for e in (minus, plus)]
        rest = r
    return Sums(at[0] / per_sample, at[1] / per_sample, rest.reshape(n, b, -1).sum((0, 2)) / per_sample)


def finish(metric: Metric, sums: Sums, count: int, unit: float, terms: int) -> Tensor:
    """Upper bounds of the energy ``[B]`` from a continuous metric's sums over all ``count`` units; ``terms``
    non-negative values are added up behind each unit's share (a relative rounding of ``gamma_terms``)."""
    total = torch.maximum(sums.at_minus, sums.at_plus) + sums.rest
    mean = total / count * (1 + unit * (terms + 8))
    mean = torch.nan_to_num(mean, nan=float("inf"))
    return mean.exp() if metric is Metric.PERPLEXITY else mean

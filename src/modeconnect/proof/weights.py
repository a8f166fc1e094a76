"""The parameters of a piece over a batch of sub-intervals, as Taylor models in ``s``.

A piece of degree ``n`` (straight: 1; a Bezier curve with ``k`` control points: ``k + 1``) is
``theta(t) = sum_k P_k B_{k,n}(t)`` with nodes ``P_0 = a, ..., P_n = b``. Restricted to ``[t0, t1]`` it
is again a Bezier curve, in ``u = (t - t0) / (t1 - t0)``, whose nodes are the *blossom* values
``beta_k = blossom(t0 x (n - k), t1 x k)`` -- repeated de Casteljau steps, i.e. convex combinations of the
original nodes, so they are computed stably. With ``s = 2u - 1``:

* ``c`` is the curve at the middle of the sub-interval and ``g`` its derivative in ``s`` there (exact
  Bernstein formulas);
* the remainder ``theta - c - g s`` is a polynomial whose degree-``n`` Bernstein coefficients are
  ``beta_k - (c + g (2k/n - 1))`` (a linear function's coefficients are its values at ``k/n``); a
  Bernstein polynomial lies in the convex hull of its coefficients, so their min and max bound it.

For a straight piece the remainder is exactly zero and is dropped. ``absmax`` (largest ``|P_k|``,
elementwise) bounds ``|theta(t)|`` on the whole piece, as every point is a convex combination of the
nodes; it sizes the rounding allowance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .taylor import Taylor

__all__ = ["PieceWeights", "blossom_matrix"]


def blossom_matrix(n: int, t0: Tensor, t1: Tensor) -> Tensor:
    """``[B, n + 1, n + 1]``: row ``k`` holds the weights of the nodes in ``beta_k`` (rows sum to 1).

    The blossom ``b(x_1, ..., x_n)`` is de Casteljau's algorithm with parameter ``x_i`` at level ``i``; it is
    symmetric, so ``beta_k`` takes ``t1`` at ``k`` levels and ``t0`` at the others.
    """
    batch = t0.shape[0]
    rows = []
    for k in range(n + 1):
        # [B, node, coefficient]
        weights = torch.eye(n + 1, dtype=t0.dtype, device=t0.device).expand(batch, n + 1, n + 1)
        for level in range(n):
            x = (t1 if level < k else t0).view(batch, 1, 1)
            weights = (1 - x) * weights[:, :-1] + x * weights[:, 1:]
        rows.append(weights[:, 0])
    return torch.stack(rows, dim=1)


@dataclass
class PieceWeights:
    """The nodes of one piece for the parameters the bound needs, in the computation dtype."""

    nodes: dict[str, Tensor]
    """``[n + 1, *shape]`` per key."""
    absmax: dict[str, Tensor]

    @classmethod
    def of(cls, points: Sequence[Mapping[str, Tensor]], keys: Sequence[str], dtype: torch.dtype) -> PieceWeights:
        """``points``: the piece's nodes in order (left bead, control points, right bead)."""
        nodes = {k: torch.stack([p[k].to(dtype) for p in points]) for k in keys}
        return cls(nodes, {k: v.abs().amax(0) for k, v in nodes.items()})

    @property
    def degree(self) -> int:
        return next(iter(self.nodes.values())).shape[0] - 1

    def restrict(self, t0: Tensor, t1: Tensor) -> dict[str, Taylor]:
        """Taylor models (``[B, *shape]``) of every parameter over the sub-intervals ``[t0[b], t1[b]]``."""
        n = self.degree
        matrix = blossom_matrix(n, t0, t1)                                        # [B, k, node]
        like = dict(dtype=t0.dtype, device=t0.device)
        centre = torch.tensor([math.comb(n, k) / 2.0**n for k in range(n + 1)], **like)
        slope = torch.tensor([math.comb(n - 1, k) / 2.0 ** (n - 1) for k in range(n)], **like)
        out = {}
        for key, nodes in self.nodes.items():
            beta = torch.tensordot(matrix, nodes, dims=([2], [0]))                # [B, n + 1, *shape]
            shape = (1, -1) + (1,) * (beta.ndim - 2)
            c = (beta * centre.view(shape)).sum(1)
            g = (n / 2) * ((beta[:, 1:] - beta[:, :-1]) * slope.view(shape)).sum(1)
            if n == 1:
                out[key] = Taylor(c, g, None)
                continue
            line = c.unsqueeze(1) + g.unsqueeze(1) * (2 * torch.arange(n + 1, **like) / n - 1).view(shape)
            rest = beta - line
            lo, hi = rest.amin(1), rest.amax(1)
            out[key] = Taylor(c + (lo + hi) / 2, g, (hi - lo) / 2)
        return out

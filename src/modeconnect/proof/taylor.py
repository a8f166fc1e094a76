"""First-order Taylor models in the path parameter: ``v(s) = c + g s + e`` with ``|e| <= r`` for all s in [-1, 1].

One sub-interval ``[t0, t1]`` of a piece is mapped to ``s`` in [-1, 1] (``t = mid + s * half_width``), so a
weight of a straight piece is exactly ``c + g s``. Every activation of the network is carried in this form:
the part linear in ``s`` keeps the correlation between neurons that plain intervals lose (the "dependency
problem" that makes interval bounds of deep networks blow up), and the remainder ``r`` collects what is
not linear -- products of two linear terms (``s^2``) and the relaxations of nonlinearities. The remainder
shrinks like the square of the sub-interval's width wherever neurons keep their sign, so bounds converge
to the true maximum as bisection deepens.

Tensors hold the batch of sub-intervals in dimension 1 for activations (``[N, B, *features]``) and in
dimension 0 for weights (``[B, *shape]``); ``g`` or ``r`` is ``None`` where it is exactly zero (the data,
straight weights), so the common cases cost nothing extra.

Soundness of every operation is a statement about sets: if the inputs enclose the true values for every
``s`` in [-1, 1] (and every ``e`` in its box), the output encloses the true result. Each function says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Taylor", "add", "mul", "relu", "leaky_relu", "sigmoid", "tanh", "inv_sqrt", "widen"]


@dataclass
class Taylor:
    """``c + g s + e``, ``|e| <= r``, for every ``s`` in [-1, 1]; ``g``/``r`` ``None`` mean zero."""

    c: Tensor
    g: Tensor | None = None
    r: Tensor | None = None

    def spread(self) -> Tensor:
        """Largest deviation from ``c``: ``|g| + r``."""
        out = torch.zeros_like(self.c) if self.g is None else self.g.abs()
        return out if self.r is None else out + self.r

    def lower(self) -> Tensor:
        return self.c - self.spread()

    def upper(self) -> Tensor:
        return self.c + self.spread()

    def magnitude(self) -> Tensor:
        """An upper bound of ``|v(s)|`` (for rounding allowances and remainder products)."""
        return self.c.abs() + self.spread()

    def map(self, fn) -> Taylor:
        """The same linear operation (a reshape, a pooling by averaging) applied to every part.

        Sound for any linear ``fn`` with non-negative coefficients (it maps a radius to a radius)."""
        return Taylor(fn(self.c), None if self.g is None else fn(self.g), None if self.r is None else fn(self.r))


def _plus(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def add(a: Taylor, b: Taylor, sign: float = 1.0) -> Taylor:
    """``a + sign * b`` (``sign`` +-1): coefficients add, remainders add (triangle inequality)."""
    g = b.g if b.g is None or sign > 0 else -b.g
    return Taylor(a.c + sign * b.c, _plus(a.g, g), _plus(a.r, b.r))


def widen(a: Taylor, extra: Tensor) -> Taylor:
    """``a`` with its remainder enlarged by ``extra >= 0`` (rounding allowances)."""
    return Taylor(a.c, a.g, extra if a.r is None else a.r + extra)


def mul(a: Taylor, b: Taylor) -> Taylor:
    """Elementwise product (broadcasting).

    ``(ac + ag s + ea)(bc + bg s + eb) = ac bc + (ac bg + ag bc) s + ag bg s^2 + rest``. ``s^2`` lies in
    [0, 1], so ``ag bg s^2`` is ``ag bg / 2`` plus at most ``|ag bg| / 2``; ``rest = (ac + ag s) eb +
    ea (bc + bg s) + ea eb`` is at most ``(|ac| + |ag|) rb + ra (|bc| + |bg|) + ra rb`` in magnitude.
    """
    c = a.c * b.c
    g = _plus(None if b.g is None else a.c * b.g, None if a.g is None else a.g * b.c)
    r = None
    if a.g is not None and b.g is not None:
        q = a.g * b.g
        c = c + q / 2
        r = q.abs() / 2
    if b.r is not None:
        r = _plus(r, a.magnitude() * b.r)
    if a.r is not None:
        r = _plus(r, a.r * (b.c.abs() if b.g is None else b.c.abs() + b.g.abs()))
    return Taylor(c, g, r)


def _relaxed(z: Taylor, slope: Tensor, lo: Tensor, hi: Tensor) -> Taylor:
    """``slope * z + [lo, hi]`` for ``slope >= 0``: the result of ``f(z) = slope z + phi(z)`` when
    ``phi`` is known to lie in [lo, hi] over the range of ``z``."""
    return Taylor(slope * z.c + (lo + hi) / 2, None if z.g is None else slope * z.g,
                  (hi - lo) / 2 if z.r is None else slope * z.r + (hi - lo) / 2)


def relu(z: Taylor) -> Taylor:
    """``max(z, 0)``.

    With ``l <= z <= u`` over the sub-interval: exact (``z`` or 0) when ``l >= 0`` or ``u <= 0``;
    otherwise ``relu(z) = lam z + phi`` with ``lam = u / (u - l)`` (the chord's slope) and
    ``phi = relu(z) - lam z`` convex, 0 at z = 0 and ``-lam l`` at both ends, so ``phi`` lies in
    ``[0, -lam l]`` (the zonotope relaxation of minimal area). The stable cases are the same formula with
    ``lam`` 1 or 0 and ``phi = 0``: ``u / (u - l)`` clamped to [0, 1] gives exactly those slopes, and
    ``max(-lam l, 0)`` the offset.
    """
    spread = z.spread()                                   # u - l = 2 spread
    slope = ((z.c + spread) / (2 * spread)).clamp_(0, 1).nan_to_num_(0.0)  # 0/0 only where z = 0 exactly
    hi = (slope * (spread - z.c)).clamp_(min=0)            # -lam l, or 0 when stable
    half = hi.mul_(0.5)
    c = (slope * z.c).add_(half)
    r = half if z.r is None else (slope * z.r).add_(half)
    return Taylor(c, None if z.g is None else slope * z.g, r)


def leaky_relu(z: Taylor, alpha: float) -> Taylor:
    """``leaky(z) = alpha z + (1 - alpha) relu(z)`` for any ``alpha`` (both sides agree for z < 0 and z >= 0);
    a negative ``1 - alpha`` just flips the relaxation of ``relu``, which mid-radius form absorbs."""
    k = 1.0 - alpha
    rz = relu(z)
    scaled = Taylor(k * rz.c, None if rz.g is None else k * rz.g, None if rz.r is None else abs(k) * rz.r)
    return add(Taylor(alpha * z.c, None if z.g is None else alpha * z.g,
                      None if z.r is None else abs(alpha) * z.r), scaled)


def _smooth(z: Taylor, f, df, critical) -> Taylor:
    """A smooth increasing ``f`` linearised at the middle of ``[l, u]``: ``f(z) = lam z + phi(z)`` with
    ``lam = f'(mid) >= 0``. ``phi`` takes its extremes on ``[l, u]`` at ``l``, ``u`` or where ``f' = lam``;
    ``critical(lam)`` returns those points (both solutions, as ``f'`` is unimodal), clamped into
    ``[l, u]`` -- extra candidates inside the interval never widen the enclosure beyond the true range."""
    lo, hi = z.lower(), z.upper()
    lam = df((lo + hi) / 2)
    points = [lo, hi, *(p.clamp(min=lo, max=hi) for p in critical(lam))]
    phis = torch.stack([f(p) - lam * p for p in points])
    return _relaxed(z, lam, phis.min(0).values, phis.max(0).values)


def sigmoid(z: Taylor) -> Taylor:
    """Logistic sigmoid; ``sigma' = sigma (1 - sigma) = lam`` at ``z = +-log((1 + d) / (1 - d))``,
    ``d = sqrt(1 - 4 lam)``."""
    def critical(lam):
        d = torch.sqrt((1 - 4 * lam).clamp(min=0))
        z0 = torch.log((1 + d) / (1 - d))
        return z0, -z0

    def df(x):
        s = torch.sigmoid(x)
        return s * (1 - s)

    return _smooth(z, torch.sigmoid, df, critical)


def tanh(z: Taylor) -> Taylor:
    """Hyperbolic tangent; ``tanh' = 1 - tanh^2 = lam`` at ``z = +-atanh(sqrt(1 - lam))``."""
    def critical(lam):
        z0 = torch.atanh(torch.sqrt((1 - lam).clamp(min=0, max=1)))
        return z0, -z0

    return _smooth(z, torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, critical)


def inv_sqrt(v: Taylor, eps: float, floor: Tensor) -> Taylor:
    """``(v + eps)^(-1/2)`` for a BatchNorm running variance ``v``.

    ``v`` is a convex combination of the variances stored at the curve's nodes, so it is at least
    ``floor`` (their smallest value, >= 0); the lower end is raised to it -- a remainder could otherwise reach
    below 0, where the square root is undefined. ``f(v) = (v + eps)^(-1/2)`` is convex and decreasing:
    with ``lam = f'(mid)``, ``phi = f - lam v`` is convex with its minimum at ``mid`` and its maximum at
    an end of ``[l, u]``, so ``phi`` lies in ``[phi(mid), max(phi(l), phi(u))]``.
    """
    left = torch.maximum(v.lower(), floor)
    right = torch.maximum(v.upper(), left)

    def f(x):
        return (x + eps).rsqrt()

    mid = (left + right) / 2
    lam = -0.5 * (mid + eps) ** -1.5
    lo = f(mid) - lam * mid
    hi = torch.maximum(f(left) - lam * left, f(right) - lam * right)
    hi = torch.maximum(hi, lo)
    # lam < 0: write lam * v = -|lam| v and let mid-radius form carry the sign
    c = lam * v.c + (lo + hi) / 2
    g = None if v.g is None else lam * v.g
    r = (hi - lo) / 2 if v.r is None else lam.abs() * v.r + (hi - lo) / 2
    return Taylor(c, g, r)

"""Freeman & Bruna (2017), Proposition 2.3: the ReLU kernel [w1, w2]_Z = E{z(w1) z(w2)}, z(w) = max(0, <w, X>),
against the bounds of inequality (7). ``docs/kernel_bound.md`` derives everything used here.

For unit vectors w1, w2 at angle alpha with unit bisector wm = (w1 + w2) / ||w1 + w2||:

* upper bound (7): U = (1 + cos alpha) / 2 * ||wm||_Z^2, with ||w||_Z^2 = E{z(w)^2};
* lower bound (7): U - 2 ||Sigma_X|| ((1 - cos alpha) / 2 + sin^2 alpha), Sigma_X = E{X X^T} (uncentred) and
  ||.|| the operator norm;
* a sharper lower bound from the same proof: U - sin^2(alpha / 2) E{||Q X||^2 ; <X, wm> >= 0}, Q the orthogonal
  projection onto span(w1, w2) (the paper's remark after (7) replaces ||Sigma_X|| by this projected energy).

Every quantity is computed either on a sample (the empirical measure of the rows of ``x``: the proof holds for
any distribution, so the bounds hold *exactly* there, up to rounding; :func:`kernel_bound`) or in closed form for
a centred Gaussian X ~ N(0, C) (the degree-1 arc-cosine kernel; :func:`gaussian_kernel_bound`).

>>> w1, w2 = pair_at_angle(0.3, 5, generator=torch.Generator().manual_seed(0))
>>> exact = gaussian_kernel_bound(w1, w2)
>>> exact.lower_paper <= exact.lower_sharp <= exact.kernel <= exact.upper
True
>>> round(gaussian_relu_kernel(w1, w1), 12)  # alpha = 0: E{max(0, g)^2} = 1/2 for g ~ N(0, 1)
0.5
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["Estimate", "KernelBound", "relu_kernel", "gaussian_relu_kernel", "monte_carlo_gaussian_kernel",
           "bound_values", "kernel_bound", "gaussian_kernel_bound", "pair_at_angle", "angle", "bisector",
           "gaussian_samples", "second_moment_norm", "CHUNK"]

CHUNK = 65536
"""Rows of ``x`` (or Monte Carlo samples) processed at once: memory stays bounded for any sample size."""


@dataclass(frozen=True)
class Estimate:
    """A sample mean with its standard error (sample standard deviation / sqrt(n))."""

    mean: float
    se: float
    n: int


@dataclass(frozen=True)
class KernelBound:
    """The kernel of one pair and the bounds of (7) on it (all for unit w1, w2)."""

    alpha: float
    """Angle between w1 and w2 (radians)."""
    kernel: float
    """[w1, w2]_Z."""
    upper: float
    """(1 + cos alpha) / 2 * ||wm||_Z^2: the upper bound of (7)."""
    lower_paper: float
    """Upper minus 2 ||Sigma_X|| ((1 - cos alpha) / 2 + sin^2 alpha): the lower bound of (7)."""
    lower_sharp: float
    """Upper minus sin^2(alpha / 2) E{||QX||^2; <X, wm> >= 0}: the sharper lower bound of docs/kernel_bound.md."""
    wm_norm_z2: float
    """||wm||_Z^2 = E{max(0, <wm, X>)^2}."""
    sigma_norm: float
    """||Sigma_X||, the largest eigenvalue of E{X X^T}."""
    kernel_se: float = 0.0
    """Standard error of ``kernel`` as an estimate of the population kernel (0: exact)."""

    def holds(self, slack: float = 0.0) -> bool:
        """Whether lower_paper <= lower_sharp <= kernel <= upper, each within ``slack``."""
        return (self.lower_paper <= self.lower_sharp + slack and self.lower_sharp <= self.kernel + slack
                and self.kernel <= self.upper + slack)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vector(w: Any, name: str) -> Tensor:
    t = torch.as_tensor(w, dtype=torch.float64)
    if t.dim() != 1 or t.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty vector, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{name} has non-finite entries")
    return t


def _pair(w1: Any, w2: Any, unit: bool) -> tuple[Tensor, Tensor]:
    a, b = _vector(w1, "w1"), _vector(w2, "w2")
    if a.shape != b.shape:
        raise ConfigError(f"w1 and w2 must have one length, got {a.numel()} and {b.numel()}")
    for v, name in ((a, "w1"), (b, "w2")):
        norm = float(v.norm())
        if norm == 0:
            raise ConfigError(f"{name} is the zero vector: it has no direction")
        if unit and abs(norm - 1) > 1e-9:
            raise ConfigError(f"Proposition 2.3 is stated for unit vectors; {name} has norm {norm:.6g} "
                              f"(divide it by its norm: the kernel scales as ||w1|| ||w2||)")
    return a, b


def _samples(x: Any, dim: int) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[1] != dim or t.shape[0] < 2:
        raise ConfigError(f"x must hold at least 2 samples of dimension {dim} as rows, got shape {tuple(t.shape)}")
    return t


def angle(w1: Any, w2: Any) -> float:
    """The angle between two nonzero vectors, in [0, pi]."""
    a, b = _pair(w1, w2, unit=False)
    cosine = float(a @ b / (a.norm() * b.norm()))
    return math.acos(min(1.0, max(-1.0, cosine)))


def bisector(w1: Any, w2: Any) -> Tensor:
    """The unit bisector wm = (w1 + w2) / ||w1 + w2|| of two unit vectors (undefined for w2 = -w1)."""
    a, b = _pair(w1, w2, unit=True)
    s = a + b
    if float(s.norm()) < 1e-12:
        raise ConfigError("w1 and w2 are opposite (alpha = pi): their bisector is undefined")
    return s / s.norm()


def pair_at_angle(alpha: float, dim: int, *, generator: torch.Generator | None = None,
                  plane: tuple[Any, Any] | None = None) -> tuple[Tensor, Tensor]:
    """Unit vectors w1, w2 in R^dim at angle ``alpha``: w1 = e, w2 = cos(alpha) e + sin(alpha) f with (e, f) an
    orthonormal pair; from ``plane`` = (u, v) by Gram-Schmidt (data-driven pairs, e.g. two principal
    directions), else drawn uniformly with ``generator``."""
    if not (math.isfinite(alpha) and 0 <= alpha <= math.pi):
        raise ConfigError(f"alpha is an angle in [0, pi] radians, got {alpha}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise ConfigError(f"dim must be an integer >= 2 (two directions span the pair's plane), got {dim!r}")
    if plane is None:
        u, v = torch.randn(2, dim, generator=generator, dtype=torch.float64)
    else:
        u, v = _vector(plane[0], "plane[0]"), _vector(plane[1], "plane[1]")
        if u.numel() != dim or v.numel() != dim:
            raise ConfigError(f"plane vectors must have length {dim}")
    e = u / u.norm()
    f = v - (v @ e) * e
    if float(f.norm()) < 1e-12 * max(1.0, float(v.norm())):
        raise ConfigError("the two plane vectors are parallel: they span no plane")
    f = f / f.norm()
    return e, math.cos(alpha) * e + math.sin(alpha) * f


def gaussian_samples(n: int, dim: int, *, cov: Any = None, generator: torch.Generator | None = None) -> Tensor:
    """``n`` rows drawn from N(0, cov) (identity when None) in float64."""
    g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return g if cov is None else g @ _cov_root(cov, dim).T


def _cov_root(cov: Any, dim: int) -> Tensor:
    c = torch.as_tensor(cov, dtype=torch.float64)
    if c.shape != (dim, dim) or not bool(torch.allclose(c, c.T)):
        raise ConfigError(f"cov must be a symmetric {dim} x {dim} matrix, got shape {tuple(c.shape)}")
    vals, vecs = torch.linalg.eigh(c)
    if float(vals.min()) < -1e-12 * max(1.0, float(vals.abs().max())):
        raise ConfigError(f"cov must be positive semi-definite (smallest eigenvalue {float(vals.min()):.3g})")
    return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T


def _moments(columns: Tensor, x: Tensor, fn) -> tuple[Tensor, Tensor, int]:
    """Sums and sums of squares over the rows of ``x`` of ``fn(x_chunk @ columns, x_chunk)`` (a (rows, k)
    float64 tensor), chunk by chunk."""
    total = sq = None
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK].to(torch.float64)
        values = fn(chunk @ columns, chunk)
        s, q = values.sum(0), (values * values).sum(0)
        total, sq = (s, q) if total is None else (total + s, sq + q)
    return total, sq, len(x)


def _estimate(total: float, sq: float, n: int) -> Estimate:
    mean = total / n
    var = max(0.0, (sq - n * mean * mean) / (n - 1))
    return Estimate(float(mean), math.sqrt(var / n), int(n))


def relu_kernel(w1: Any, w2: Any, x: Any) -> Estimate:
    """[w1, w2]_Z = E{max(0, <w1, X>) max(0, <w2, X>)} over the rows of ``x``, in float64, with its standard
    error as an estimate of the population value (any w1, w2: no unit norm needed)."""
    a, b = _pair(w1, w2, unit=False)
    x = _samples(x, a.numel())
    total, sq, n = _moments(torch.stack([a, b], 1), x, lambda p, _: (p.clamp_min(0).prod(1, keepdim=True)))
    return _estimate(float(total[0]), float(sq[0]), n)


def gaussian_relu_kernel(w1: Any, w2: Any, cov: Any = None) -> float:
    """[w1, w2]_Z for X ~ N(0, cov) (identity when None) in closed form: with u_i = cov^(1/2) w_i at angle
    theta, ||u1|| ||u2|| (sin theta + (pi - theta) cos theta) / (2 pi) (Cho & Saul's arc-cosine kernel of
    degree 1, halved; derived in docs/kernel_bound.md)."""
    a, b = _pair(w1, w2, unit=False)
    if cov is not None:
        root = _cov_root(cov, a.numel())
        a, b = root @ a, root @ b
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return 0.0  # X is almost surely orthogonal to w: z(w) = 0
    theta = math.acos(min(1.0, max(-1.0, float(a @ b) / (na * nb))))
    return na * nb * (math.sin(theta) + (math.pi - theta) * math.cos(theta)) / (2 * math.pi)


def monte_carlo_gaussian_kernel(w1: Any, w2: Any, n: int, *, cov: Any = None, seed: int = 0) -> Estimate:
    """[w1, w2]_Z for X ~ N(0, cov) by Monte Carlo over ``n`` float64 samples drawn in chunks from a generator
    seeded with ``seed`` (so any n fits in memory; the same seed gives the same estimate)."""
    a, b = _pair(w1, w2, unit=False)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n must be an integer >= 2 (a standard error needs two samples), got {n!r}")
    root = None if cov is None else _cov_root(cov, a.numel())
    generator = torch.Generator().manual_seed(int(seed))
    columns = torch.stack([a, b], 1) if root is None else root.T @ torch.stack([a, b], 1)
    total = sq = 0.0
    for start in range(0, n, CHUNK):
        g = torch.randn(min(CHUNK, n - start), a.numel(), generator=generator, dtype=torch.float64)
        values = (g @ columns).clamp_min(0).prod(1)
        total, sq = total + float(values.sum()), sq + float((values * values).sum())
    return _estimate(total, sq, n)


def bound_values(alpha: float, wm_norm_z2: float, sigma_norm: float, half_projected_energy: float
                 ) -> tuple[float, float, float]:
    """(upper, lower_paper, lower_sharp) of :class:`KernelBound` from the four numbers they depend on;
    ``half_projected_energy`` is E{||QX||^2; <X, wm> >= 0}."""
    c = math.cos(alpha)
    upper = (1 + c) / 2 * wm_norm_z2
    lower_paper = upper - 2 * sigma_norm * ((1 - c) / 2 + math.sin(alpha) ** 2)
    lower_sharp = upper - math.sin(alpha / 2) ** 2 * half_projected_energy
    return upper, lower_paper, lower_sharp


def kernel_bound(w1: Any, w2: Any, x: Any, *, sigma_norm: float | None = None) -> KernelBound:
    """The kernel and the bounds of (7) on the empirical measure of the rows of ``x`` (float64): the bounds hold
    there exactly. ``sigma_norm`` (||E XX^T||) is computed from ``x`` when None (pass it to reuse it across
    pairs); ``kernel_se`` is the kernel's standard error as an estimate of the population value."""
    a, b = _pair(w1, w2, unit=True)
    x = _samples(x, a.numel())
    wm = bisector(a, b)
    q, _ = torch.linalg.qr(torch.stack([a, b], 1))  # orthonormal basis of span(w1, w2)
    columns = torch.cat([torch.stack([a, b, wm], 1), q[:, :1 if angle(a, b) < 1e-12 else 2]], 1)

    def per_row(p: Tensor, _: Tensor) -> Tensor:
        z1z2 = p[:, 0].clamp_min(0) * p[:, 1].clamp_min(0)
        zm = p[:, 2].clamp_min(0)
        projected = (p[:, 3:] ** 2).sum(1) * (p[:, 2] >= 0)
        return torch.stack([z1z2, zm * zm, projected], 1)

    total, sq, n = _moments(columns, x, per_row)
    if sigma_norm is None:
        sigma_norm = second_moment_norm(x)
    kernel = _estimate(float(total[0]), float(sq[0]), n)
    alpha = angle(a, b)
    wm2, half = float(total[1]) / n, float(total[2]) / n
    upper, lower_paper, lower_sharp = bound_values(alpha, wm2, float(sigma_norm), half)
    return KernelBound(alpha, kernel.mean, upper, lower_paper, lower_sharp, wm2, float(sigma_norm), kernel.se)


def second_moment_norm(x: Any) -> float:
    """||Sigma_X|| = the largest eigenvalue of E{X X^T} over the rows of ``x`` (float64, chunked)."""
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ConfigError(f"x must hold samples as rows, got shape {tuple(x.shape)}")
    gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK].to(torch.float64)
        gram += chunk.T @ chunk
    return float(torch.linalg.eigvalsh(gram / len(x))[-1])


def gaussian_kernel_bound(w1: Any, w2: Any, cov: Any = None) -> KernelBound:
    """:class:`KernelBound` in closed form for X ~ N(0, cov) (identity when None): ||wm||_Z^2 = wm' C wm / 2,
    ||Sigma_X|| = the largest eigenvalue of C, E{||QX||^2; <X, wm> >= 0} = trace(Q C Q) / 2 (X and -X have
    one law)."""
    a, b = _pair(w1, w2, unit=True)
    dim = a.numel()
    c = torch.eye(dim, dtype=torch.float64) if cov is None else _cov_root(cov, dim) @ _cov_root(cov, dim)
    wm = bisector(a, b)
    alpha = angle(a, b)
    q, _ = torch.linalg.qr(torch.stack([a, b], 1))
    q = q[:, :1 if alpha < 1e-12 else 2]
    wm2 = float(wm @ c @ wm) / 2
    half = float(torch.trace(q.T @ c @ q)) / 2
    upper, lower_paper, lower_sharp = bound_values(alpha, wm2, float(torch.linalg.eigvalsh(c)[-1]), half)
    return KernelBound(alpha, gaussian_relu_kernel(a, b, c), upper, lower_paper, lower_sharp, wm2,
                       float(torch.linalg.eigvalsh(c)[-1]))

"""The constructive paths of Freeman & Bruna's Proposition 2.2 for deep linear networks (float64 linear algebra).

Weights follow PyTorch: layer j maps R^(d_(j-1)) -> R^(d_j), ``W_j`` is d_j x d_(j-1), the network is
``W_K ... W_1``. Derivation, choices and why the energy stays below the endpoints' level: ``docs/linear_networks.md``.

* :class:`DeepLinearPath` (kappa = 0, any K): the end-to-end product follows the straight line
  M(t) = (1 - t) M^A + t M^B, so a loss convex in M stays <= max of its end values. Peeling layers off the output
  side, the suffix products S_j = W_K ... W_j (j = 2..K) are the paper's interpolated layers,
  S_j(t) = (1 - t) S_j^A + t S_j^B + t (1 - t) V_j, and each layer below is the factor closest to its own straight
  line that keeps S_(j+1)(t) W_j(t) = S_j(t):
  W_j(t) = N_j(t) + S_(j+1)(t)^+ (S_j(t) - S_(j+1)(t) N_j(t)),  N_j(t) = (1 - t) W_j^A + t W_j^B.
  Peeling from the input side is the same construction on the transposed, reversed chain.
* :class:`RidgePath` (K = 2, energy + kappa (||W_1||^2 + ||W_2||^2)): from each endpoint to the minimum-norm
  ("balanced") factorisation of its product with the product fixed and the norm non-increasing, then the
  canonical balanced factorisation of the straight line M(t), whose norm is 2 ||M(t)||_* (convex in t).

Both raise :class:`NotApplicable` (with a sentence) where the argument breaks: a rank-deficient pivot, a square
pivot whose determinant changes sign, a bump that cannot keep the pivots full rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import scipy.linalg
import torch
from torch import Tensor

__all__ = ["NotApplicable", "DeepLinearPath", "RidgePath", "chain_product", "balanced_factors", "real_log_rotation",
           "factor_through"]


class NotApplicable(Exception):
    """The construction's argument does not apply to this pair; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def chain_product(weights: Sequence[Tensor]) -> Tensor:
    """``W_K ... W_1`` for ``weights = [W_1, ..., W_K]``."""
    out = weights[0]
    for w in weights[1:]:
        out = w @ out
    return out


def factor_through(m: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Weights [W_1, ..., W_K] of a chain with layer sizes ``sizes`` (d_0..d_K, hidden widths >= min(d_0, d_K))
    whose product is ``m``: rectangular identities, with ``m`` put into the first layer when d_K <= d_0 (every
    suffix product is then [I | 0], full row rank) and into the last otherwise (prefix products [I; 0])."""
    k = len(sizes) - 1
    eye = [torch.eye(sizes[j + 1], sizes[j], dtype=m.dtype, device=m.device) for j in range(k)]
    if sizes[-1] <= sizes[0]:
        eye[0] = torch.eye(sizes[1], sizes[-1], dtype=m.dtype, device=m.device) @ m
    else:
        eye[-1] = m @ torch.eye(sizes[0], sizes[-2], dtype=m.dtype, device=m.device)
    return eye


def _ratio(matrix: Tensor) -> float:
    """sigma_min / sigma_max over the min(rows, cols) singular values (0 for a zero matrix)."""
    s = torch.linalg.svdvals(matrix)
    return 0.0 if float(s[0]) == 0 else float(s[-1] / s[0])


def _lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    return (1 - t) * a + t * b


class DeepLinearPath:
    """The kappa = 0 construction between ``a`` and ``b`` (lists [W_1, ..., W_K], float64).

    ``side``: ``"output"`` peels from the output (pivots d_K x d_(j-1), need every hidden width >= d_K),
    ``"input"`` from the input (the transposed chain). ``bump_scale`` sets ||V_j||_F relative to the mean of
    ||S_j^A||_F and ||S_j^B||_F; ``generator`` draws the V_j (standard normal entries before scaling).
    """

    def __init__(self, a: Sequence[Tensor], b: Sequence[Tensor], *, side: str, bump_scale: float,
                 generator: torch.Generator) -> None:
        if side not in ("output", "input"):
            raise ValueError(f"side must be 'output' or 'input', got {side!r}")
        self.side, self.k = side, len(a)
        flip = side == "input"
        self.a = [w.T for w in reversed(a)] if flip else list(a)
        self.b = [w.T for w in reversed(b)] if flip else list(b)
        # suffix products S_j (index j - 1): S_1 = M, S_K = W_K
        self.sa, self.sb = self._suffixes(self.a), self._suffixes(self.b)
        self.bumps: list[Tensor | None] = [None]
        for j in range(1, self.k):
            v = torch.randn(self.sa[j].shape, generator=generator, dtype=torch.float64).to(self.sa[j].device)
            size = 0.5 * (float(self.sa[j].norm()) + float(self.sb[j].norm()))
            self.bumps.append(v * (bump_scale * size / float(v.norm())) if bump_scale and size else v * 0)

    @staticmethod
    def _suffixes(ws: list[Tensor]) -> list[Tensor]:
        out = [ws[-1]]
        for w in reversed(ws[:-1]):
            out.append(out[-1] @ w)
        return list(reversed(out))

    def pivots(self, t: float) -> list[Tensor]:
        """[S_1(t), ..., S_K(t)] of the peeled (possibly transposed) chain: S_1 straight, the others bumped."""
        return [_lerp(self.sa[0], self.sb[0], t)] + [
            _lerp(self.sa[j], self.sb[j], t) + t * (1 - t) * self.bumps[j] for j in range(1, self.k)]

    def product(self, t: float) -> Tensor:
        """The end-to-end map the construction follows: (1 - t) M^A + t M^B (original orientation)."""
        m = _lerp(self.sa[0], self.sb[0], t)
        return m.T if self.side == "input" else m

    def _pivots_batch(self, ts: Tensor) -> list[Tensor]:
        t = ts.to(self.sa[0]).reshape(-1, 1, 1)
        return [(1 - t) * self.sa[0] + t * self.sb[0]] + [
            (1 - t) * self.sa[j] + t * self.sb[j] + t * (1 - t) * self.bumps[j] for j in range(1, self.k)]

    def min_pivot_ratio(self, ts: Tensor) -> float:
        """The smallest sigma_min / sigma_max of the pivots S_2(t), ..., S_K(t) over ``ts`` (batched)."""
        worst = 1.0
        for piv in self._pivots_batch(ts)[1:]:
            s = torch.linalg.svdvals(piv)
            worst = min(worst, float((s[:, -1] / s[:, 0].clamp_min(1e-300)).min()))
        return worst

    def weights_batch(self, ts: Tensor) -> list[Tensor]:
        """:meth:`weights` at every t of ``ts`` at once ([len(ts), d_j, d_(j-1)] per layer; rows at t = 0 and 1
        are the endpoints themselves)."""
        piv = self._pivots_batch(ts)
        t = ts.to(self.sa[0]).reshape(-1, 1, 1)
        ws = [None] * self.k
        ws[-1] = piv[-1].clone()
        for j in range(self.k - 2, -1, -1):
            line = (1 - t) * self.a[j] + t * self.b[j]
            ws[j] = line + torch.linalg.pinv(piv[j + 1]) @ (piv[j] - piv[j + 1] @ line)
        flat = ts.reshape(-1).to(self.sa[0].device)
        for j in range(self.k):
            ws[j][flat == 0] = self.a[j]
            ws[j][flat == 1] = self.b[j]
        return [w.transpose(1, 2) for w in reversed(ws)] if self.side == "input" else ws

    def pivot_ratios(self, t: float) -> list[float]:
        """sigma_min / sigma_max of each pivot S_2(t), ..., S_K(t) (they must stay full row rank)."""
        return [_ratio(s) for s in self.pivots(t)[1:]]

    def weights(self, t: float) -> list[Tensor]:
        """[W_1(t), ..., W_K(t)] in the original orientation; t = 0 and t = 1 return the endpoints themselves."""
        if t == 0 or t == 1:
            src = self.a if t == 0 else self.b
            ws = list(src)
        else:
            piv = self.pivots(t)
            ws = [None] * self.k
            ws[-1] = piv[-1]
            for j in range(self.k - 2, -1, -1):  # layer j + 1 (0-based j), pivot above it piv[j + 1]
                line = _lerp(self.a[j], self.b[j], t)
                upper = piv[j + 1]
                ws[j] = line + torch.linalg.pinv(upper) @ (piv[j] - upper @ line)
        return [w.T for w in reversed(ws)] if self.side == "input" else ws

    def check(self, ts: Tensor, rank_tolerance: float) -> tuple[float, float]:
        """The smallest pivot ratio at the endpoints and over ``ts``; NotApplicable where it falls below
        ``rank_tolerance`` or a square pivot's determinant changes sign between the endpoints."""
        names = [f"W_{self.k} ... W_{j + 1}" if self.side == "output" else f"W_{self.k - j} ... W_1"
                 for j in range(self.k)]
        end = math.inf
        for j in range(1, self.k):
            for which, s in (("A", self.sa[j]), ("B", self.sb[j])):
                r = _ratio(s)
                end = min(end, r)
                if r < rank_tolerance:
                    raise NotApplicable("rank_deficient_endpoint", f"endpoint {which}'s product {names[j]} "
                                        f"({tuple(s.shape)}) is rank deficient (sigma_min/sigma_max = {r:.3g} < "
                                        f"{rank_tolerance:g}): the pseudoinverse step cannot reproduce it")
            if self.sa[j].shape[0] == self.sa[j].shape[1]:
                da, db = float(torch.linalg.det(self.sa[j])), float(torch.linalg.det(self.sb[j]))
                if da * db < 0:
                    raise NotApplicable("orientation", f"the square product {names[j]} has determinants of "
                                        f"opposite sign at A ({da:.3g}) and B ({db:.3g}): every path between them "
                                        "passes a singular matrix (hidden width = min(input, output); the level set "
                                        "may be disconnected, e.g. a 1-1-1 network)")
        if self.k == 1:  # one layer: the straight line itself, no pivot
            return 1.0, 1.0
        inner = self.min_pivot_ratio(ts)
        if inner < rank_tolerance:
            raise NotApplicable("singular_pivot", f"a pivot becomes rank deficient along the bumped line "
                                f"(sigma_min/sigma_max = {inner:.3g} < {rank_tolerance:g})")
        return end, inner


# -- K = 2 with ridge -----------------------------------------------------------------------------------
def balanced_factors(m: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """The canonical balanced factorisation of ``m`` (d_2 x d_0, d_2 <= hidden): W_2 = (m m^T)^(1/4) E,
    W_1 = E^T U Sigma^(1/2) V^T with E = [I | 0] (d_2 x hidden). Continuous in m; ||W_1||^2 = ||W_2||^2 = ||m||_*."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s.sqrt()
    e = torch.eye(m.shape[0], hidden, dtype=m.dtype, device=m.device)
    return e.T @ (u * root) @ vh, (u * root) @ u.T @ e


def real_log_rotation(q: Tensor) -> Tensor:
    """A real skew-symmetric L with exp(L) = q for q in SO(n) (real Schur form; -1 eigenvalues paired)."""
    t, z = scipy.linalg.schur(q.cpu().numpy(), output="real")
    n = t.shape[0]
    gen = torch.zeros(n, n, dtype=torch.float64)
    minus, i = [], 0
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-10:
            angle = math.atan2(t[i + 1, i], t[i, i])
            gen[i, i + 1], gen[i + 1, i] = -angle, angle
            i += 2
        else:
            if t[i, i] < 0:
                minus.append(i)
            i += 1
    for p, r in zip(minus[0::2], minus[1::2]):
        gen[p, r], gen[r, p] = -math.pi, math.pi
    zz = torch.as_tensor(z, dtype=torch.float64)
    out = (zz @ gen @ zz.T).to(q.device)
    return 0.5 * (out - out.T)


def _projector_rows(w: Tensor, tol: float) -> Tensor:
    return torch.linalg.pinv(w, rtol=tol) @ w


class _ToBalanced:
    """Sub-paths from (W_1, W_2) to the canonical balanced factorisation of W_2 W_1, product fixed, norm
    non-increasing: (1) W_1 -> P W_1 (P: projector on W_2's row space), (2) W_2 -> W_2 Q (Q: on W_1's column
    space), (3) W_1 -> S(s)^(1/2) W_1, W_2 -> W_2 S(s)^(-1/2) with S(s) = (1 - s) I + s S*, S* the minimiser of
    the norm over that orbit (geometric mean), (4) a rotation in SO(hidden) onto the canonical factors."""

    def __init__(self, w1: Tensor, w2: Tensor, tol: float, which: str) -> None:
        self.stages = [(w1, w2)]
        p = _projector_rows(w2, tol)
        w1 = p @ w1
        self.stages.append((w1, w2))
        q = w1 @ torch.linalg.pinv(w1, rtol=tol)
        w2 = w2 @ q
        self.stages.append((w1, w2))
        u, s, _ = torch.linalg.svd(w1, full_matrices=False)
        r = int((s > tol * max(float(s[0]), 1e-300)).sum()) if s.numel() else 0
        basis = u[:, :r]  # R = range(W_1)
        h = w1.shape[0]
        x_r, y_r = basis.T @ w1 @ w1.T @ basis, basis.T @ w2.T @ w2 @ basis
        if r and _ratio(y_r) < tol:
            raise NotApplicable("singular_balance", f"endpoint {which}: W_2 is singular on the range of W_1 after "
                                "the projections (numerical rank); the balancing step is undefined")
        self.s_star = torch.eye(h, dtype=w1.dtype, device=w1.device)
        if r:
            xh = _psd_power(x_r, 0.5)
            xih = _psd_power(x_r, -0.5)
            s_r = xih @ _psd_power(xh @ y_r @ xh, 0.5) @ xih
            self.s_star = self.s_star + basis @ (s_r - torch.eye(r, dtype=w1.dtype, device=w1.device)) @ basis.T
        self._pre = (w1, w2)
        w1, w2 = self._balance(1.0)
        self.stages.append((w1, w2))
        t1, t2 = balanced_factors(w2 @ w1, h)
        self.rotation = _rotation_onto(w1, t1, w2 @ w1, tol, which)
        self.generator = real_log_rotation(self.rotation)
        self.stages.append((self.rotation @ w1, w2 @ self.rotation.T))

    def _balance(self, s: float) -> tuple[Tensor, Tensor]:
        w1, w2 = self._pre
        sm = (1 - s) * torch.eye(w1.shape[0], dtype=w1.dtype, device=w1.device) + s * self.s_star
        return _psd_power(sm, 0.5) @ w1, w2 @ _psd_power(sm, -0.5)

    def at(self, stage: int, s: float) -> tuple[Tensor, Tensor]:
        """Stage 0..3 at s in [0, 1] (s = 0 and 1 are the stored stage ends, bit for bit)."""
        if s == 0:
            return self.stages[stage]
        if s == 1:
            return self.stages[stage + 1]
        (a1, a2), (b1, b2) = self.stages[stage], self.stages[stage + 1]
        if stage in (0, 1):  # one factor moves along a straight line (its component outside the subspace shrinks)
            return _lerp(a1, b1, s), _lerp(a2, b2, s)
        if stage == 2:
            return self._balance(s)
        rot = torch.linalg.matrix_exp(s * self.generator)
        return rot @ a1, a2 @ rot.T


def _psd_power(m: Tensor, power: float) -> Tensor:
    vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    return (vecs * vals.clamp_min(0) ** power) @ vecs.T if power > 0 else (vecs * vals ** power) @ vecs.T


def _rotation_onto(w1: Tensor, t1: Tensor, m: Tensor, tol: float, which: str) -> Tensor:
    """Q in SO(h) with Q w1 = t1, for two balanced factorisations of m (NotApplicable when only O(h) \\ SO(h))."""
    h = w1.shape[0]
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = int((s > tol * max(float(s[0]), 1e-300)).sum())
    scale = vh[:r].T / s[:r].sqrt()
    o, ot = w1 @ scale, t1 @ scale  # h x r, orthonormal columns
    full = torch.linalg.svd(o, full_matrices=True)[0][:, r:]
    full_t = torch.linalg.svd(ot, full_matrices=True)[0][:, r:]
    q = torch.cat([ot, full_t], 1) @ torch.cat([o, full], 1).T
    u, _, v = torch.linalg.svd(q)
    q = u @ v
    if float(torch.linalg.det(q)) < 0:
        if r == h:
            raise NotApplicable("orientation", f"endpoint {which}: its balanced factors differ from the canonical "
                                f"ones by a reflection and the hidden width {h} equals the product's rank, so no "
                                "rotation joins them (the level set may be disconnected)")
        full_t = full_t.clone()
        full_t[:, -1] = -full_t[:, -1]
        q = torch.cat([ot, full_t], 1) @ torch.cat([o, full], 1).T
        u, _, v = torch.linalg.svd(q)
        q = u @ v
    return q


class RidgePath:
    """The K = 2 ridge construction between ``a = [W_1^A, W_2^A]`` and ``b`` (float64), on t in [0, 1]:
    four stages from A to its canonical balanced factors on [0, ``end_fraction``], the canonical factors of the
    straight product line on the middle, the four stages of B backwards on [1 - ``end_fraction``, 1]."""

    STAGES = 4

    def __init__(self, a: Sequence[Tensor], b: Sequence[Tensor], *, tol: float, end_fraction: float) -> None:
        w1a, w2a = a
        self.flip = w2a.shape[0] > w2a.shape[1]  # output wider than hidden: factor the transposed product
        if self.flip:
            a, b = [a[1].T, a[0].T], [b[1].T, b[0].T]
        self.a, self.b, self.f = list(a), list(b), end_fraction
        self.ends = [_ToBalanced(*a, tol, "A"), _ToBalanced(*b, tol, "B")]
        self.m = [a[1] @ a[0], b[1] @ b[0]]

    def product(self, t: float) -> Tensor:
        """The end-to-end map at t: the endpoint's product on the end stages, the straight line in between."""
        u = min(max((t - self.f) / (1 - 2 * self.f), 0.0), 1.0)
        m = _lerp(self.m[0], self.m[1], u)
        return m.T if self.flip else m

    def weights_batch(self, ts: Tensor) -> list[Tensor]:
        """:meth:`weights` at every t of ``ts``, stacked ([len(ts), ...] per layer)."""
        per_t = [self.weights(float(t)) for t in ts]
        return [torch.stack([w[j] for w in per_t]) for j in range(2)]

    def weights(self, t: float) -> list[Tensor]:
        if t == 0 or t == 1:
            w1, w2 = self.a if t == 0 else self.b
        elif t < self.f or t > 1 - self.f:
            end, s = (self.ends[0], t / self.f) if t < self.f else (self.ends[1], (1 - t) / self.f)
            stage = min(int(s * self.STAGES), self.STAGES - 1)
            w1, w2 = end.at(stage, s * self.STAGES - stage)
        else:
            u = (t - self.f) / (1 - 2 * self.f)
            w1, w2 = balanced_factors(_lerp(self.m[0], self.m[1], u), self.a[0].shape[0])
        return [w2.T, w1.T] if self.flip else [w1, w2]

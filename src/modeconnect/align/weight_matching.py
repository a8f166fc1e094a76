"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, algorithm 1): permute B's units to be close to A's.

Minimising ``||A - P(B)||`` over permutations is the same as maximising the inner product ``<A, P(B)>``
(permutations preserve norms). Jointly this is NP-hard, but with every group except ``g`` held fixed the
inner product is linear in ``P_g``: it is ``sum_ij C_ij [P_g maps B's unit j to A's unit i]`` with

    C = sum over the axes (key, axis) of group g of  A[key]_(axis) @ P_rest(B[key])_(axis)^T,

where ``X_(axis)`` moves ``axis`` to the front and flattens the rest (one row per unit, a block of ``H * W``
entries per channel folded into the row after ``Flatten``). The best ``P_g`` is then one linear assignment
(:func:`scipy.optimize.linear_sum_assignment`). Coordinate descent visits the groups in a random order
(a seeded generator, so runs repeat) and stops after a sweep in which no group improved: every step can
only increase the inner product, so the distance never grows.

Only parameters count; ``buffer:`` keys (BatchNorm statistics) are permuted along but do not vote, as
:func:`~modeconnect.params.distance` ignores them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..batchnorm import is_buffer_key
from ..errors import ConfigError
from .spec import PermutationSpec, identity_permutations, permute_tensor

__all__ = ["WeightMatchingResult", "weight_matching", "unit_rows"]


@dataclass(frozen=True)
class WeightMatchingResult:
    permutations: dict[str, Tensor]
    iterations: int
    """Sweeps over all groups (the last one found no improvement unless ``converged`` is False)."""
    converged: bool
    """False when ``max_iter`` sweeps ran and the last still improved."""


def unit_rows(t: Tensor, axis: int, block: int) -> Tensor:
    """``t`` as a matrix with one row per unit of ``axis`` (``block`` consecutive entries per unit)."""
    t = torch.movedim(t, axis, 0)
    return t.reshape(t.shape[0] // block, -1)


def _assign(cost: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost, maximize=True)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm


def weight_matching(point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor], spec: PermutationSpec, *,
                    seed: int = 0, max_iter: int = 100, init: Mapping[str, Tensor] | None = None
                    ) -> WeightMatchingResult:
    """Permutations of B's groups maximising ``<A, P(B)>`` by coordinate descent over groups.

    ``init`` starts from given permutations (default: the identity). Both points must fit ``spec``.
    """
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    spec.check(point_a, "point A")
    spec.check(point_b, "point B")
    perms = {g: p.detach().cpu().long().clone() for g, p in (init or identity_permutations(spec)).items()}
    # per group: (A's rows, B's tensor, the axis, block, B's other permuted axes); computed in float64
    terms: dict[str, list] = {}
    for g, axes in spec.groups.items():
        terms[g] = []
        for a in axes:
            if is_buffer_key(a.key):
                continue
            rows_a = unit_rows(point_a[a.key].detach().to("cpu", torch.float64), a.axis, a.block)
            terms[g].append((rows_a, point_b[a.key].detach().to("cpu", torch.float64), a.axis % point_b[a.key].ndim,
                             a.block, {ax % point_b[a.key].ndim: v for ax, v in spec.axes_of(a.key).items()}))
    generator = torch.Generator().manual_seed(int(seed))
    names = list(spec.groups)
    iterations, improved = 0, True
    while improved and iterations < max_iter:
        improved = False
        iterations += 1
        for i in torch.randperm(len(names), generator=generator).tolist():
            g = names[i]
            n = spec.sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for rows_a, b, axis, block, axes in terms[g]:
                cost += rows_a @ unit_rows(permute_tensor(b, axes, perms, skip_axis=axis), axis, block).T
            cost_np = cost.numpy()
            best = _assign(cost_np)
            old_value = cost_np[np.arange(n), perms[g].numpy()].sum()
            new_value = cost_np[np.arange(n), best].sum()
            if new_value > old_value + 1e-12 * max(1.0, abs(old_value)):
                improved = True
                perms[g] = torch.from_numpy(best).long()
    return WeightMatchingResult(perms, iterations, not improved)

"""``align``: move endpoint B into endpoint A's basin by relabelling its hidden units.

Networks that differ only by a permutation of hidden units compute the same function but sit far apart
in parameter space, with a loss barrier on the straight segment between them. Aligning B to A first
(Git Re-Basin) removes that part of the barrier, so alignment is a pre-step that composes with any path
method: the method connects A with ``align(...).point``, which is B itself as a function.

>>> import torch
>>> from torch import nn
>>> from modeconnect.params import point_from_module
>>> from modeconnect.tasks._init import seeded
>>> net = seeded(lambda: nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)), 0)
>>> a = point_from_module(net)
>>> from modeconnect.align.spec import apply_permutations, random_permutations
>>> spec = infer_spec(net)
>>> b = apply_permutations(a, spec, random_permutations(spec, seed=1))
>>> result = align(a, b, net)
>>> result.distance_after
0.0
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..params import check_compatible, distance
from .activation_matching import activation_matching
from .infer import infer_spec
from .spec import PermutationSpec, apply_permutations, identity_permutations
from .weight_matching import weight_matching

__all__ = ["AlignMethod", "Alignment", "align", "as_align_method"]


class AlignMethod(str, Enum):
    """How endpoint B's hidden units are matched to endpoint A's."""

    NONE = "none"
    """No alignment: B as it is (identity permutations), so runs with and without alignment share one code path."""
    WEIGHT = "weight"
    """Weight matching: permutations making B's weights closest to A's in L2 (coordinate descent over groups,
    one linear assignment per group). Needs no data; the default."""
    ACTIVATION = "activation"
    """Activation matching: per group, the assignment maximising the correlation of A's and B's unit activations
    on a data batch (``inputs``). Sees the function rather than the weights; depends on the batch."""


def as_align_method(value: str | AlignMethod) -> AlignMethod:
    """Parse a method name with an error listing the valid names."""
    try:
        return AlignMethod(value)
    except ValueError:
        raise ConfigError(f"unknown alignment method {value!r}; choose one of: "
                          f"{', '.join(m.value for m in AlignMethod)}") from None


@dataclass(frozen=True)
class Alignment:
    """The result of :func:`align`."""

    point: dict[str, Tensor]
    """B with its units permuted into A's order: the same function as B (same keys, ``buffer:`` keys included)."""
    permutations: dict[str, Tensor]
    """Per group: ``perm`` with unit ``perm[i]`` of B moved to position ``i`` (matched with A's unit ``i``)."""
    method: AlignMethod
    spec: PermutationSpec
    distance_before: float
    """L2 distance between A and B over parameters (buffers excluded, as in :func:`~modeconnect.params.distance`)."""
    distance_after: float
    """The same between A and the aligned B."""
    seconds: float
    iterations: int = 0
    """Weight matching sweeps over all groups (0 for the other methods)."""
    converged: bool = True
    """False when weight matching stopped at ``max_iter`` while still improving."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (permutations as lists; the spec's group sizes)."""
        return {
            "method": self.method.value,
            "distance_before": self.distance_before,
            "distance_after": self.distance_after,
            "reduction": 1.0 - self.distance_after / self.distance_before if self.distance_before > 0 else 0.0,
            "seconds": self.seconds,
            "iterations": self.iterations,
            "converged": self.converged,
            "groups": dict(self.spec.sizes),
            "units_moved": {g: int((p != torch.arange(len(p))).sum()) for g, p in self.permutations.items()},
            "permutations": {g: p.tolist() for g, p in self.permutations.items()},
        }


def align(point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor], model: nn.Module,
          method: str | AlignMethod = AlignMethod.WEIGHT, *, inputs: Tensor | None = None,
          spec: PermutationSpec | None = None, seed: int = 0, max_iter: int = 100) -> Alignment:
    """Permute B's hidden units to match A's; see :class:`AlignMethod` for the methods.

    Args:
        point_a, point_b: parameter points of ``model`` (``buffer:`` keys, e.g. BatchNorm statistics under
            the ``interpolate`` policy, are permuted along with their channels).
        model: the architecture: its structure gives the spec (when ``spec`` is None) and activation
            matching runs it. Never modified.
        inputs: a data batch; required for ``activation``, ignored otherwise.
        spec: a :class:`~modeconnect.align.spec.PermutationSpec`; default inferred from an ``nn.Sequential``
            (:func:`~modeconnect.align.infer.infer_spec`). Residual networks must pass one
            (:class:`~modeconnect.align.spec.SpecBuilder`).
        seed: weight matching's group order.
        max_iter: most weight matching sweeps.
    """
    method = as_align_method(method)
    check_compatible(point_a, point_b, "point A", "point B")
    spec = infer_spec(model) if spec is None else spec
    spec.check(point_a, "point A")
    start = time.perf_counter()
    iterations, converged = 0, True
    if method is AlignMethod.WEIGHT:
        result = weight_matching(point_a, point_b, spec, seed=seed, max_iter=max_iter)
        perms, iterations, converged = result.permutations, result.iterations, result.converged
    elif method is AlignMethod.ACTIVATION:
        if inputs is None:
            raise ConfigError("activation matching needs inputs=... (a batch of training inputs)")
        perms = activation_matching(model, point_a, point_b, inputs, spec)
    else:
        perms = identity_permutations(spec)
    aligned = apply_permutations(point_b, spec, perms)
    seconds = time.perf_counter() - start
    return Alignment(aligned, perms, method, spec, distance(point_a, point_b), distance(point_a, aligned), seconds,
                     iterations, converged)

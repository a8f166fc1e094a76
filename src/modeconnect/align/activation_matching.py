"""Activation matching (Git Re-Basin, Ainsworth et al. 2023; Li et al. 2015): pair units that fire alike.

Run A and B on the same batch of inputs and, for each group, record the group's units (the outputs of its
probe modules; for an inferred spec the pre-activation and the output after the activation and pooling).
Unit ``i`` of A and unit ``j`` of B are scored by the Pearson correlation of their activations over samples
(and spatial positions, for channels); the permutation of B's group is the linear assignment maximising the
summed correlation. With several probes (a residual stream read in several places, or pre- and
post-activation) the correlation matrices are added.

Unlike weight matching each group is solved once, independently: permuting other groups only reorders
B's activations, never changes them. The result depends on the data batch; it needs no iteration.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..errors import ConfigError
from ._forward import channel_rows, forward_watching, private_copy
from .spec import PermutationSpec

__all__ = ["activation_matching", "correlations"]


def _standardise(rows: Tensor, eps: float) -> Tensor:
    rows = rows.double()
    rows = rows - rows.mean(dim=1, keepdim=True)
    return rows / (rows.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


def _activations(model: nn.Module, point: Mapping[str, Tensor], inputs: Tensor, spec: PermutationSpec
                 ) -> dict[str, Tensor]:
    owner = {m: g for g, probes in spec.probes.items() for m in probes}
    out: dict[str, Tensor] = {}

    def watch(name: str, y: Tensor) -> None:
        out[name] = channel_rows(y, spec.sizes[owner[name]], name)

    forward_watching(model, point, inputs, list(owner), watch, allow_batch_statistics=True,
                     purpose="activation matching")
    return out


def correlations(model: nn.Module, point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor], inputs: Tensor,
                 spec: PermutationSpec, *, eps: float = 1e-8) -> dict[str, Tensor]:
    """``[n, n]`` float64 correlation matrix (A's units by B's units) per group, summed over the group's probes.

    A unit that is constant on the batch (a dead ReLU) correlates 0 with everything.
    """
    no_probe = [g for g in spec.groups if not spec.probes.get(g)]
    if no_probe:
        raise ConfigError(f"activation matching needs a probe module for each group; none for "
                          f"{', '.join(map(repr, no_probe))} (SpecBuilder.probe(group, module_name))")
    if inputs is None or len(inputs) < 2:
        raise ConfigError("activation matching needs a batch of at least 2 inputs (inputs=...)")
    model = private_copy(model)
    acts_a = _activations(model, point_a, inputs, spec)
    acts_b = _activations(model, point_b, inputs, spec)
    out = {}
    for g, probes in spec.probes.items():
        corr = 0
        for m in probes:
            za, zb = _standardise(acts_a[m], eps), _standardise(acts_b[m], eps)
            corr = corr + za @ zb.T / za.shape[1]
        out[g] = corr.cpu()
    return out


def activation_matching(model: nn.Module, point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor],
                        inputs: Tensor, spec: PermutationSpec) -> dict[str, Tensor]:
    """Permutation per group maximising the summed correlation of A's and B's units on ``inputs``."""
    spec.check(point_a, "point A")
    spec.check(point_b, "point B")
    perms = {}
    for g, corr in correlations(model, point_a, point_b, inputs, spec).items():
        rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
        perm = torch.empty(len(cols), dtype=torch.long)
        perm[torch.from_numpy(rows).long()] = torch.from_numpy(cols).long()
        perms[g] = perm
    return perms

"""Lemma 3 of Kuditipudi et al. (2019): the straight segment from a network to an Algorithm 1 dropout version of it.

Algorithm 1 drops every unit of every hidden layer independently with probability ``p`` (a Bernoulli draw per unit,
channel-wise for convolutions, Remark 1) by multiplying its *outgoing* weights (its columns of ``A_2 .. A_d``) by
``delta = 0`` and the kept units' by ``delta = r`` (``1 / (1 - p)``). Incoming weights are left as they are: a dropped
unit keeps its row but no longer reaches anything. ``theta_1`` is that network; the segment
``theta_t = theta + t (theta_1 - theta)`` scales kept units' outputs by ``1 + t (r - 1)`` and dropped ones' by
``1 - t``. Nothing in steps (a) / (b) bounds the loss along it: that it stays low is what noise stability buys (the
lemma holds with probability >= 1/4 over the draw), so the library *measures* it, on a grid, for several draws, and
a path uses a draw only if its segment stays at or below the level.

>>> import torch
>>> from torch import nn
>>> from modeconnect.kuditipudi.units import hidden_units
>>> spec = hidden_units(nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 1)))
>>> masks = algorithm1_masks(spec, p=0.5, draws=3, seed=0)
>>> len(masks), masks[0]["0"].dtype
(3, torch.bool)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..params import Point
from .dropout import Mask, apply_dropout
from .noise import algorithm1_dropout
from .units import UnitSpec

__all__ = ["algorithm1_masks", "algorithm1_point", "Lemma3Draw", "lemma3_draws", "kept_sets",
           "dropped_sets", "best_draw"]


def algorithm1_masks(spec: UnitSpec, p: float, draws: int, seed: int) -> list[Mask]:
    """``draws`` independent Algorithm 1 draws: per hidden layer a bool ``[h]``, True for kept units.

    Each unit is kept with probability ``1 - p`` (:func:`~modeconnect.kuditipudi.noise.algorithm1_dropout` on
    the layer's outgoing weights, one ``delta`` per unit), so the number kept is random, unlike Definition 1's
    exact-count masks.
    """
    if not 0 < p < 1:
        raise ConfigError(f"Algorithm 1 needs 0 < p < 1, got {p!r}")
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(draws):
        mask = {}
        for layer in spec.layers:
            # one column per unit is enough to draw that unit's delta
            _, delta = algorithm1_dropout(torch.ones(1, layer.size, dtype=torch.float64), p, generator=g)
            mask[layer.name] = delta > 0
        out.append(mask)
    return out


def algorithm1_point(point: Mapping[str, Tensor], spec: UnitSpec, mask: Mask, r: float) -> dict[str, Tensor]:
    """theta_1: the columns of ``A_2 .. A_d`` of kept units times ``r``, of dropped units zero; rows untouched."""
    return apply_dropout(point, spec, mask, r, from_layer=1, zero_incoming=False)


def kept_sets(spec: UnitSpec, mask: Mask) -> list[list[int]]:
    return [torch.as_tensor(mask[layer.name]).nonzero().reshape(-1).tolist() for layer in spec.layers]


def dropped_sets(spec: UnitSpec, mask: Mask) -> list[list[int]]:
    return [(~torch.as_tensor(mask[layer.name]).to(torch.bool)).nonzero().reshape(-1).tolist()
            for layer in spec.layers]


@dataclass
class Lemma3Draw:
    """One Algorithm 1 draw and its segment theta -> theta_1 on the grid."""

    index: int
    mask: Mask
    point: Point
    """theta_1."""
    energies: list[float]
    """The energy on the grid (t = 0 is theta, t = 1 is theta_1)."""

    @property
    def max_energy(self) -> float:
        return max(self.energies)

    @property
    def end_energy(self) -> float:
        return self.energies[-1]

    def summary(self, spec: UnitSpec) -> dict[str, Any]:
        return {"draw": self.index, "kept": [int(torch.as_tensor(self.mask[n]).sum()) for n in spec.names()],
                "segment_max_energy": self.max_energy, "theta_1_energy": self.end_energy}


def lemma3_draws(point: Mapping[str, Tensor], energy, spec: UnitSpec, *, p: float, r: float, draws: int, seed: int,
                 ts: Tensor, accept: Callable[[Mask], bool] | None = None,
                 progress: Callable[[str], None] | None = None, label: str = "") -> list[Lemma3Draw]:
    """Sample ``draws`` Algorithm 1 masks and evaluate the segment theta -> theta_1 of each on ``ts``.

    ``accept(mask)`` skips draws that a construction cannot use (e.g. too few dropped units for the narrow
    network); skipped draws are not evaluated and not returned.
    """
    say = progress or (lambda message: None)
    out = []
    for k, mask in enumerate(algorithm1_masks(spec, p, draws, seed)):
        if accept is not None and not accept(mask):
            continue
        theta_1 = algorithm1_point(point, spec, mask, r)
        values = torch.nan_to_num(energy.along_segment(point, theta_1, ts).to(torch.float64), nan=float("inf"))
        out.append(Lemma3Draw(k, mask, theta_1, values.tolist()))
        say(f"Lemma 3{label}: draw {k} keeps {[int(mask[n].sum()) for n in spec.names()]} of {spec.sizes} units; "
            f"segment theta -> theta_1 max {float(values.max()):.4g}, theta_1 {float(values[-1]):.4g}")
    return out


def best_draw(candidates: Sequence[Lemma3Draw]) -> Lemma3Draw | None:
    """The draw whose segment maximum is lowest (ties: lower theta_1), or None."""
    return min(candidates, key=lambda d: (d.max_energy, d.end_energy), default=None)

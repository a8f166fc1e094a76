"""A memo of energies already computed along straight segments, so that no point is evaluated twice.

A connect run evaluates the same points more than once: DSS evaluates every final segment on its
33-point grid, then certification starts each piece from a 65-point grid that contains those 33
points exactly (``k/32 = 2k/64`` in floating point). :class:`SegmentMemo` remembers, for the last few
segments, the energy at every ``t`` evaluated, and :meth:`Energy.along_segment` evaluates only the
``t`` it does not hold (at MNIST's 2%, a third of certification's points).

It is used only where a point's energy does not depend on which other points are evaluated with it
(the LOOP strategy: one point at a time), so a remembered value is bit-identical to a recomputed one.
A segment is identified by its end points' tensors: their identities and in-place version counters
(``Tensor._version``), with the tensors themselves held by the memo so that no identity can be reused
while an entry lives. Only the ``capacity`` most recent segments are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["SegmentMemo"]


def _key(point: Mapping[str, Tensor]) -> tuple:
    return tuple((name, id(v), v._version) for name, v in point.items())


class SegmentMemo:
    """Energies by ``t`` for the ``capacity`` most recently used segments."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[tuple, dict[float, float]]] = OrderedDict()
        self.hits = 0

    def lookup(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Tensor) -> tuple[Tensor, Tensor]:
        """``(known, values)``: which ``ts`` are remembered, and their energies (NaN where not known)."""
        entry = self._entries.get((_key(a), _key(b)))
        values = torch.full((len(ts),), float("nan"), dtype=torch.float64)
        known = torch.zeros(len(ts), dtype=torch.bool)
        if entry is None:
            return known, values
        self._entries.move_to_end((_key(a), _key(b)))
        table = entry[1]
        for i, t in enumerate(ts.tolist()):
            if t in table:
                known[i], values[i] = True, table[t]
        self.hits += int(known.sum())
        return known, values

    def clear(self) -> None:
        """Forget every segment."""
        self._entries.clear()

    def store(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Tensor, values: Tensor) -> None:
        key = (_key(a), _key(b))
        if key not in self._entries:
            held = (tuple(a.values()), tuple(b.values()))  # keeps the identities in the key from being reused
            self._entries[key] = (held, {})
        self._entries.move_to_end(key)
        self._entries[key][1].update(zip(ts.tolist(), values.tolist()))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

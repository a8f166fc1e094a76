"""Fixed, recorded subsets of a dataset split (the papers' "restricted test set")."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["Selection", "select"]


class Selection(str, Enum):
    """How a subset of ``n`` samples is taken from a split."""

    FIRST = "first"
    """The first ``n`` samples in file order (deterministic, no seed)."""
    SEEDED = "seeded"
    """``n`` samples drawn without replacement with a generator seeded by the task's ``data_seed``, kept in
    ascending index order."""


def select(n_total: int, n: int | None, how: str | Selection, seed: int, what: str) -> tuple[Tensor, str]:
    """Indices of the subset and a description of it for results (``"first 1000 of 10000"``).

    ``n=None`` (or ``n >= n_total`` with FIRST) takes the whole split.
    """
    try:
        how = Selection(how)
    except ValueError:
        raise ConfigError(f"unknown subset selection {how!r} for {what}; choose first or seeded") from None
    if n is not None and n < 1:
        raise ConfigError(f"{what} size must be >= 1 or None (the whole split), got {n}")
    if n is None or n >= n_total:
        if n is not None and n > n_total:
            raise ConfigError(f"{what} asks for {n} samples but the split has {n_total}; use at most {n_total}")
        return torch.arange(n_total), f"all {n_total}"
    if how is Selection.FIRST:
        return torch.arange(n), f"first {n} of {n_total}"
    generator = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n_total, generator=generator)[:n].sort().values
    return idx, f"seeded sample (data_seed {seed}) of {n} of {n_total}"

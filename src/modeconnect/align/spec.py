"""Permutation specs: which axes of which tensors move together when hidden units are reordered.

Hidden units (neurons, channels) of a network can be relabelled without changing its function, as long
as every tensor that indexes them is relabelled the same way. A :class:`PermutationSpec` records this,
after Git Re-Basin's ``PermutationSpec``: each *group* is one set of interchangeable units (the outputs of
a layer, or the residual stream that several layers write to), and lists every tensor axis that indexes
those units, by point key (``"fc1.weight"``, ``"buffer:bn1.running_mean"``) and axis number.

An axis may hold ``n * block`` entries arranged as ``n`` consecutive blocks of ``block``: the input axis of
the first ``Linear`` after ``Flatten`` on ``[N, C, H, W]`` activations is ``C`` blocks of ``H * W`` (channel
major), and permuting channel ``c`` moves the whole block ``c``. Plain axes have ``block == 1``.

Convention: a permutation ``perm`` of group ``g`` takes unit ``perm[i]`` of the permuted point to position
``i`` (``new[..., i, ...] = old[..., perm[i], ...]``), so after alignment unit ``i`` of B is matched to unit
``i`` of A.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
>>> spec = SpecBuilder(net).layer("0", None, "h").layer("2", "h", None).build()
>>> spec.sizes
{'h': 3}
>>> [tuple(a) for a in spec.groups["h"]]
[('0.weight', 0, 1), ('0.bias', 0, 1), ('2.weight', 1, 1)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..batchnorm import buffer_key, is_buffer_key
from ..errors import ArchitectureMismatch, ConfigError

__all__ = ["Axis", "PermutationSpec", "SpecBuilder", "apply_permutations", "random_permutations",
           "identity_permutations", "block_index"]


class Axis(NamedTuple):
    """One tensor axis that indexes the units of a group."""

    key: str
    """Point key of the tensor (a parameter name or a ``buffer:`` key)."""
    axis: int
    """Which axis of that tensor."""
    block: int = 1
    """Entries per unit along the axis (``H * W`` after ``Flatten``; 1 otherwise)."""


@dataclass(frozen=True)
class PermutationSpec:
    """Groups of interchangeable units and the tensor axes each group permutes.

    ``groups[g]`` lists the axes of group ``g`` and ``sizes[g]`` its number of units. ``probes[g]`` names
    the modules whose outputs carry the group's units on axis 1 (used by activation matching; a residual
    stream can list several and their correlations are summed). A tensor not mentioned is never permuted
    (inputs and outputs of the network keep their order).
    """

    groups: dict[str, tuple[Axis, ...]]
    sizes: dict[str, int]
    probes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.groups) != set(self.sizes):
            raise ConfigError("every group of a permutation spec needs a size, and every size a group")
        for g, axes in self.groups.items():
            if self.sizes[g] < 1:
                raise ConfigError(f"group {g!r} has size {self.sizes[g]}; sizes must be >= 1")
            if any(a.block < 1 for a in axes):
                raise ConfigError(f"group {g!r}: block sizes must be >= 1")
        unknown = [g for g in self.probes if g not in self.groups]
        if unknown:
            raise ConfigError(f"probes given for unknown group(s) {', '.join(map(repr, unknown))}")

    def axes_of(self, key: str) -> dict[int, tuple[str, int]]:
        """``{axis: (group, block)}`` for every permuted axis of tensor ``key``."""
        out = {}
        for g, axes in self.groups.items():
            for a in axes:
                if a.key == key:
                    out[a.axis] = (g, a.block)
        return out

    def check(self, point: Mapping[str, Tensor], name: str = "point") -> None:
        """Raise :class:`ArchitectureMismatch` unless every listed axis exists in ``point`` with the right size.

        Parameters must be present; ``buffer:`` keys may be absent (a point under the ``recompute`` or
        ``freeze`` BatchNorm policy does not carry the statistics), and are then simply not permuted.
        """
        problems = []
        for g, axes in self.groups.items():
            n = self.sizes[g]
            for a in axes:
                if a.key not in point:
                    if not is_buffer_key(a.key):
                        problems.append(f"{a.key!r} (group {g!r}) is not in the {name}")
                    continue
                shape = tuple(point[a.key].shape)
                if not -len(shape) <= a.axis < len(shape) or shape[a.axis] != n * a.block:
                    problems.append(f"{a.key!r} has shape {shape}: axis {a.axis} should hold {n} unit(s) of group "
                                    f"{g!r}" + (f" x {a.block} entries" if a.block > 1 else ""))
        if problems:
            raise ArchitectureMismatch("the permutation spec does not fit the " + name + ": " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (inverse: :meth:`from_dict`)."""
        return {g: {"size": self.sizes[g], "axes": [list(a) for a in axes], "probes": list(self.probes.get(g, ()))}
                for g, axes in self.groups.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PermutationSpec:
        groups = {g: tuple(Axis(str(k), int(ax), int(b)) for k, ax, b in d["axes"]) for g, d in data.items()}
        return cls(groups, {g: int(d["size"]) for g, d in data.items()},
                   {g: tuple(d["probes"]) for g, d in data.items() if d.get("probes")})


def block_index(perm: Tensor, block: int) -> Tensor:
    """Indices that move whole blocks: ``[perm[0]*block, ..., perm[0]*block + block - 1, perm[1]*block, ...]``."""
    if block == 1:
        return perm
    return (perm.unsqueeze(1) * block + torch.arange(block, device=perm.device)).reshape(-1)


def permute_tensor(t: Tensor, axes: Mapping[int, tuple[str, int]], perms: Mapping[str, Tensor],
                   skip_axis: int | None = None) -> Tensor:
    """``t`` with each listed axis reordered by its group's permutation (``skip_axis`` left as it is)."""
    for axis, (g, block) in axes.items():
        if axis != skip_axis and g in perms:
            t = torch.index_select(t, axis, block_index(perms[g], block).to(t.device))
    return t


def apply_permutations(point: Mapping[str, Tensor], spec: PermutationSpec, perms: Mapping[str, Tensor]
                       ) -> dict[str, Tensor]:
    """A new point with every axis of ``spec`` reordered (same function as ``point``; see the module docstring).

    Groups missing from ``perms`` stay in their order. Keys the spec does not list are copied unchanged.
    """
    spec.check(point)
    for g, p in perms.items():
        n = spec.sizes.get(g)
        if n is None:
            raise ConfigError(f"permutation given for unknown group {g!r}; groups: {', '.join(spec.groups)}")
        p = torch.as_tensor(p)
        if p.shape != (n,) or not torch.equal(torch.sort(p).values, torch.arange(n, device=p.device)):
            raise ConfigError(f"the permutation of group {g!r} is not a permutation of its {n} units")
    perms = {g: torch.as_tensor(p, dtype=torch.long) for g, p in perms.items()}
    return {k: permute_tensor(v, spec.axes_of(k), perms).clone() for k, v in point.items()}


def identity_permutations(spec: PermutationSpec) -> dict[str, Tensor]:
    return {g: torch.arange(n) for g, n in spec.sizes.items()}


def random_permutations(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """One uniformly random permutation per group, drawn from a private generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return {g: torch.randperm(n, generator=generator) for g, n in spec.sizes.items()}


class SpecBuilder:
    """Declare a network's permutation groups layer by layer (needed for residual networks).

    Each method names a module of ``model`` and the group(s) of its input and output units (``None``: not
    permuted, e.g. the network's input or output). Which tensors exist (bias, BatchNorm statistics) is read
    from the module, so the same calls work with and without biases. A skip connection ``h + f(h)`` forces
    the last layer of ``f`` to write into the group of ``h``: give both the same group name.
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = dict(model.named_modules())
        self._groups: dict[str, list[Axis]] = {}
        self._sizes: dict[str, int] = {}
        self._probes: dict[str, list[str]] = {}

    def _module(self, name: str) -> nn.Module:
        if name not in self._modules:
            raise ConfigError(f"the model has no module {name!r}")
        return self._modules[name]

    def axis(self, key: str, axis: int, group: str | None, block: int = 1) -> SpecBuilder:
        """Low level: axis ``axis`` of the tensor with point key ``key`` indexes group ``group``."""
        if group is None:
            return self
        self._groups.setdefault(group, []).append(Axis(key, axis, block))
        return self

    def _size(self, group: str | None, n: int, where: str) -> None:
        if group is None:
            return
        known = self._sizes.setdefault(group, n)
        if known != n:
            raise ArchitectureMismatch(f"{where} gives group {group!r} {n} units, but it already has {known}")

    def layer(self, name: str, group_in: str | None, group_out: str | None, *, in_block: int = 1) -> SpecBuilder:
        """A ``Linear`` or ``Conv*d`` (weight ``[out, in, ...]``, optional bias ``[out]``).

        ``in_block`` is the number of input entries per unit of ``group_in`` (``H * W`` for the first
        ``Linear`` after ``Flatten``). The module becomes the default activation probe of ``group_out``.
        """
        module = self._module(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or weight.ndim < 2:
            raise ConfigError(f"module {name!r} ({type(module).__name__}) has no [out, in, ...] weight")
        if group_in is not None:
            if weight.shape[1] % in_block:
                raise ArchitectureMismatch(f"{name}.weight has {weight.shape[1]} inputs, not a multiple of "
                                           f"in_block={in_block}")
            self._size(group_in, weight.shape[1] // in_block, name)
        self._size(group_out, weight.shape[0], name)
        self.axis(f"{name}.weight", 1, group_in, in_block).axis(f"{name}.weight", 0, group_out)
        if isinstance(getattr(module, "bias", None), Tensor):
            self.axis(f"{name}.bias", 0, group_out)
        if group_out is not None and group_out not in self._probes:
            self._probes[group_out] = [name]
        return self

    linear = layer
    conv = layer

    def norm(self, name: str, group: str | None) -> SpecBuilder:
        """A per-unit normalisation (``BatchNorm*d``, 1-D ``LayerNorm``): its weight, bias and running statistics."""
        module = self._module(name)
        for attr in ("weight", "bias"):
            t = getattr(module, attr, None)
            if isinstance(t, Tensor):
                self._size(group, t.shape[0], name)
                self.axis(f"{name}.{attr}", 0, group)
        for attr in ("running_mean", "running_var"):
            t = getattr(module, attr, None)
            if isinstance(t, Tensor):
                self._size(group, t.shape[0], name)
                self.axis(buffer_key(f"{name}.{attr}"), 0, group)
        return self

    def probe(self, group: str, *names: str) -> SpecBuilder:
        """Modules whose outputs (units on axis 1) activation matching correlates for ``group`` (replaces the
        default; several names are summed, e.g. every place a residual stream is read)."""
        for n in names:
            self._module(n)
        self._probes[group] = list(names)
        return self

    def build(self) -> PermutationSpec:
        missing = [g for g in self._probes if g not in self._groups]
        if missing:
            raise ConfigError(f"probe(s) given for group(s) without axes: {', '.join(missing)}")
        return PermutationSpec({g: tuple(a) for g, a in self._groups.items()}, dict(self._sizes),
                               {g: tuple(p) for g, p in self._probes.items()})


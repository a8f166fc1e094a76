"""Hidden units of a model, by name, and the row/column operations on them that Kuditipudi et al. use.

A *hidden unit* is one output of a ``Linear`` layer, or one output channel of a ``Conv2d``, that feeds
another layer (Remark 1: channel-wise for convolutions). Its *incoming* weights are its row of the
layer's weight (``weight[u]``, for a convolution the whole ``[in, kh, kw]`` filter) and its bias; its
*outgoing* weights are its column(s) of the next layer's weight (``next.weight[:, u]``; after a
``Flatten`` from a convolution, the ``H * W`` consecutive columns of channel ``u``). The last
``Linear`` is the *top layer* (the paper's ``A_d``): the loss is convex in its weights.

Between two layers only unit-wise modules are allowed (elementwise activations, channel-wise pooling,
``Flatten`` from a convolution to a ``Linear``, ``Identity``), so that a unit's output reaches the
next layer only through its own outgoing weights; anything else (BatchNorm, Dropout, attention, ...) is
refused with a :class:`~modeconnect.errors.ConfigError` naming the layer.

>>> import torch
>>> from torch import nn
>>> spec = hidden_units(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
>>> [(layer.name, layer.size) for layer in spec.layers], spec.top
([('0', 4), ('2', 5)], ('4.weight', '4.bias'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["Param", "HiddenLayer", "UnitSpec", "hidden_units", "UNITWISE_MODULES", "as_index",
           "in_rows", "set_in_rows", "zero_units", "scale_outgoing", "zero_outgoing", "copy_tower",
           "reroute_top"]

UNITWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
"""Modules that act on each unit (channel) separately, allowed between two weight layers."""


@dataclass(frozen=True)
class Param:
    """One parameter tensor touched by a unit: along ``dim``, unit ``u`` owns entries ``u*group .. u*group+group-1``."""

    key: str
    dim: int
    group: int = 1


@dataclass(frozen=True)
class HiddenLayer:
    """A hidden layer: the module's name, its width and where its units' weights live."""

    name: str
    size: int
    incoming: tuple[Param, ...]
    """The layer's weight (dim 0) and bias (dim 0), if any: the units' rows."""
    outgoing: Param
    """The next layer's weight along dim 1: the units' columns."""

    @property
    def weight(self) -> str:
        return self.incoming[0].key


@dataclass(frozen=True)
class UnitSpec:
    """The hidden layers of a model in order and the keys of its top (output) layer."""

    layers: tuple[HiddenLayer, ...]
    top: tuple[str, ...]
    """Weight (and bias) of the last Linear layer, the paper's A_d."""

    @property
    def depth(self) -> int:
        """The paper's d: hidden layers + 1."""
        return len(self.layers) + 1

    @property
    def sizes(self) -> list[int]:
        return [layer.size for layer in self.layers]

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of a (possibly nested) ``nn.Sequential`` in execution order."""
    if not isinstance(module, nn.Sequential):
        where = f"module {prefix!r}" if prefix else "the model"
        raise ConfigError(f"{where} is a {type(module).__name__}, not an nn.Sequential: dropout stability and the "
                          "Kuditipudi path need to know which layer feeds which, so only (nested) nn.Sequential "
                          "models of Linear / Conv2d layers and unit-wise modules are supported")
    out = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        out += _leaves(child, full) if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def hidden_units(model: nn.Module) -> UnitSpec:
    """The hidden layers of ``model`` (see the module docstring), or a ConfigError naming the layer that is not
    supported."""
    leaves = _leaves(model)
    weights: list[tuple[str, nn.Module, int | None]] = []  # (name, module, flatten group for the next Linear)
    last_kind = None
    pending_flatten = False
    for name, module in leaves:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if isinstance(module, nn.Conv2d):
                if module.groups != 1:
                    raise ConfigError(f"layer {name!r} (Conv2d with groups={module.groups}) is not supported: a "
                                      "grouped convolution does not connect every channel to every channel")
                if last_kind == "linear":
                    raise ConfigError(f"layer {name!r} (Conv2d) follows a Linear layer; not supported")
                if pending_flatten:
                    raise ConfigError(f"layer {name!r} (Conv2d) follows a Flatten; not supported")
            if isinstance(module, nn.Linear) and last_kind == "conv" and not pending_flatten:
                raise ConfigError(f"layer {name!r} (Linear) follows a convolution without an nn.Flatten")
            weights.append((name, module, None))
            last_kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            pending_flatten = False
        elif isinstance(module, nn.Flatten):
            if last_kind != "conv":
                raise ConfigError(f"layer {name!r} (Flatten) is supported only between a Conv2d and a Linear layer")
            pending_flatten = True
        elif isinstance(module, UNITWISE_MODULES):
            if pending_flatten and isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                                       nn.AdaptiveMaxPool2d)):
                raise ConfigError(f"layer {name!r} ({type(module).__name__}) after a Flatten is not supported")
        else:
            raise ConfigError(f"layer {name!r} ({type(module).__name__}) is not supported: hidden units are the "
                              "outputs of Linear layers and Conv2d channels, joined only by unit-wise modules "
                              f"({', '.join(sorted({t.__name__ for t in UNITWISE_MODULES}))}, Flatten)")
    if not weights or not isinstance(weights[-1][1], nn.Linear):
        raise ConfigError("the model must end with a Linear (top) layer: the paper's step (a) interpolates the top "
                          "layer, where the loss is convex")
    if len(weights) < 2:
        raise ConfigError("the model has no hidden layer (a single Linear layer): there are no units to drop")
    layers = []
    for (name, module, _), (next_name, next_module, _) in zip(weights[:-1], weights[1:]):
        size = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        fan_in = next_module.in_features if isinstance(next_module, nn.Linear) else next_module.in_channels
        if fan_in % size:
            raise ConfigError(f"layer {next_name!r} takes {fan_in} inputs, not a multiple of the {size} units of "
                              f"layer {name!r}")
        group = fan_in // size
        if group != 1 and not (isinstance(module, nn.Conv2d) and isinstance(next_module, nn.Linear)):
            raise ConfigError(f"layer {next_name!r} takes {fan_in} inputs from the {size} units of {name!r}")
        incoming = (Param(f"{name}.weight", 0),) + ((Param(f"{name}.bias", 0),) if module.bias is not None else ())
        layers.append(HiddenLayer(name, size, incoming, Param(f"{next_name}.weight", 1, group)))
    top_name, top_module, _ = weights[-1]
    top = (f"{top_name}.weight",) + ((f"{top_name}.bias",) if top_module.bias is not None else ())
    return UnitSpec(tuple(layers), top)


# -- operations on points ----------------------------------------------------------------------
def as_index(units: Sequence[int] | Tensor, device=None) -> Tensor:
    """Unit indices as a long tensor (a bool mask gives its True positions)."""
    t = torch.as_tensor(units, device=device)
    if t.dtype == torch.bool:
        t = t.nonzero().reshape(-1)
    return t.to(torch.long).reshape(-1)


def _expand(units: Tensor, group: int) -> Tensor:
    if group == 1:
        return units
    return (units.unsqueeze(1) * group + torch.arange(group, device=units.device)).reshape(-1)


def _clone_keys(point: Mapping[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    out = dict(point)
    for k in keys:
        out[k] = point[k].clone()
    return out


def in_rows(point: Mapping[str, Tensor], layer: HiddenLayer, units) -> dict[str, Tensor]:
    """The incoming weights (rows) and biases of ``units`` of ``layer``, keyed by parameter."""
    idx = as_index(units, point[layer.weight].device)
    return {p.key: point[p.key].index_select(0, idx) for p in layer.incoming}


def set_in_rows(point: Mapping[str, Tensor], layer: HiddenLayer, units,
                rows: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``point`` with the rows of ``units`` of ``layer`` replaced by ``rows`` (as from :func:`in_rows`)."""
    out = _clone_keys(point, [p.key for p in layer.incoming])
    idx = as_index(units, point[layer.weight].device)
    for p in layer.incoming:
        out[p.key].index_copy_(0, idx, rows[p.key].to(out[p.key].dtype))
    return out


def zero_units(point: Mapping[str, Tensor], layer: HiddenLayer, units) -> dict[str, Tensor]:
    """A copy of ``point`` with the incoming weights and biases of ``units`` of ``layer`` set to zero."""
    out = _clone_keys(point, [p.key for p in layer.incoming])
    idx = as_index(units, point[layer.weight].device)
    for p in layer.incoming:
        out[p.key].index_fill_(0, idx, 0.0)
    return out


def scale_outgoing(point: Mapping[str, Tensor], layer: HiddenLayer, units, factor: float,
                   rows=None) -> dict[str, Tensor]:
    """A copy of ``point`` with the outgoing weights of ``units`` multiplied by ``factor`` (in every row of the
    next layer, or only in ``rows`` of it)."""
    p = layer.outgoing
    out = _clone_keys(point, [p.key])
    w = out[p.key]
    cols = _expand(as_index(units, w.device), p.group)
    if rows is None:
        w.index_copy_(1, cols, w.index_select(1, cols) * factor)
    else:
        r = as_index(rows, w.device)
        block = w.index_select(0, r)
        block.index_copy_(1, cols, block.index_select(1, cols) * factor)
        w.index_copy_(0, r, block)
    return out


def zero_outgoing(point: Mapping[str, Tensor], layer: HiddenLayer, units, rows=None) -> dict[str, Tensor]:
    """A copy of ``point`` with the outgoing weights of ``units`` set to zero (in every row, or only in ``rows``)."""
    p = layer.outgoing
    out = _clone_keys(point, [p.key])
    w = out[p.key]
    cols = _expand(as_index(units, w.device), p.group)
    if rows is None:
        w.index_fill_(1, cols, 0.0)
    else:
        r = as_index(rows, w.device)
        block = w.index_select(0, r)
        block.index_fill_(1, cols, 0.0)
        w.index_copy_(0, r, block)
    return out


def copy_tower(point: Mapping[str, Tensor], spec: UnitSpec, rows: Mapping[int, tuple[Tensor, Tensor]],
               inputs: Mapping[int, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Copy units into other slots, layer by layer: a new (idle) copy of part of the network.

    ``rows[li] = (src, dst)``: unit ``dst[k]`` of hidden layer ``li`` (0-based) gets the incoming weights and bias of
    unit ``src[k]``. ``inputs[li - 1] = (src, dst)``, when given, re-routes those rows' inputs: the copied row reads
    from unit ``dst[k]`` of layer ``li - 1`` what the original read from ``src[k]``, and nothing else (the copy
    reads the copy below it). Without ``inputs[li - 1]`` the row is copied as it is. All rows are read from
    ``point`` before any is written.
    """
    out = dict(point)
    for li, (src, dst) in rows.items():
        layer = spec.layers[li]
        old = in_rows(point, layer, src)
        if li - 1 in inputs:
            prev = spec.layers[li - 1]
            g = prev.outgoing.group
            w = old[layer.weight]
            csrc, cdst = (_expand(as_index(x, w.device), g) for x in inputs[li - 1])
            new = torch.zeros_like(w)
            new.index_copy_(1, cdst, w.index_select(1, csrc))
            old[layer.weight] = new
        out = set_in_rows(out, layer, dst, old)
    return out


def reroute_top(point: Mapping[str, Tensor], spec: UnitSpec, src, dst) -> dict[str, Tensor]:
    """A copy of ``point`` whose top layer reads from units ``dst`` of the last hidden layer what it read from
    ``src`` (and nothing from ``src``): the paper's type (a) step between two copies of a network."""
    layer = spec.layers[-1]
    p = layer.outgoing
    out = _clone_keys(point, [p.key])
    w_old, w = point[p.key], out[p.key]
    csrc, cdst = (_expand(as_index(x, w.device), p.group) for x in (src, dst))
    values = w_old.index_select(1, csrc)
    w.index_fill_(1, csrc, 0.0)
    w.index_copy_(1, cdst, values)
    return out

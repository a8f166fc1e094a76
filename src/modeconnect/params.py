"""Parameter points: a model's parameters as ``dict[str, Tensor]``.

A *point* is keyed by ``named_parameters()`` names, plus ``buffer:<name>`` keys for the model's buffers
(see :mod:`modeconnect.batchnorm`): buffers shape the model's function, so a point that left them out
would be evaluated with somebody else's. Distances skip buffers. A flat vector view is a
derived convenience (:func:`flatten` / :func:`unflatten`). Interpolation uses
the convention ``interpolate(a, b, 0) == a`` and ``interpolate(a, b, 1) == b``.

>>> import torch
>>> net = torch.nn.Linear(2, 1)
>>> a = point_from_module(net)
>>> b = {k: v + 1.0 for k, v in a.items()}
>>> round(distance(a, b) ** 2)        # 3 parameters, each moved by 1
3
>>> mid = interpolate(a, b, 0.5)
>>> torch.allclose(mid["bias"], a["bias"] + 0.5)
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.spectral_norm import SpectralNorm as HookSpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as HookWeightNorm

from .batchnorm import (
    BatchNormPolicy,
    as_policy,
    batchnorm_layers,
    is_buffer_key,
    plain_buffers_point,
    split_point,
    statistic_names,
    statistics_point,
)
from .errors import ArchitectureMismatch, ConfigError, UnsupportedModelError

Point = dict[str, Tensor]

__all__ = [
    "Point",
    "point_from_module",
    "load_point_into",
    "check_compatible",
    "check_supported_module",
    "flatten",
    "unflatten",
    "interpolate",
    "interpolate_many",
    "distance",
    "stack_points",
    "permute_hidden_units",
]


def check_supported_module(module: nn.Module, batchnorm: str | BatchNormPolicy | None = None) -> None:
    """Refuse a module whose function a point cannot describe faithfully.

    That is: a module without data (``meta`` tensors); a module with a hook-based reparametrization, whose
    weight is an attribute rewritten by a forward pre-hook rather than a function of the point (it breaks
    copying the model and leaks tensors out of batched evaluation); and a module with BatchNorm running
    statistics unless a :class:`~modeconnect.batchnorm.BatchNormPolicy` says what those statistics are along
    a path (they depend on the parameters, so interpolating the parameters alone leaves them meaningless).
    """
    _check_materialised(module)
    _check_no_hook_reparametrization(module)
    if as_policy(batchnorm) is not None:
        return
    layers = batchnorm_layers(module)
    if layers:
        name, sub = layers[0]
        raise UnsupportedModelError(
            f"layer {name or '<root>'!r} ({type(sub).__name__}) keeps running statistics that depend on "
            "the parameters; choose a BatchNorm policy for them: batchnorm='recompute' (recompute them from "
            "training batches at every point), 'interpolate' (carry them in the point) or 'freeze' (fixed "
            "statistics), e.g. Energy(..., batchnorm='recompute') and point_from_module(model, batchnorm=...); "
            "or build the model with track_running_stats=False, or replace the layer (e.g. by GroupNorm/LayerNorm)"
        )


def _check_materialised(module: nn.Module) -> None:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        shown = ", ".join(meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise UnsupportedModelError(
            f"{type(module).__name__} has no data: its tensors ({shown}) are on the 'meta' device, which "
            "records shapes only; materialise the model first, e.g. model.to_empty(device='cpu') and then "
            "model.load_state_dict(trained_weights)"
        )


def _check_no_hook_reparametrization(module: nn.Module) -> None:
    # the hook objects are only reachable through the private hook dictionary; torch has no public listing
    for name, sub in module.named_modules():
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, HookSpectralNorm):
                kind, fix = "spectral_norm", "remove_spectral_norm"
            elif isinstance(hook, HookWeightNorm):
                kind, fix = "weight_norm", "remove_weight_norm"
            else:
                continue
            raise UnsupportedModelError(
                f"layer {name or '<root>'!r} ({type(sub).__name__}) uses the hook-based torch.nn.utils.{kind} on "
                f"{hook.name!r}: that weight is a plain attribute rewritten by a forward pre-hook, so it cannot be "
                f"evaluated at many parameter points; use torch.nn.utils.parametrizations.{kind} instead (its state "
                f"is ordinary parameters and buffers), or fold it into the weight with torch.nn.utils.{fix}(layer) "
                "(same function, plain weights)"
            )


def point_from_module(module: nn.Module, batchnorm: str | BatchNormPolicy | None = None) -> Point:
    """Copy a module's parameters and buffers into a new point (detached clones; the module is untouched).

    Buffers that are not BatchNorm statistics are always added under ``buffer:<name>`` keys (they are part
    of the function and no policy recomputes them). For a model with BatchNorm running statistics a
    ``batchnorm`` policy is required: with ``"interpolate"`` the statistics are added under ``buffer:``
    keys too; with ``"recompute"`` or ``"freeze"`` the point leaves them out. Models without such layers
    ignore ``batchnorm``.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> list(point_from_module(net, batchnorm="interpolate"))
    ['0.weight', '0.bias', '1.weight', '1.bias', 'buffer:1.running_mean', 'buffer:1.running_var']
    """
    check_supported_module(module, batchnorm)
    point = {name: p.detach().clone() for name, p in module.named_parameters()}
    if not point:
        raise ArchitectureMismatch(f"{type(module).__name__} has no parameters: there is nothing to connect")
    point.update(plain_buffers_point(module))
    if as_policy(batchnorm) is BatchNormPolicy.INTERPOLATE:
        point.update(statistics_point(module))
    return point


def load_point_into(module: nn.Module, point: Mapping[str, Tensor]) -> nn.Module:
    """Write a point into ``module`` in place (for exporting a bead as a model).

    The buffers the point carries (``buffer:`` keys) are written into the module's buffers. A point of a
    BatchNorm model without its statistics leaves the module's statistics as they are: set them with
    ``Energy.statistics_at(point)`` first when the energy recomputes them.
    """
    params, buffers = split_point(point)
    policy = BatchNormPolicy.INTERPOLATE if set(buffers) & set(statistic_names(module)) else BatchNormPolicy.RECOMPUTE
    check_compatible(point_from_module(module, batchnorm=policy), point, "module", "point")
    own = dict(module.named_buffers())
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(params[name])
        for name, value in buffers.items():
            own[name].copy_(value)
    return module


def check_compatible(a: Mapping[str, Tensor], b: Mapping[str, Tensor], name_a: str = "a", name_b: str = "b") -> None:
    """Raise :class:`ArchitectureMismatch` naming every difference in names, shapes or dtypes."""
    problems = []
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if only_a:
        problems.append(f"only in {name_a}: {', '.join(only_a)}")
    if only_b:
        problems.append(f"only in {name_b}: {', '.join(only_b)}")
    for k in a:
        if k in b:
            if tuple(a[k].shape) != tuple(b[k].shape):
                problems.append(f"{k}: shape {tuple(a[k].shape)} in {name_a} vs {tuple(b[k].shape)} in {name_b}")
            elif a[k].dtype != b[k].dtype:
                problems.append(f"{k}: dtype {a[k].dtype} in {name_a} vs {b[k].dtype} in {name_b}")
    hint = ""
    if (only_a or only_b) and all(is_buffer_key(k) for k in only_a + only_b):
        hint = ("; points of a model with buffers carry them under 'buffer:' keys: build both with "
                "point_from_module(model, batchnorm=...) or Energy.point_of(model)")
    if problems:
        raise ArchitectureMismatch(
            f"{name_a} and {name_b} do not have the same architecture ("
            + "; ".join(problems)
            + "): both must come from the same model class with the same sizes" + hint
        )


def flatten(point: Mapping[str, Tensor]) -> Tensor:
    """Concatenate all parameters (in key order) into one vector."""
    return torch.cat([v.reshape(-1) for v in point.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Point:
    """Inverse of :func:`flatten` with names and shapes taken from ``like``."""
    total = sum(v.numel() for v in like.values())
    if vector.ndim != 1 or vector.numel() != total:
        raise ArchitectureMismatch(f"vector of shape {tuple(vector.shape)} cannot fill {total} parameters")
    out, offset = {}, 0
    for k, v in like.items():
        out[k] = vector[offset : offset + v.numel()].view_as(v).clone()
        offset += v.numel()
    return out


def _lerp(a: Tensor, b: Tensor, weight: float | Tensor) -> Tensor:
    """``torch.lerp`` for floating tensors; integer and boolean tensors (counters, indices, masks) are
    interpolated in float64 and rounded, so they keep their dtype, equal values stay as they are and
    ``weight`` 0 and 1 give exactly ``a`` and ``b``."""
    if a.is_floating_point() or a.is_complex():
        return torch.lerp(a, b, weight)
    weight = torch.as_tensor(weight, dtype=torch.float64, device=a.device)
    mixed = torch.lerp(a.double(), b.double(), weight).round().to(a.dtype)
    mixed = torch.where(weight == 0, a, torch.where(weight == 1, b, mixed))
    return torch.where(a == b, a, mixed)


def interpolate(a: Mapping[str, Tensor], b: Mapping[str, Tensor], t: float) -> Point:
    """The point ``(1 - t) * a + t * b`` (integer buffers rounded: see :func:`_lerp`)."""
    return {k: _lerp(a[k], b[k], float(t)) for k in a}


def interpolate_many(a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Sequence[float] | Tensor) -> Point:
    """A batch of points along the segment: each value gets a leading dimension of ``len(ts)``.

    Entry ``i`` is bitwise equal to ``interpolate(a, b, ts[i])`` (same ``torch.lerp`` formula), so in
    particular ``t = 0`` and ``t = 1`` give exactly ``a`` and ``b``.
    """
    first = next(iter(a.values()))
    ts = torch.as_tensor(ts, dtype=first.dtype, device=first.device).reshape(-1)
    out = {}
    for k in a:
        shape = (-1,) + (1,) * a[k].ndim
        exact = a[k].is_floating_point() or a[k].is_complex()
        weight = ts.to(a[k].dtype if exact else torch.float64).view(shape)
        out[k] = _lerp(a[k].unsqueeze(0), b[k].unsqueeze(0), weight)
    return out


def distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Euclidean distance over all parameters, accumulated in float64.

    Buffers a point may carry (``buffer:`` keys) are not parameters and do not count.
    """
    total = 0.0
    for k in a:
        if is_buffer_key(k):
            continue
        total += float(torch.sum((a[k].double() - b[k].double()) ** 2))
    return math.sqrt(total)


def stack_points(points: Sequence[Mapping[str, Tensor]]) -> Point:
    """Stack points into one batched point with a leading dimension."""
    if not points:
        raise ValueError("cannot stack an empty list of points")
    return {k: torch.stack([p[k] for p in points]) for k in points[0]}


def permute_hidden_units(
    point: Mapping[str, Tensor], layer: str, next_layer: str, permutation: Sequence[int] | Tensor
) -> Point:
    """Permute the output units of ``layer`` and the matching inputs of ``next_layer``.

    ``layer`` and ``next_layer`` are module-name prefixes (``"0"`` for
    ``"0.weight"``). Rows of ``{layer}.weight`` (and ``{layer}.bias`` if
    present) are permuted, and so are the columns (dimension 1) of
    ``{next_layer}.weight``. For a network whose units between the two layers
    act elementwise (ReLU, sigmoid, ...) the function is unchanged. Works for
    ``nn.Linear`` and for ``nn.Conv*d`` channels.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> p = permute_hidden_units(point_from_module(net), "0", "2", [1, 0, 2])
    >>> torch.equal(p["0.weight"][0], net[0].weight[1].detach())
    True
    """
    out = {k: v.clone() for k, v in point.items()}
    w_in, w_out = f"{layer}.weight", f"{next_layer}.weight"
    for key in (w_in, w_out):
        if key not in point:
            raise ArchitectureMismatch(f"no parameter named {key!r}; available: {', '.join(point)}")
    n = point[w_in].shape[0]
    perm = torch.as_tensor(permutation, dtype=torch.long).reshape(-1)
    if perm.numel() != n or not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ConfigError(f"permutation {perm.tolist()} is not a permutation of the {n} units of layer {layer!r}")
    if point[w_out].ndim < 2 or point[w_out].shape[1] != n:
        raise ArchitectureMismatch(
            f"{w_out} has shape {tuple(point[w_out].shape)}: its dimension 1 should match the {n} units of {layer!r}"
        )
    out[w_in] = point[w_in][perm]
    if f"{layer}.bias" in point:
        out[f"{layer}.bias"] = point[f"{layer}.bias"][perm]
    out[w_out] = point[w_out][:, perm]
    return out

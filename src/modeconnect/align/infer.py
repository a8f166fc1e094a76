"""Inferring a permutation spec from an ``nn.Sequential`` chain, and the default REPAIR sites.

In a plain chain every ``Linear``/``Conv*d`` opens a new group of units (its outputs), which the layers
after it carry (BatchNorm, LayerNorm, elementwise activations, pooling, dropout) until the next
``Linear``/``Conv*d`` reads them along its input axis. The outputs of the last such layer are the
network's outputs and stay in order. ``Flatten`` after a convolution turns ``C`` channels into ``C``
channel-major blocks of ``H * W`` features; the block size is read off the next layer that sees the flat
features (``in_features / C``), so no input shape is needed.

Anything else (a residual block, a custom module, a grouped or transposed convolution, a parametrized
weight) cannot be inferred safely: :class:`~modeconnect.errors.UnsupportedModelError` names the layer, and
the caller should build a spec with :class:`~modeconnect.align.spec.SpecBuilder` instead.

>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
...                     nn.Linear(4 * 2 * 2, 5), nn.Tanh(), nn.Linear(5, 2))
>>> spec = infer_spec(net)
>>> spec.sizes
{'0': 4, '4': 5}
>>> [tuple(a) for a in spec.groups["0"]][-1]     # the first Linear reads 4 blocks of 2 * 2
('4.weight', 1, 4)
>>> default_repair_sites(net)
['0', '4']
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..batchnorm import buffer_key
from ..errors import UnsupportedModelError
from .spec import Axis, PermutationSpec

__all__ = ["infer_spec", "default_repair_sites"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# unit-wise maps: each unit's output depends on that unit alone (dropout drops units, in eval it is identity)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
                nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Tanhshrink,
                nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
# per-channel spatial maps: they change H, W but never mix channels
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad2d, nn.ConstantPad2d)

_HINT = ("; build the spec explicitly with modeconnect.align.SpecBuilder(model) and pass spec=... "
         "(see docs/align.md)")


@dataclass
class _Walk:
    groups: dict[str, list[Axis]]
    sizes: dict[str, int]
    probes: dict[str, tuple[str, ...]]
    sites: list[tuple[str, str]]  # (site module, group it writes)


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        out += _leaves(child, full + ".") if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def _refuse(name: str, module: nn.Module, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot infer a permutation spec at layer {name!r} ({type(module).__name__}): "
                                 f"{why}{_HINT}")


def _check_tensors(name: str, module: nn.Module, params: set[str], buffers: set[str]) -> None:
    own_p = {n for n, _ in module.named_parameters()}
    own_b = {n for n, _ in module.named_buffers()}
    if not own_p <= params or not own_b <= buffers:
        extra = sorted((own_p - params) | (own_b - buffers))
        raise _refuse(name, module, f"unexpected tensors {', '.join(extra)} (a parametrization or custom state?)")


def _walk(model: nn.Module) -> _Walk:
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(f"cannot infer a permutation spec for {type(model).__name__}: only nn.Sequential "
                                    f"chains of Linear/Conv/BatchNorm/activation/pooling/Flatten layers are "
                                    f"inferred automatically{_HINT}")
    w = _Walk({}, {}, {}, [])
    group: str | None = None  # the group whose units the current activation carries
    layout: str | None = None  # "flat" ([N, F]) or "spatial" ([N, C, ...]); None before the first layer
    block: int | None = 1  # entries per unit along the feature axis; None: after Flatten, not yet known
    site: str | None = None  # the last per-unit affine map of the current group (where REPAIR rescales)
    probe_open = False

    def feature_axis(key: str, axis: int, n_features: int, name: str, module: nn.Module) -> Axis:
        nonlocal block
        if block is None:
            if n_features % w.sizes[group]:
                raise _refuse(name, module, f"{n_features} flattened features are not a whole number of blocks of "
                                            f"the {w.sizes[group]} channels before Flatten")
            block = n_features // w.sizes[group]
        elif n_features != w.sizes[group] * block:
            raise _refuse(name, module, f"expects {n_features} features, the layer before gives "
                                        f"{w.sizes[group] * block}")
        return Axis(key, axis, block)

    for name, m in _leaves(model):
        if isinstance(m, _LAYERS):
            _check_tensors(name, m, {"weight", "bias"}, set())
            is_conv = not isinstance(m, nn.Linear)
            if is_conv and (m.groups != 1 or getattr(m, "transposed", False)):
                raise _refuse(name, m, "grouped or transposed convolutions tie units across groups")
            if (layout == "flat" and is_conv) or (layout == "spatial" and not is_conv):
                raise _refuse(name, m, "a Linear on a [N, C, H, W] activation (or a Conv on a flat one) mixes axes "
                                       "other than the channels; put nn.Flatten() before the Linear")
            if group is not None:
                w.groups[group].append(feature_axis(f"{name}.weight", 1, m.weight.shape[1], name, m))
            group, layout, block, site, probe_open = name, "spatial" if is_conv else "flat", 1, name, True
            w.groups[group], w.sizes[group], w.probes[group] = [Axis(f"{name}.weight", 0)], m.weight.shape[0], (name,)
            if m.bias is not None:
                w.groups[group].append(Axis(f"{name}.bias", 0))
        elif isinstance(m, _NORMS + (nn.LayerNorm, nn.PReLU)):
            _check_tensors(name, m, {"weight", "bias"}, {"running_mean", "running_var", "num_batches_tracked"})
            if isinstance(m, nn.LayerNorm) and (layout == "spatial" or len(m.normalized_shape) != 1):
                raise _refuse(name, m, "LayerNorm is only inferred over the last axis of flat [N, F] features")
            if isinstance(m, nn.PReLU) and m.num_parameters == 1:
                continue
            if group is None:
                continue  # normalising the network's input: nothing to permute
            for attr in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, attr, None)
                if t is not None:
                    key = buffer_key(f"{name}.{attr}") if attr.startswith("running") else f"{name}.{attr}"
                    w.groups[group].append(feature_axis(key, 0, t.shape[0], name, m))
            if isinstance(m, nn.PReLU):
                site = None  # a nonlinearity: no longer an affine image of the layer's output
            elif site is not None and isinstance(getattr(m, "weight", None), nn.Parameter):
                site = name  # rescaling the affine normalisation is the same as rescaling its input
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise _refuse(name, m, "only Flatten(start_dim=1, end_dim=-1) is inferred")
            if layout == "spatial":
                layout, block, probe_open = "flat", None, False
        elif isinstance(m, _ELEMENTWISE + _POOLS):
            if isinstance(m, _POOLS) and layout == "flat":
                raise _refuse(name, m, "pooling a flat [N, F] activation mixes units")
            if isinstance(m, _ELEMENTWISE):
                site = None
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)) and m.dim in ((1, -1) if layout == "flat" else (1,)):
            pass  # a softmax over the units only reorders with them
        else:
            raise _refuse(name, m, "not a layer whose effect on hidden units is known (residual blocks and custom "
                                   "modules need an explicit spec)")
        if site is not None and group is not None and isinstance(m, _LAYERS + _NORMS + (nn.LayerNorm,)):
            w.sites = [s for s in w.sites if s[1] != group] + [(site, group)]
        if group is not None and probe_open and not isinstance(m, nn.Flatten):
            pre = [s for s, g in w.sites if g == group]  # the pre-activation (last affine map), then the output
            w.probes[group] = tuple(dict.fromkeys(pre + [name]))
    if group is not None:  # the network's outputs keep their order
        del w.groups[group], w.sizes[group], w.probes[group]
        w.sites = [s for s in w.sites if s[1] != group]
    return w


def infer_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of an ``nn.Sequential`` chain (see the module docstring for what is supported).

    Groups are named after the layer that produces them (``"conv1"``, ``"fc1"``, ``"0"``). Each group has two
    activation probes: its pre-activation (the REPAIR site) and the last module before the next layer (after
    the activation and pooling); activation matching adds their correlations, so units that are dead on the
    batch (constant after a ReLU, correlated with nothing) are still paired by their pre-activations.
    """
    w = _walk(model)
    return PermutationSpec({g: tuple(a) for g, a in w.groups.items()}, dict(w.sizes), dict(w.probes))


def default_repair_sites(model: nn.Module) -> list[str]:
    """Where REPAIR rescales a chain: for every hidden layer, its last per-unit affine map before the
    nonlinearity (the ``Linear``/``Conv`` itself, or the affine BatchNorm/LayerNorm right after it)."""
    return [s for s, _ in _walk(model).sites]

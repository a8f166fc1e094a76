"""Which networks the proof can bound: the network read as a chain of supported layers.

A network is read as a chain of layers (:func:`plan`): an ``nn.Sequential`` (nested ones included), or
any module whose ``forward`` calls its submodules one after the other (traced with ``torch.fx``; the
chain may also call ``torch.flatten`` and the functional ReLU/sigmoid/tanh). Anything else -- a layer
type not listed in :data:`SUPPORTED`, a branch, a ``view`` -- raises :class:`Unsupported` naming it,
and the caller falls back to the sampled certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..batchnorm import BatchNormPolicy, buffer_key

__all__ = ["Unsupported", "Step", "plan", "pool_before_relu", "parameter_keys", "SUPPORTED"]

SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout)
"""Layer types the bound propagates through (Dropout and Identity are the identity in eval mode)."""

_FUNCTIONS = {torch.flatten: "flatten", torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid",
              F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh"}
_METHODS = {"flatten": "flatten", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


class Unsupported(Exception):
    """The network has a part the bound cannot propagate through; the message names it."""


@dataclass
class Step:
    """One layer of the chain: its qualified name (parameter prefix) and the module."""

    name: str
    layer: nn.Module

    @property
    def prefix(self) -> str:
        return f"{self.name}." if self.name else ""

    def describe(self, reason: str = "") -> str:
        return f"{self.name or '<root>'} ({type(self.layer).__name__}{', ' + reason if reason else ''})"


def _check_leaf(step: Step, policy: BatchNormPolicy | None) -> None:
    layer = step.layer
    if parametrize.is_parametrized(layer):
        raise Unsupported(step.describe("parametrized weights"))
    if layer._forward_hooks or layer._forward_pre_hooks:
        raise Unsupported(step.describe("forward hooks"))
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise Unsupported(step.describe(f"padding_mode={layer.padding_mode!r}"))
    if isinstance(layer, nn.MaxPool2d) and (layer.ceil_mode or layer.return_indices):
        raise Unsupported(step.describe("ceil_mode or return_indices"))
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not layer.track_running_stats:
            raise Unsupported(step.describe("no running statistics: it normalises with batch statistics"))
        if policy not in (BatchNormPolicy.FREEZE, BatchNormPolicy.INTERPOLATE):
            raise Unsupported(step.describe(f"under the {getattr(policy, 'value', policy)} BatchNorm policy; "
                                            "freeze and interpolate are supported"))


def plan(model: nn.Module, policy: BatchNormPolicy | None = None, name: str = "") -> list[Step]:
    """The chain of supported layers that ``model`` computes, or :class:`Unsupported` naming the first part
    that is not one."""
    if isinstance(model, SUPPORTED):
        step = Step(name, model)
        _check_leaf(step, policy)
        return [step]
    prefix = f"{name}." if name else ""
    if type(model) is nn.Sequential:
        return [s for child_name, child in model.named_children() for s in plan(child, policy, prefix + child_name)]
    if not list(model.children()):
        raise Unsupported(Step(name, model).describe())
    return _traced(model, policy, name)


def _traced(model: nn.Module, policy, name: str) -> list[Step]:
    """A module with its own ``forward``: accepted if ``torch.fx`` sees a plain chain of layers."""
    prefix = f"{name}." if name else ""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 -- any tracing failure means "cannot read this forward"
        for sub_name, sub in model.named_modules():  # name an unsupported layer inside, if there is one
            if sub is not model and not list(sub.children()) and not isinstance(sub, SUPPORTED):
                raise Unsupported(Step(prefix + sub_name, sub).describe()) from None
        raise Unsupported(Step(name, model).describe(f"forward could not be traced: {type(exc).__name__}")) from None
    steps: list[Step] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise Unsupported(Step(name, model).describe("more than one input"))
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise Unsupported(Step(name, model).describe("the output is not the end of the chain"))
            break
        if not node.args or node.args[0] is not previous or any(
                isinstance(a, torch.fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            raise Unsupported(Step(name, model).describe(f"{node.name} is not a chain step"))
        if node.op == "call_module":
            steps += plan(model.get_submodule(node.target), policy, prefix + node.target)
        elif node.op == "call_function" and _FUNCTIONS.get(node.target):
            steps.append(_functional(node, _FUNCTIONS[node.target], name))
        elif node.op == "call_method" and node.target in _METHODS:
            steps.append(_functional(node, _METHODS[node.target], name))
        else:
            raise Unsupported(Step(name, model).describe(f"{node.op} {getattr(node.target, '__name__', node.target)}"))
        previous = node
    return steps


def _functional(node, kind: str, name: str) -> Step:
    if kind == "flatten":
        args = list(node.args[1:])
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return Step(name, nn.Flatten(start, end))
    return Step(name, {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[kind]())


def pool_before_relu(steps: list[Step]) -> list[Step]:
    """The chain with every ``ReLU -> MaxPool2d`` pair swapped: ``max(relu(z)) = relu(max(z))`` exactly (both
    are exact, monotone operations, also in floating point), and the ReLU's relaxation then runs on the
    pooled, k*k times smaller activation."""
    out = list(steps)
    for i in range(len(out) - 1):
        if type(out[i].layer) is nn.ReLU and isinstance(out[i + 1].layer, nn.MaxPool2d):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def parameter_keys(steps: list[Step], policy: BatchNormPolicy | None) -> list[str]:
    """The point keys the chain reads (weights, biases, and interpolated BatchNorm statistics)."""
    keys = []
    for step in steps:
        keys += [step.prefix + n for n, _ in step.layer.named_parameters(recurse=False)]
        if isinstance(step.layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and policy is BatchNormPolicy.INTERPOLATE:
            keys += [buffer_key(step.prefix + "running_mean"), buffer_key(step.prefix + "running_var")]
    return keys

"""One forward pass of a model at a point, watching (or rewriting) the outputs of chosen modules.

Shared by activation matching (which reads hidden activations) and REPAIR (which rescales them). The
model is a private eval-mode copy driven by ``functional_call``, so the caller's module is never touched;
the point supplies every parameter and the buffers it carries.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..batchnorm import batch_statistics_mode, fresh_statistics, split_point, statistic_names
from ..errors import ConfigError, UnsupportedModelError

__all__ = ["private_copy", "forward_watching", "channel_rows"]

Watcher = Callable[[str, Tensor], Tensor | None]


def private_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy without gradients (activations and statistics must not depend on the train flag)."""
    try:
        out = copy.deepcopy(model).eval()
    except RuntimeError as exc:
        raise UnsupportedModelError(f"the model cannot be copied ({exc})") from exc
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def channel_rows(y: Tensor, n: int, name: str) -> Tensor:
    """Module output ``[N, n, ...]`` as ``[n, N * ...]`` (one row of samples per unit)."""
    if y.ndim < 2 or y.shape[1] != n:
        raise ConfigError(f"module {name!r} outputs shape {tuple(y.shape)}; expected its {n} units on axis 1")
    return y.transpose(0, 1).reshape(n, -1)


def forward_watching(model: nn.Module, point: Mapping[str, Tensor], inputs: Tensor, names: list[str],
                     watch: Watcher, *, allow_batch_statistics: bool, purpose: str) -> Tensor:
    """Run ``model`` (a :func:`private_copy`) at ``point`` on ``inputs``; ``watch(name, output)`` sees the output
    of each module in ``names`` and may return a replacement.

    BatchNorm layers use the statistics the point carries (``buffer:`` keys). A point without them (the
    ``recompute``/``freeze`` policies) is run with the batch's own statistics if ``allow_batch_statistics``,
    else refused. Each watched module must run exactly once per forward.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ConfigError(f"{purpose}: the model has no module(s) {', '.join(map(repr, missing))}")
    params, buffers = split_point(point)
    stats = statistic_names(model)
    carried = all(s in buffers for s in stats)
    if not carried and not allow_batch_statistics:
        raise ConfigError(f"{purpose} needs the BatchNorm statistics inside the points (batchnorm='interpolate' "
                          "policy: point_from_module(model, batchnorm='interpolate'))")
    calls = dict.fromkeys(names, 0)

    def hook_for(name: str):
        def hook(_module, _args, output):
            calls[name] += 1
            if not isinstance(output, Tensor):
                raise ConfigError(f"{purpose}: module {name!r} does not return a single tensor")
            return watch(name, output)
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    ref = next(iter(params.values()))
    x = inputs.to(ref.device, ref.dtype) if inputs.is_floating_point() else inputs.to(ref.device)
    try:
        with torch.no_grad():
            if carried:
                out = functional_call(model, {**params, **buffers}, (x,))
            else:
                with batch_statistics_mode(model):
                    out = functional_call(model, {**params, **buffers, **fresh_statistics(model, ref)}, (x,))
    finally:
        for h in handles:
            h.remove()
    wrong = {n: c for n, c in calls.items() if c != 1}
    if wrong:
        raise ConfigError(f"{purpose}: module(s) {wrong} ran that many times in one forward; each watched module "
                          "must run exactly once (give a module used once, e.g. a separate activation instance)")
    return out

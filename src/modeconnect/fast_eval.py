"""Fast paths of :class:`~modeconnect.energy.Energy`: small MLPs as batched matmuls, bit-identical pooling.

**Batched matmuls** (``Strategy.MATMUL``). For an ``nn.Sequential`` of ``Linear`` layers and elementwise
activations (optionally after ``Flatten`` layers, applied once to the shared input), a chunk of ``P``
points is evaluated with one matmul per layer over all of them: activations are kept as ``[P, width,
N]`` (samples last, so each matmul's long dimension is the samples), the first layer is a single ``mm``
of the stacked weights ``[P * out, in]`` with the shared inputs ``[in, N]``, later layers are ``baddbmm``
of ``[P, out, in]`` with ``[P, in, N]``. On the paper's 1-4-4-1 MLP this is 3-4x faster than ``vmap``
over ``functional_call``, which spends its time in ``bmm`` calls with inner dimension 1 or 4 laid out
``[P, N, width]``. Sums are taken in the evaluation dtype in a different order than ``F.linear`` takes
them, so values agree with the loop to rounding (float64 tests: 1e-12 relative), not bit for bit.

**Pooling.** :func:`fast_copy` replaces every plain ``nn.MaxPool2d(2)`` of the energy's private copy of
the model by :class:`~modeconnect.models.pooling.MaxPool2x2` (bit-identical, several times faster
without autograd), so that user models benefit as the papers' convnets do.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1))
>>> plan = MatmulPlan.of(net)
>>> points = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in net.state_dict().items()}
>>> x = torch.rand(5, 1)
>>> out = plan.outputs(points, x)
>>> out.shape, torch.allclose(out[1], net(x).detach())
(torch.Size([3, 5, 1]), True)
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import vmap

from .metrics import Metric, metric_sum
from .models.pooling import MaxPool2x2

__all__ = ["MatmulPlan", "ELEMENTWISE", "MATMUL_CACHE_BYTES", "fast_copy", "lerp_points"]

MATMUL_CACHE_BYTES = 2**20
"""Most bytes of one layer's activations per MATMUL chunk, so that a chunk's activations stay in cache. Measured
on the 1-4-4-1 MLP (1,000 samples, 100 points, one thread, timed between loss-landscapes calls): 0.90 ms in
chunks of 50 points (800 KB), 0.92 ms in chunks of 25, 1.2 ms in one chunk of 100 (1.6 MB)."""

ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
               nn.Hardtanh, nn.ReLU6, nn.Mish, nn.CELU, nn.SELU, nn.Softsign, nn.Tanhshrink, nn.Hardsigmoid,
               nn.Hardswish, nn.LogSigmoid)
"""Activations applied element by element (exact types: a subclass may override ``forward``)."""


@dataclass(frozen=True)
class MatmulPlan:
    """The layers of an MLP the batched-matmul path understands: flatten steps, then Linear/activation steps."""

    flatten: tuple[nn.Flatten, ...]
    layers: tuple[tuple[str, nn.Module], ...]
    """``(name, module)`` in order; ``name`` prefixes the Linear layers' parameter keys."""

    @classmethod
    def of(cls, model: nn.Module) -> MatmulPlan | None:
        """The plan for ``model``, or None when it is not a plain MLP (no buffers, one Linear at least)."""
        if type(model) is not nn.Sequential or any(True for _ in model.buffers()):
            return None
        flatten, layers, seen_linear = [], [], False
        for name, module in model.named_children():
            kind = type(module)
            if kind is nn.Flatten and not layers:
                if module.start_dim != 1 or module.end_dim != -1:
                    return None
                flatten.append(module)
            elif kind is nn.Linear:
                layers.append((name, module))
                seen_linear = True
            elif kind in ELEMENTWISE and seen_linear:
                layers.append((name, module))
            else:
                return None
        return cls(tuple(flatten), tuple(layers)) if seen_linear else None

    @property
    def widest(self) -> int:
        """The widest activation (features), for sizing chunks."""
        return max(m.out_features for _, m in self.layers if isinstance(m, nn.Linear))

    def outputs(self, points: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Model outputs ``[P, N, out]`` at ``P`` points (values with a leading point dimension) on inputs ``x``."""
        return self._outputs(points, x).transpose(1, 2)

    def _outputs(self, points: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """The outputs as computed, ``[P, out, N]`` (samples last)."""
        for f in self.flatten:
            x = f(x)
        h = None  # [P, width, N]
        for name, module in self.layers:
            if not isinstance(module, nn.Linear):
                in_place = _IN_PLACE.get(type(module))
                h = in_place(h) if in_place is not None else module(h)
                continue
            w = points[f"{name}.weight"]
            bias = points.get(f"{name}.bias")
            n_points, n_out = w.shape[0], w.shape[1]
            if h is None:  # the inputs are shared by every point: one mm of the stacked weights
                stacked = w.reshape(n_points * n_out, w.shape[2])
                h = (stacked @ x.T if bias is None else
                     torch.addmm(bias.reshape(n_points * n_out, 1), stacked, x.T)).view(n_points, n_out, -1)
            else:
                h = torch.bmm(w, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, h)
        return h


    def sums(self, metric: Metric, points: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """Per-point sums of ``metric`` over the samples (as :func:`~modeconnect.metrics.metric_sum`), ``[P]``."""
        out = self._outputs(points, x)  # [P, out, N]
        if metric in (Metric.MSE, Metric.MAE):
            if out.shape[1:] != y.shape[::-1]:
                metric_sum(metric, out[0].T, y)  # raises the shape error
            diff = out - y.T  # the per-sample mean over outputs, summed over samples: the sum over both / out
            per_unit = diff.square_() if metric is Metric.MSE else diff.abs_()
            return per_unit.sum(dim=(1, 2)) / out.shape[1]
        return vmap(lambda o: metric_sum(metric, o, y))(out.transpose(1, 2))


def lerp_points(a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Tensor) -> dict[str, Tensor]:
    """:func:`~modeconnect.params.interpolate_many` for points whose values are all floating tensors, with one
    weight per dtype and rank: the same ``torch.lerp`` calls, so the same bits, with less per-call overhead
    (which was a fifth of a 100-point segment of the 1-4-4-1 MLP)."""
    base = ts.to(next(iter(a.values())).dtype)  # as interpolate_many: the first value's dtype, then each one's
    views: dict[tuple, Tensor] = {}
    out = {}
    for k, v in a.items():
        w = views.get((v.dtype, v.ndim))
        if w is None:
            w = views[v.dtype, v.ndim] = base.to(v.dtype).view((-1,) + (1,) * v.ndim)
        out[k] = torch.lerp(v.unsqueeze(0), b[k].unsqueeze(0), w)
    return out


_IN_PLACE = {nn.ReLU: torch.relu_, nn.Sigmoid: torch.sigmoid_, nn.Tanh: torch.tanh_}
"""Activations applied in place to the matmul path's own intermediate tensors (same kernels, no allocation)."""


def fast_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for evaluation without autograd, computing the same values faster.

    Same parameters, buffers and names; three rewrites, each exact:

    * every plain ``nn.MaxPool2d(2)`` becomes :class:`~modeconnect.models.pooling.MaxPool2x2`;
    * in an ``nn.Sequential``, ``ReLU`` followed by a 2x2 max-pool becomes pool then ``ReLU``
      (``max(relu(a), relu(b)) = relu(max(a, b))``: the ReLU then runs on a quarter of the elements);
    * a ``ReLU`` that follows a ``Linear``, ``Conv2d`` or pool in an ``nn.Sequential`` runs in place (its
      input is a fresh tensor nobody else reads).
    """
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.MaxPool2d and _is_plain_2x2(child):
                setattr(parent, name, MaxPool2x2())
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        items = list(seq._modules.items())  # (name, module): names travel with their modules
        for i in range(len(items) - 1):
            if type(items[i][1]) is nn.ReLU and type(items[i + 1][1]) is MaxPool2x2:
                items[i], items[i + 1] = items[i + 1], items[i]
        for i in range(1, len(items)):
            if type(items[i][1]) is nn.ReLU and type(items[i - 1][1]) in _FRESH:
                items[i] = (items[i][0], nn.ReLU(inplace=True))
        seq._modules = OrderedDict(items)
    return model


_FRESH = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, MaxPool2x2)
"""Layers whose output is a new tensor (so a ReLU after them may overwrite it)."""


def _is_plain_2x2(pool: nn.MaxPool2d) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return (pair(pool.kernel_size) == (2, 2) and pair(stride) == (2, 2) and pair(pool.padding) == (0, 0)
            and pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)

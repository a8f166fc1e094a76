"""Fast paths of :class:`~modeconnect.energy.Energy`: small MLPs as batched matmuls, bit-identical pooling.

**Batched matmuls** (``Strategy.MATMUL``). For an ``nn.Sequential`` of ``Linear`` layers and elementwise
activations (optionally after ``Flatten`` layers, applied once to the shared input), a chunk of ``P``
points is evaluated with one matmul per layer over all of them. Each layer's weight and bias are kept as
one *augmented* matrix ``[W | b]`` of shape ``[P, out, in + 1]`` and each activation as ``[P, width + 1,
N]`` with a last row of ones (samples last, so each matmul's long dimension is the samples): the bias is
then part of the matmul's sum instead of a broadcast copy per layer, and the activation writes straight
into the rows above the ones. The first layer is a single ``mm`` of the stacked weights ``[P * out, in +
1]`` with the shared inputs ``[in + 1, N]``, later layers are ``bmm``. Along a segment the augmented
matrices of the two ends are built once and interpolated per chunk with the same ``torch.lerp`` as
:func:`~modeconnect.params.interpolate_many` (so each point's weights and biases are the same bits).

On the paper's 1-4-4-1 MLP this is several times faster than ``vmap`` over ``functional_call``, which
spends its time in ``bmm`` calls with inner dimension 1 or 4 laid out ``[P, N, width]``. Sums are taken
in the evaluation dtype in a different order than ``F.linear`` takes them (the bias is added inside the
sum), so values agree with the loop to rounding (float64 tests: 1e-12 relative), not bit for bit.

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
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.func import vmap

from .metrics import Metric, metric_sum
from .models.pooling import MaxPool2x2

__all__ = ["MatmulPlan", "MatmulWorkspace", "ELEMENTWISE", "MATMUL_CACHE_BYTES", "fast_copy"]

MATMUL_CACHE_BYTES = 2**20
"""Most bytes of one layer's (augmented) activations per MATMUL chunk, so that a chunk's activations stay in
cache. Measured on the 1-4-4-1 MLP (1,000 samples, 100 points): one thread, 0.66 ms in chunks of 25 points,
0.69 ms in chunks of 50, 1.4 ms in one chunk of 100 (2 MB per activation); two threads, 0.45 ms in chunks
of 25 or 50, 1.4 ms in one chunk of 100."""

ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
               nn.Hardtanh, nn.ReLU6, nn.Mish, nn.CELU, nn.SELU, nn.Softsign, nn.Tanhshrink, nn.Hardsigmoid,
               nn.Hardswish, nn.LogSigmoid)
"""Activations applied element by element (exact types: a subclass may override ``forward``)."""

Weights = tuple[Tensor, ...]
"""The augmented matrices ``[W | b]`` of every Linear layer of a chunk of ``P`` points, ``[P, out, in + 1]``."""


@dataclass(frozen=True)
class MatmulPlan:
    """The layers of an MLP the batched-matmul path understands: flatten steps, then Linear/activation steps."""

    flatten: tuple[nn.Flatten, ...]
    layers: tuple[tuple[str, nn.Module], ...]
    """``(name, module)`` in order; ``name`` prefixes the Linear layers' parameter keys."""

    @classmethod
    def of(cls, model: nn.Module) -> MatmulPlan | None:
        """The plan for ``model``, or None when it is not a plain MLP (no buffers, one Linear at least, one
        parameter dtype)."""
        if (type(model) is not nn.Sequential or any(True for _ in model.buffers())
                or len({p.dtype for p in model.parameters()}) > 1):
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

    @cached_property
    def linears(self) -> tuple[tuple[str, nn.Linear], ...]:
        """``(name, module)`` of the Linear layers, in order."""
        return tuple((name, m) for name, m in self.layers if isinstance(m, nn.Linear))

    # -- weights ----------------------------------------------------------------------------------------
    def stack(self, points: Mapping[str, Tensor]) -> Weights:
        """The augmented matrices of ``P`` points (values with a leading point dimension)."""
        out = []
        for name, _ in self.linears:
            w = points[f"{name}.weight"]
            bias = points.get(f"{name}.bias")
            column = torch.zeros_like(w[..., :1]) if bias is None else bias.unsqueeze(-1)
            out.append(torch.cat([w, column], dim=-1))
        return tuple(out)

    def ends(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> tuple[Weights, Weights]:
        """The augmented matrices of a segment's two ends (each with a point dimension of 1), built once."""
        return (self.stack({k: v.unsqueeze(0) for k, v in a.items()}),
                self.stack({k: v.unsqueeze(0) for k, v in b.items()}))

    @staticmethod
    def between(ends: tuple[Weights, Weights], ts: Tensor) -> Weights:
        """The augmented matrices at ``(1 - t) a + t b`` for each ``t``: ``torch.lerp`` with the weight
        ``ts`` in the parameters' dtype, as :func:`~modeconnect.params.interpolate_many` (the same bits)."""
        first, last = ends
        w = ts.to(first[0].dtype).view(-1, 1, 1)
        return tuple(torch.lerp(lo, hi, w) for lo, hi in zip(first, last))

    def inputs(self, x: Tensor) -> Tensor:
        """The shared inputs, flattened and augmented with a row of ones: ``[in + 1, N]``."""
        for f in self.flatten:
            x = f(x)
        return torch.cat([x.T, torch.ones_like(x[:, :1]).T])

    # -- forward ----------------------------------------------------------------------------------------
    def outputs(self, points: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Model outputs ``[P, N, out]`` at ``P`` points (values with a leading point dimension) on inputs ``x``."""
        return self._outputs(self.stack(points), self.inputs(x), MatmulWorkspace()).transpose(1, 2)

    def _outputs(self, weights: Weights, x_aug: Tensor, space: MatmulWorkspace) -> Tensor:
        """The outputs as computed, ``[P, out, N]`` (samples last, a view of a ``space`` buffer), from
        augmented weights and inputs. Every intermediate is written into ``space``'s buffers."""
        n = x_aug.shape[1]
        h = None  # [P, width + 1, N], the last row ones
        last = len(weights) - 1
        for j, (w, acts) in enumerate(zip(weights, self._activation_groups)):
            n_points, n_out = w.shape[0], w.shape[1]
            z = space.scratch((n_points, n_out, n), x_aug)
            if h is None:  # the inputs are shared by every point: one mm of the stacked matrices
                torch.mm(w.reshape(n_points * n_out, w.shape[2]), x_aug, out=z.view(n_points * n_out, n))
            else:
                torch.bmm(w, h, out=z)
            if j == last:
                for module in acts:
                    z = _apply_in_place(module, z)
                return z
            h = space.augmented(j, (n_points, n_out + 1, n), x_aug)
            for module in acts[:-1]:
                z = _apply_in_place(module, z)
            _apply_into(acts[-1] if acts else None, z, h[:, :n_out])
        raise AssertionError("a plan has at least one Linear layer")

    @cached_property
    def _activation_groups(self) -> tuple[tuple[nn.Module, ...], ...]:
        """The activations after each Linear layer, up to the next one."""
        groups: list[list[nn.Module]] = []
        for _, module in self.layers:
            if isinstance(module, nn.Linear):
                groups.append([])
            else:
                groups[-1].append(module)
        return tuple(tuple(g) for g in groups)

    def sums(self, metric: Metric, weights: Weights, x_aug: Tensor, y: Tensor, space: MatmulWorkspace) -> Tensor:
        """Per-point sums of ``metric`` over the samples (as :func:`~modeconnect.metrics.metric_sum`), ``[P]``,
        from augmented weights (:meth:`stack`, :meth:`between`) and inputs (:meth:`inputs`)."""
        out = self._outputs(weights, x_aug, space)  # [P, out, N], scratch
        if metric in (Metric.MSE, Metric.MAE):
            if out.shape[1:] != y.shape[::-1]:
                metric_sum(metric, out[0].T, y)  # raises the shape error
            diff = out.sub_(y.T)  # the per-sample mean over outputs, summed over samples: the sum over both / out
            per_unit = diff.square_() if metric is Metric.MSE else diff.abs_()
            return per_unit.sum(dim=(1, 2)) / out.shape[1]
        return vmap(lambda o: metric_sum(metric, o, y))(out.transpose(1, 2))


class MatmulWorkspace:
    """The memory :class:`MatmulPlan` writes its intermediates into, reused from chunk to chunk and call to call.

    A fresh tensor per layer and chunk (about 1 MB on the 1-4-4-1 MLP) costs the allocator's page faults
    whenever other work ran in between (100-300 faults per segment, measured after a loss-landscapes call).
    Here every layer's matmul output shares one scratch (``scratch``), and each layer's augmented activation
    has its own buffer whose row of ones is written once, when the buffer is made (``augmented``; filling
    it again per chunk cost 15 us a layer). Buffers grow to the largest chunk asked for (a chunk's
    activation is at most :data:`MATMUL_CACHE_BYTES`, or the energy's memory budget) and are kept until the
    workspace is dropped. Not for concurrent use: one workspace per evaluating thread.
    """

    def __init__(self) -> None:
        self._flat: Tensor | None = None
        self._augmented: dict[int, Tensor] = {}

    def scratch(self, shape: tuple[int, int, int], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape`` with ``like``'s dtype and device; the next call overwrites it."""
        numel = shape[0] * shape[1] * shape[2]
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)

    def augmented(self, layer: int, shape: tuple[int, int, int], like: Tensor) -> Tensor:
        """Layer ``layer``'s ``[P, rows, N]`` activation buffer, its last row ones (callers write only the rows
        above it)."""
        buf = self._augmented.get(layer)
        if (buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = self._augmented[layer] = torch.empty(shape, dtype=like.dtype, device=like.device)
            buf[:, -1].fill_(1)
        return buf[: shape[0]]


_IN_PLACE = {nn.ReLU: torch.relu_, nn.Sigmoid: torch.sigmoid_, nn.Tanh: torch.tanh_}
"""Activations applied in place to the matmul path's own intermediate tensors (same kernels, no allocation)."""

_INTO = {nn.ReLU: lambda z, out: torch.clamp_min(z, 0, out=out), nn.Sigmoid: lambda z, out: torch.sigmoid(z, out=out),
         nn.Tanh: lambda z, out: torch.tanh(z, out=out)}
"""Activations written straight into the rows of an augmented activation (``relu`` is ``clamp_min(0)`` in ATen)."""


def _apply_in_place(module: nn.Module, z: Tensor) -> Tensor:
    in_place = _IN_PLACE.get(type(module))
    return in_place(z) if in_place is not None else module(z)


def _apply_into(module: nn.Module | None, z: Tensor, out: Tensor) -> None:
    """Write ``module(z)`` (``z`` itself when ``module`` is None) into ``out``."""
    into = _INTO.get(type(module))
    if into is not None:
        into(z, out)
    else:
        out.copy_(z if module is None else module(z))


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

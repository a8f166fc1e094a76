"""The layer-by-layer propagation of Taylor models through a chain of supported layers (:mod:`.chain`).

Rounding: the energy evaluates the network in the model's floating-point format (float32 for the
tasks), and the bound is computed in another (float64 by default). Neither rounds outward. Instead every
affine layer widens its remainder by an *a priori* allowance: an inner product of length ``n`` plus a bias
computed in a format with unit roundoff ``u`` is off by at most ``gamma_(n+1) (|W| |x| + |b|)``
(``gamma_k = k u / (1 - k u)``, any summation order), and the weights themselves are off by a few
roundings of the interpolation. So a layer adds ``slack * (n + 4) * (u_model + u_compute) * (|W|max |x|max
+ |b|max)``, where ``|.|max`` are bounds over the whole sub-interval and ``slack`` (2 by default) covers
the second-order terms and the rounding of the bound's own remainder arithmetic. ReLU and max are exact in
any format; sigmoid, tanh, average pooling and BatchNorm get the analogous allowance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batchnorm import BatchNormPolicy, buffer_key
from . import taylor
from .chain import Step, Unsupported
from .taylor import Taylor

__all__ = ["Context", "propagate"]


@dataclass
class Context:
    """What one batch of sub-intervals propagates with."""

    params: dict[str, Taylor]
    """The parameters' Taylor models, ``[B, *shape]``."""
    absmax: dict[str, Tensor]
    """Bounds of ``|parameter|`` over the whole piece."""
    floors: dict[str, Tensor]
    """Least running variance over the piece's nodes (interpolated BatchNorm statistics)."""
    frozen: dict[str, Tensor]
    """Fixed BatchNorm statistics by buffer name (freeze policy)."""
    unit: float
    """``slack * (u_model + u_compute)``: the rounding allowance per operation, relative."""
    batch: int


# -- affine layers ----------------------------------------------------------------------------------


@dataclass
class _Ops:
    """A layer's linear map in the layouts the propagation needs (activations ``[N, B, ...]``)."""

    per_b: Callable[[Tensor, Tensor], Tensor]        # x [N, B, ...], w [B, ...]: sub-interval b with weight b
    shared: Callable[[Tensor, Tensor], Tensor]       # x [N, B, ...], w [...]
    exact: Callable[[Tensor, Tensor], Tensor]        # x [N, ...] (data), w [B, ...]
    exact_shared: Callable[[Tensor, Tensor], Tensor]  # x [N, ...], w [...] -> [N, 1, ...]


def _linear_ops() -> _Ops:
    def exact(x, w):
        out = F.linear(x, w.flatten(0, 1))
        return out.unflatten(-1, (w.shape[0], w.shape[1])).movedim(-2, 1)

    return _Ops(per_b=lambda x, w: torch.einsum("nb...i,boi->nb...o", x, w), shared=F.linear, exact=exact,
                exact_shared=lambda x, w: F.linear(x, w).unsqueeze(1))


def _conv_ops(layer: nn.Conv2d) -> _Ops:
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)

    def per_b(x, w):
        return torch.stack([F.conv2d(x[:, b], w[b], **kw) for b in range(w.shape[0])], 1)

    def shared(x, w):
        return F.conv2d(x.flatten(0, 1), w, **kw).unflatten(0, x.shape[:2])

    def exact(x, w):
        if layer.groups > 1:  # stacked filters would regroup the output channels: one call per sub-interval
            return torch.stack([F.conv2d(x, w[b], **kw) for b in range(w.shape[0])], 1)
        return F.conv2d(x, w.flatten(0, 1), **kw).unflatten(1, (w.shape[0], w.shape[1]))

    return _Ops(per_b=per_b, shared=shared, exact=exact, exact_shared=lambda x, w: F.conv2d(x, w, **kw).unsqueeze(1))


def _bias_view(t: Tensor, out_ndim: int, channel_last: bool) -> Tensor:
    """``[B, C]`` laid out to broadcast against ``[N, B, ...]`` (channels last for Linear, dim 2 for conv)."""
    if channel_last:
        return t.view(1, t.shape[0], *([1] * (out_ndim - 3)), t.shape[1])
    return t.view(1, t.shape[0], t.shape[1], *([1] * (out_ndim - 3)))


def _affine(x: Taylor | Tensor, step: Step, ctx: Context, ops: _Ops, fan_in: int, channel_last: bool) -> Taylor:
    """``W x + b`` with ``W = Wc + Wg s + E`` (|E| <= Wr) and ``x = xc + xg s + e`` (|e| <= xr).

    ``W x = Wc xc + (Wc xg + Wg xc) s + (Wg xg) s^2 + (Wc + Wg s) e + E x``: the ``s^2`` term, summed
    over the inputs first, is its centre plus its half (``s^2`` in [0, 1]); ``|(Wc + Wg s) e| <= (|Wc| +
    |Wg|) xr``; ``|E x| <= Wr |x|max``. Plus the rounding allowance (module docstring).
    """
    w = ctx.params[step.prefix + "weight"]
    rho = ctx.unit * (fan_in + 4)
    if isinstance(x, Tensor):  # the data: exact, shared by every sub-interval
        both = ops.exact(x, torch.cat([w.c, w.g]))
        c, g = both[:, : ctx.batch], both[:, ctx.batch:]
        size = x.abs()
        r = rho * ops.exact_shared(size, ctx.absmax[step.prefix + "weight"])
        if w.r is not None:
            r = r + ops.exact(size, w.r)
    else:
        n = x.c.shape[0]
        size = x.magnitude()
        stacked = x.c if x.g is None else torch.cat([x.c, x.g])
        cw, gw = ops.per_b(stacked, w.c), ops.per_b(stacked, w.g)
        c, g = cw[:n], gw[:n]
        r = rho * ops.shared(size, ctx.absmax[step.prefix + "weight"])
        if x.g is not None:
            g = g + cw[n:]
            q = gw[n:]
            c = c + q / 2
            r = r + q.abs() / 2
        if x.r is not None:
            r = r + ops.per_b(x.r, w.c.abs() + w.g.abs())
        if w.r is not None:
            r = r + ops.per_b(size, w.r)
    r = r.expand(c.shape).contiguous()  # the data's rounding term is shared by the sub-intervals
    bias = ctx.params.get(step.prefix + "bias")
    if bias is not None:
        def view(t):
            return _bias_view(t, c.ndim, channel_last)
        c = c + view(bias.c)
        g = g + view(bias.g)
        r = r + rho * view(ctx.absmax[step.prefix + "bias"].expand(ctx.batch, -1))
        if bias.r is not None:
            r = r + view(bias.r)
    return Taylor(c, g, r)


# -- other layers -----------------------------------------------------------------------------------


def _as_taylor(x: Taylor | Tensor, batch: int) -> Taylor:
    if isinstance(x, Taylor):
        return x
    return Taylor(x.unsqueeze(1).expand(x.shape[0], batch, *x.shape[1:]))


def _max_pool(x: Taylor, layer: nn.MaxPool2d) -> Taylor:
    """Each window's maximum: take the element ``j`` with the largest lower bound; then
    ``max_i z_i - z_j`` lies in ``[0, max(0, max_{i != j} upper(z_i - z_j))]`` (the differences taken as
    Taylor models, so shared ``s`` terms cancel). When that is 0 the window's maximum is ``z_j`` exactly."""
    n, b, ch, h, w = x.c.shape
    k = nn.modules.utils._pair(layer.kernel_size)
    stride = nn.modules.utils._pair(layer.stride if layer.stride is not None else layer.kernel_size)
    pad = nn.modules.utils._pair(layer.padding)
    dil = nn.modules.utils._pair(layer.dilation)
    out_h = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1

    def windows(t: Tensor, fill: float) -> Tensor:
        """``[n, b, ch, k*k, out_h*out_w]``; strided views (``F.unfold`` is ~100x slower on CPU)."""
        if pad[0] or pad[1]:
            t = F.pad(t.reshape(n, b * ch, h, w), (pad[1], pad[1], pad[0], pad[0]), value=fill).view(
                n, b, ch, h + 2 * pad[0], w + 2 * pad[1])
        span = [dil[i] * (k[i] - 1) + 1 for i in range(2)]
        t = t.unfold(3, span[0], stride[0]).unfold(4, span[1], stride[1])[..., :: dil[0], :: dil[1]]
        return t[:, :, :, :out_h, :out_w].reshape(n, b, ch, out_h * out_w, k[0] * k[1]).transpose(3, 4)

    c = windows(x.c, float("-inf"))
    g = windows(x.g, 0.0) if x.g is not None else torch.zeros_like(c)
    r = windows(x.r, 0.0) if x.r is not None else torch.zeros_like(c)
    j = (c - g.abs() - r).argmax(3, keepdim=True)
    cj, gj, rj = c.gather(3, j), g.gather(3, j), r.gather(3, j)
    gap = (c - cj) + (g - gj).abs() + r + rj
    gap = gap.scatter(3, j, float("-inf")).amax(3, keepdim=True).clamp(min=0)
    shape = (n, b, ch, out_h, out_w)
    return Taylor((cj + gap / 2).view(shape), None if x.g is None else gj.view(shape), (rj + gap / 2).view(shape))


def _batch_norm(x: Taylor, step: Step, ctx: Context, policy) -> Taylor:
    """Eval-mode BatchNorm ``(x - mean) * gamma / sqrt(var + eps) + beta`` with every factor a Taylor model
    (statistics fixed under freeze, interpolated with the parameters under interpolate)."""
    layer, p = step.layer, step.prefix
    extra = x.c.ndim - 3

    def channel(t: Taylor) -> Taylor:
        def view(v):
            return None if v is None else (v.view(1, 1, -1, *([1] * extra)) if v.ndim == 1
                                           else v.view(1, v.shape[0], v.shape[1], *([1] * extra)))
        return Taylor(view(t.c), view(t.g), view(t.r))

    if policy is BatchNormPolicy.INTERPOLATE:
        mean, var = ctx.params[buffer_key(p + "running_mean")], ctx.params[buffer_key(p + "running_var")]
        floor = ctx.floors[buffer_key(p + "running_var")]
    else:
        mean, var = Taylor(ctx.frozen[p + "running_mean"]), Taylor(ctx.frozen[p + "running_var"])
        floor = var.c.clamp(min=0)
    scale = taylor.inv_sqrt(var, layer.eps, floor)
    if layer.affine:
        scale = taylor.mul(ctx.params[p + "weight"], scale)
    centred = taylor.add(x, channel(mean), sign=-1.0)
    y = taylor.mul(centred, channel(scale))
    size = centred.magnitude() * channel(scale).magnitude()
    if layer.affine:
        shift = ctx.params[p + "bias"]
        y = taylor.add(y, channel(shift))
        size = size + channel(Taylor(shift.magnitude())).c
    return taylor.widen(y, ctx.unit * 10 * size)


def _flatten(x: Taylor | Tensor, layer: nn.Flatten, step: Step) -> Taylor | Tensor:
    offset = 1 if isinstance(x, Taylor) else 0
    ndim = (x.c.ndim if isinstance(x, Taylor) else x.ndim) - offset
    start = layer.start_dim % ndim
    end = layer.end_dim % ndim
    if start == 0:
        raise Unsupported(step.describe("flattens the batch dimension"))
    if isinstance(x, Tensor):
        return x.flatten(start, end)
    return x.map(lambda t: t.flatten(start + 1, end + 1))


def propagate(steps: list[Step], data: Tensor, ctx: Context, policy: BatchNormPolicy | None) -> Taylor:
    """The network's outputs over every sub-interval of the batch: ``[N, B, *outputs]``."""
    x: Taylor | Tensor = data
    for step in steps:
        layer = step.layer
        if isinstance(layer, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(layer, nn.Flatten):
            x = _flatten(x, layer, step)
        elif isinstance(layer, nn.Linear):
            x = _affine(x, step, ctx, _linear_ops(), layer.in_features + 1, channel_last=True)
        elif isinstance(layer, nn.Conv2d):
            fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1] + 1
            x = _affine(x, step, ctx, _conv_ops(layer), fan_in, channel_last=False)
        elif isinstance(x, Tensor) and isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
            x = layer(x)  # exact in any floating-point format
        else:
            x = _as_taylor(x, ctx.batch)
            x = _nonlinear(x, step, ctx, policy)
    return _as_taylor(x, ctx.batch)


def _nonlinear(x: Taylor, step: Step, ctx: Context, policy) -> Taylor:
    layer = step.layer
    if isinstance(layer, nn.ReLU):
        return taylor.relu(x)
    if isinstance(layer, nn.LeakyReLU):
        y = taylor.leaky_relu(x, layer.negative_slope)
        return taylor.widen(y, ctx.unit * 2 * y.magnitude())
    if isinstance(layer, (nn.Sigmoid, nn.Tanh)):
        y = taylor.sigmoid(x) if isinstance(layer, nn.Sigmoid) else taylor.tanh(x)
        return taylor.widen(y, ctx.unit * 4 * (y.magnitude() + 1e-30))
    if isinstance(layer, nn.MaxPool2d):
        return _max_pool(x, layer)
    if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        n, b = x.c.shape[:2]

        def pool(t):
            return layer(t.flatten(0, 1)).unflatten(0, (n, b))
        fan_in = x.c.shape[-1] * x.c.shape[-2] if isinstance(layer, nn.AdaptiveAvgPool2d) else \
            nn.modules.utils._pair(layer.kernel_size)[0] * nn.modules.utils._pair(layer.kernel_size)[1]
        y = x.map(pool)
        return taylor.widen(y, ctx.unit * (fan_in + 4) * pool(x.magnitude()))
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batch_norm(x, step, ctx, policy)
    raise Unsupported(step.describe())  # plan() lets nothing else through

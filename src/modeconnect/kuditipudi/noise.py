"""Noise stability of a trained network (Kuditipudi et al. 2019, Definitions 2-4 and Algorithm 1).

The network is a feed-forward stack of ``d`` weight layers (``Linear`` or ``Conv2d``) in the paper's
notation: ``x^0`` is the input, ``x^1 = A_1 x^0`` and ``x^i = A_i phi(x^{i-1})`` for ``2 <= i <= d``, where
``x^i`` is the vector *before* activation at layer ``i`` and ``phi`` is whatever sits between two weight
layers (``ReLU``, max/average pooling, ``Flatten``, ``Identity``: positively homogeneous and channel-wise).
Biases, when a model has them, are added to ``A_i`` applied to the input (the paper's nets have none).

Per sample ``x`` of a sample set ``S`` this module measures (see ``docs/noise_stability.md``):

* the layer cushion ``mu_i(x) = ||A_i phi(x^{i-1})|| / (||A_i||_F ||phi(x^{i-1})||)`` (``phi(x^0)`` read as
  ``x^0``; ``||A_i||_F`` is the Frobenius norm of the layer's linear operator, for a convolution the
  operator on the actual input size, not of the kernel);
* the interlayer cushion ``mu_{i,j}(x) = ||J^{i,j} x^i|| / (||J^{i,j}||_2 ||x^i||)`` with the spectral norm
  of the Jacobian of ``x^j`` w.r.t. ``x^i``, found by batched power iteration on ``J^T J`` with
  :func:`torch.func.jvp` / :func:`torch.func.vjp` (the Jacobian is never formed);
* the minimal interlayer cushion ``mu_{i->}(x) = min_{i <= j <= d} mu_{i,j}(x)`` (``mu_{i,i} = 1``);
* the activation contraction ``c_i(x) = ||x^i|| / ||phi(x^i)||`` (``1 <= i <= d-1``);
* the interlayer smoothness (Definition 3) under Algorithm 1's dropout (:func:`algorithm1_dropout`):
  for each draw, the largest ``rho`` satisfying both inequalities for every ``j``, ``t`` and both
  perturbed vectors; the network's ``rho`` is the largest value that at least half of the draws reach;

and from them the ``epsilon`` of Definition 4. :func:`noise_stability` returns a
:class:`NoiseStabilityReport` (per-layer min / median / max and every per-sample value) that
:meth:`~NoiseStabilityReport.to_dict` / :meth:`~NoiseStabilityReport.from_dict` round-trip through JSON.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
>>> report = noise_stability(net, torch.randn(5, 4), NoiseStabilityConfig(samples=5, dropout_draws=2))
>>> report.d, len(report.layer_cushion[1]), 0 < report.overall()["epsilon"] < float("inf")
(2, 5, True)
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp

from ..errors import ConfigError
from ..progress import open_task
from ..settings import from_dict, to_dict

__all__ = ["NoiseStabilityConfig", "NoiseStabilityReport", "LayerStack", "WEIGHT_MODULES", "BETWEEN_MODULES",
           "EDGE_MODULES", "noise_stability", "algorithm1_dropout", "power_spectral_norm", "dense_spectral_norm",
           "operator_frobenius_norm", "select_samples", "format_report", "FORMAT"]

FORMAT = "modeconnect.noise_stability/1"
"""The ``format`` field of a saved report."""

WEIGHT_MODULES: tuple[type, ...] = (nn.Linear, nn.Conv2d)
"""Modules that are the paper's weight matrices ``A_i``."""
BETWEEN_MODULES: tuple[type, ...] = (nn.ReLU, nn.Identity, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
                                     nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
"""Modules allowed between two weight layers (together they are ``phi``): positively homogeneous and
channel-wise, so ``M^{i,j}(x) = J x`` holds for bias-free nets and channel-wise dropout commutes with them."""
EDGE_MODULES: tuple[type, ...] = (nn.Identity, nn.Flatten)
"""Modules allowed before the first weight layer (they prepare ``x^0``) or after the last (``f = x^d``)."""


@dataclass(frozen=True)
class NoiseStabilityConfig:
    """Settings of a noise-stability measurement."""

    samples: int = 64
    """|S|: training samples measured (drawn without replacement from the training set with the seed)."""
    seed: int = 0
    """Seed of the sample choice, the power iterations' start vectors and Algorithm 1's dropout draws."""
    power_iterations: int = 200
    """Most power iterations per spectral norm ||J^{i,j}||_2 (each costs one jvp and one vjp)."""
    power_tolerance: float = 1e-6
    """A sample's power iteration stops when its estimate of ||J||_2 changes by less than this, relatively."""
    dropout_p: float = 0.5
    """Algorithm 1's dropout probability p for the interlayer smoothness (0 < p < 1; Lemma 3 needs p <= 3/4)."""
    dropout_draws: int = 8
    """Independent draws of Algorithm 1 (on A_2 .. A_d); rho is the largest value at least half of them reach."""
    t_points: int = 5
    """Interpolation points t = 0, 1/T, ..., (T-1)/T between theta^i (t = 0) and theta (t = 1 adds nothing)."""
    beta: float = math.sqrt(2)
    """Lipschitz constant of the loss in the output (sqrt(2): cross-entropy over softmax, as in the paper)."""
    batch_size: int = 64
    """Samples processed at once."""
    dtype: str = "float64"
    """Arithmetic precision: float64 (default; M(x) - J x is a difference of nearly equal vectors) or float32."""

    def __post_init__(self) -> None:
        for name in ("samples", "power_iterations", "dropout_draws", "t_points", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"noise stability: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"noise stability: seed must be an integer, got {self.seed!r}")
        if not 0 < self.dropout_p < 1:
            raise ConfigError(f"noise stability: dropout_p must be in (0, 1) (Algorithm 1), got {self.dropout_p!r}")
        if not (self.power_tolerance >= 0 and math.isfinite(self.power_tolerance)):
            raise ConfigError(f"noise stability: power_tolerance must be >= 0, got {self.power_tolerance!r}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"noise stability: beta must be a positive number, got {self.beta!r}")
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"noise stability: dtype must be float64 or float32, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def ts(self) -> list[float]:
        """The interpolation points t of Definition 3 (t = 1 is theta itself and constrains nothing)."""
        return [k / self.t_points for k in range(self.t_points)]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseStabilityConfig:
        return from_dict(cls, data)


# -- the model as a stack of layers --------------------------------------------------------------------
def _norms(t: Tensor) -> Tensor:
    """Per-sample Euclidean norms of a batch."""
    return t.flatten(1).norm(dim=1)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        out += _leaves(child, full + ".") if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def _describe(module: nn.Module) -> str:
    return type(module).__name__


@dataclass(frozen=True, eq=False)
class _Layer:
    name: str
    module: nn.Module
    phi: tuple[tuple[str, nn.Module], ...]
    """Modules after this weight layer, up to the next one (empty for the last layer)."""

    @property
    def width(self) -> int:
        return self.module.out_features if isinstance(self.module, nn.Linear) else self.module.out_channels


class LayerStack:
    """A feed-forward model read as the paper's ``x^i = A_i phi(x^{i-1})``; layers are numbered 1 .. d.

    Raises :class:`~modeconnect.errors.ConfigError` naming the first module that does not fit (not a
    ``nn.Sequential``, an unsupported module, a grouped or non-zero-padded convolution, a ``Flatten``
    that would merge the batch, fewer than two weight layers).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Sequential):
            raise ConfigError(f"noise stability needs an nn.Sequential of Linear / Conv2d / ReLU / pooling / Flatten "
                              f"layers, got a {_describe(model)}")
        self.model = model
        leaves = _leaves(model)
        self.lead: list[tuple[str, nn.Module]] = []
        layers: list[tuple[str, nn.Module, list[tuple[str, nn.Module]]]] = []
        for name, module in leaves:
            if isinstance(module, WEIGHT_MODULES):
                self._check_weight(name, module)
                layers.append((name, module, []))
                continue
            allowed = BETWEEN_MODULES if layers else EDGE_MODULES
            if not isinstance(module, allowed):
                where = "between weight layers" if layers else "before the first weight layer"
                raise ConfigError(
                    f"layer {name!r} ({_describe(module)}) is not supported by noise stability {where}: allowed are "
                    f"{', '.join(c.__name__ for c in allowed)} (the paper's x^i = A_i phi(x^{{i-1}}) with "
                    "positively homogeneous, channel-wise phi)")
            if isinstance(module, nn.Flatten) and module.start_dim != 1:
                raise ConfigError(f"layer {name!r} (Flatten) has start_dim={module.start_dim}; only start_dim=1 keeps "
                                  "the samples apart")
            (layers[-1][2] if layers else self.lead).append((name, module))
        if len(layers) < 2:
            raise ConfigError(f"noise stability needs at least two weight layers (one hidden layer), the model has "
                              f"{len(layers)}")
        *hidden, last = layers
        for name, module in last[2]:
            if not isinstance(module, EDGE_MODULES):
                raise ConfigError(f"layer {name!r} ({_describe(module)}) after the last weight layer {last[0]!r} is "
                                  "not supported: the paper's output is x^d itself (only Flatten / Identity may "
                                  "follow)")
        self.layers = [_Layer(n, m, tuple(p)) for n, m, p in hidden] + [_Layer(last[0], last[1], ())]
        self.tail = tuple(last[2])

    @staticmethod
    def _check_weight(name: str, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise ConfigError(f"layer {name!r} (Conv2d) has groups={module.groups}, padding_mode="
                              f"{module.padding_mode!r}: only groups=1 with zero padding is supported")

    @property
    def d(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def widths(self) -> list[int]:
        """h_1 .. h_d: output features of a Linear, output channels (the hidden units, Remark 1) of a Conv2d."""
        return [layer.width for layer in self.layers]

    def layer(self, i: int) -> _Layer:
        return self.layers[i - 1]

    # the maps -----------------------------------------------------------------------------------------
    def prepare(self, inputs: Tensor) -> Tensor:
        """x^0: the input through the modules before the first weight layer."""
        for _, module in self.lead:
            inputs = module(inputs)
        return inputs

    def A(self, i: int, z: Tensor, weight: Tensor | None = None, *, bias: bool = True) -> Tensor:
        """Layer i's (affine) map on ``z``, with ``weight`` instead of the layer's own if given."""
        module = self.layer(i).module
        w = module.weight if weight is None else weight
        b = module.bias if bias else None
        if isinstance(module, nn.Linear):
            if z.dim() != 2:
                raise ConfigError(f"layer {self.layer(i).name!r} (Linear) gets inputs of shape {list(z.shape)}; "
                                  "noise stability needs flat [n, features] inputs to Linear layers")
            return nn.functional.linear(z, w, b)
        return module._conv_forward(z, w, b)

    def phi(self, i: int, x: Tensor) -> Tensor:
        """phi after layer i (1 <= i <= d-1); ReLU is applied out of place whatever its ``inplace`` flag."""
        for _, module in self.layer(i).phi:
            x = torch.relu(x) if isinstance(module, nn.ReLU) else module(x)
        return x

    def output(self, xd: Tensor) -> Tensor:
        """f(x) from x^d (Flatten / Identity after the last layer)."""
        for _, module in self.tail:
            xd = module(xd)
        return xd

    def forward_all(self, x0: Tensor) -> list[Tensor]:
        """[x^0, x^1, ..., x^d]."""
        xs = [x0, self.A(1, x0)]
        for i in range(2, self.d + 1):
            xs.append(self.A(i, self.phi(i - 1, xs[-1])))
        return xs

    def M(self, i: int, j: int, z: Tensor) -> Tensor:
        """M^{i,j}: x^i -> x^j (i <= j)."""
        for k in range(i + 1, j + 1):
            z = self.A(k, self.phi(k - 1, z))
        return z

    def M_all(self, i: int, z: Tensor) -> tuple[Tensor, ...]:
        """(x^{i+1}, ..., x^d) from x^i."""
        out = []
        for k in range(i + 1, self.d + 1):
            z = self.A(k, self.phi(k - 1, z))
            out.append(z)
        return tuple(out)

    def frobenius(self, i: int, input_shape: Sequence[int]) -> float:
        """||A_i||_F of layer i's linear operator on inputs of ``input_shape`` (one sample, no batch dimension)."""
        return operator_frobenius_norm(self.layer(i).module, input_shape)

    def column_group(self, i: int, unit_shape: Sequence[int]) -> int:
        """Columns of A_i per hidden unit of layer i-1 (``unit_shape``: shape of x^{i-1} for one sample)."""
        module, units = self.layer(i).module, self.layer(i - 1).width
        if isinstance(module, nn.Conv2d):
            return 1
        if module.in_features % units:
            raise ConfigError(f"layer {self.layer(i).name!r} has {module.in_features} inputs, not a multiple of the "
                              f"{units} units of {self.layer(i - 1).name!r} ({list(unit_shape)})")
        return module.in_features // units


def operator_frobenius_norm(module: nn.Module, input_shape: Sequence[int]) -> float:
    """Frobenius norm of the linear part of a Linear or Conv2d as a matrix on inputs of ``input_shape``.

    Every entry of the operator's matrix is one weight or zero (zero padding, groups = 1), so the sum of
    its squared entries is the layer, with squared weights and no bias, applied to an all-ones input and summed.
    """
    weight = module.weight.detach()
    ones = torch.ones((1, *input_shape), dtype=weight.dtype, device=weight.device)
    if isinstance(module, nn.Linear):
        return math.sqrt(float(weight.square().sum()))
    return math.sqrt(float(module._conv_forward(ones, weight.square(), None).sum()))


# -- spectral norms ------------------------------------------------------------------------------------
def power_spectral_norm(f: Callable[[Tensor], Tensor], x: Tensor, *, iterations: int = 200, tolerance: float = 1e-6,
                        generator: torch.Generator | None = None) -> tuple[Tensor, int, Tensor]:
    """Per-sample ``||J_f(x_b)||_2`` of a batch map ``f`` (sample b's output depends on sample b's input only).

    Power iteration on ``J^T J``: ``u = J v`` by :func:`torch.func.jvp`, ``J^T u`` by the pullback of one
    :func:`torch.func.vjp`; the estimate ``||J v||`` (``||v|| = 1``) rises to ``sigma_max``. All samples
    iterate together until each has changed by less than ``tolerance`` (relative) or ``iterations`` is
    reached. Returns ``(sigma [n], iterations used, converged [n] bool)``.
    """
    _, pullback = vjp(f, x)
    start = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    v = start.to(x.device)
    v = v / _norms(v).clamp_min(torch.finfo(x.dtype).tiny).view(-1, *[1] * (x.dim() - 1))
    previous = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    converged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    shape = (-1, *[1] * (x.dim() - 1))
    used = 0
    while used < iterations:
        used += 1
        _, u = jvp(f, (x,), (v,))
        sigma = _norms(u)
        (w,) = pullback(u)
        norm_w = _norms(w)
        converged = (sigma - previous).abs() <= tolerance * sigma
        converged |= sigma == 0  # J = 0 (every path dead): sigma is exactly 0
        if bool(converged.all()):
            break
        previous = sigma
        v = torch.where(norm_w.view(shape) > 0, w / norm_w.clamp_min(torch.finfo(x.dtype).tiny).view(shape), v)
    return sigma, used, converged


def dense_spectral_norm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample ``||J_f(x_b)||_2`` from the dense Jacobian (reference; materialises it, one sample at a time)."""
    out = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(lambda z: f(z.unsqueeze(0)).squeeze(0), sample)
        out_numel = jac.numel() // sample.numel()
        out.append(torch.linalg.matrix_norm(jac.reshape(out_numel, sample.numel()), ord=2))
    return torch.stack(out)


# -- Algorithm 1 ---------------------------------------------------------------------------------------
def algorithm1_dropout(weight: Tensor, p: float, *, generator: torch.Generator | None = None,
                       group: int = 1) -> tuple[Tensor, Tensor]:
    """Algorithm 1 (Dropout(A_i, p)): every column j of ``weight`` times an i.i.d. ``delta_j``, 0 with
    probability ``p``, ``1 / (1 - p)`` otherwise. Returns ``(A_hat, delta)``.

    Columns are along dim 1 (a Linear's inputs, a Conv2d's input channels: channel-wise dropout, Remark 1).
    ``group`` consecutive columns form one unit of the previous layer (a Linear after a Flatten of a
    convolution: the H * W columns of one channel), and share one ``delta``.
    """
    if not 0 < p < 1:
        raise ConfigError(f"Algorithm 1 needs 0 < p < 1, got {p!r}")
    columns = weight.shape[1]
    if columns % group:
        raise ConfigError(f"{columns} columns do not split into units of {group}")
    keep = torch.rand(columns // group, generator=generator, dtype=torch.float64) >= p
    delta = keep.to(weight.dtype).to(weight.device) / (1 - p)
    scale = delta.repeat_interleave(group).view(1, columns, *[1] * (weight.dim() - 2))
    return weight * scale, delta


# -- the measurement -----------------------------------------------------------------------------------
def select_samples(n_available: int, samples: int, seed: int) -> list[int]:
    """Indices of ``samples`` distinct samples out of ``n_available`` (all of them, in order, if fewer)."""
    if samples >= n_available:
        return list(range(n_available))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_available, generator=g)[:samples].tolist())


def _upper_half(values: Sequence[float]) -> float:
    """The largest r such that at least half of ``values`` are >= r (the ceil(K/2)-th largest)."""
    ranked = sorted(values, reverse=True)
    return ranked[math.ceil(len(ranked) / 2) - 1]


def _summary(values: Sequence[float]) -> dict[str, Any]:
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return {"min": None, "median": None, "max": None, "n_undefined": len(values)}
    return {"min": min(defined), "median": statistics.median(defined), "max": max(defined),
            "n_undefined": len(values) - len(defined)}


def _floats(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values]  # JSON stores inf / nan as strings; float() reads them back


@dataclass
class NoiseStabilityReport:
    """Per-sample values of every quantity (layers numbered 1 .. d as in the paper) and the settings used."""

    config: NoiseStabilityConfig
    layers: list[dict[str, Any]]
    """Per layer: i, name, kind, width h_i, input and output shapes (one sample)."""
    layer_cushion: dict[int, list[float]]
    """mu_i(x), i = 1 .. d (Definition 4 uses i >= 2)."""
    interlayer_cushion: dict[tuple[int, int], list[float]]
    """mu_{i,j}(x) for 1 <= i < j <= d (mu_{i,i} = 1 is not stored)."""
    spectral_norm: dict[tuple[int, int], list[float]]
    """||J^{i,j}_x||_2 from power iteration, same keys."""
    activation_contraction: dict[int, list[float]]
    """c_i(x) = ||x^i|| / ||phi(x^i)||, i = 1 .. d-1."""
    smoothness_draws: list[dict[int, list[float]]]
    """Per Algorithm 1 draw, per layer i = 2 .. d, per sample: the largest rho meeting Definition 3's two
    inequalities for every j >= i and t (inf: no constraint)."""
    output_norm: list[float]
    """||f(x)||."""
    delocalisation: dict[int, list[float]] = field(default_factory=dict)
    """sqrt(n_i) ||phi(x_hat^i_i(t))||_inf / ||phi(x_hat^i_i(t))||, max over t and draws (Definition 4's
    condition ||phi(.)||_inf = O(1/sqrt(h_i)) ||phi(.)||, with n_i the number of entries), i = 1 .. d-1."""
    power_iteration: dict[str, Any] = field(default_factory=dict)
    """Diagnostics: iterations used and samples not converged, per (i, j)."""
    sample_indices: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def d(self) -> int:
        return len(self.layers)

    @property
    def h_min(self) -> int:
        return min(layer["width"] for layer in self.layers[:-1])

    def minimal_interlayer_cushion(self) -> dict[int, list[float]]:
        """mu_{i->}(x) = min_{i <= j <= d} mu_{i,j}(x) (mu_{i,i} = 1), i = 1 .. d."""
        n = len(self.output_norm)
        out = {}
        for i in range(1, self.d + 1):
            rows = [self.interlayer_cushion[(i, j)] for j in range(i + 1, self.d + 1)]
            out[i] = [min([1.0, *(r[s] for r in rows)]) for s in range(n)]
        return out

    def interlayer_smoothness(self) -> dict[int, list[float]]:
        """Per layer i = 2 .. d and sample: the largest rho reached by at least half of the draws."""
        return {i: [_upper_half([draw[i][s] for draw in self.smoothness_draws]) for s in range(len(self.output_norm))]
                for i in range(2, self.d + 1)}

    def overall(self) -> dict[str, Any]:
        """The network's c, rho, min_i mu_i mu_{i->} and epsilon (Definition 4); NaN samples are ignored."""
        mu = {i: _summary(v)["min"] for i, v in self.layer_cushion.items()}
        mu_to = {i: _summary(v)["min"] for i, v in self.minimal_interlayer_cushion().items()}
        products = {i: mu[i] * mu_to[i] for i in range(2, self.d + 1) if mu[i] is not None and mu_to[i] is not None}
        c = max((v for vals in self.activation_contraction.values() for v in vals if not math.isnan(v)), default=None)
        per_draw = [min(v for vals in draw.values() for v in vals) for draw in self.smoothness_draws]
        rho = _upper_half(per_draw) if per_draw else None
        max_out = max(self.output_norm)
        argmin = min(products, key=products.get) if products else None
        product = products[argmin] if argmin is not None else None
        epsilon = None
        if c is not None and product is not None:
            numerator = self.config.beta * c * self.d ** 1.5 * max_out
            epsilon = numerator / (math.sqrt(self.h_min) * product) if product > 0 else math.inf
        deloc = max((v for vals in self.delocalisation.values() for v in vals), default=None)
        return {"epsilon": epsilon, "beta": self.config.beta, "c": c, "rho": rho, "rho_per_draw": per_draw,
                "rho_at_least_3d": None if rho is None else rho >= 3 * self.d, "d": self.d, "h_min": self.h_min,
                "max_output_norm": max_out, "min_cushion_product": product, "argmin_layer": argmin,
                "mu": mu[argmin] if argmin is not None else None,
                "mu_to": mu_to[argmin] if argmin is not None else None, "max_delocalisation": deloc}

    # -- JSON ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        names = {layer["i"]: layer["name"] for layer in self.layers}

        def rows(data: Mapping[int, list[float]], **extra_of) -> list[dict[str, Any]]:
            return [{"i": i, "name": names[i], **_summary(v), "values": list(v),
                     **{k: f(i) for k, f in extra_of.items()}} for i, v in sorted(data.items())]

        smooth = self.interlayer_smoothness()
        return {
            "format": FORMAT, "config": self.config.to_dict(), "layers": self.layers, "d": self.d,
            "h_min": self.h_min, "n_samples": len(self.output_norm), "sample_indices": list(self.sample_indices),
            "overall": self.overall(),
            "layer_cushion": rows(self.layer_cushion),
            "interlayer_cushion": [{"i": i, "j": j, **_summary(v), "values": list(v),
                                    "spectral_norm": list(self.spectral_norm[(i, j)])}
                                   for (i, j), v in sorted(self.interlayer_cushion.items())],
            "minimal_interlayer_cushion": rows(self.minimal_interlayer_cushion()),
            "activation_contraction": rows(self.activation_contraction),
            "interlayer_smoothness": rows(smooth, per_draw=lambda i: [d[i] for d in self.smoothness_draws]),
            "delocalisation": rows(self.delocalisation),
            "output_norm": {**_summary(self.output_norm), "values": list(self.output_norm)},
            "power_iteration": self.power_iteration, "wall_time_s": self.wall_time_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseStabilityReport:
        if data.get("format") != FORMAT:
            raise ConfigError(f"not a noise-stability report (format {data.get('format')!r}, expected {FORMAT!r})")
        by_i = lambda rows: {int(r["i"]): _floats(r["values"]) for r in rows}  # noqa: E731
        draws: list[dict[int, list[float]]] = []
        for row in data["interlayer_smoothness"]:
            for k, values in enumerate(row["per_draw"]):
                while len(draws) <= k:
                    draws.append({})
                draws[k][int(row["i"])] = _floats(values)
        return cls(
            config=NoiseStabilityConfig.from_dict(data["config"]), layers=[dict(x) for x in data["layers"]],
            layer_cushion=by_i(data["layer_cushion"]),
            interlayer_cushion={(int(r["i"]), int(r["j"])): _floats(r["values"]) for r in data["interlayer_cushion"]},
            spectral_norm={(int(r["i"]), int(r["j"])): _floats(r["spectral_norm"]) for r in data["interlayer_cushion"]},
            activation_contraction=by_i(data["activation_contraction"]), smoothness_draws=draws,
            output_norm=_floats(data["output_norm"]["values"]), delocalisation=by_i(data.get("delocalisation", [])),
            power_iteration=dict(data.get("power_iteration", {})), sample_indices=list(data.get("sample_indices", [])),
            wall_time_s=float(data.get("wall_time_s", 0.0)))


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator with 0 / 0 -> NaN and x / 0 -> inf (undefined, unconstrained)."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny),
                       torch.where(numerator > 0, torch.full_like(numerator, math.inf),
                                   torch.full_like(numerator, math.nan)))


def _draw_masks(stack: LayerStack, shapes: list[list[int]], config: NoiseStabilityConfig,
                generator: torch.Generator) -> list[dict[int, Tensor]]:
    """Per draw, per layer l = 2 .. d: the column scale ``delta`` of Algorithm 1 expanded to A_l's columns."""
    draws = []
    for _ in range(config.dropout_draws):
        masks = {}
        for i in range(2, stack.d + 1):
            weight = stack.layer(i).module.weight.detach()
            group = stack.column_group(i, shapes[i - 1])
            _, delta = algorithm1_dropout(weight, config.dropout_p, generator=generator, group=group)
            masks[i] = delta.repeat_interleave(group).view(1, weight.shape[1], *[1] * (weight.dim() - 2))
        draws.append(masks)
    return draws


def _smoothness(stack: LayerStack, xs: list[Tensor], i: int, x_hat: Tensor) -> Tensor:
    """Per sample: the largest rho with ||M^{i,j}(x_hat) - lin(x_hat)|| <= ||x_hat - x^i|| ||x^j|| / (rho ||x^i||)
    for every j > i, where lin is M^{i,j}'s first-order expansion at x^i (J x_hat for bias-free nets)."""
    n = x_hat.shape[0]
    if i == stack.d:
        return torch.full((n,), math.inf, dtype=x_hat.dtype, device=x_hat.device)
    diff = x_hat - xs[i]
    outs = stack.M_all(i, x_hat)
    _, lin = jvp(lambda z: stack.M_all(i, z), (xs[i],), (diff,))
    scale = _norms(diff) / _norms(xs[i])
    rho = torch.full((n,), math.inf, dtype=x_hat.dtype, device=x_hat.device)
    eps = torch.finfo(x_hat.dtype).eps
    for k, j in enumerate(range(i + 1, stack.d + 1)):
        err = _norms(outs[k] - xs[j] - lin[k])
        # below rounding (no activation pattern changed: M is linear there) the bound constrains nothing
        floor = 64 * eps * (_norms(outs[k]) + _norms(xs[j]) + _norms(lin[k]))
        bound = _ratio(scale * _norms(xs[j]), torch.where(err > floor, err, torch.zeros_like(err)))
        rho = torch.minimum(rho, torch.where(bound.isnan(), math.inf, bound))  # 0 / 0: x_hat = x^i
    return rho


def noise_stability(model: nn.Module, inputs: Tensor, config: NoiseStabilityConfig | None = None, *,
                    sample_indices: Sequence[int] | None = None,
                    progress: Callable[[str], None] | None = None) -> NoiseStabilityReport:
    """Measure Definitions 2-4 on ``inputs`` (the sample set S, all of it: choose it with :func:`select_samples`).

    ``model`` is copied and cast to ``config.dtype``; it is not modified. Runs on ``inputs``' device.
    """
    config = config or NoiseStabilityConfig()
    say = progress or (lambda message: None)
    clock = time.perf_counter()
    dtype, device = config.torch_dtype, inputs.device
    model = copy.deepcopy(model).to(dtype=dtype, device=device).eval().requires_grad_(False)
    stack = LayerStack(model)
    d, n = stack.d, len(inputs)
    if n == 0:
        raise ConfigError("noise stability needs at least one sample")
    with torch.no_grad():
        probe = stack.forward_all(stack.prepare(inputs[:1].to(dtype)))
    shapes = [list(x.shape[1:]) for x in probe]
    layers = [{"i": i, "name": stack.layer(i).name, "kind": _describe(stack.layer(i).module),
               "width": stack.layer(i).width, "input_shape": list(stack.phi(i - 1, probe[i - 1]).shape[1:])
               if i > 1 else shapes[0], "output_shape": shapes[i]} for i in range(1, d + 1)]
    frob = {i: stack.frobenius(i, layers[i - 1]["input_shape"]) for i in range(1, d + 1)}
    generator = torch.Generator().manual_seed(config.seed)
    masks = _draw_masks(stack, shapes, config, generator)

    cushion: dict[int, list[float]] = {i: [] for i in range(1, d + 1)}
    inter: dict[tuple[int, int], list[float]] = {(i, j): [] for i in range(1, d + 1) for j in range(i + 1, d + 1)}
    sigma_of: dict[tuple[int, int], list[float]] = {key: [] for key in inter}
    contraction: dict[int, list[float]] = {i: [] for i in range(1, d)}
    deloc: dict[int, list[float]] = {i: [] for i in range(1, d)}
    draws: list[dict[int, list[float]]] = [{i: [] for i in range(2, d + 1)} for _ in masks]
    out_norm: list[float] = []
    iters: dict[str, int] = {f"{i},{j}": 0 for i, j in inter}
    unconverged: dict[str, int] = {f"{i},{j}": 0 for i, j in inter}
    batches = range(0, n, config.batch_size)
    bar = open_task(say, "noise stability: steps", total=len(batches) * (len(inter) + 1))
    for b, start in enumerate(batches):
        x0 = stack.prepare(inputs[start:start + config.batch_size].to(dtype))
        with torch.no_grad():
            xs = stack.forward_all(x0)
            for i in range(1, d + 1):
                u = x0 if i == 1 else stack.phi(i - 1, xs[i - 1])
                linear = stack.A(i, u, bias=False)
                cushion[i] += _ratio(_norms(linear), frob[i] * _norms(u)).tolist()
            for i in range(1, d):
                contraction[i] += _ratio(_norms(xs[i]), _norms(stack.phi(i, xs[i]))).tolist()
            out_norm += _norms(stack.output(xs[d])).tolist()
        for i, j in inter:
            tick = time.perf_counter()
            f = (lambda i_, j_: lambda z: stack.M(i_, j_, z))(i, j)
            sigma, used, ok = power_spectral_norm(f, xs[i], iterations=config.power_iterations,
                                                  tolerance=config.power_tolerance, generator=generator)
            _, jx = jvp(f, (xs[i],), (xs[i],))
            inter[(i, j)] += _ratio(_norms(jx), sigma * _norms(xs[i])).tolist()
            sigma_of[(i, j)] += sigma.tolist()
            iters[f"{i},{j}"] = max(iters[f"{i},{j}"], used)
            unconverged[f"{i},{j}"] += int((~ok).sum())
            bar.advance()
            bar.say(f"batch {b + 1}/{len(batches)}: ||J^{{{i},{j}}}||_2 of {len(x0)} samples by power iteration, "
                    f"{used} iterations, {time.perf_counter() - tick:.1f}s")
        tick = time.perf_counter()
        with torch.no_grad():
            spread = {i: torch.zeros(len(x0), dtype=dtype, device=device) for i in range(1, d)}
            for k, mask in enumerate(masks):
                best = {i: torch.full((len(x0),), math.inf, dtype=dtype, device=device) for i in range(2, d + 1)}
                for t in config.ts:
                    z = xs[1]  # x_hat^1_1(t) = x^1: A_1 is never dropped
                    for i in range(1, d):
                        u = stack.phi(i, z)
                        spread[i] = torch.maximum(spread[i], math.sqrt(u[0].numel()) * u.flatten(1).abs().amax(1)
                                                  / _norms(u).clamp_min(torch.finfo(dtype).tiny))
                        nxt = i + 1
                        weight = stack.layer(nxt).module.weight * (t + (1 - t) * mask[nxt])
                        x_dropped = stack.A(nxt, u, weight)  # x_hat^{i+1}_{i+1}(t): A_2 .. A_{i+1} dropped
                        rho = _smoothness(stack, xs, nxt, x_dropped)
                        if nxt > 2:  # x_hat^{i+1}_i(t): A_2 .. A_i dropped, A_{i+1} kept (it is x^2 when i = 1)
                            rho = torch.minimum(rho, _smoothness(stack, xs, nxt, stack.A(nxt, u)))
                        best[nxt] = torch.minimum(best[nxt], rho)
                        z = x_dropped
                for i in range(2, d + 1):
                    draws[k][i] += best[i].tolist()
            for i in range(1, d):
                deloc[i] += spread[i].tolist()
        bar.advance()
        bar.say(f"batch {b + 1}/{len(batches)}: interlayer smoothness over {len(masks)} dropout draws x "
                f"{config.t_points} t, {time.perf_counter() - tick:.1f}s")
    bar.close()
    return NoiseStabilityReport(
        config=config, layers=layers, layer_cushion=cushion, interlayer_cushion=inter, spectral_norm=sigma_of,
        activation_contraction=contraction, smoothness_draws=draws, output_norm=out_norm, delocalisation=deloc,
        power_iteration={"max_iterations_used": iters, "not_converged": unconverged,
                         "iterations": config.power_iterations, "tolerance": config.power_tolerance},
        sample_indices=list(sample_indices) if sample_indices is not None else list(range(n)),
        wall_time_s=time.perf_counter() - clock)


def format_report(report: NoiseStabilityReport) -> str:
    """The per-layer table (min / median / max over the samples) and the overall numbers as text."""
    def cell(s: Mapping[str, Any] | None) -> str:
        if s is None or s["min"] is None:
            return f"{'-':>26}"
        return f"{s['min']:>8.3g} {s['median']:>8.3g} {s['max']:>8.3g}"

    mu_to = report.minimal_interlayer_cushion()
    smooth = report.interlayer_smoothness()
    lines = [f"noise stability (Kuditipudi et al. 2019, Definitions 2-4) on {len(report.output_norm)} samples; "
             "per layer: min / median / max over the samples",
             f"{'i':>4} {'layer':<10} {'h_i':>5}  {'layer cushion mu_i':>26}  {'min. interlayer mu_i->':>26}  "
             f"{'contraction c_i':>26}  {'smoothness rho_i':>26}"]
    for layer in report.layers:
        i = layer["i"]
        lines.append(f"{i:>4} {layer['name']:<10} {layer['width']:>5}  {cell(_summary(report.layer_cushion[i]))}  "
                     f"{cell(_summary(mu_to[i]))}  "
                     f"{cell(_summary(report.activation_contraction[i]) if i < report.d else None)}  "
                     f"{cell(_summary(smooth[i]) if i > 1 else None)}")
    o = report.overall()

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    lines += [f"c = {fmt(o['c'])}, rho = {fmt(o['rho'])} (>= 3d = {3 * o['d']}: {o['rho_at_least_3d']}), "
              f"min_i mu_i mu_i-> = {fmt(o['min_cushion_product'])} at layer {o['argmin_layer']}, "
              f"h_min = {o['h_min']}, max ||f(x)|| = {fmt(o['max_output_norm'])}",
              f"epsilon = beta c d^1.5 max||f(x)|| / (h_min^0.5 min_i mu_i mu_i->) = {fmt(o['epsilon'])} "
              f"(beta = {o['beta']:.4g}, d = {o['d']})"]
    return "\n".join(lines)

"""Deep linear networks (Freeman & Bruna, Section 2.2, Proposition 2.2): tasks ``linear`` and ``linear-ridge``.

* model: ``W_K ... W_1 x``, an ``nn.Sequential`` of K = ``depth`` bias-free ``nn.Linear`` layers with sizes
  ``input_dim -> width -> ... -> width -> output_dim`` (PyTorch's weight of layer j is d_j x d_(j-1));
* data: ``n_train`` inputs x ~ N(0, I) and targets y = T x + ``noise`` * eps, with a teacher T whose entries are
  N(0, 1 / input_dim), all drawn from ``data_seed``;
* energy: the empirical risk of the proposition, F_e(theta) = mean over the training sample of the mean over
  output entries of (W_K ... W_1 x - y)^2 (kappa = 0), so the level set Omega_Fe(lambda) is exactly the set the
  proposition says is connected; ``linear-ridge`` (K = 2 only) adds kappa * (||W_1||^2 + ||W_2||^2)
  (``ridge`` = kappa), the penalty the proposition allows for two layers. Training minimises the same function.

The proposition assumes every hidden width n_j >= min(n_1, n_K) (input and output sizes); other sizes are
refused. The default threshold is the exact minimum of the energy (least squares, or nuclear-norm regularised
least squares for the ridge variant, computed in float64) plus ``noise^2 / 2``, divided by the endpoint
fraction 0.9 (endpoints are trained to 0.9 L0), and at least (minimum + noise^2 / 4) / 0.8 so greedy DSS's
beads (trained to 0.8 L0) can reach their target.

>>> task = linear_task(depth=3, width=4, input_dim=5)
>>> [tuple(p.shape) for p in task.make_model(0).parameters()]
[(4, 5), (4, 4), (3, 4)]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..energy import Energy
from ..errors import ConfigError
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from .base import Task

__all__ = ["linear_task", "linear_ridge_task", "linear_chain", "check_sizes", "RidgeEnergy", "risk_floor",
           "MAX_SIZE", "MAX_DEPTH"]

MAX_SIZE = 1024
"""Largest accepted layer size."""
MAX_DEPTH = 16
"""Largest accepted number of layers."""
ENDPOINT_FRACTION = 0.9
"""Endpoints are trained to 0.9 L0; the default L0 puts that target noise^2 / 2 above the energy's minimum."""
DSS_ALPHA = 0.8
"""Greedy DSS trains beads to 0.8 L0 (its default alpha): the default L0 also keeps that target noise^2 / 4
above the minimum, or no bead could reach it (the ridge floor is close to L0)."""


def check_sizes(sizes: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``sizes`` (d_0 = input, ..., d_K = output) or a ConfigError when a hidden size is below min(d_0, d_K)."""
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ConfigError(f"linear network sizes must be at least two positive integers, got {list(sizes)}")
    low = min(sizes[0], sizes[-1])
    bad = [j for j, s in enumerate(sizes[1:-1], start=1) if s < low]
    if bad:
        raise ConfigError(f"linear network sizes {'-'.join(map(str, sizes))}: hidden size(s) "
                          f"{', '.join(f'd_{j}={sizes[j]}' for j in bad)} below min(input, output) = {low}; "
                          f"Proposition 2.2 needs every hidden width >= {low} (raise --width)")
    return sizes


def linear_chain(sizes: list[int] | tuple[int, ...]) -> nn.Sequential:
    """``nn.Sequential`` of bias-free ``nn.Linear(sizes[j], sizes[j + 1])`` (checked by :func:`check_sizes`)."""
    sizes = check_sizes(sizes)
    return nn.Sequential(*(nn.Linear(sizes[j], sizes[j + 1], bias=False) for j in range(len(sizes) - 1)))


class RidgeEnergy(Energy):
    """An :class:`~modeconnect.energy.Energy` (MSE) plus ``ridge * (sum of squared parameters)``.

    The penalty is added per sample inside the batched metric sum, so the energy's batching, chunking and
    strategy choice are unchanged and the value is ``mse + ridge * ||theta||^2`` exactly.
    """

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, ridge: float, **kwargs) -> None:
        super().__init__(model, inputs, targets, "mse", **kwargs)
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < float("inf"):
            raise ConfigError(f"ridge must be a finite number >= 0, got {ridge!r}")
        self.ridge = float(ridge)

    def _point_sum(self, params, x, y):
        penalty = sum(torch.sum(v**2) for v in params.values())
        return super()._point_sum(params, x, y) + self.ridge * len(x) * penalty

    def describe(self):
        return {**super().describe(), "ridge": self.ridge,
                "definition": "mse + ridge * (sum of squared parameters)"}


def _teacher_data(sizes: tuple[int, ...], n: int, noise: float, data_seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(int(data_seed))
    teacher = torch.randn(sizes[-1], sizes[0], generator=generator) / sizes[0] ** 0.5
    x = torch.randn(n, sizes[0], generator=generator)
    y = x @ teacher.T + noise * torch.randn(n, sizes[-1], generator=generator)
    return x, y


def risk_floor(x: Tensor, y: Tensor, ridge: float = 0.0, iterations: int = 3000) -> float:
    """min over M of mean((M x - y)^2) + 2 ridge ||M||_* (float64): the lowest energy of any linear network whose
    hidden widths allow every M, since min over factorisations of ||W_1||^2 + ||W_2||^2 is 2 ||W_2 W_1||_*.
    Least squares for ``ridge = 0``; proximal gradient (singular-value shrinkage) otherwise."""
    x, y = x.double(), y.double()
    n, d_out = y.shape
    m = torch.linalg.lstsq(x, y).solution.T
    if ridge:
        # loss(M) = ||X M^T - Y||^2 / (n d_out): gradient 2 (M X^T X - Y^T X) / (n d_out), Lipschitz 2 ||X||^2/(n d_out)
        step = n * d_out / (2 * torch.linalg.matrix_norm(x, 2) ** 2)
        gram, cross = x.T @ x, y.T @ x
        for _ in range(iterations):
            u, s, vh = torch.linalg.svd(m - step * 2 * (m @ gram - cross) / (n * d_out), full_matrices=False)
            m = u @ torch.diag(torch.clamp(s - step * 2 * ridge, min=0)) @ vh
    loss = float(((x @ m.T - y) ** 2).mean())
    return loss + 2 * ridge * float(torch.linalg.matrix_norm(m, "nuc"))


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"linear: {name} must be an integer between {low} and {high}, got {value!r}")
    return value


def linear_task(*, depth: int = 3, width: int = 4, input_dim: int = 5, output_dim: int = 3, n_train: int = 256,
                noise: float = 0.1, data_seed: int = 0, ridge: float = 0.0, name: str = "linear") -> Task:
    """The deep linear regression task of the module docstring (``ridge > 0`` needs ``depth = 2``)."""
    depth = _int("depth", depth, 1, MAX_DEPTH)
    width, input_dim, output_dim = (_int(k, v, 1, MAX_SIZE) for k, v in
                                    (("width", width), ("input_dim", input_dim), ("output_dim", output_dim)))
    n_train = _int("n_train", n_train, 2, 1_000_000)
    _int("data_seed", data_seed, 0, 2**63 - 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise ConfigError(f"linear: noise must be a finite number >= 0, got {noise!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < float("inf"):
        raise ConfigError(f"linear: ridge must be a finite number >= 0, got {ridge!r}")
    if ridge and depth != 2:
        raise ConfigError(f"linear: the ridge variant has depth 2 only (Proposition 2.2 proves connected level sets "
                          f"with kappa > 0 for K = 2), got --depth {depth}")
    sizes = check_sizes((input_dim, *([width] * (depth - 1)), output_dim))
    x, y = _teacher_data(sizes, n_train, float(noise), data_seed)
    floor = risk_floor(x, y, float(ridge))
    gap = 0.5 * noise**2 if noise else 1e-3
    threshold = float(f"{max((floor + gap) / ENDPOINT_FRACTION, (floor + gap / 2) / DSS_ALPHA):.4g}")
    template = build_without_global_rng(lambda: linear_chain(sizes))
    if ridge:
        energy = RidgeEnergy(template, x, y, ridge=float(ridge), strategy="vmap", split="train")
    else:
        energy = Energy(template, x, y, "mse", strategy="vmap", split="train")
    arch = "-".join(map(str, sizes))
    penalty = f" + {ridge:g} (||W_1||^2 + ||W_2||^2)" if ridge else ""
    return Task(
        name=name,
        description=f"deep linear regression: {arch} bias-free linear network (K={depth}), teacher + noise "
                    f"{noise:g}, {n_train} Gaussian inputs, energy = training MSE{penalty} (empirical risk; "
                    f"minimum {floor:.4g})",
        make_model=lambda seed: seeded(lambda: linear_chain(sizes), seed),
        objective=Objective(x, y, "mse", l2=float(ridge)),
        energy=energy,
        default_threshold=threshold,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.02, check_every=25, dense_checks=0, max_steps=10000),
        bead_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=0, max_steps=10000,
                                  stall_steps=2000),
        endpoint_fraction=ENDPOINT_FRACTION,
        threads=1,
        options={"depth": depth, "width": width, "input_dim": input_dim, "output_dim": output_dim,
                 "n_train": n_train, "noise": noise, "data_seed": data_seed, "ridge": ridge, "sizes": list(sizes),
                 "risk_floor": floor},
    )


def linear_ridge_task(*, depth: int = 2, width: int = 4, input_dim: int = 5, output_dim: int = 3,
                      n_train: int = 256, noise: float = 0.1, data_seed: int = 0, ridge: float = 0.01) -> Task:
    """``linear`` with the ridge penalty kappa = ``ridge`` (two layers)."""
    if isinstance(ridge, (int, float)) and not isinstance(ridge, bool) and ridge <= 0:
        raise ConfigError(f"linear-ridge: ridge must be > 0 (use the task 'linear' for kappa = 0), got {ridge!r}")
    return linear_task(depth=depth, width=width, input_dim=input_dim, output_dim=output_dim, n_train=n_train,
                       noise=noise, data_seed=data_seed, ridge=ridge, name="linear-ridge")

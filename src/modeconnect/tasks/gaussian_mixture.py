"""Freeman & Bruna (2017), Section 2.3.1: a two-unit ReLU network on a mixture of two Gaussians.

The paper's target ``Y = (X - mu_Z) . Z`` is underspecified (read literally it vanishes with the
covariance, and so would every barrier); ``docs/counterexample.md`` gives the exact form chosen here, why,
and the proof of the barrier. In short:

* data: ``n_train`` inputs in R^d (d = ``input_dim`` >= 2), half from each component Z = +1, -1, with
  X = mu_Z + sigma * eps, mu_{+1} = (1, -1, 0, ...) = -mu_{-1}; each component's eps is centred and whitened
  on the sample (empirical mean 0, covariance I, exactly), drawn with ``data_seed``;
* target: Y = <X - mu_Z, e_{j(Z)}> / sigma = eps_{j(Z)}, with j(+1) = 1 and j(-1) = 2: the standardised
  residual along a coordinate of the component's own, so Y has mean 0 and variance 1 in each component;
* network: Phi(x) = W2 relu(W1 x) + b, W1 in R^{2 x d} without biases (the paper's Phi), W2 in R^{1 x 2};
* endpoint A (constructed): W1 = lambda [e1; e2], W2 = lambda (1, 1), b = -1/sigma, lambda = sigma^(-1/2):
  unit 1's hyperplane x1 = 0 and unit 2's x2 = 0 both bisect the components (each unit is active on one
  component only), and on component Z the net computes exactly Y, up to the Gaussian tails that cross a
  hyperplane (risk -> 0 as sigma -> 0); endpoint B: A with its two hidden units swapped (the bisectrices
  swapped; the same function);
* energy: the mean squared error on the sample (the empirical risk; training minimises the same).

det W1[:, :2] is lambda^2 at A and -lambda^2 at B, so every continuous path passes through a point where
the 2 x 2 block has rank <= 1; there the network is a function of one projection u . x (and of the noise
coordinates), and every such function has risk >= 1/2 (:data:`PROVEN_BARRIER`, a population bound that holds
for every sigma). The sample's own floor is :func:`modeconnect.theory.rank_one.rank_one_floor`.

>>> task = gaussian_mixture_task(sigma=0.25, n_train=64)
>>> task.energy.inputs.shape, task.default_threshold
(torch.Size([64, 2]), 0.05)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..params import Point, permute_hidden_units
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng
from .base import Task

__all__ = ["gaussian_mixture_task", "mixture_net", "mixture_data", "mixture_endpoint_a", "swap_units",
           "PROVEN_BARRIER", "MAX_SIGMA", "endpoint_risk"]

PROVEN_BARRIER = 0.5
"""Lower bound on the risk (population MSE) at every point where W1's data-plane block has rank <= 1; every
continuous path from A to B passes through one (docs/counterexample.md)."""

MAX_SIGMA = 0.75
"""Largest accepted sigma: there A's population risk is 0.072 and the default level about 0.25, half the
bound; beyond it the constructed endpoints are no longer clearly below the barrier (0.165 at sigma = 1)."""

MAX_INPUT_DIM = 64
DEFAULT_THRESHOLD = 0.05


def mixture_net(input_dim: int = 2) -> nn.Sequential:
    """The paper's Phi(x; W1, W2) with two hidden units: ``Linear(d, 2, bias=False) -> ReLU -> Linear(2, 1)``
    (the output bias centres the target; it plays no part in the rank argument)."""
    return nn.Sequential(nn.Linear(input_dim, 2, bias=False), nn.ReLU(), nn.Linear(2, 1))


def _whiten(eps: torch.Tensor) -> torch.Tensor:
    """Centre the rows and make their empirical covariance (divisor n) exactly the identity."""
    eps = eps - eps.mean(dim=0, keepdim=True)
    cov = eps.T @ eps / eps.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    return eps @ (evecs @ torch.diag(evals.rsqrt()) @ evecs.T)


def mixture_data(*, sigma: float, n_train: int, input_dim: int = 2, data_seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``[n, d]``, targets ``[n, 1]`` and components ``[n]`` (+1 for the first n/2 rows, -1 after).

    Computed in float64 (the whitening), returned in ``dtype``."""
    generator = torch.Generator().manual_seed(int(data_seed))
    half = n_train // 2
    xs, ys, zs = [], [], []
    for z, j in ((1.0, 0), (-1.0, 1)):
        eps = _whiten(torch.randn(half, input_dim, generator=generator, dtype=torch.float64))
        mean = torch.zeros(input_dim, dtype=torch.float64)
        mean[0], mean[1] = z, -z
        xs.append(mean + sigma * eps)
        ys.append(eps[:, j:j + 1])
        zs.append(torch.full((half,), z, dtype=torch.float64))
    return torch.cat(xs).to(dtype), torch.cat(ys).to(dtype), torch.cat(zs).to(dtype)


def mixture_endpoint_a(sigma: float, input_dim: int = 2) -> nn.Sequential:
    """Endpoint A, built exactly (module docstring): W1 = lambda [e1; e2], W2 = lambda (1, 1), b = -1/sigma."""
    lam = sigma ** -0.5
    model = build_without_global_rng(lambda: mixture_net(input_dim))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = lam
        model[0].weight[1, 1] = lam
        model[2].weight.fill_(lam)
        model[2].bias.fill_(-1.0 / sigma)
    return model


def swap_units(point: Point) -> Point:
    """Endpoint B: the two hidden units swapped (rows of W1, columns of W2): the same function."""
    return permute_hidden_units(point, "0", "2", [1, 0])


def endpoint_risk(sigma: float) -> float:
    """A's population risk: on component +1 the error is relu(-k - e1) + relu(e2 - k) with k = 1/sigma and
    e ~ N(0, I) (a tail of each unit's Gaussian crossing its hyperplane; component -1 is the mirror image), so
    the risk is 2 T2 + 2 T1^2 with T1 = E relu(e - k) = phi(k) - k Q(k), T2 = E relu(e - k)^2 =
    (1 + k^2) Q(k) - k phi(k), Q the normal upper tail."""
    k = 1.0 / sigma
    q = 0.5 * math.erfc(k / math.sqrt(2.0))
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    t1, t2 = phi - k * q, (1.0 + k * k) * q - k * phi
    return 2.0 * t2 + 2.0 * t1 * t1


def _check(sigma: object, input_dim: object, n_train: object, data_seed: object) -> None:
    def integer(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= MAX_SIGMA:
        raise ConfigError(f"gaussian-mixture: sigma must be in (0, {MAX_SIGMA:g}] (beyond it the endpoints' risk "
                          f"approaches the barrier bound {PROVEN_BARRIER}), got {sigma!r}")
    if not integer(input_dim) or not 2 <= input_dim <= MAX_INPUT_DIM:
        raise ConfigError(f"gaussian-mixture: input_dim must be an integer between 2 and {MAX_INPUT_DIM} (the "
                          f"mixture lives in the first two coordinates), got {input_dim!r}")
    if not integer(n_train) or not 8 <= n_train <= 1_000_000 or n_train % 2:
        raise ConfigError(f"gaussian-mixture: n_train must be an even integer between 8 and 1000000 (half the "
                          f"samples from each component), got {n_train!r}")
    if not integer(data_seed) or data_seed < 0:
        raise ConfigError(f"gaussian-mixture: data_seed must be an integer >= 0, got {data_seed!r}")


def _round_up(value: float) -> float:
    """Round up to two significant figures (a readable default level)."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(value / scale - 1e-9) * scale, 12)


def gaussian_mixture_task(*, sigma: float = 0.25, input_dim: int = 2, n_train: int = 1024,
                          data_seed: int = 0) -> Task:
    """The pair of the module docstring. Endpoint A is constructed: ``make_model`` returns it for every seed;
    B is derived from A. The default level is L0 = 0.05, raised to 3 x A's energy (two significant figures)
    where A's energy exceeds L0 / 3, so that A and B are always inside the level set, below the endpoint
    target L0 / 2, and training them takes 0 steps."""
    _check(sigma, input_dim, n_train, data_seed)
    sigma = float(sigma)
    x, y, _ = mixture_data(sigma=sigma, n_train=n_train, input_dim=input_dim, data_seed=data_seed)
    energy = Energy(build_without_global_rng(lambda: mixture_net(input_dim)), x, y, "mse", strategy="vmap",
                    split="train")
    energy_a = energy(energy.point_of(mixture_endpoint_a(sigma, input_dim)))
    threshold = DEFAULT_THRESHOLD if 3 * energy_a <= DEFAULT_THRESHOLD else _round_up(3 * energy_a)
    if threshold >= PROVEN_BARRIER:
        raise ConfigError(f"gaussian-mixture: on this sample endpoint A has energy {energy_a:.3g}, too close to the "
                          f"barrier bound {PROVEN_BARRIER}: use a smaller sigma or more samples (n_train)")
    return Task(
        name="gaussian-mixture",
        description=f"Section 2.3.1 counterexample: 2-unit ReLU net (no first-layer biases) on a mixture of two "
                    f"Gaussians in R^{input_dim} (means +-(1, -1), covariance sigma^2 I, sigma = {sigma:g}, "
                    f"{n_train} whitened samples), target the standardised residual along each component's own "
                    f"axis; A bisects the components, B swaps the units; every path reaches risk >= "
                    f"{PROVEN_BARRIER} (population); energy = MSE on the sample",
        make_model=lambda seed: mixture_endpoint_a(sigma, input_dim),
        objective=Objective(x, y, "mse"),
        energy=energy,
        default_threshold=threshold,
        endpoint_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=0, max_steps=2000),
        bead_training=TrainConfig(optimizer="adam", lr=0.01, check_every=25, dense_checks=0, max_steps=2000,
                                  stall_steps=200),
        endpoint_fraction=0.5,
        derive_endpoint_b=swap_units,
        threads=1,
        options={"sigma": sigma, "input_dim": input_dim, "n_train": n_train, "data_seed": data_seed},
    )

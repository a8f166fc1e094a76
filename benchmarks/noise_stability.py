"""Benchmark: interlayer-cushion spectral norms ||J^{i,j}||_2 by batched power iteration vs dense Jacobians.

Run from the repository root:

    .venv/bin/python benchmarks/noise_stability.py                 # MLP and convnet, ~2-4 min on 2 cores
    .venv/bin/python benchmarks/noise_stability.py --models mlp    # the MLP only
    .venv/bin/python benchmarks/noise_stability.py --device cuda   # on a GPU

For each model (MNIST-sized, randomly initialised, float64, random N(0, 1) MNIST-shaped inputs) it computes
||J^{i,j}_x||_2 for every pair of weight layers i < j, for every sample, two ways, in the same run:

  * ``power``: :func:`modeconnect.kuditipudi.noise.power_spectral_norm` on a batch of ``--samples`` samples
    (jvp / vjp, the Jacobian is never formed; the library's defaults: at most 200 iterations, relative
    tolerance 1e-6);
  * ``dense``: :func:`modeconnect.kuditipudi.noise.dense_spectral_norm`, the naive reference: one sample at
    a time, ``torch.autograd.functional.jacobian`` (one backward pass per output) then
    ``torch.linalg.matrix_norm(ord=2)`` (an SVD), on the first ``--dense-samples`` samples.

It prints samples/s of both (all pairs of a sample count as one sample), their ratio, the largest relative
difference between the two on the samples both saw, and the power iterations used. Models: ``mlp``, the
784-512-512-512-10 ReLU MLP of ``mnist-mlp``; ``convnet``, the ``mnist-kuditipudi`` convnet (3 x conv3x3 16,
bias-free, max-pool 2). Timings are noisy on a shared machine; the script sets one torch thread unless
``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import time

import torch

from modeconnect.kuditipudi.noise import LayerStack, dense_spectral_norm, power_spectral_norm
from modeconnect.models import image_mlp, kuditipudi_convnet


def build(name: str) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return (image_mlp(784, 512, 3, 10) if name == "mlp" else kuditipudi_convnet(16, 3)).double()


def pairs(stack: LayerStack) -> list[tuple[int, int]]:
    return [(i, j) for i in range(1, stack.d + 1) for j in range(i + 1, stack.d + 1)]


def run(name: str, samples: int, dense_samples: int, device: str, iterations: int, tolerance: float) -> dict:
    net = build(name).to(device).eval().requires_grad_(False)
    stack = LayerStack(net)
    x = torch.randn(samples, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    xs = stack.forward_all(stack.prepare(x))
    g = torch.Generator().manual_seed(2)
    power, dense, used = {}, {}, {}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    tick = time.perf_counter()
    for i, j in pairs(stack):
        sigma, n_iter, _ = power_spectral_norm(lambda z, i=i, j=j: stack.M(i, j, z), xs[i], generator=g,
                                               iterations=iterations, tolerance=tolerance)
        power[(i, j)], used[(i, j)] = sigma, n_iter
    sync()
    t_power = time.perf_counter() - tick
    tick = time.perf_counter()
    for i, j in pairs(stack):
        dense[(i, j)] = dense_spectral_norm(lambda z, i=i, j=j: stack.M(i, j, z), xs[i][:dense_samples])
    sync()
    t_dense = time.perf_counter() - tick
    error = max(float(((power[k][:dense_samples] - dense[k]).abs() / dense[k]).max()) for k in power)
    return {"model": name, "pairs": len(power), "power_samples": samples, "power_s": t_power,
            "power_rate": samples / t_power, "dense_samples": dense_samples, "dense_s": t_dense,
            "dense_rate": dense_samples / t_dense, "max_rel_diff": error,
            "iterations": {f"{i},{j}": n for (i, j), n in used.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,convnet", help="comma-separated: mlp, convnet")
    parser.add_argument("--samples", type=int, default=64, help="samples for power iteration (one batch)")
    parser.add_argument("--dense-samples", type=int, default=None,
                        help="samples for the dense reference (default: 8 for mlp, 1 for convnet)")
    parser.add_argument("--iterations", type=int, default=200, help="most power iterations (library default 200)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="power iteration tolerance (default 1e-6)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s), float64")
    for name in args.models.split(","):
        dense_n = args.dense_samples or (8 if name == "mlp" else 1)
        r = run(name, args.samples, dense_n, args.device, args.iterations, args.tolerance)
        print(f"{r['model']:>8}: {r['pairs']} pairs (i < j) per sample | power iteration: {r['power_samples']} samples "
              f"in {r['power_s']:.2f} s = {r['power_rate']:.3g} samples/s | dense Jacobian: {r['dense_samples']} "
              f"samples in {r['dense_s']:.2f} s = {r['dense_rate']:.3g} samples/s | ratio power / dense = "
              f"{r['power_rate'] / r['dense_rate']:.3g}x | max relative difference {r['max_rel_diff']:.2e} | "
              f"iterations {r['iterations']}", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: one training step of the papers' convnets with channels_last convolution weights against the
standard layout, in the same process, interleaved (training itself keeps the standard layout: see below).

    .venv/bin/python benchmarks/train_step.py              # about 30 s on 2 cores
    .venv/bin/python benchmarks/train_step.py --threads 1

A step is ``functional_call`` of the model on a batch of 64 random inputs of the task's shape, the
cross-entropy, ``backward`` and an Adam step, as ``train_to_target`` runs it. Times are the best of
``--repeats`` blocks of 25 steps after a warm-up; the two layouts alternate block by block, so that load
drift hits both alike. The last column is the speed-up of channels_last (> 1: faster).

channels_last weights (the first convolution's weight sets the layout of every activation after it) were
tried in ``train_to_target`` and left out: in two runs on 2 threads they made the small MNIST convnet's
step 1.19-1.24x faster, the CIFAR convnet's 1.12-1.15x and Kuditipudi's 1.34x, but the paper-size MNIST
convnet's 0.93-0.97x, and they change trajectories in their last bits. Using them would need a measured,
recorded choice per model, like the energy's ``strategy="auto"``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.models import cifar_convnet, kuditipudi_convnet, mnist_convnet  # noqa: E402

MODELS = {
    "MNIST convnet 8/16/64": (lambda: mnist_convnet(8, 16, 64), (1, 28, 28)),
    "MNIST convnet 32/64/1024 (paper)": (lambda: mnist_convnet(), (1, 28, 28)),
    "CIFAR convnet 16/16/96/48": (lambda: cifar_convnet(16, 16, 96, 48), (3, 32, 32)),
    "Kuditipudi convnet width 16": (lambda: kuditipudi_convnet(16), (1, 28, 28)),
}


def channels_last_copy(value: torch.Tensor) -> torch.Tensor:
    """A copy with channels_last strides for a 4-D weight (also when it has one input channel, where
    ``contiguous(memory_format=...)`` would keep the row-major strides), a plain copy otherwise."""
    if value.ndim == 4:
        return torch.empty_like(value, memory_format=torch.channels_last).copy_(value.detach())
    return value.detach().clone()


def stepper(model, shape, channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, *shape, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    params = {k: (channels_last_copy(v) if channels_last else v.detach().clone()).requires_grad_(True)
              for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 64, Adam")
    print(f"{'model':<34} {'standard ms':>12} {'channels_last ms':>17} {'speed-up':>9}")
    for name, (build, shape) in MODELS.items():
        model = build()
        runs = {"standard": stepper(model, shape, False), "channels_last": stepper(model, shape, True)}
        for run in runs.values():
            run(5)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(args.repeats):
            for key, run in runs.items():
                best[key] = min(best[key], run(25))
        print(f"{name:<34} {best['standard'] * 1e3:>12.2f} {best['channels_last'] * 1e3:>17.2f} "
              f"{best['standard'] / best['channels_last']:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()

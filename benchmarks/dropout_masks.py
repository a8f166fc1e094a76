"""Benchmark: dropout-mask search (Kuditipudi et al., Definition 1), batched against looped.

Run from the repository root:

    .venv/bin/python benchmarks/dropout_masks.py                 # MLP (synthetic data) and, with data, MNIST
    .venv/bin/python benchmarks/dropout_masks.py --masks 40 --repeats 3

For a model and its energy it evaluates every theta_i (i = 1 .. d-1) of K masks at p = 0.5 two ways, timed
interleaved in the same process:

* batched: :func:`modeconnect.kuditipudi.dropout.dropout_stability` (stacks ``chunk`` dropped-out networks
  and calls the energy's batched evaluation once per chunk);
* looped: the obvious reference, one ``energy(apply_dropout(...))`` call per (mask, i).

It prints masks per second for both, their ratio, and the largest difference between the two sets of
energies (they must agree). One untimed warm-up call of each comes first. The models are untrained:
throughput does not depend on the weights. MNIST uses ``$MODECONNECT_DATA`` (default /work/shared/data) and
is skipped when the data are absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.energy import Energy  # noqa: E402
from modeconnect.kuditipudi.dropout import DropoutConfig, apply_dropout, dropout_stability, sample_masks  # noqa: E402
from modeconnect.kuditipudi.units import hidden_units  # noqa: E402
from modeconnect.params import point_from_module  # noqa: E402
from modeconnect.tasks import make_task  # noqa: E402


def looped(point, energy, spec, masks, r):
    values = [[energy(apply_dropout(point, spec, m, r, from_layer=i)) for i in range(1, len(spec.layers) + 1)]
              for m in masks]
    return torch.tensor(values, dtype=torch.float64)


def bench(name: str, model: nn.Module, energy: Energy, n_masks: int, repeats: int) -> None:
    point = energy.point_of(model) if hasattr(energy, "point_of") else point_from_module(model)
    spec = hidden_units(model)
    config = DropoutConfig(p=0.5, masks=n_masks)
    masks = sample_masks(spec, config.p, n_masks, seed=0)
    times = {"batched": [], "looped": []}
    batched_values = loop_values = None
    dropout_stability(point, energy, spec, config, masks=masks[:2])  # warm-up: vmap's first call costs ~0.4 s
    looped(point, energy, spec, masks[:2], config.r)
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        clock = time.perf_counter()
        _, report = dropout_stability(point, energy, spec, config, masks=masks)
        times["batched"].append(time.perf_counter() - clock)
        batched_values = torch.tensor(report.energies, dtype=torch.float64)
        clock = time.perf_counter()
        loop_values = looped(point, energy, spec, masks, config.r)
        times["looped"].append(time.perf_counter() - clock)
    gap = float((batched_values - loop_values).abs().max())
    rate = {k: n_masks / statistics.median(v) for k, v in times.items()}
    print(f"{name:<34} layers {len(spec.layers)}  batched {rate['batched']:8.1f} masks/s  looped "
          f"{rate['looped']:8.1f} masks/s  ratio {rate['batched'] / rate['looped']:5.2f}x  "
          f"(strategy {energy.strategy.value}, max |difference| {gap:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}, "
          f"{args.masks} masks, p = 0.5, median of {args.repeats}")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        bench("MLP 32-64-64-10, 512 samples", mlp, Energy(mlp, x, y, "cross_entropy", strategy=strategy),
              args.masks, args.repeats)
    data = Path(os.environ.get("MODECONNECT_DATA", "/work/shared/data"))
    if (data / "mnist").is_dir():
        task = make_task("mnist-kuditipudi", data_dir=data)
        bench("MNIST Kuditipudi convnet, 500 images", task.make_model(0), task.energy, args.masks, args.repeats)
    else:
        print(f"MNIST skipped: no mnist/ in {data}")


if __name__ == "__main__":
    main()

"""Benchmark: energy-evaluation throughput of the real-task models (MNIST, CIFAR-10 convnets, PTB LSTM).

Run from the repository root:

    .venv/bin/python benchmarks/real_models.py            # about 1-2 minutes on 2 idle cores
    .venv/bin/python benchmarks/real_models.py --quick    # smoke run (1 repeat, fewer points; noisy)
    .venv/bin/python benchmarks/real_models.py --device cuda   # on a GPU (auto: a GPU when there is one)

For each model at its task's CPU-scale default size and evaluation-set size (``tasks/mnist.py``,
``tasks/cifar.py``, ``tasks/ptb.py``; inputs are random tensors of the same shapes, since throughput does
not depend on the values), it evaluates an Energy along a segment of ``N_POINTS`` points with the loop,
vmap and auto strategies and prints: seconds per segment (best of k after a warm-up), speed-up vs the loop,
points x samples per second, GFLOP/s (forward FLOPs of one point on the whole evaluation set counted with
``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions) and that as a % of the float32
matmul rate measured in the same run. It also prints what auto chose, the vmap-vs-loop agreement, and
the strategy each task pins. The LSTM is also measured at Zaremba's small size (200/200), where the
ranking differs. Timings are meaningful only on an otherwise idle machine (the load average is printed).
With ``--device cuda`` the points and the data live on the GPU, every timed call ends with
``torch.cuda.synchronize()``, and the matmul baseline is the GPU's float32 rate (TF32 off, as PyTorch's
default for matmuls).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

import time  # noqa: E402

from modeconnect.device import resolve_device  # noqa: E402
from modeconnect.energy import Energy  # noqa: E402
from modeconnect.errors import ConfigError  # noqa: E402
from modeconnect.models import LSTMLanguageModel, cifar_convnet, init_uniform_, mnist_convnet  # noqa: E402
from modeconnect.params import point_from_module  # noqa: E402
from modeconnect.tasks._init import build_without_global_rng, seeded  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(n: int, repeats: int, device: torch.device) -> float:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate on ``device`` in GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = min(timed(lambda: torch.mm(a, b, out=out), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def forward_flops(model, inputs) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs)
    return counter.get_total_flops()


def lstm(emb: int, hidden: int):
    def build():
        return LSTMLanguageModel(10000, emb, hidden)
    return build


def cases(gen: torch.Generator):
    images = torch.randn(500, 1, 28, 28, generator=gen)
    cifar = torch.randn(500, 3, 32, 32, generator=gen)
    tokens = torch.randint(0, 10000, (20, 20), generator=gen)
    labels = torch.randint(0, 10, (500,), generator=gen)
    return [
        # name, builder, inputs, targets, metric, sample_batch_size, strategy pinned by the task
        ("mnist convnet 8/16/64, 500 images", lambda: mnist_convnet(8, 16, 64), images, labels, "error_rate", 500,
         "loop"),
        ("cifar convnet 16/32/128/64, 500 images", lambda: cifar_convnet(16, 32, 128, 64), cifar, labels,
         "error_rate", 500, "loop"),
        ("lstm 64/64 (ptb default), 20x20 tokens", lstm(64, 64), tokens, tokens.roll(-1, 1), "perplexity", None,
         "loop"),
        ("lstm 200/200 (Zaremba small), 20x20 tokens", lstm(200, 200), tokens, tokens.roll(-1, 1), "perplexity",
         None, "-"),
    ]


def points(build, seed):
    if "LSTM" in type(build_without_global_rng(build)).__name__:
        generator = torch.Generator().manual_seed(seed)
        return point_from_module(init_uniform_(build_without_global_rng(build), 0.1, generator))
    return point_from_module(seeded(build, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 8-point segments")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    n_points, repeats = (8, 1) if args.quick else (16, 3)
    where = (f"GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, {n_points}-point segments, best of "
          f"{repeats}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    peak = matmul_gflops(4096 if device.type == "cuda" else 1024, 5, device)
    print(f"float32 matmul rate (baseline for % of peak): {peak:.1f} GFLOP/s\n")
    gen = torch.Generator().manual_seed(0)
    rows, notes = [], []
    ts = torch.linspace(0, 1, n_points)
    for name, build, x, y, metric, sbs, pinned in cases(gen):
        model = build_without_global_rng(build)
        flops = forward_flops(model, x) * n_points
        a, b = ({k: v.to(device) for k, v in points(build, seed).items()} for seed in (1, 2))
        x, y = x.to(device), y.to(device)
        energies = {s: Energy(model, x, y, metric, strategy=s, sample_batch_size=sbs, chunk_size=8)
                    for s in ("loop", "vmap", "auto")}
        auto, segment = energies["auto"], (a, b, ts)
        first = timed(lambda: auto.along_segment(*segment), device)  # noqa: B023 (called at once)
        values, times = {}, dict.fromkeys(energies, float("inf"))
        for s, e in energies.items():
            values[s] = e.along_segment(a, b, ts)  # warm-up
        for _ in range(repeats):
            for s, e in energies.items():
                # the segment memo is cleared first, so that every call evaluates every point
                times[s] = min(times[s], timed(lambda e=e, seg=segment: (e.memo.clear(), e.along_segment(*seg)),
                                               device))
        values = {k: v.cpu() for k, v in values.items()}
        rel = float(((values["vmap"] - values["loop"]).abs() / values["loop"].abs().clamp_min(1e-12)).max())
        chosen = energies["auto"].chosen_strategy.value
        fastest = min(("loop", "vmap"), key=times.get)
        notes.append(f"{name}: auto chose {chosen!r} (first call {first:.3g} s), fastest timed {fastest!r}, "
                     f"task pins {pinned!r}; vmap/loop max relative difference {rel:.1e}")
        for s in ("loop", "vmap", "auto"):
            gf = flops / times[s] / 1e9
            rows.append((name, f"auto->{chosen}" if s == "auto" else s, f"{times[s]:.3g}",
                         f"{times['loop'] / times[s]:.2f}x", f"{n_points * len(x) / times[s]:.3g}", f"{gf:.3g}",
                         f"{100 * gf / peak:.1f}%"))
        print(f"done: {name}", flush=True)
    header = ("model", "strategy", "s/segment", "vs loop", "pts*samples/s", "GFLOP/s", "% of matmul")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print()
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))
    print()
    for n in notes:
        print(n)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (trustworthy only when about "
          f"{torch.get_num_threads()})")


if __name__ == "__main__":
    main()

"""Benchmark: evaluating an Energy along a 100-point segment with the loop, vmap and auto strategies.

Run from the repository root:

    .venv/bin/python benchmarks/segment_eval.py            # full run (about 1-2 minutes on 2 cores)
    .venv/bin/python benchmarks/segment_eval.py --quick    # smoke run (~15 s; 1 repeat, so noisy)
    .venv/bin/python benchmarks/segment_eval.py --threads 1

What it prints:
  * the machine's float32 matmul rate (best of several square matmuls), the baseline for "% of peak";
  * a check that vmap and loop energies agree (relative difference <= 1e-5) for each model;
  * a table, one row per (model, strategy): seconds per 100-point segment (best of k after warm-up),
    speed-up vs the loop (loop_time / time, > 1 means faster), points*samples per second, achieved
    GFLOP/s (forward FLOPs counted analytically: 2*in*out per Linear, 2*Cin*Cout*k*k*Hout*Wout per
    Conv2d, per sample; activations, pooling and the metric ignored) and that as a % of the matmul rate;
  * the strategy "auto" chose for each model and how long its first (measuring) call took; auto is
    timed on later calls only;
  * the load average: the timings are only meaningful on an otherwise idle machine;
  * one line saying whether the targets hold: auto never slower than the loop (10% noise allowed)
    and vmap at least 3x faster than the loop on the 1-4-4-1 MLP.

Models: the paper's 1-4-4-1 sigmoid MLP (``mlp_1441``) with the MAE energy on 256 samples of
x ~ U[0, 1], and an MNIST-sized convnet with the cross-entropy energy on random 28x28 images
(64 of them; 16 with --quick). All energies use Energy's default chunking (points per vmap call derived from a 256 MB
parameter-memory budget; the loop builds one interpolated point at a time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.energy import Energy  # noqa: E402
from modeconnect.params import point_from_module  # noqa: E402
from modeconnect.tasks._init import seeded  # noqa: E402
from modeconnect.tasks.polynomial import mlp_1441  # noqa: E402

N_POINTS = 100


def convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )


def matmul_gflops(n: int, repeats: int) -> float:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def forward_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """Forward FLOPs per sample: Linear and Conv2d layers only (output sizes read with hooks)."""
    total = 0

    def hook(module: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            cin = module.in_channels // module.groups
            total += 2 * cin * module.out_channels * kh * kw * out.shape[-2] * out.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(sample.unsqueeze(0))
    for h in handles:
        h.remove()
    return total


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(energies: dict[str, Energy], a, b, ts, warmup: int, repeats: int):
    """Best-of-``repeats`` seconds per segment for each energy after ``warmup`` untimed calls, and the
    energies. Repeats are interleaved (loop, vmap, auto, loop, ...) so that load drift hits all alike."""
    values = {name: None for name in energies}
    for name, energy in energies.items():
        for _ in range(warmup):
            values[name] = energy.along_segment(a, b, ts)
    times = {name: float("inf") for name in energies}
    for _ in range(repeats):
        for name, energy in energies.items():
            start = time.perf_counter()
            values[name] = energy.along_segment(a, b, ts)
            times[name] = min(times[name], time.perf_counter() - start)
    return times, values


def run_model(name, make_model, inputs, targets, metric, warmup, repeats, peak, rows, report):
    a, b = point_from_module(seeded(make_model, 1)), point_from_module(seeded(make_model, 2))
    model, ts = make_model(), torch.linspace(0, 1, N_POINTS)
    flops_per_segment = forward_flops(model, inputs[0]) * len(inputs) * N_POINTS
    energies = {s: Energy(model, inputs, targets, metric, strategy=s) for s in ("loop", "vmap", "auto")}
    auto = energies["auto"]
    first = _timed(lambda: auto.along_segment(a, b, ts))  # auto's first call measures both strategies
    times, values = bench(energies, a, b, ts, warmup, repeats)
    chosen = auto.chosen_strategy.value
    rel = float(((values["vmap"] - values["loop"]).abs() / values["loop"].abs().clamp_min(1e-12)).max())
    report["agree"][name] = rel
    report["chosen"][name] = (chosen, first)
    report["times"][name] = times
    print(f"  {name}: vmap vs loop max relative difference {rel:.2e} "
          f"({'OK' if rel <= 1e-5 else 'FAIL'}, tolerance 1e-5)", flush=True)
    for strategy in ("loop", "vmap", "auto"):
        t = times[strategy]
        gflops = flops_per_segment / t / 1e9
        label = f"auto->{chosen}" if strategy == "auto" else strategy
        rows.append((name, label, f"{t:.4g}", f"{times['loop'] / t:.2f}x",
                     f"{N_POINTS * len(inputs) / t:.3g}", f"{gflops:.3g}", f"{100 * gflops / peak:.2f}%"))


def print_table(rows) -> None:
    header = ("model", "strategy", "s/segment", "vs loop", "pts*samples/s", "GFLOP/s", "% of matmul")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run (fewer samples and repeats)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    conv_samples, conv_warmup, conv_repeats, mlp_repeats = (16, 0, 1, 5) if args.quick else (64, 1, 4, 20)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'quick' if args.quick else 'full'} mode, {N_POINTS}-point segments, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    peak = matmul_gflops(512 if args.quick else 1024, 5 if args.quick else 10)
    print(f"float32 matmul rate (baseline for % of peak): {peak:.1f} GFLOP/s")

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, generator=gen)
    images = torch.randn(conv_samples, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (conv_samples,), generator=gen)
    rows, report = [], {"agree": {}, "chosen": {}, "times": {}}
    run_model("mlp-1441 (256 samples, mae)", mlp_1441, x, torch.sin(6 * x), "mae",
              3, mlp_repeats, peak, rows, report)
    run_model(f"convnet ({conv_samples} samples, ce)", convnet, images, labels, "cross_entropy",
              conv_warmup, conv_repeats, peak, rows, report)

    print()
    print_table(rows)
    print()
    for name, (chosen, first) in report["chosen"].items():
        fastest = min(("loop", "vmap"), key=report["times"][name].get)
        print(f"auto chose {chosen!r} for {name} (its first call, which measures, took {first:.3g} s; "
              f"the faster in the timed runs was {fastest!r})")
    auto_ok = all(t["auto"] <= 1.10 * t["loop"] for t in report["times"].values())
    mlp_times = next(iter(report["times"].values()))
    vmap_ok = mlp_times["loop"] / mlp_times["vmap"] >= 3.0
    agree_ok = all(r <= 1e-5 for r in report["agree"].values())
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (timings are trustworthy only when this "
          f"benchmark is the only busy process, i.e. the load is about {torch.get_num_threads()})")
    verdict = "HOLD" if auto_ok and vmap_ok and agree_ok else "DO NOT HOLD"
    print(f"targets {verdict}: auto never slower than loop (10% noise): {'yes' if auto_ok else 'NO'}; "
          f"vmap >= 3x loop on the MLP: {'yes' if vmap_ok else 'NO'} "
          f"({mlp_times['loop'] / mlp_times['vmap']:.1f}x); vmap/loop agree to 1e-5: {'yes' if agree_ok else 'NO'}")


if __name__ == "__main__":
    main()

"""Benchmark: evaluating an Energy along a segment, against loss-landscapes and against the plain loop.

Run from the repository root (loss-landscapes is optional: ``pip install -e .[bench]``):

    .venv/bin/python benchmarks/segment_eval.py            # full run (about 1-2 minutes on 2 cores)
    .venv/bin/python benchmarks/segment_eval.py --quick    # smoke run (fewer repeats, so noisier)
    .venv/bin/python benchmarks/segment_eval.py --threads 2

The work (issue 13's): the paper's quadratic-regression MLP (1-4-4-1 sigmoid) with the MSE on 1,000
samples along a 100-point segment, and the MNIST task's convnet (conv5x5 8 / conv5x5 16 / fc 64) with
the cross-entropy on 500 images (random 28x28 inputs of the same shape as MNIST's: throughput does not
depend on the values) along a 20-point segment. The peer is loss-landscapes 3.0.6's
``linear_interpolation(model_a, model_b, Loss(loss_fn, x, y), steps)``: it evaluates ``t = 1/steps, 2/steps,
..., 1`` by adding ``(b - a) / steps`` to a model in place, one forward per point. Every energy here
evaluates the same ``t`` values, so the values can be compared (printed: the largest absolute
difference; the peer accumulates its steps in float32).

The peer is handed the network as a user would write it, with ``nn.MaxPool2d`` layers; modeconnect's
energy swaps them (in its private copy) for the bit-identical strided-slice pool. A second peer row
hands it modeconnect's own ``mnist_convnet`` (already using the fast pool), so the effect of the pool
alone can be read off.

Rows, per model: the peer(s); ``loop`` (one ``functional_call`` per point), ``vmap``, ``matmul`` (MLP only:
one batched matmul per layer over all points), ``auto`` (its choice; timed after its first, measuring
call, whose time is printed separately), and ``loop (batches rebuilt)``, the loop with its evaluation
batches rebuilt on every call as before, to measure that change. The energies' segment memo is cleared
before every call, so each call evaluates every point. Times are best of ``k`` after a warm-up;
repeats are interleaved (peer, loop, vmap, ...) so that load drift hits all alike. Columns: seconds per
segment, speed against the peer and against the loop (> 1: faster), points x samples per second.

The last lines say whether issue 13's targets hold: at least 10x the peer on the MLP, at least 2x on the
convnet, auto never slower than the loop (10% noise allowed), values agreeing with the peer.

Measured and left out (numbers in the report of issue 13): fusing the interpolation into the vmapped
function saves nothing measurable (building all 100 interpolated MLP points takes 0.03 ms of vmap's
2.4 ms); ``torch.compile`` of the matmul path took 73 s to compile on the busy 2-core machine for a 13%
faster call, so it is not used; channels_last inputs changed the convnet's forward by under 2%.
On the MLP's matmul path (one thread, A/B in one process, best of 1,000): evaluating each sigmoid as
``tanh`` of half its input, with the halving and ``(1 + h) / 2`` folded into the layers' matrices, was
slower (0.85 against 0.81 ms: ``tanh`` saves 14 us per 208,000 values, the folding costs more per
segment); sharing the activation buffers between layers (ping-pong) gained nothing; writing ``bmm``'s
output straight into the rows of an augmented activation is 2.3x slower than a contiguous output;
expressing each layer's pre-activation as ``lerp`` of the two ends' (exact, since it is affine in t)
costs a broadcast ``lerp`` per layer as slow as the sigmoid. Augmented matrices ``[W | b]`` against
activations with a row of ones (the bias inside the ``bmm``, no broadcast copy, the segment's ends
stacked once, reused output buffers) were faster alone (0.91 against 1.37 ms, one process, best of
1,000) but slower in this benchmark's interleaved order (6.3-6.9x the peer before, 4.8-6.0x with it,
four alternating runs each), so the per-point ``baddbmm`` stays. What remains is the kernels themselves:
per 52-point chunk two sigmoids of 208,000 values (66 us each), a ``bmm`` with inner dimension 5 (37
us) and the first layer's ``mm`` with inner dimension 2 (24 us). Runners that follow a memory-heavy one
in the interleaved order run cold: ``matmul`` after ``vmap`` is about 20% slower than the same code as
``auto`` after ``matmul``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing

from modeconnect.energy import Energy  # noqa: E402
from modeconnect.models import mnist_convnet  # noqa: E402
from modeconnect.params import point_from_module  # noqa: E402
from modeconnect.tasks._init import seeded  # noqa: E402
from modeconnect.tasks.polynomial import mlp_1441  # noqa: E402

try:
    import loss_landscapes
    import loss_landscapes.metrics
except ImportError:  # optional: the peer's column is skipped
    loss_landscapes = None

TARGETS = {"mlp": 10.0, "convnet": 2.0}
"""Speed-ups over loss-landscapes that issue 13 asks for."""


def matmul_gflops(n: int, repeats: int) -> float:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_convnet() -> nn.Sequential:
    """The MNIST task's convnet as a user writes it: the same layers and names, with ``nn.MaxPool2d``."""
    return nn.Sequential(OrderedDict((name, nn.MaxPool2d(2) if isinstance(m, nn.MaxPool2d) else m)
                                     for name, m in mnist_convnet(8, 16, 64).named_children()))


def peer_runner(build, a, b, inputs, targets, loss_fn, steps):
    """A call of loss-landscapes' ``linear_interpolation`` on fresh copies of the two models (it moves one in place)."""
    model_a, model_b = build(), build()
    model_a.load_state_dict(a)
    model_b.load_state_dict(b)
    metric = loss_landscapes.metrics.Loss(loss_fn, inputs, targets)

    def run():
        return torch.tensor(loss_landscapes.linear_interpolation(model_a, model_b, metric, steps=steps,
                                                                 deepcopy_model=True), dtype=torch.float64)
    return run


def run_model(key, label, build, inputs, targets, metric, loss_fn, steps, warmup, repeats, peers, rows, report):
    """Time every runner on one model; append table rows and record ratios in ``report``."""
    a, b = point_from_module(seeded(build, 1)), point_from_module(seeded(build, 2))
    ts = torch.arange(1, steps + 1, dtype=torch.float64) / steps  # the peer's points
    strategies = ["loop", "vmap"] + (["matmul"] if key == "mlp" else []) + ["auto"]
    energies = {s: Energy(build(), inputs, targets, metric, strategy=s) for s in strategies}
    first = _timed(lambda: energies["auto"].along_segment(a, b, ts))  # auto's first call measures
    runners = {f"loss-landscapes ({name})": peer_runner(peer_build, a, b, inputs, targets, loss_fn, steps)
               for name, peer_build in peers} if loss_landscapes is not None else {}
    def fresh(energy):
        def run():
            energy.memo.clear()  # every call evaluates every point (the memo would return repeats for free)
            return energy.along_segment(a, b, ts)
        return run
    runners.update({s: fresh(e) for s, e in energies.items()})
    rebuilt = Energy(build(), inputs, targets, metric, strategy="loop")

    def loop_rebuilt():
        rebuilt._batches.clear()  # what every call paid before the batches were cached
        rebuilt.memo.clear()
        return rebuilt.along_segment(a, b, ts)
    runners["loop (batches rebuilt)"] = loop_rebuilt
    values = {name: run() for name, run in runners.items() for _ in range(warmup)} if warmup else {}
    times = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            values[name] = run()
            times[name] = min(times[name], time.perf_counter() - start)
    chosen = energies["auto"].chosen_strategy.value
    peer_names = [n for n in runners if n.startswith("loss-landscapes")]
    peer_time = times[peer_names[0]] if peer_names else None
    ref = values[peer_names[0]] if peer_names else values["loop"]
    for name in runners:
        shown = f"auto->{chosen}" if name == "auto" else name
        vs_peer = f"{peer_time / times[name]:.2f}x" if peer_time else "n/a"
        rows.append((label, shown, f"{times[name]:.4g}", vs_peer, f"{times['loop'] / times[name]:.2f}x",
                     f"{steps * len(inputs) / times[name]:.3g}", f"{float((values[name] - ref).abs().max()):.1e}"))
    report[key] = {"times": times, "peer": peer_time, "chosen": chosen, "first": first,
                   "agree": max(float((values[n] - ref).abs().max()) for n in runners)}


def print_table(rows) -> None:
    header = ("model", "runner", "s/segment", "vs loss-landscapes", "vs loop", "pts*samples/s", "max |diff|")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (fewer repeats)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every runner (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mlp_repeats, conv_repeats = (5, 2) if args.quick else (30, 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) for every runner, "
          f"{'quick' if args.quick else 'full'} mode, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if loss_landscapes is None:
        print("loss-landscapes is NOT installed (pip install loss-landscapes, or the 'bench' extra): "
              "its column is skipped, ratios are against the loop only")
    else:
        print(f"peer: loss-landscapes {getattr(loss_landscapes, '__version__', '3.0.6')} linear_interpolation")
    print(f"float32 matmul rate: {matmul_gflops(512, 5):.1f} GFLOP/s")

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 1, generator=gen)
    images = torch.randn(500, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (500,), generator=gen)
    rows, report = [], {}
    run_model("mlp", "quadratic MLP 1-4-4-1, 100 pts x 1000", mlp_1441, x, 0.5 * x**2 + 0.25 * x + 0.1, "mse",
              nn.functional.mse_loss, 100, 2, mlp_repeats, [("same model", mlp_1441)], rows, report)
    print("done: MLP", flush=True)
    run_model("convnet", "MNIST convnet 8/16/64, 20 pts x 500", lambda: mnist_convnet(8, 16, 64), images, labels,
              "cross_entropy", nn.functional.cross_entropy, 20, 1, conv_repeats,
              [("nn.MaxPool2d", plain_convnet), ("modeconnect's model", lambda: mnist_convnet(8, 16, 64))],
              rows, report)
    print()
    print_table(rows)
    print()
    for key, r in report.items():
        print(f"{key}: auto chose {r['chosen']!r}; its first (measuring) call took {r['first']:.3g} s, "
              f"{r['first'] / r['times']['auto']:.1f} steady calls")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (timings are trustworthy only when this benchmark "
          "is the only busy process)")
    verdicts = []
    for key, r in report.items():
        best = min(r["times"][s] for s in ("loop", "vmap", "matmul", "auto") if s in r["times"])
        if r["peer"] is not None:
            ratio = r["peer"] / r["times"]["auto"]
            verdicts.append((f"{key}: auto {ratio:.1f}x loss-landscapes (target {TARGETS[key]:g}x; fastest "
                             f"strategy {r['peer'] / best:.1f}x)", ratio >= TARGETS[key]))
        verdicts.append((f"{key}: auto {r['times']['loop'] / r['times']['auto']:.2f}x the loop (never slower, 10% "
                         "noise)", r["times"]["auto"] <= 1.1 * r["times"]["loop"]))
        verdicts.append((f"{key}: values agree with {'the peer' if r['peer'] else 'the loop'} to {r['agree']:.1e}",
                         r["agree"] <= 1e-4))
    for text, ok in verdicts:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    print(f"targets {'HOLD' if all(ok for _, ok in verdicts) else 'DO NOT ALL HOLD'}")


if __name__ == "__main__":
    main()

"""Kuditipudi et al. (2019), Figure 2 on MNIST: dropout stability of a 3-layer bias-free convnet, the straight
line to a dropout version of it, and how narrow a net still reaches a low error.

Scale on CPU (stated in the claims and in ``results.json``): the paper's architecture (3 conv layers of 32 3x3
filters, here with a max-pool after each and a bias-free linear head, see
:func:`~modeconnect.models.kuditipudi_convnet`), trained with Adam on 10,000 MNIST training images for at most
3,000 steps, energy = test error % on 1,000 test images. The paper trains on all 60,000 images and reports
error on the full test set. No dropout is used in training, as in the paper.

* left: for each p, 20 masks keeping exactly floor(32 (1 - p)) filters in every layer (rescaled by 1/(1-p));
  the best mask's error and the median;
* centre: the error along the straight line from the net to its best p = 0.2 dropout version (41 points);
* right: nets of widths 1, 2, 3, 4, 6, 8 and 16 trained with the same budget; their test error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch

from ..._io import read_tensors, write_tensors
from ...kuditipudi.dropout import DropoutConfig, apply_dropout, dropout_stability
from ...kuditipudi.units import hidden_units
from ...progress import open_task, training_reporter
from ...tasks import make_task
from ...train import TrainConfig, train_to_target
from ..reproduce import UnitCache, claim

FIGURE = "modeconnect.plots.repro_kuditipudi:fig2_figures"

FULL = {"width": 32, "n_train": 10000, "n_eval": 1000, "max_steps": 3000, "ps": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "masks": 20, "widths": [1, 2, 3, 4, 6, 8, 16], "line_points": 41, "seed": 0}
QUICK = {"width": 8, "n_train": 1000, "n_eval": 200, "max_steps": 150, "ps": [0.2, 0.5], "masks": 4,
         "widths": [2, 4], "line_points": 5, "seed": 0}
TARGET_ERROR = 1.0
"""Training stops early when the test error reaches this (%); otherwise at max_steps."""
STABLE_MARGIN = 2.0
"""A claim holds when the best p = 0.2 dropout net is within this many error points of the full net."""
LOW_ERROR = 5.0
"""What "low error" means for the narrow nets (test error %)."""


def _train(settings: dict[str, Any], width: int, out: FsPath, say: Callable[[str], None]):
    """A trained net of ``width`` (read back from ``out`` when it was trained before) and its task."""
    task = make_task("mnist-kuditipudi", width=width, n_train=settings["n_train"], n_eval=settings["n_eval"])
    file = out / f"net-width{width}-steps{settings['max_steps']}-n{settings['n_train']}.safetensors"
    if file.exists():
        return task, read_tensors(file), None
    say(f"training the width-{width} convnet (at most {settings['max_steps']} steps)")
    config = TrainConfig(optimizer="adam", lr=2e-3, batch_size=64, check_every=100, max_steps=settings["max_steps"])
    start = task.energy.point_of(task.make_model(settings["seed"]))
    with open_task(say, f"width-{width} convnet", total=config.max_steps) as bar:
        point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=TARGET_ERROR,
                                        config=config, seed=settings["seed"],
                                        on_check=training_reporter(bar, TARGET_ERROR))
    write_tensors(file, point)
    say(f"width {width}: test error {status.final_energy:.2f}% after {status.steps} steps")
    return task, point, status.steps


def run(out: FsPath, *, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    cache = UnitCache(out)
    torch.set_num_threads(1)  # a small convnet: a second thread only synchronises (README, 'Threads')
    task, point, _ = _train(settings, settings["width"], out, progress)
    energy = task.energy
    spec = hidden_units(task.make_model(0))
    base = cache.get_or_compute(f"base-w{settings['width']}", lambda: float(energy(point)))

    def stability(p: float) -> dict[str, Any]:
        _, report = dropout_stability(point, energy, spec, DropoutConfig(p=p, masks=settings["masks"]))
        return {"p": p, "best": report.full["min"], "median": report.full["median"], "worst": report.full["max"],
                "best_mask": report.best_mask, "kept": report.kept}

    left = [cache.get_or_compute(f"left-w{settings['width']}-p{p}-m{settings['masks']}", lambda p=p: stability(p))
            for p in settings["ps"]]
    progress("left panel: " + ", ".join(f"p={r['p']:g}: best {r['best']:.2f}%" for r in left))

    def line() -> dict[str, Any]:
        from ...kuditipudi.dropout import sample_masks

        masks = sample_masks(spec, 0.2, settings["masks"], 0)
        _, report = dropout_stability(point, energy, spec, DropoutConfig(p=0.2, masks=settings["masks"]), masks=masks)
        dropped = apply_dropout(point, spec, masks[report.best_mask], report.r)
        ts = torch.linspace(0, 1, settings["line_points"])
        values = energy.along_segment(point, dropped, ts)
        return {"t": ts.tolist(), "error": [float(v) for v in values], "p": 0.2}

    centre = cache.get_or_compute(f"centre-w{settings['width']}-n{settings['line_points']}", line)
    progress(f"centre panel: max error along the line {max(centre['error']):.2f}% "
             f"(ends {centre['error'][0]:.2f}% and {centre['error'][-1]:.2f}%)")

    def narrow(width: int) -> dict[str, Any]:
        narrow_task, narrow_point, steps = _train(settings, width, out, progress)
        return {"width": width, "error": float(narrow_task.energy(narrow_point)), "steps": steps}

    right = [cache.get_or_compute(f"right-w{w}-s{settings['max_steps']}", lambda w=w: narrow(w))
             for w in settings["widths"]]
    progress("right panel: " + ", ".join(f"width {r['width']}: {r['error']:.2f}%" for r in right))

    at_02 = next((r for r in left if abs(r["p"] - 0.2) < 1e-9), None)
    ends = max(centre["error"][0], centre["error"][-1])
    low = [r["width"] for r in right if r["error"] <= LOW_ERROR]
    claims = [
        claim(f"a 3-layer convnet of width {settings['width']} trained without dropout is fairly dropout stable: "
              f"the best of {settings['masks']} p = 0.2 masks is within {STABLE_MARGIN:g} error points of the full net",
              at_02 is not None and at_02["best"] <= base + STABLE_MARGIN,
              f"full net {base:.2f}%, best p=0.2 dropout net {at_02['best'] if at_02 else float('nan'):.2f}%"),
        claim("dropout stability degrades as p grows (best-of-masks error at the largest p >= at the smallest)",
              left[-1]["best"] >= left[0]["best"],
              "; ".join(f"p={r['p']:g}: {r['best']:.2f}%" for r in left)),
        claim("the straight line from the net to its p = 0.2 dropout version stays low (its maximum is within "
              f"{STABLE_MARGIN:g} points of the worse end)", max(centre["error"]) <= ends + STABLE_MARGIN,
              f"max {max(centre['error']):.2f}% against ends {centre['error'][0]:.2f}% / {centre['error'][-1]:.2f}%"),
        claim(f"3-layer convnets a few filters wide reach low error (<= {LOW_ERROR:g}%)", bool(low) and min(low) <= 4,
              "; ".join(f"width {r['width']}: {r['error']:.2f}%" for r in right)),
    ]
    table = ["panel,x,best_error,median_error"] + [f"left,{r['p']},{r['best']},{r['median']}" for r in left]
    table += [f"centre,{t},{e}," for t, e in zip(centre["t"], centre["error"])]
    table += [f"right,{r['width']},{r['error']}," for r in right]
    (out / "table.csv").write_text("\n".join(table) + "\n")
    return {"settings": settings, "scale": "CPU scale: 10,000 training images, 1,000 test images, <= 3,000 Adam "
            "steps (the paper: full MNIST)", "full_error": base, "left": left, "centre": centre, "right": right,
            "claims": claims}

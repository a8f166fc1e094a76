"""Kuditipudi et al. (2019), Figure 3 analogue on the CIFAR-10 subset: noise stability of a VGG-style net
trained with channel-wise dropout, and loss / accuracy along the Theorem 3 path against direct interpolation.

Scale on CPU (stated in the claims and in ``results.json``): the paper trains VGG-11 on all of CIFAR-10 with
channel-wise dropout p = 0.25 on the first three layers and 0.5 on the others. Here: the bias-free 5-layer
:func:`~modeconnect.models.vgg_small` at width 8 (channels 8, 16, 32, 32, 32), trained with Adam on all 5,000
training images for 3,000 steps with our exact-count unit dropout (one mask per minibatch, p = 0.25 in every
layer; :func:`~modeconnect.kuditipudi.dropout.dropout_perturbation`). Noise stability is measured on 32
training images; loss and accuracy along the paths on 1,000 training images (the paper plots training loss
and accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch

from ..._io import read_tensors, write_tensors
from ...energy import Energy
from ...kuditipudi.dropout import dropout_perturbation
from ...kuditipudi.noise import NoiseStabilityConfig, noise_stability, select_samples
from ...kuditipudi.units import hidden_units
from ...methods import METHODS
from ...path import Path
from ...progress import open_task, training_reporter
from ...tasks import make_task
from ...train import TrainConfig, train_to_target
from ..reproduce import UnitCache, claim

FIGURE = "modeconnect.plots.repro_kuditipudi:fig3_figures"

FULL = {"width": 8, "n_train": 5000, "n_eval": 1000, "max_steps": 3000, "dropout": 0.25, "noise_samples": 32,
        "power_iterations": 100, "dropout_draws": 4, "path_samples": 1000, "points_per_piece": 9, "line_points": 33,
        "narrow_steps": 3000, "draws": 8, "grid_size": 9}
QUICK = {"width": 2, "n_train": 256, "n_eval": 100, "max_steps": 30, "dropout": 0.25, "noise_samples": 4,
         "power_iterations": 10, "dropout_draws": 2, "path_samples": 128, "points_per_piece": 3, "line_points": 5,
         "narrow_steps": 30, "draws": 2, "grid_size": 3}
NARROW_METHOD = "kuditipudi_narrow"


def _trained(task, settings: dict[str, Any], seed: int, out: FsPath, say: Callable[[str], None]):
    file = out / f"vgg-w{settings['width']}-seed{seed}-steps{settings['max_steps']}-p{settings['dropout']}.safetensors"
    if file.exists():
        return read_tensors(file)
    say(f"training VGG net seed {seed} with channel-wise dropout p={settings['dropout']:g} "
        f"({settings['max_steps']} steps)")
    model = task.make_model(seed)
    config = TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=500, max_steps=settings["max_steps"],
                         dropout=settings["dropout"])
    with open_task(say, f"VGG net seed {seed}", total=config.max_steps) as bar:
        point, status = train_to_target(task.energy.point_of(model), energy=task.energy, objective=task.objective,
                                        target=0.0, config=config, seed=seed, on_check=training_reporter(bar, 0.0),
                                        perturb=dropout_perturbation(hidden_units(model), settings["dropout"], seed))
    say(f"seed {seed}: test error {status.final_energy:.1f}% after {status.steps} steps")
    write_tensors(file, point)
    return point


def _profile(loss: Energy, error: Energy, path: Path, points: int) -> dict[str, list[float]]:
    """Training loss and accuracy at ``points`` evenly spaced t on each piece of ``path`` (shared ends once)."""
    ts = torch.linspace(0, 1, points)
    s, losses, accuracy = [], [], []
    for k in range(path.n_pieces):
        t = ts if k == 0 else ts[1:]
        batch = path.points(k, t)
        s += [k + float(v) for v in t]
        losses += [float(v) for v in loss.evaluate(batch)]
        accuracy += [100.0 - float(v) for v in error.evaluate(batch)]
    return {"s": s, "loss": losses, "accuracy": accuracy}


def run(out: FsPath, *, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    torch.set_num_threads(1)
    cache = UnitCache(out)
    task = make_task("cifar10-vgg", width=settings["width"], n_train=settings["n_train"], n_eval=settings["n_eval"])
    a = _trained(task, settings, 0, out, progress)
    b = _trained(task, settings, 1, out, progress)
    model = task.make_model(0)
    x, y = task.objective.inputs, task.objective.targets
    tag = f"w{settings['width']}-s{settings['max_steps']}"

    def stability() -> dict[str, Any]:
        config = NoiseStabilityConfig(samples=settings["noise_samples"], power_iterations=settings["power_iterations"],
                                      dropout_draws=settings["dropout_draws"])
        idx = select_samples(len(x), config.samples, config.seed)
        net = task.make_model(0)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(a[name])
        progress(f"measuring noise stability of net A on {len(idx)} training images")
        report = noise_stability(net, x[idx], config, sample_indices=idx)
        data = report.to_dict()
        return {key: data[key] for key in ("layers", "layer_cushion", "minimal_interlayer_cushion",
                                          "activation_contraction", "interlayer_smoothness", "overall")
                if key in data}

    noise = cache.get_or_compute(f"noise-{tag}-n{settings['noise_samples']}", stability)
    n = settings["path_samples"]
    loss = Energy(model, x[:n], y[:n], "cross_entropy", strategy="loop")
    error = Energy(model, x[:n], y[:n], "error_rate", strategy="loop")
    direct = cache.get_or_compute(f"direct-{tag}-{settings['line_points']}",
                                  lambda: _profile(loss, error, Path([a, b]), settings["line_points"]))
    progress(f"direct interpolation: max loss {max(direct['loss']):.3f}, min accuracy {min(direct['accuracy']):.1f}%")

    def theorem3() -> dict[str, Any]:
        from ...connect import connect

        threshold = max(task.energy(a), task.energy(b)) * 1.5
        # theta* gets its whole budget (min_steps): stopping at the level would leave it just inside it
        narrow = TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=250,
                             max_steps=settings["narrow_steps"], min_steps=settings["narrow_steps"])
        connection = connect(a, b, task.energy, threshold=threshold, method=NARROW_METHOD, objective=task.objective,
                             certify_path=False, progress=progress, p=settings["dropout"], draws=settings["draws"],
                             grid_size=settings["grid_size"], narrow_training=narrow, seed=0)
        outcome = connection.outcome
        extras = outcome.extras
        built = outcome.reason in ("connected", "barrier_above_threshold")  # else: no path was constructed
        record = {"n_pieces": connection.path.n_pieces, "reason": outcome.reason, "message": outcome.message,
                  "constructed": built, "threshold": threshold,
                  **{k: extras.get(k) for k in ("p", "narrow_width", "paper_condition_holds", "n_segments",
                                                "max_interpolated_energy", "endpoint_max_energy", "path_barrier",
                                                "measured_slack", "within_slack", "straight_line_max_energy",
                                                "straight_line_barrier", "waypoint_energies")},
                  "narrow": {k: v for k, v in (extras.get("narrow") or {}).items() if k != "training"}}
        if built:
            record.update(_profile(loss, error, connection.path, settings["points_per_piece"]))
        return record

    path = None
    if NARROW_METHOD in METHODS:
        key = f"theorem3-{tag}-p{settings['dropout']}-n{settings['narrow_steps']}-{settings['points_per_piece']}"
        path = cache.get_or_compute(key, theorem3)
        progress(f"Theorem 3 path: {path['message']}")
    overall = noise.get("overall", {})
    ends = max(direct["loss"][0], direct["loss"][-1])
    claims = [claim("direct interpolation between two dropout-trained nets has a loss barrier (its maximum exceeds "
                    "the worse endpoint by more than 50%)", max(direct["loss"]) > 1.5 * ends,
                    f"max loss {max(direct['loss']):.3f} against endpoints {direct['loss'][0]:.3f} / "
                    f"{direct['loss'][-1]:.3f}; min accuracy {min(direct['accuracy']):.1f}%")]
    if path is None:
        claims.append(claim("the Theorem 3 path keeps the training loss well below direct interpolation's maximum",
                            False, f"method {NARROW_METHOD!r} is not registered in this version"))
    elif not path["constructed"]:
        claims.append(claim("the Theorem 3 path keeps the training loss well below direct interpolation's maximum",
                            False, f"no path was constructed ({path['reason']}): {path['message']}"))
    else:
        claims.append(claim("the Theorem 3 path keeps the training loss well below direct interpolation's maximum "
                            "(its maximum is at most half of it)", max(path["loss"]) <= 0.5 * max(direct["loss"]),
                            f"Theorem 3 path max loss {max(path['loss']):.3f}, min accuracy "
                            f"{min(path['accuracy']):.1f}% ({path['n_pieces']} pieces); direct max "
                            f"{max(direct['loss']):.3f}"))
    rho, d = overall.get("rho"), overall.get("d")
    claims.append(claim("the dropout-trained net is interlayer smooth enough for Definition 4 (rho >= 3d)",
                        bool(rho is not None and d and rho >= 3 * d),
                        f"rho = {rho}, d = {d}, c = {overall.get('c')}, epsilon = {overall.get('epsilon')}"))
    return {"settings": settings, "scale": "CPU scale: vgg_small width 8 on the subset's 5,000 CIFAR-10 training "
            "images, 3,000 Adam steps, one dropout p = 0.25 in every layer (the paper: VGG-11, full CIFAR-10, "
            "p = 0.25 / 0.5)",
            "noise": noise, "direct": direct, "theorem3": path, "claims": claims}

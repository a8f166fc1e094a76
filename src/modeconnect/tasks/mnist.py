"""MNIST tasks: Freeman & Bruna's convnet (``"mnist"``), Kuditipudi et al.'s (``"mnist-kuditipudi"``) and the
alignment literature's 784-512-512-512-10 MLP (``"mnist-mlp"``).

The energy is the test error in percent on a fixed restricted test set (the first ``n_eval`` test
images by default, as the papers report "a restricted test set"); training minimises the
cross-entropy on minibatches of a training subset. Images are scaled to [0, 1] and standardised with
the usual MNIST training-set constants (mean 0.1307, std 0.3081). The data directory is ``data_dir``,
else ``$MODECONNECT_DATA`` (it must hold ``mnist/`` with the original IDX files).

Defaults are CPU-scale (narrow layers, 500 evaluation images, 10,000 training images); the papers'
sizes are ``conv1=32, conv2=64, fc=1024`` (``width=32`` for Kuditipudi) with the full splits.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace

import torch
from torch import Tensor

from ..energy import Energy
from ..models import image_mlp, kuditipudi_convnet, mnist_convnet
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from ._subsets import select
from .base import Task

__all__ = ["mnist_task", "mnist_kuditipudi_task", "mnist_mlp_task", "load_mnist_tensors", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
"""Mean and standard deviation of the MNIST training pixels after scaling to [0, 1]."""


def normalize_mnist(images: Tensor) -> Tensor:
    """uint8 ``[n, 28, 28]`` -> float32 ``[n, 1, 28, 28]``, scaled to [0, 1] and standardised."""
    return ((images.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


@functools.lru_cache(maxsize=2)
def _load_split_cached(folder: str, split: str) -> tuple[Tensor, Tensor]:
    from .datasets import load_mnist

    return load_mnist(folder, split)


def _load_split(data_dir: str | os.PathLike | None, split: str) -> tuple[Tensor, Tensor]:
    """The raw split, read (and checksum-verified) once per process and directory; callers copy before use."""
    from .datasets import resolve_data_dir

    return _load_split_cached(str(resolve_data_dir(data_dir).resolve()), split)


def load_mnist_tensors(data_dir: str | os.PathLike | None, *, n_train: int | None, n_eval: int | None,
                       selection: str, data_seed: int) -> dict:
    """Normalised train/eval tensors of the chosen subsets and their descriptions."""
    x_train, y_train = _load_split(data_dir, "train")
    x_test, y_test = _load_split(data_dir, "test")
    train_idx, train_desc = select(len(x_train), n_train, selection, data_seed, "n_train")
    eval_idx, eval_desc = select(len(x_test), n_eval, selection, data_seed + 1, "n_eval")
    return {"x_train": normalize_mnist(x_train[train_idx]), "y_train": y_train[train_idx],
            "x_eval": normalize_mnist(x_test[eval_idx]), "y_eval": y_test[eval_idx],
            "train_selection": train_desc, "eval_selection": eval_desc}


MNIST_BEAD_TRAINING = TrainConfig(optimizer="sgd", lr=0.02, batch_size=64, check_every=25, dense_checks=50,
                                  max_steps=4000)
"""How MNIST beads are trained, chosen by measurement (``benchmarks/bead_geometry.py``; L0 = 2%, seeds 0-2).

Adam moves every coordinate by about its learning rate per step, needed or not: at lr 1e-3 the first bead
ended 10-28% of the endpoint distance off the chord and strings were 1.09-1.42 long; at lr 1e-4 strings were
1.02, 1.16 and 1.06. Plain SGD follows the gradient, which points into the level set: at lr 0.02 strings were
1.010, 1.064 and 1.032 (lr 0.05: 1.013, 1.080, 1.052; lr 0.1: 1.04-1.18; lr 0.01 ran out of steps on seed 1).
The energy is checked after each of the first 50 steps, so a bead that is nearly there stops at once, and
beads get the endpoints' 4,000 steps."""
MNIST_ENDPOINT_FRACTION = 0.9
"""Endpoints are trained to 0.9 * L0 (the edge of the level set forces beads below both endpoints; 0.8 and
0.9 gave the same string lengths at 2%, seeds 0-2)."""


def _image_task(name: str, description: str, build, data: dict, *, threshold: float, strategy: str,
                endpoint: TrainConfig, bead: TrainConfig, options: dict) -> Task:
    model = build_without_global_rng(build)
    energy = Energy(model, data["x_eval"], data["y_eval"], "error_rate", strategy=strategy,
                    sample_batch_size=500, split="test", selection=data["eval_selection"], threads="auto")
    return Task(
        name=name, description=description,
        make_model=lambda seed: seeded(build, seed),
        objective=Objective(data["x_train"], data["y_train"], "cross_entropy"),
        energy=energy, default_threshold=threshold, certify_resolution=1e-2,
        endpoint_training=endpoint, bead_training=bead, endpoint_fraction=MNIST_ENDPOINT_FRACTION,
        options={**options, "train_selection": data["train_selection"]},
    )


_ENDPOINT_TRAINING = TrainConfig(optimizer="adam", lr=2e-3, batch_size=64, check_every=100, max_steps=4000)


def _mnist(name: str, model: str, build, options: dict, *, data_dir, n_eval, n_train, selection, data_seed,
           endpoint: TrainConfig = _ENDPOINT_TRAINING, threshold: float = 3.0) -> Task:
    """An MNIST task around ``build``: the shared data, energy (test error %), default level and training."""
    data = load_mnist_tensors(data_dir, n_train=n_train, n_eval=n_eval, selection=selection, data_seed=data_seed)
    return _image_task(
        name, f"MNIST, {model}, energy = test error % ({data['eval_selection']} test images), trained with "
        f"cross-entropy on {data['train_selection']}",
        build, data, threshold=threshold, strategy="loop", endpoint=endpoint, bead=MNIST_BEAD_TRAINING,
        options={**options, "n_eval": n_eval, "n_train": n_train, "selection": selection, "data_seed": data_seed,
                 "normalization": [MNIST_MEAN, MNIST_STD]})


def mnist_task(*, data_dir: str | os.PathLike | None = None, conv1: int = 8, conv2: int = 16, fc: int = 64,
               n_eval: int | None = 500, n_train: int | None = 10000, selection: str = "first",
               data_seed: int = 0) -> Task:
    """Freeman & Bruna's MNIST convnet (:func:`~modeconnect.models.mnist_convnet`); energy = test error %."""
    return _mnist("mnist", f"convnet conv5x5 {conv1} / conv5x5 {conv2} / fc {fc}",
                  lambda: mnist_convnet(conv1, conv2, fc), {"conv1": conv1, "conv2": conv2, "fc": fc},
                  data_dir=data_dir, n_eval=n_eval, n_train=n_train, selection=selection, data_seed=data_seed)


def mnist_kuditipudi_task(*, data_dir: str | os.PathLike | None = None, width: int = 16, n_layers: int = 3,
                          n_eval: int | None = 500, n_train: int | None = 10000, selection: str = "first",
                          data_seed: int = 0) -> Task:
    """Kuditipudi et al.'s bias-free MNIST convnet (:func:`~modeconnect.models.kuditipudi_convnet`).

    For the Theorem 1 path (``kuditipudi_dropout``) the task trains endpoints the paper's way, with channel
    dropout p = 0.5 for at least 3,000 steps, and sets the level to where their dropout versions lie (see
    :data:`KUDITIPUDI_DROPOUT_DEFAULTS`)."""
    task = _mnist("mnist-kuditipudi", f"Kuditipudi convnet {n_layers} x conv3x3 {width} (no biases)",
                  lambda: kuditipudi_convnet(width, n_layers), {"width": width, "n_layers": n_layers},
                  data_dir=data_dir, n_eval=n_eval, n_train=n_train, selection=selection, data_seed=data_seed)
    return replace(task, method_defaults={"kuditipudi_dropout": kuditipudi_dropout_defaults(width),
                                          "kuditipudi_narrow": KUDITIPUDI_NARROW_DEFAULTS})


def kuditipudi_dropout_defaults(width: int) -> dict:
    """What the Theorem 1 path needs on ``mnist-kuditipudi`` of this width (``Task.method_defaults``).

    The path's energy is bounded by its endpoints' dropout versions (theta_1..theta_3 at p = 0.5), so they,
    not only the endpoints, must lie in the level set. Nets trained without dropout are far from that (best
    of 20 masks 26-42% error at width 16, 11.8% at width 32), so endpoints are trained with channel dropout
    p = 0.5 for at least 3,000 steps (the full net reaches its target long before its halves do). Measured on
    seeds of run seed 0: at width 32 the full nets end at 1.8-2.0% and their best dropout versions at 2.4-4.0%,
    so L0 = 5%; at width 16 the full nets end at 2.4-3.6% and the dropout versions at 4.2-6.4%, so L0 = 8%."""
    return {"threshold": 5.0 if width >= 32 else 8.0,
            "endpoint_training": {"dropout": 0.5, "min_steps": 3000, "max_steps": 6000}}


KUDITIPUDI_NARROW_DEFAULTS = {"threshold": 12.0, "method_settings": {"p": 0.3, "narrow_width": 3},
                              "endpoint_training": {"min_steps": 400}}
"""What the Theorem 3 path needs on ``mnist-kuditipudi`` (``Task.method_defaults``), measured at width 16.

The path's energy is bounded by the Lemma 3 segments and by the narrow network theta*. At the paper's p = 0.2 the
best of 20 Algorithm 1 draws of nets trained without dropout reaches 6.6% on its Lemma 3 segment, and theta* of
width 2 (the most Theorem 3's condition p >= 1.5 h*/h allows at p = 0.2) reaches only 11.2% in 4,000 steps. With
p = 0.3 and h* = 3 (1.5 * 3/16 = 0.28 <= 0.3) the Lemma 3 segments stay at 9.2% / 7.8% and theta* reaches 11.6%,
so L0 = 12%. Endpoints train at least 400 steps (to 2.6% / 2.2%, as at the task's 3% level) rather than stopping
at 0.9 * 12%."""


def mnist_mlp_task(*, data_dir: str | os.PathLike | None = None, width: int = 512, depth: int = 3,
                   n_eval: int | None = 500, n_train: int | None = 10000, selection: str = "first",
                   data_seed: int = 0) -> Task:
    """The 784-512-512-512-10 ReLU MLP of Git Re-Basin and REPAIR (:func:`~modeconnect.models.image_mlp`).

    Endpoints are trained with Adam at lr 1e-3, batch 128. The default level is 4%: on the 10,000 training
    images the MLP's test error reaches 3.0% after 500 steps and then wanders between 3.0% and 4.4% (the
    convnets' 3% would leave the endpoints, trained to 0.9 x L0 = 2.7%, to chance)."""
    sizes = "-".join(["784", *[str(width)] * depth, "10"])
    return _mnist("mnist-mlp", f"ReLU MLP {sizes}", lambda: image_mlp(784, width, depth, 10),
                  {"width": width, "depth": depth}, data_dir=data_dir, n_eval=n_eval, n_train=n_train,
                  selection=selection, data_seed=data_seed, threshold=4.0,
                  endpoint=TrainConfig(optimizer="adam", lr=1e-3, batch_size=128, check_every=50, max_steps=4000))

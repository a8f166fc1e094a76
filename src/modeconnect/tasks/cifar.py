"""CIFAR-10 task (``"cifar10"``): Freeman & Bruna's Krizhevsky-inspired convnet, energy = test error %.

The energy is the error in percent on a fixed restricted test set (the first ``n_eval`` test images by
default); training minimises the cross-entropy on minibatches of the training images (all of them by
default). Images are scaled to [0, 1] and standardised per channel with the CIFAR-10 training-set
constants ``CIFAR10_MEAN``/``CIFAR10_STD``. The data directory is ``data_dir``, else
``$MODECONNECT_DATA`` (``cifar10/`` or ``cifar10-subset/`` in the binary layout).

``batchnorm`` (a :class:`~modeconnect.batchnorm.BatchNormPolicy` name) selects the variant with
BatchNorm after each convolution and says how its running statistics are treated along paths:
``recompute`` uses the first ``bn_batches`` training batches of ``bn_batch_size`` images, ``freeze`` the
statistics of the (untrained) template model, ``interpolate`` the points' own.

Endpoints are trained to 0.9 * L0 and beads get the endpoints' 5,000 steps: with endpoints at the edge of
the level set (trained only to L0), beads at alpha 0.8 had to end up 20% better than both endpoints and the
first bead of the first pair did not (51.8% against a 48% target at L0 = 60). Run with ``--alpha 0.9`` so that
beads aim where the endpoints are. The bead learning rate was not re-measured on CIFAR (see the MNIST task
for why SGD beads stay closer to the string than Adam ones).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from ..batchnorm import BatchNormPolicy, as_policy
from ..energy import Energy
from ..errors import ConfigError
from ..models import cifar_convnet, vgg_small
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng, seeded
from ._subsets import select
from .base import Task

__all__ = ["cifar10_task", "cifar10_vgg_task", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel (R, G, B) mean of the CIFAR-10 training pixels after scaling to [0, 1]."""
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel (R, G, B) standard deviation of the CIFAR-10 training pixels after scaling to [0, 1]."""


def normalize_cifar(images: Tensor) -> Tensor:
    """uint8 ``[n, 3, 32, 32]`` -> float32, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean) / std


def cifar10_task(*, data_dir: str | os.PathLike | None = None, conv1: int = 16, conv2: int = 32, fc1: int = 128,
                 fc2: int = 64, n_eval: int | None = 500, n_train: int | None = None, selection: str = "first",
                 data_seed: int = 0, batchnorm: str | None = None, bn_batches: int = 4,
                 bn_batch_size: int = 128) -> Task:
    """CIFAR-10 with :func:`~modeconnect.models.cifar_convnet` at CPU-scale widths (paper: 64, 64, 384, 192)."""
    from .datasets import load_cifar10

    policy = as_policy(batchnorm)
    x_train, y_train = load_cifar10(data_dir, "train")
    x_test, y_test = load_cifar10(data_dir, "test")
    train_idx, train_desc = select(len(x_train), n_train, selection, data_seed, "n_train")
    eval_idx, eval_desc = select(len(x_test), n_eval, selection, data_seed + 1, "n_eval")
    x_train, y_train = normalize_cifar(x_train[train_idx]), y_train[train_idx]
    x_eval, y_eval = normalize_cifar(x_test[eval_idx]), y_test[eval_idx]

    def build() -> nn.Module:
        return cifar_convnet(conv1, conv2, fc1, fc2, batchnorm=policy is not None)

    bn_kwargs = {}
    if policy is BatchNormPolicy.RECOMPUTE:
        bn_kwargs["bn_batches"] = [x_train[i * bn_batch_size:(i + 1) * bn_batch_size] for i in range(bn_batches)]
    elif policy is BatchNormPolicy.FREEZE:
        bn_kwargs["bn_source"] = "template model (untrained: means 0, variances 1)"
    energy = Energy(build_without_global_rng(build), x_eval, y_eval, "error_rate", strategy="loop",
                    sample_batch_size=500, split="test", selection=eval_desc, batchnorm=policy, **bn_kwargs)
    bn_text = "" if policy is None else f", BatchNorm ({policy.value} statistics)"
    return Task(
        name="cifar10",
        description=f"CIFAR-10, convnet conv5x5 {conv1} / conv5x5 {conv2} / fc {fc1} / fc {fc2}{bn_text}, energy = "
                    f"test error % ({eval_desc} test images), trained with cross-entropy on {train_desc}",
        make_model=lambda seed: seeded(build, seed),
        objective=Objective(x_train, y_train, "cross_entropy"),
        energy=energy,
        default_threshold=55.0,
        certify_resolution=1e-2,
        endpoint_training=TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=100, max_steps=5000),
        bead_training=TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=25, dense_checks=50,
                                  max_steps=5000),
        endpoint_fraction=0.9,
        options={"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2, "n_eval": n_eval, "n_train": n_train,
                 "selection": selection, "data_seed": data_seed, "train_selection": train_desc,
                 "batchnorm": None if policy is None else policy.value,
                 "bn_batches": bn_batches if policy is BatchNormPolicy.RECOMPUTE else None,
                 "bn_batch_size": bn_batch_size if policy is BatchNormPolicy.RECOMPUTE else None,
                 "normalization": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}},
    )


def cifar10_vgg_task(*, data_dir: str | os.PathLike | None = None, width: int | None = None, n_eval: int | None = 500,
                     n_train: int | None = None, selection: str = "first", data_seed: int = 0) -> Task:
    """CIFAR-10 with :func:`~modeconnect.models.vgg_small` (Kuditipudi et al.'s Figure 3 at CPU scale; VGG-11 there).

    ``width`` scales every layer: channels ``width * (1, 2, 4, 4, 4)`` (default 16: 16, 32, 64, 64, 64). Train
    the endpoints with channel-wise dropout as the paper does with ``--endpoint-dropout P``."""
    from .datasets import load_cifar10

    base = 16 if width is None else width
    if isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise ConfigError(f"cifar10-vgg: width must be a positive integer, got {width!r}")
    widths = tuple(base * k for k in (1, 2, 4, 4, 4))
    x_train, y_train = load_cifar10(data_dir, "train")
    x_test, y_test = load_cifar10(data_dir, "test")
    train_idx, train_desc = select(len(x_train), n_train, selection, data_seed, "n_train")
    eval_idx, eval_desc = select(len(x_test), n_eval, selection, data_seed + 1, "n_eval")

    def build() -> nn.Module:
        return vgg_small(widths)

    energy = Energy(build_without_global_rng(build), normalize_cifar(x_test[eval_idx]), y_test[eval_idx], "error_rate",
                    strategy="loop", sample_batch_size=500, split="test", selection=eval_desc)
    return Task(
        name="cifar10-vgg",
        description=f"CIFAR-10, bias-free VGG-style convnet conv3x3 {'/'.join(map(str, widths))}, energy = test "
                    f"error % ({eval_desc} test images), trained with cross-entropy on {train_desc}",
        make_model=lambda seed: seeded(build, seed),
        objective=Objective(normalize_cifar(x_train[train_idx]), y_train[train_idx], "cross_entropy"),
        energy=energy, default_threshold=55.0, certify_resolution=1e-2,
        endpoint_training=TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=100, max_steps=5000),
        bead_training=TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, check_every=25, dense_checks=50,
                                  max_steps=5000),
        endpoint_fraction=0.9,
        options={"widths": list(widths), "n_eval": n_eval, "n_train": n_train, "selection": selection,
                 "data_seed": data_seed, "train_selection": train_desc,
                 "normalization": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}},
    )

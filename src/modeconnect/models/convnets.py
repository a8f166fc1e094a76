"""Convolutional networks of the papers' image experiments, with configurable widths.

Every builder returns an ``nn.Sequential`` with named layers (``conv1``, ``fc1``, ``out``, ...), so
parameter points read ``"conv1.weight"`` and :func:`~modeconnect.params.permute_hidden_units` takes
``"conv1"``/``"conv2"`` as layer names. No dropout: energies must be deterministic functions of the
parameters.

>>> import torch
>>> mnist_convnet(conv1=4, conv2=8, fc=16)(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> cifar_convnet(conv1=4, conv2=8, fc1=16, fc2=8)(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
>>> kuditipudi_convnet(width=4)(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConfigError
from .pooling import MaxPool2x2

__all__ = ["mnist_convnet", "cifar_convnet", "kuditipudi_convnet"]


def _positive(**widths: int) -> None:
    bad = {k: v for k, v in widths.items() if not (isinstance(v, int) and v >= 1)}
    if bad:
        raise ConfigError(f"layer widths must be positive integers, got {bad}")


def mnist_convnet(conv1: int = 32, conv2: int = 64, fc: int = 1024) -> nn.Sequential:
    """Freeman & Bruna's MNIST convnet (the TensorFlow "deep MNIST" network, dropout removed).

    conv 5x5 ``conv1`` (padding 2) -> ReLU -> max-pool 2 -> conv 5x5 ``conv2`` -> ReLU -> max-pool 2 ->
    fully connected ``fc`` -> ReLU -> linear 10. ``fc=0`` drops the hidden fully connected layer (the
    flattened features go straight to the 10 outputs). The defaults are the paper's sizes; inputs are
    ``[n, 1, 28, 28]``.
    """
    _positive(conv1=conv1, conv2=conv2)
    if not (isinstance(fc, int) and fc >= 0):
        raise ConfigError(f"fc must be a non-negative integer (0: no hidden layer), got {fc!r}")
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(1, conv1, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", MaxPool2x2()),
        ("conv2", nn.Conv2d(conv1, conv2, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", MaxPool2x2()),
        ("flatten", nn.Flatten()),
    ]
    if fc:
        layers += [("fc1", nn.Linear(conv2 * 7 * 7, fc)), ("relu3", nn.ReLU()), ("out", nn.Linear(fc, 10))]
    else:
        layers += [("out", nn.Linear(conv2 * 7 * 7, 10))]
    return nn.Sequential(OrderedDict(layers))


def cifar_convnet(conv1: int = 64, conv2: int = 64, fc1: int = 384, fc2: int = 192, *,
                  batchnorm: bool = False) -> nn.Sequential:
    """A CIFAR-10 convnet in the spirit of Freeman & Bruna's "Krizhevsky-inspired" network.

    The layout of the TensorFlow CIFAR-10 tutorial model (after Krizhevsky's cuda-convnet): conv 5x5
    ``conv1`` -> ReLU -> max-pool 2 -> conv 5x5 ``conv2`` -> ReLU -> max-pool 2 -> fc ``fc1`` -> ReLU ->
    fc ``fc2`` -> ReLU -> linear 10, on ``[n, 3, 32, 32]`` inputs. Simplified: 2x2 pooling instead of
    overlapping 3x3/stride-2, no local response normalisation, no dropout. The defaults are the
    tutorial's sizes. ``batchnorm=True`` adds a ``BatchNorm2d`` after each convolution (``bn1``, ``bn2``;
    running statistics tracked, so energies need a BatchNorm policy).
    """
    _positive(conv1=conv1, conv2=conv2, fc1=fc1, fc2=fc2)

    def block(i: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = [(f"conv{i}", nn.Conv2d(cin, cout, 5, padding=2))]
        if batchnorm:
            out.append((f"bn{i}", nn.BatchNorm2d(cout)))
        return out + [(f"relu{i}", nn.ReLU()), (f"pool{i}", MaxPool2x2())]

    layers = [*block(1, 3, conv1), *block(2, conv1, conv2), ("flatten", nn.Flatten()),
              ("fc1", nn.Linear(conv2 * 8 * 8, fc1)), ("relu3", nn.ReLU()),
              ("fc2", nn.Linear(fc1, fc2)), ("relu4", nn.ReLU()), ("out", nn.Linear(fc2, 10))]
    return nn.Sequential(OrderedDict(layers))


def kuditipudi_convnet(width: int = 32, n_layers: int = 3) -> nn.Sequential:
    """Kuditipudi et al. (2019)'s MNIST convnet: ``n_layers`` conv layers of ``width`` 3x3 filters, no biases.

    Each layer is conv 3x3 (padding 1, stride 1, no bias) -> ReLU -> max-pool 2, followed by a linear
    head to 10 classes (no bias): 28 -> 14 -> 7 -> 3 for three layers. The paper states only "3-layer
    convolutional nets with 32 3x3 filters in each layer" (not counting the output layer); the pooling
    after each layer and the bias-free head are our choice (bias-free, positively homogeneous layers
    keep the paper's channel-wise dropout rescaling exact). Inputs ``[n, 1, 28, 28]``.
    """
    _positive(width=width, n_layers=n_layers)
    layers: list[tuple[str, nn.Module]] = []
    size, cin = 28, 1
    for i in range(1, n_layers + 1):
        layers += [(f"conv{i}", nn.Conv2d(cin, width, 3, padding=1, bias=False)), (f"relu{i}", nn.ReLU()),
                   (f"pool{i}", MaxPool2x2())]
        size, cin = size // 2, width
        if size < 1:
            raise ConfigError(f"{n_layers} pooled layers shrink a 28x28 image below 1 pixel; use at most 4")
    layers += [("flatten", nn.Flatten()), ("out", nn.Linear(width * size * size, 10, bias=False))]
    return nn.Sequential(OrderedDict(layers))

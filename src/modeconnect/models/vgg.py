"""A small bias-free VGG-style convnet for CIFAR-10 (Kuditipudi et al.'s Figure 3 at CPU scale)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError
from .pooling import MaxPool2x2

__all__ = ["vgg_small", "VGG_SMALL_WIDTHS"]

VGG_SMALL_WIDTHS = (16, 32, 64, 64, 64)
"""Channels of the five 3x3 conv layers (VGG-11 has eight, of 64 to 512 channels)."""
_POOL_AFTER = (0, 1, 3, 4)
"""Conv layers followed by a 2x2 max-pool: 32 -> 16 -> 8 -> 8 -> 4 -> 2, as VGG pools after blocks."""


def vgg_small(widths: Sequence[int] = VGG_SMALL_WIDTHS, n_classes: int = 10) -> nn.Sequential:
    """conv3x3 (no bias) -> ReLU [-> max-pool 2] per layer, then a bias-free linear head; inputs [n, 3, 32, 32].

    Bias-free, positively homogeneous layers keep Kuditipudi et al.'s channel-wise dropout rescaling exact,
    as in :func:`~modeconnect.models.kuditipudi_convnet`. Layer names are ``conv1``.. and ``out``.
    """
    widths = tuple(widths)
    if len(widths) != len(VGG_SMALL_WIDTHS) or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(f"vgg_small takes {len(VGG_SMALL_WIDTHS)} positive channel counts, got {widths!r}")
    layers: list[tuple[str, nn.Module]] = []
    cin, size = 3, 32
    for i, width in enumerate(widths):
        layers += [(f"conv{i + 1}", nn.Conv2d(cin, width, 3, padding=1, bias=False)), (f"relu{i + 1}", nn.ReLU())]
        if i in _POOL_AFTER:
            layers.append((f"pool{i + 1}", MaxPool2x2()))
            size //= 2
        cin = width
    layers += [("flatten", nn.Flatten()), ("out", nn.Linear(cin * size * size, n_classes, bias=False))]
    return nn.Sequential(OrderedDict(layers))

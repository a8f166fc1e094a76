"""Fully connected ReLU networks on images (the MNIST MLP of the alignment literature)."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

__all__ = ["image_mlp"]


def image_mlp(in_features: int = 784, width: int = 512, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """``Flatten -> (Linear(width) -> ReLU) x depth -> Linear(classes)``; 784-512-512-512-10 by default, the
    MNIST MLP on which Git Re-Basin and REPAIR report their alignment results."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (in_features, width, depth, classes)):
        raise ConfigError(f"image_mlp sizes must be positive integers, got in_features={in_features!r}, "
                          f"width={width!r}, depth={depth!r}, classes={classes!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    size = in_features
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)

"""Seeded model construction that never touches the global random state."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def build_without_global_rng(build: Callable[[], nn.Module]) -> nn.Module:
    """Call ``build`` (whose default initialisation draws from the global generator) and restore that generator."""
    with torch.random.fork_rng(devices=[]):
        return build()


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module, then draw every parameter again from a private generator seeded with ``seed``.

    Weights get PyTorch's default Linear/Conv initialisation (uniform in
    +-1/sqrt(fan_in)), biases the same bound, so results do not depend on
    ``torch.manual_seed`` anywhere else in the program.
    """
    module = build_without_global_rng(build)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.ndim >= 2:
                fan_in = weight[0].numel()
                bound = 1.0 / fan_in**0.5
                weight.copy_(torch.empty_like(weight).uniform_(-bound, bound, generator=generator))
                bias = getattr(sub, "bias", None)
                if isinstance(bias, nn.Parameter):
                    bias.copy_(torch.empty_like(bias).uniform_(-bound, bound, generator=generator))
    return module

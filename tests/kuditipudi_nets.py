"""Tiny trained networks for the Kuditipudi construction tests (seeded with generators, never globally)."""

from __future__ import annotations

import torch
from torch import nn

from modeconnect.params import point_from_module


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * (6.0 / fan_in) ** 0.5)
    return model


def mlp(seed: int, width: int = 8) -> nn.Sequential:
    return _init(nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(),
                               nn.Linear(width, 3)), seed)


def convnet(seed: int, width: int = 8) -> nn.Sequential:
    return _init(nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(width * 2 * 2, 3, bias=False)), seed)


def data(conv: bool = False, n: int = 48):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 1, 8, 8, generator=g) if conv else torch.randn(n, 5, generator=g)
    w = torch.randn(x[0].numel(), 3, generator=g)
    return x, (x.flatten(1) @ w).argmax(1)


def trained(model: nn.Sequential, x, y, steps: int = 60, lr: float = 0.05) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return point_from_module(model)


def outputs(model: nn.Module, point, x) -> torch.Tensor:
    from torch.func import functional_call

    with torch.no_grad():
        return functional_call(model, dict(point), (x,))


def check_steps(model, beads, steps, x) -> None:
    """(b) segments leave the function unchanged; (a) segments are affine in t at the output."""
    for i, step in enumerate(steps):
        a, b = beads[i], beads[i + 1]
        mid = {k: 0.5 * a[k] + 0.5 * b[k] for k in a}
        f0, fm, f1 = (outputs(model, p, x) for p in (a, mid, b))
        if step.kind == "b":
            assert torch.allclose(f0, f1, atol=1e-5) and torch.allclose(f0, fm, atol=1e-5), f"segment {i}: {step.what}"
        elif step.kind == "a":
            assert torch.allclose(fm, 0.5 * (f0 + f1), atol=1e-5), f"segment {i}: {step.what}"
            moved = [k for k in a if not torch.equal(a[k], b[k])]
            assert moved and all(k.startswith(str(len(model) - 1) + ".") for k in moved), moved

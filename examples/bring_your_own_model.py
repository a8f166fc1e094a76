"""Connect two of *your* networks, trained on *your* data, with the modeconnect library API.

Everything here is ordinary PyTorch until the last few lines: a model class,
a dataset, a training loop. modeconnect needs only

* an ``Energy``: what the threshold applies to (here: cross-entropy on held-out data);
* an ``Objective``: what new beads are trained on (here: cross-entropy on the training data);
* the two trained modules (never modified).

Run it:

    python examples/bring_your_own_model.py                 # about 10 s on 2 cores
    python examples/bring_your_own_model.py --out my_path   # also save the path (safetensors + JSON)
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from modeconnect import CertifyConfig, Energy, Objective, connect


class SpiralNet(nn.Module):
    """The user's model: any nn.Module whose forward maps inputs to outputs."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def two_spirals(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's data: two interleaved noisy spirals, labels 0 and 1."""
    t = torch.rand(n, generator=generator) * 3 * math.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=generator)
    sign = 1 - 2 * label.to(torch.float32)
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / 5
    return x + 0.05 * torch.randn(n, 2, generator=generator), label


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """The user's own training loop (modeconnect is not involved)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def make_model(seed: int) -> SpiralNet:
    generator = torch.Generator().manual_seed(seed)
    model = SpiralNet()
    with torch.no_grad():  # seeded initialisation without touching the global RNG
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / math.sqrt(p.shape[-1])))
    return model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="connect two user-defined networks with modeconnect")
    parser.add_argument("--threshold", type=float, default=0.15, help="cross-entropy level L0 (default 0.15)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per network")
    parser.add_argument("--out", help="save the path to this directory")
    args = parser.parse_args(argv)

    data = torch.Generator().manual_seed(0)
    x_train, y_train = two_spirals(2000, data)
    x_test, y_test = two_spirals(1000, data)
    model_a = train(make_model(1), x_train, y_train, args.steps, seed=11)
    model_b = train(make_model(2), x_train, y_train, args.steps, seed=12)

    # --- modeconnect from here on ---
    energy = Energy(model_a, x_test, y_test, metric="cross_entropy", split="test")
    objective = Objective(x_train, y_train, loss="cross_entropy")
    print(f"endpoint energies: {energy(dict(model_a.named_parameters())):.4f}, "
          f"{energy(dict(model_b.named_parameters())):.4f} (threshold {args.threshold})")
    result = connect(model_a, model_b, energy, threshold=args.threshold, objective=objective,
                     bead_training={"optimizer": "adam", "lr": 0.005, "batch_size": 128, "max_steps": 3000},
                     max_beads=16, certification=CertifyConfig(resolution=1e-2))
    summary = result.summary()
    print(f"connected: {result.connected} ({result.outcome.reason}); beads: {result.path.n_beads}; "
          f"normalized length: {result.path.normalized_length:.4f}; "
          f"sampled max energy: {result.certificate.max_energy:.4f}")
    if args.out:
        result.path.save(args.out)
        print(f"path saved in {args.out}")
    return summary


if __name__ == "__main__":
    main()

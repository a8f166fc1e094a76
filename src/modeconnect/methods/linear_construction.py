"""Freeman & Bruna's Proposition 2.2 path between two deep linear networks (method ``linear_construction``).

The model must be an ``nn.Sequential`` of bias-free ``nn.Linear`` layers whose hidden widths are all
>= min(input, output). With a plain loss (kappa = 0) the end-to-end product follows the straight line
(1 - t) M^A + t M^B and the layers are rebuilt from it by the proof's pseudoinverse recursion
(:class:`~modeconnect.theory.linear_paths.DeepLinearPath`); with a ridge energy
(:class:`~modeconnect.tasks.linear.RidgeEnergy`, K = 2) the nuclear-norm factorisation path
(:class:`~modeconnect.theory.linear_paths.RidgePath`). The curve is not linear in t: the returned ``Path``
has the construction at ``n_points`` values of t as beads (straight pieces between them), so certification,
proofs and plots see an ordinary path. The extras record the exact construction sampled at ``dense_points``
values of t (in the model's dtype and in float64), the bound lambda = max(E(A), E(B)) it must respect, and the
straight segment's maximum. Where the argument breaks (a rank-deficient pivot, a square pivot whose determinant
changes sign) the run ends with reason ``not_applicable`` and the straight segment as its path.
Derivation and choices: ``docs/linear_networks.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from ..energy import Energy
from ..errors import ConfigError
from ..path import Path
from ..seeding import derive_seed
from ..tasks.linear import check_sizes
from ..theory.linear_paths import DeepLinearPath, NotApplicable, RidgePath, chain_product
from ..train import Objective
from .base import Checkpoint, ConstructionState, Outcome, Progress, as_enum, finish_construction

__all__ = ["Side", "LinearConstructionConfig", "LinearConstruction", "chain_sizes",
           "construct"]


class Side(str, Enum):
    """Which end of the chain the pseudoinverse recursion peels layers from."""

    AUTO = "auto"
    """The output side when output size <= input size, else the input side (the side whose size is the minimum)."""
    OUTPUT = "output"
    """Pivots W_K ... W_j (output x d_(j-1)); needs every hidden width >= the output size."""
    INPUT = "input"
    """Pivots W_j ... W_1 (d_j x input); needs every hidden width >= the input size."""


@dataclass(frozen=True)
class LinearConstructionConfig:
    """Settings of the Proposition 2.2 construction. The level L0 is passed to ``run``."""

    n_points: int = 33
    """Values of t (ends included, evenly spaced) at which the construction becomes the path's beads."""
    max_points: int = 513
    """Most beads (ends included): a straight piece between two beads whose 9-point grid maximum exceeds
    lambda + (tolerance * L0 - lambda) / 2 is split at the midpoint t of the construction, until none does or
    the path has max_points beads (the chords cut corners where the curve turns fast)."""
    dense_points: int = 1025
    """Values of t at which the exact construction is sampled for the extras (its maximum against lambda)."""
    side: Side = Side.AUTO
    """Which end the recursion peels layers from (kappa = 0)."""
    bump_scale: float = 1.0
    """||V_j||_F of the paper's t(1-t)V term, relative to the mean norm of the pivot's ends (0: no bump; the
    straight pivot line can then cross a singular matrix, e.g. between a network and its sign-flipped copy)."""
    bump_tries: int = 8
    """Bumps drawn (seeded); the one whose pivots stay best conditioned (largest smallest sigma_min / sigma_max
    on 129 values of t) is used, and checked on the dense grid. None full rank: not_applicable."""
    rank_tolerance: float = 1e-6
    """A pivot counts as rank deficient when sigma_min / sigma_max < this (also the numerical-rank cut of the
    ridge path's projections)."""
    end_fraction: float = 0.25
    """Ridge path: the part of [0, 1] at each end spent moving an endpoint to its balanced factorisation."""
    tolerance: float = 1.0
    """The path is accepted when its sampled maximum is <= tolerance * L0."""
    straight_line: bool = True
    """Also evaluate the straight segment A-B on the dense grid (its barrier, for comparison)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed of the bumps V_j; a run sets it from its own seed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "side", as_enum(Side, self.side, "side"))
        for name, low in (("n_points", 2), ("max_points", 2), ("dense_points", 3), ("bump_tries", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 100_000:
                raise ConfigError(f"{name} must be an integer in [{low}, 100000], got {value!r}")
        if not (isinstance(self.bump_scale, (int, float)) and 0 <= self.bump_scale < float("inf")):
            raise ConfigError(f"bump_scale must be a finite number >= 0, got {self.bump_scale!r}")
        if not (isinstance(self.rank_tolerance, (int, float)) and 0 < self.rank_tolerance < 1):
            raise ConfigError(f"rank_tolerance must be in (0, 1), got {self.rank_tolerance!r}")
        if not (isinstance(self.end_fraction, (int, float)) and 0 < self.end_fraction < 0.5):
            raise ConfigError(f"end_fraction must be in (0, 0.5), got {self.end_fraction!r}")
        if not (isinstance(self.tolerance, (int, float)) and 1 <= self.tolerance < float("inf")):
            raise ConfigError(f"tolerance must be >= 1, got {self.tolerance!r}")
        if self.max_points < self.n_points:
            raise ConfigError(f"max_points ({self.max_points}) must be >= n_points ({self.n_points})")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["side"] = self.side.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearConstructionConfig:
        return cls(**data)


def chain_sizes(model: nn.Module) -> tuple[int, ...]:
    """Sizes d_0..d_K of a bias-free linear chain, or a ConfigError saying why ``model`` is not one."""
    layers = list(model.children()) if isinstance(model, nn.Sequential) else []
    bad = [f"{i}: {type(m).__name__}" + (" with a bias" if isinstance(m, nn.Linear) else "")
           for i, m in enumerate(layers) if not (isinstance(m, nn.Linear) and m.bias is None)]
    if not layers or bad or list(model.buffers()):
        why = "it is not an nn.Sequential" if not layers else (
            f"layer(s) {', '.join(bad)}" if bad else "it has buffers")
        raise ConfigError(f"linear_construction needs an nn.Sequential of bias-free nn.Linear layers (Proposition "
                          f"2.2's W_K ... W_1 x); this model is not one ({why}); use --task linear")
    sizes = [layers[0].in_features] + [m.out_features for m in layers]
    for i in range(1, len(layers)):
        if layers[i].in_features != layers[i - 1].out_features:
            raise ConfigError(f"layers {i - 1} and {i} do not chain ({layers[i - 1].out_features} outputs into "
                              f"{layers[i].in_features} inputs)")
    return check_sizes(sizes)


def construct(a: list[torch.Tensor], b: list[torch.Tensor], *, ridge: float, config: LinearConstructionConfig,
              dense: torch.Tensor) -> tuple[DeepLinearPath | RidgePath, dict[str, Any]]:
    """The construction between weight lists ``a`` and ``b`` (float64) and what was chosen; NotApplicable where
    it breaks. ``dense`` is the grid on which the pivots must stay full rank."""
    k = len(a)
    if ridge:
        if k != 2:
            raise ConfigError(f"the ridge construction is for two layers (Proposition 2.2 with kappa > 0), this "
                              f"network has {k}")
        return RidgePath(a, b, tol=config.rank_tolerance, end_fraction=config.end_fraction), {"construction": "ridge"}
    d_in, d_out = a[0].shape[1], a[-1].shape[0]
    side = config.side
    if side is Side.AUTO:
        side = Side.OUTPUT if d_out <= d_in else Side.INPUT
    hidden = [w.shape[0] for w in a[:-1]]
    need = d_out if side is Side.OUTPUT else d_in
    if any(h < need for h in hidden):
        raise ConfigError(f"side {side.value!r} needs every hidden width >= {need} (the {side.value} size), got "
                          f"hidden widths {hidden}; use --side auto")
    coarse = dense[:: max(1, (len(dense) - 1) // 128)]
    last: NotApplicable | None = None
    best: tuple[float, int, DeepLinearPath] | None = None
    for attempt in range(config.bump_tries if config.bump_scale else 1):
        gen = torch.Generator().manual_seed(derive_seed(config.seed, "linear_construction", "bump", attempt))
        path = DeepLinearPath(a, b, side=side.value, bump_scale=config.bump_scale, generator=gen)
        try:
            _, inner = path.check(coarse, config.rank_tolerance)
        except NotApplicable as exc:
            if exc.reason != "singular_pivot":
                raise
            last = exc
            continue
        if best is None or inner > best[0]:
            best = (inner, attempt, path)
    if best is None:
        raise NotApplicable("singular_pivot", f"{last} for each of {config.bump_tries} bumps drawn")
    _, attempt, path = best
    end, inner = path.check(dense, config.rank_tolerance)
    return path, {"construction": "pseudoinverse", "side": side.value, "bump_attempt": attempt,
                  "pivot_ratio_endpoints": end, "pivot_ratio_min": inner}


class LinearConstruction:
    """The Proposition 2.2 construction as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "linear_construction"
    summary: ClassVar[str] = "Freeman & Bruna Proposition 2.2 path between deep linear networks (no training)"
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = LinearConstructionConfig
    State: ClassVar[type] = ConstructionState

    @staticmethod
    def check_energy(energy: Energy) -> None:
        """ConfigError unless the energy's model is a bias-free linear chain meeting the width condition (and
        has two layers when the energy carries a ridge penalty)."""
        sizes = chain_sizes(energy.model)
        if getattr(energy, "ridge", 0.0) and len(sizes) != 3:
            raise ConfigError(f"the ridge construction is for two layers (Proposition 2.2 with kappa > 0), this "
                              f"network has {len(sizes) - 1}")

    def run(self, start: Path, energy: Energy, *, threshold: float, config: LinearConstructionConfig,
            objective: Objective | None = None, state: ConstructionState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        say = progress or (lambda message: None)
        state = state or ConstructionState()
        if state.finished and state.outcome is not None:
            return start, Outcome.from_dict(state.outcome)
        clock = time.perf_counter()
        self.check_energy(energy)
        sizes = chain_sizes(energy.model)
        ridge = float(getattr(energy, "ridge", 0.0))
        a, b = start.beads[0], start.beads[-1]
        keys = [f"{i}.weight" for i in range(len(sizes) - 1)]
        wa = [a[k].detach().to(torch.float64) for k in keys]
        wb = [b[k].detach().to(torch.float64) for k in keys]
        dense = torch.linspace(0.0, 1.0, config.dense_points, dtype=torch.float64)
        e_a, e_b = energy(a), energy(b)
        bound = max(e_a, e_b)
        extras: dict[str, Any] = {"sizes": list(sizes), "ridge": ridge, "lambda": bound,
                                  "lambda_definition": "max(E(A), E(B))", "endpoint_energies": [e_a, e_b],
                                  "n_points": config.n_points, "dense_points": config.dense_points}
        if config.straight_line:
            line = torch.nan_to_num(energy.along_segment(a, b, dense).to(torch.float64), nan=float("inf"))
            extras["straight_line_max_energy"] = float(line.max())
            extras["straight_line_argmax_t"] = float(dense[int(line.argmax())])
            say(f"straight segment A-B: max energy {extras['straight_line_max_energy']:.4g} (lambda {bound:.4g})")
        try:
            curve, chosen = construct(wa, wb, ridge=ridge, config=config, dense=dense)
        except NotApplicable as exc:
            extras["not_applicable"] = exc.reason
            if "straight_line_max_energy" in extras:
                extras["max_interpolated_energy"] = extras["straight_line_max_energy"]
            say(f"not applicable: {exc}")
            outcome = Outcome(connected=False, reason="not_applicable", message=f"the Proposition 2.2 "
                              f"construction does not apply: {exc}",
                              elapsed_s=state.elapsed_s + time.perf_counter() - clock, extras=extras)
            return finish_construction(start, outcome, state, checkpoint)
        extras.update(chosen)
        extras.update(_dense_record(curve, energy, a, keys, dense, bound))
        accept = config.tolerance * threshold
        path, ts, maxima = _beads(curve, energy, a, b, keys, config, bound + 0.5 * max(accept - bound, 0.0))
        worst = max(range(len(maxima)), key=maxima.__getitem__)
        vmax = maxima[worst]
        extras.update(beads_max_energy=vmax, max_interpolated_energy=vmax, n_path_points=len(ts),
                      bead_ts=[round(t, 9) for t in ts] if len(ts) <= 129 else None,
                      refine_target=bound + 0.5 * max(accept - bound, 0.0))
        connected = vmax <= accept
        message = (f"the construction ({chosen['construction']}) stays <= {extras['construction_max_energy']:.4g} on "
                   f"{config.dense_points} values of t (lambda = max(E(A), E(B)) = {bound:.4g}); its "
                   f"{path.n_pieces} straight pieces reach {vmax:.4g}"
                   + (f" <= {accept:.4g}" if connected else f" > tolerance x L0 = {accept:.4g}"))
        if "straight_line_max_energy" in extras:
            message += f"; the straight segment A-B reaches {extras['straight_line_max_energy']:.4g}"
        say(message)
        outcome = Outcome(connected=connected, reason="connected" if connected else "barrier_above_threshold",
                          message=message, worst_barrier=vmax, worst_segment=worst,
                          elapsed_s=state.elapsed_s + time.perf_counter() - clock, extras=extras)
        return finish_construction(path, outcome, state, checkpoint)


def _beads(curve, energy: Energy, a, b, keys, config: LinearConstructionConfig,
           target: float) -> tuple[Path, list[float], list[float]]:
    """The path through the construction at n_points values of t, refined where a chord exceeds ``target``."""
    grid = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    ts = [float(t) for t in torch.linspace(0.0, 1.0, config.n_points, dtype=torch.float64)]
    points = {0.0: a, 1.0: b}

    def at(t: float):
        if t not in points:
            points[t] = _point(curve.weights(t), keys, a)
        return points[t]

    maxima: dict[tuple[float, float], float] = {}
    while True:
        for lo, hi in zip(ts[:-1], ts[1:]):
            if (lo, hi) not in maxima:
                maxima[(lo, hi)] = float(Path([at(lo), at(hi)]).energies(0, grid, energy).max())
        over = [(lo, hi) for lo, hi in zip(ts[:-1], ts[1:]) if maxima[(lo, hi)] > target]
        room = config.max_points - len(ts)
        if not over or room <= 0:
            break
        over.sort(key=lambda piece: -maxima[piece])
        ts = sorted(ts + [0.5 * (lo + hi) for lo, hi in over[:room]])
    path = Path([at(t) for t in ts])
    return path, ts, [maxima[(lo, hi)] for lo, hi in zip(ts[:-1], ts[1:])]


def _point(weights: list[torch.Tensor], keys: list[str], like: dict[str, torch.Tensor],
           dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: w.to(dtype or like[k].dtype) for k, w in zip(keys, weights)}


def _dense_record(curve, energy: Energy, a, keys, dense: torch.Tensor, bound: float) -> dict[str, Any]:
    """The exact construction on the dense grid: energies in the model's dtype and in float64, the float64
    bound, and the largest relative gap between the rebuilt product and the product line."""
    batch = curve.weights_batch(dense)
    stacked = dict(zip(keys, batch))
    values = energy.evaluate({k: v.to(a[k].dtype) for k, v in stacked.items()}).to(torch.float64)
    exact = energy.evaluate(stacked).to(torch.float64)
    ends64 = energy.evaluate({k: v[[0, -1]] for k, v in stacked.items()})
    bound64 = float(ends64.max())
    targets = torch.stack([curve.product(float(t)) for t in dense])
    gaps = (chain_product(batch) - targets).flatten(1).norm(dim=1) / targets.flatten(1).norm(dim=1).clamp_min(1e-300)
    errors = gaps.tolist()
    interior = exact[1:-1]
    return {"construction_max_energy": float(values.max()),
            "construction_argmax_t": float(dense[int(values.argmax())]),
            "construction_max_energy_f64": float(exact.max()), "lambda_f64": bound64,
            "within_bound": float(exact.max()) <= bound64 * (1 + 1e-9) + 1e-12,
            "strictly_below_inside": bool(len(interior) == 0 or float(interior.max()) < bound64),
            "construction_interior_max_f64": float(interior.max()) if len(interior) else None,
            "product_error_max": max(errors),
            "construction_profile": [float(v) for v in values[:: max(1, len(values) // 64)]]}

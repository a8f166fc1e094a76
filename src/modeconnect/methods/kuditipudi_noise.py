"""Lemma 3 and the Theorem 2 path of Kuditipudi et al. (2019) between two noise-stable networks
(method ``kuditipudi_noise``).

Ten straight segments (derivation in ``docs/kuditipudi.md``):

1. (n) Lemma 3: A -> A_1, A's Algorithm 1 dropout version (measured: this is the noise-stability assumption);
2. (b) zero the rows of A_1's dropped units (they reach nothing): P, whose idle units are zero in and out;
3. (b) copy P's kept tower S into idle slots X, disjoint from S and from B_1's kept units K;
4. (a) top layer from S to X (the same function);
5. (b) zero the rows of S: P now lives on X;
6. (b) write B_1's kept rows on K (idle: nothing reads K);
7. (a) top layer from P's (on X) to B_1's (on K): the exchange, convex in the output;
8. (b) zero the rows of X: Q, B_1 with its dropped units zeroed;
9. (b) B_1's rows on its dropped units: exactly B_1;
10. (n) Lemma 3 reversed: B_1 -> B.

Segments 2-9 are Lemma 2 (8 segments). Step 3 needs room: ``|S_j u K_j| + |S_j| <= h_j`` in every hidden layer,
which holds for most draws when ``p`` is large (the default 3/4, the largest the paper's Lemma 3 allows). A draw
pair without room is skipped; none at all ends the run with reason ``no_room``. An endpoint whose Lemma 3
segment exceeds the level for every draw ends the run with ``not_noise_stable`` (the path returned is then the
plain segment A-B), never with a path whose barrier the construction cannot explain.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..energy import Energy
from ..errors import ConfigError
from ..kuditipudi.lemma3 import Lemma3Draw, dropped_sets, kept_sets, lemma3_draws
from ..kuditipudi.units import UnitSpec, hidden_units, reroute_top
from ..params import Point
from ..path import Path
from ..seeding import derive_seed
from ..train import Objective
from .base import Checkpoint, Outcome, Progress
from .kuditipudi_common import (
    ConstructionState,
    choose_slots,
    evaluate_steps,
    finish,
    finish_outcome,
    merge_equal,
    move_tower,
    rows_from,
    stopped,
    straight_line,
    top_from,
    zero_rows_except,
)
from .kuditipudi_dropout import Step, check_hidden_units

__all__ = ["NoiseConfig", "KuditipudiNoise", "theorem2_path", "lemma3_path", "lemma2_room"]


def check_common(p: float, draws: int, rescale: float | None, tolerance: float, grid_size: int) -> None:
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 < p < 1):
        raise ConfigError(f"p must be in (0, 1) (Algorithm 1's drop probability), got {p!r}")
    if isinstance(draws, bool) or not (isinstance(draws, int) and draws >= 1):
        raise ConfigError(f"draws must be a positive integer (Algorithm 1 draws per endpoint), got {draws!r}")
    if rescale is not None and not (isinstance(rescale, (int, float)) and math.isfinite(rescale) and rescale > 0):
        raise ConfigError(f"rescale must be a positive number or None (1 / (1 - p)), got {rescale!r}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 1):
        raise ConfigError(f"tolerance must be >= 1, got {tolerance!r}")
    if isinstance(grid_size, bool) or not (isinstance(grid_size, int) and 3 <= grid_size <= 100_000):
        raise ConfigError(f"grid_size must be an integer in [3, 100000], got {grid_size!r}")


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of the Lemma 3 / Theorem 2 construction. The level L0 is passed to ``run``."""

    p: float = 0.75
    """Algorithm 1's drop probability: every hidden unit is dropped independently with probability p (the paper's
    Lemma 3 allows p <= 3/4; Lemma 2's move needs |S u K| + |S| <= h, so p well above 1/2)."""
    draws: int = 20
    """Algorithm 1 draws per endpoint; of those whose Lemma 3 segment stays <= L0 (and whose pair has room),
    the pair with the lowest segment maxima is used."""
    rescale: float | None = None
    """Factor r on kept units' outgoing weights (None: 1 / (1 - p), Algorithm 1's)."""
    tolerance: float = 1.0
    """The path is accepted when its grid maximum is <= tolerance * L0."""
    grid_size: int = 33
    """Points per segment on the evaluation grid, endpoints included (also for the Lemma 3 segments)."""
    straight_line: bool = True
    """Also evaluate the straight segment A-B on the same grid (its barrier, for comparison)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed of Algorithm 1's draws; a run sets it from its own seed."""

    def __post_init__(self) -> None:
        check_common(self.p, self.draws, self.rescale, self.tolerance, self.grid_size)

    @property
    def r(self) -> float:
        return 1.0 / (1.0 - self.p) if self.rescale is None else float(self.rescale)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def lemma2_room(spec: UnitSpec, kept_p: list[list[int]], kept_q: list[list[int]]) -> list[list[int]] | None:
    """Slots X (per hidden layer) for P's kept units, disjoint from P's and Q's kept units, or None."""
    out = []
    for li, layer in enumerate(spec.layers):
        busy = set(kept_p[li]) | set(kept_q[li])
        slots = choose_slots([u for u in range(layer.size) if u not in busy], len(kept_p[li]))
        if slots is None:
            return None
        out.append(slots)
    return out


def lemma3_path(theta: Point, theta_1: Point, which: str) -> tuple[list[Point], list[Step]]:
    return [theta, theta_1], [Step(f"L3{which}", "n", f"Lemma 3: {which} to its Algorithm 1 dropout version")]


def theorem2_path(a: Point, b: Point, spec: UnitSpec, a1: Point, b1: Point, mask_a, mask_b
                  ) -> tuple[list[Point], list[Step]]:
    """The ten beads-to-beads segments A, A_1, ..., B_1, B (see the module docstring); ConfigError without room."""
    S, K = kept_sets(spec, mask_a), kept_sets(spec, mask_b)
    X = lemma2_room(spec, S, K)
    if X is None:
        raise ConfigError("Lemma 2 needs |S u K| + |S| <= h in every hidden layer (room to move A_1's kept units "
                          "away from B_1's); raise p")
    DB = dropped_sets(spec, mask_b)
    p0 = zero_rows_except(a1, spec, S)                                   # 2 (b)
    p1 = move_tower(p0, spec, S, X)                                      # 3 (b)
    p2 = dict(p1)
    top = reroute_top(p1, spec, S[-1], X[-1])                            # 4 (a)
    for key in spec.top:
        p2[key] = top[key]
    p3 = zero_rows_except(p2, spec, X)                                   # 5 (b)
    p4 = rows_from(p3, spec, b1, K)                                      # 6 (b)
    p5 = top_from(p4, spec, b1)                                          # 7 (a)
    p6 = zero_rows_except(p5, spec, K)                                   # 8 (b)
    p7 = rows_from(p6, spec, b1, DB)                                     # 9 (b)
    mismatch = [k for k in b1 if not torch.equal(p7[k], b1[k])]
    if mismatch:  # a bug, not a user error
        raise RuntimeError(f"the Lemma 2 construction does not end at B_1 (parameters {mismatch})")
    beads = [a, a1, p0, p1, p2, p3, p4, p5, p6, b1, b]
    steps = [Step("L3A", "n", "Lemma 3: A to A_1 (Algorithm 1 dropout of A_2 .. A_d)"),
             Step("L2", "b", "zero the rows of A_1's dropped units (they reach nothing)"),
             Step("L2", "b", "copy A_1's kept tower into idle slots away from B_1's kept units"),
             Step("L2", "a", "top layer: switch to the copy (the same function)"),
             Step("L2", "b", "zero the original kept units (now idle)"),
             Step("L2", "b", "write B_1's kept units into their (idle) slots"),
             Step("L2", "a", "top layer: from A_1's units (and bias) to B_1's"),
             Step("L2", "b", "zero A_1's units (now idle)"),
             Step("L2", "b", "B_1's rows on its dropped units (they reach nothing): B_1"),
             Step("L3B", "n", "Lemma 3 reversed: B_1 to B")]
    return beads, steps


def keeps_every_layer(mask) -> bool:
    """A draw that drops every unit of a layer leaves a constant network: not a dropout version worth using."""
    return all(bool(torch.as_tensor(m).any()) for m in mask.values())


def endpoint_draws(which: str, point: Point, energy: Energy, spec: UnitSpec, *, p: float, r: float, draws: int,
                   seed: int, ts: torch.Tensor, say, accept=None) -> list[Lemma3Draw]:
    return lemma3_draws(point, energy, spec, p=p, r=r, draws=draws, seed=derive_seed(seed, "algorithm1", which),
                        ts=ts, accept=accept, progress=say, label=f" ({which.upper()})")


def draw_extras(spec: UnitSpec, found: list[Lemma3Draw], threshold: float) -> dict[str, Any]:
    stable = [d for d in found if d.max_energy <= threshold]
    best = min(found, key=lambda d: (d.max_energy, d.end_energy), default=None)
    return {"draws_evaluated": len(found), "draws_stable": len(stable),
            "best_segment_max_energy": None if best is None else best.max_energy,
            "draws": [d.summary(spec) for d in found]}


def not_stable_message(which: str, found: list[Lemma3Draw], endpoint_energy: float, p: float, n_draws: int,
                       threshold: float) -> str:
    if not found:
        return f"endpoint {which.upper()}: none of {n_draws} draws could be used"
    best = min(found, key=lambda d: (d.max_energy, d.end_energy))
    return (f"endpoint {which.upper()} (energy {endpoint_energy:.4g}): the best of {len(found)} Algorithm 1 draws "
            f"at p={p:g} (draw {best.index}) reaches {best.max_energy:.4g} on the segment to its dropout version "
            f"(theta_1 at {best.end_energy:.4g}), above L0={threshold:.4g}")


class KuditipudiNoise:
    """Lemma 3 / Theorem 2 as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "kuditipudi_noise"
    summary: ClassVar[str] = ("Kuditipudi et al. (2019) Theorem 2: 10-segment path between noise-stable networks "
                              "through their Algorithm 1 dropout versions (no training)")
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = NoiseConfig
    State: ClassVar[type] = ConstructionState

    check_energy = staticmethod(check_hidden_units)

    def run(self, start: Path, energy: Energy, *, threshold: float, config: NoiseConfig,
            objective: Objective | None = None, state: ConstructionState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        say = progress or (lambda message: None)
        state = state or ConstructionState()
        if state.finished and state.outcome is not None:
            return start, Outcome.from_dict(state.outcome)
        clock = time.perf_counter()
        spec = hidden_units(energy.model)
        a, b = start.beads[0], start.beads[-1]
        ts = torch.linspace(0.0, 1.0, config.grid_size, dtype=torch.float64)
        extras: dict[str, Any] = {"p": config.p, "r": config.r, "draws": config.draws, "grid_size": config.grid_size,
                                  "layers": spec.names(), "sizes": spec.sizes, "metric": energy.metric.value}
        if config.straight_line:
            extras.update(straight_line(energy, a, b, ts))
            say(f"straight segment A-B: max energy {extras['straight_line_max_energy']:.4g}")
        found = {w: endpoint_draws(w, pt, energy, spec, p=config.p, r=config.r, draws=config.draws, seed=config.seed,
                                   ts=ts, say=say, accept=keeps_every_layer) for w, pt in (("a", a), ("b", b))}
        for w in ("a", "b"):
            extras[f"lemma3_{w}"] = draw_extras(spec, found[w], threshold)
        empty = [w for w in ("a", "b") if not found[w]]
        if empty:
            message = (f"no usable Algorithm 1 draw at p={config.p:g}: every one of the {config.draws} draws of "
                       f"endpoint(s) {', '.join(w.upper() for w in empty)} drops all units of some hidden layer "
                       f"(of {spec.sizes}); lower p or draw more (--draws)")
            say(message)
            return finish(*stopped(start, "no_usable_draw", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        stable = {w: sorted((d for d in found[w] if d.max_energy <= threshold),
                            key=lambda d: (d.max_energy, d.end_energy)) for w in ("a", "b")}
        ends = {"a": energy(a), "b": energy(b)}
        bad = [w for w in ("a", "b") if not stable[w]]
        if bad:
            message = f"not noise stable at p={config.p:g}: " + "; ".join(
                not_stable_message(w, found[w], ends[w], config.p, config.draws, threshold) for w in bad)
            say(message)
            return finish(*stopped(start, "not_noise_stable", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        pairs = sorted(((da, db) for da in stable["a"] for db in stable["b"]),
                       key=lambda pair: (max(pair[0].max_energy, pair[1].max_energy), pair[0].index, pair[1].index))
        chosen = next(((da, db) for da, db in pairs
                       if lemma2_room(spec, kept_sets(spec, da.mask), kept_sets(spec, db.mask)) is not None), None)
        if chosen is None:
            message = (f"no room for Lemma 2 at p={config.p:g}: for none of the {len(pairs)} stable draw pairs do "
                       "A_1's kept units fit beside both networks' kept units (|S u K| + |S| <= h in every hidden "
                       "layer); raise p")
            say(message)
            return finish(*stopped(start, "no_room", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        da, db = chosen
        extras.update(draw_a=da.index, draw_b=db.index,
                      kept_units={w: {n: s for n, s in zip(spec.names(), kept_sets(spec, d.mask))}
                                  for w, d in (("a", da), ("b", db))})
        beads, steps = theorem2_path(a, b, spec, da.point, db.point, da.mask, db.mask)
        beads, steps = merge_equal(beads, steps)
        path = Path(beads)
        say(f"constructed {path.n_pieces} segments (Lemma 3, Lemma 2 in {sum(s.lemma == 'L2' for s in steps)}, "
            "Lemma 3 reversed)")
        records = evaluate_steps(path, steps, energy, ts, say)
        waypoints = {"lemma3_a_max": da.max_energy, "lemma3_b_max": db.max_energy, "theta_1_a": da.end_energy,
                     "theta_1_b": db.end_energy}
        outcome = finish_outcome(records, extras, threshold=threshold, tolerance=config.tolerance,
                                 waypoints=waypoints, clock=clock, elapsed=state.elapsed_s)
        say(outcome.message)
        return finish(path, outcome, state, checkpoint)

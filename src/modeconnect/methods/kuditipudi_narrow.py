"""The Theorem 3 path of Kuditipudi et al. (2019): two noise-stable networks joined through a narrow network
theta* (method ``kuditipudi_narrow``).

theta* has ``h*`` units in every hidden layer; the library trains it itself, inside the endpoints' architecture
(units ``0 .. h*-1`` of every hidden layer, all other weights held at zero), on the run's training objective.
Thirteen straight segments (derivation in ``docs/kuditipudi.md``):

1. (n) Lemma 3: A -> A_1 (Algorithm 1 dropout; measured);
2. (b) write theta* into h* of A_1's dropped slots E_A (they reach nothing);
3. (a) top layer from A_1's to theta*'s (on E_A): convex in the output;
4. (b) zero every other row: theta* alone, on E_A;
5. (b) copy theta* into slots E' disjoint from E_A and E_B;
6. (a) top layer from E_A to E' (the same function);
7. (b) zero E_A, copy theta* from E' into E_B (h* of B_1's dropped slots);
8. (a) top layer from E' to E_B (the same function);
9. (b) zero E': theta* alone, on E_B;
10. (b) B_1's rows on every unit outside E_B (idle: nothing reads them);
11. (a) top layer from theta*'s to B_1's: convex in the output;
12. (b) B_1's rows on E_B: exactly B_1;
13. (n) Lemma 3 reversed: B_1 -> B.

Why the detour through E': E_A must lie in A_1's dropped units and E_B in B_1's, and a tower can only be copied
into slots it does not occupy; E_A and E_B may overlap, E' avoids both (it needs ``|E_A u E_B| + h* <= h``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..energy import Energy
from ..errors import ConfigError
from ..kuditipudi.lemma3 import dropped_sets, kept_sets
from ..kuditipudi.units import UnitSpec, hidden_units, reroute_top
from ..params import Point
from ..path import Path
from ..seeding import derive_seed
from ..settings import to_dict
from ..train import Objective, TrainConfig, train_to_target
from .base import Checkpoint, Outcome, Progress
from .kuditipudi_common import (
    ConstructionState,
    choose_slots,
    embed_tower,
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
from .kuditipudi_noise import check_common, draw_extras, endpoint_draws, keeps_every_layer, not_stable_message

__all__ = ["NarrowConfig", "KuditipudiNarrow", "theorem3_path", "narrow_slots", "narrow_widths", "narrow_masks",
           "train_narrow"]


@dataclass(frozen=True)
class NarrowConfig:
    """Settings of the Theorem 3 construction. The level L0 is passed to ``run``."""

    p: float = 0.2
    """Algorithm 1's drop probability (the paper's MNIST experiment: 0.2; Theorem 3 asks
    1.5 max_i h*/h_i <= p <= 3/4)."""
    narrow_width: int | None = None
    """h*, the width of every hidden layer of theta*, capped at each layer's width (None: per layer i the largest
    width Theorem 3's condition p >= 1.5 h*_i / h_i allows, max(1, floor(p h_i / 1.5)))."""
    narrow_level: float = 1.0
    """theta* is trained until its energy is <= narrow_level * L0 (it is on the path: it must be inside the level)."""
    narrow_training: TrainConfig = field(default_factory=TrainConfig, metadata={"flag_prefix": "narrow"})
    """How theta* is trained on the run's training objective, from a seeded He-uniform start (the task's endpoint
    training by default: the same optimizer, learning rate, batch size and step cap as the endpoints)."""
    draws: int = 20
    """Algorithm 1 draws per endpoint; draws with fewer than h* dropped units in some layer are skipped."""
    rescale: float | None = None
    """Factor r on kept units' outgoing weights (None: 1 / (1 - p), Algorithm 1's)."""
    tolerance: float = 1.0
    """The path is accepted when its grid maximum is <= tolerance * L0."""
    grid_size: int = 33
    """Points per segment on the evaluation grid, endpoints included."""
    straight_line: bool = True
    """Also evaluate the straight segment A-B on the same grid (its barrier, for comparison)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed of Algorithm 1's draws and of theta*'s start and minibatches; a run sets it from its own seed."""

    def __post_init__(self) -> None:
        check_common(self.p, self.draws, self.rescale, self.tolerance, self.grid_size)
        if self.narrow_width is not None and (isinstance(self.narrow_width, bool) or not (
                isinstance(self.narrow_width, int) and self.narrow_width >= 1)):
            raise ConfigError(f"narrow_width must be a positive integer or None, got {self.narrow_width!r}")
        if not (isinstance(self.narrow_level, (int, float)) and math.isfinite(self.narrow_level)
                and 0 < self.narrow_level <= 1):
            raise ConfigError(f"narrow_level must be in (0, 1] (theta*'s target as a fraction of L0), got "
                              f"{self.narrow_level!r}")
        if not isinstance(self.narrow_training, TrainConfig):
            raise ConfigError("narrow_training must be a TrainConfig")
        if self.narrow_training.dropout:
            raise ConfigError("narrow_training.dropout must be 0: theta* is a plain narrow network")

    @property
    def r(self) -> float:
        return 1.0 / (1.0 - self.p) if self.rescale is None else float(self.rescale)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def narrow_widths(spec: UnitSpec, config: NarrowConfig) -> list[int]:
    """h*_i per hidden layer: ``narrow_width`` capped at each layer's width, or by default the largest width
    Theorem 3's condition ``p >= 1.5 h*_i / h_i`` allows, ``max(1, floor(p h_i / 1.5))``."""
    if config.narrow_width is not None:
        return [min(config.narrow_width, size) for size in spec.sizes]
    return [max(1, int(math.floor(config.p * size / 1.5 + 1e-9))) for size in spec.sizes]


# -- theta* -------------------------------------------------------------------------------------
def _columns(units: list[int], group: int, device) -> Tensor:
    idx = torch.as_tensor(units, dtype=torch.long, device=device)
    return (idx.unsqueeze(1) * group + torch.arange(group, device=device)).reshape(-1)


def narrow_masks(like: Point, spec: UnitSpec, units: list[list[int]]) -> dict[str, Tensor]:
    """0/1 masks of the parameters a narrow network on ``units`` may use (rows of its units reading the units
    below; the top layer's columns of the last layer's units and its bias). Keys the spec does not name: none."""
    masks: dict[str, Tensor] = {}
    for li, layer in enumerate(spec.layers):
        for param in layer.incoming:
            t = like[param.key]
            rows = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device)
            rows[torch.as_tensor(units[li], dtype=torch.long, device=t.device)] = 1
            m = rows.view(-1, *[1] * (t.dim() - 1)).expand_as(t).clone()
            if li > 0 and param.dim == 0 and t.dim() > 1:
                prev = spec.layers[li - 1]
                cols = torch.zeros(t.shape[1], dtype=t.dtype, device=t.device)
                cols[_columns(units[li - 1], prev.outgoing.group, t.device)] = 1
                m = m * cols.view(1, -1, *[1] * (t.dim() - 2))
            masks[param.key] = m
    top_w = like[spec.top[0]]
    cols = torch.zeros(top_w.shape[1], dtype=top_w.dtype, device=top_w.device)
    last = spec.layers[-1]
    cols[_columns(units[-1], last.outgoing.group, top_w.device)] = 1
    masks[spec.top[0]] = cols.view(1, -1).expand_as(top_w).clone()
    for key in spec.top[1:]:
        masks[key] = torch.ones_like(like[key])
    return masks


def narrow_start(like: Point, spec: UnitSpec, masks: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """A seeded He-uniform start for the narrow network (fan-in counted over its own inputs), zero elsewhere."""
    g = torch.Generator().manual_seed(int(seed))
    weights = {layer.weight for layer in spec.layers} | {spec.top[0]}
    out = {k: torch.zeros_like(v) for k, v in like.items()}
    for key, mask in masks.items():
        if key not in weights:
            continue  # biases start at zero
        row_mask = mask.reshape(mask.shape[0], -1)
        fan_in = max(1.0, float(row_mask.sum(1).max()))
        bound = (1.0 if key == spec.top[0] else math.sqrt(6.0)) / math.sqrt(fan_in)
        values = (torch.rand(mask.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
        out[key] = values.to(mask.dtype).to(mask.device) * mask
    return out


def train_narrow(energy: Energy, objective: Objective, spec: UnitSpec, widths: list[int], config: TrainConfig,
                 target: float, seed: int, say) -> tuple[Point, Any, list[list[int]]]:
    """theta* on units ``0 .. h*-1`` of every hidden layer, trained to ``target`` (weights outside held at zero)."""
    units = [list(range(w)) for w in widths]
    like = {k: v.detach() for k, v in energy.point_of(energy.model).items()}
    masks = narrow_masks(like, spec, units)
    start = narrow_start(like, spec, masks, derive_seed(seed, "narrow", "start"))

    def project(params: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for key, mask in masks.items():
                params[key].mul_(mask.to(params[key].device))

    checks = [0]

    def on_check(step: int, value: float) -> None:
        checks[0] += 1
        if checks[0] % 10 == 1:
            say(f"theta* (width {widths}): step {step}, energy {value:.4g} (target {target:.4g})")

    point, status = train_to_target(start, energy=energy, objective=objective, target=target, config=config,
                                    seed=derive_seed(seed, "narrow", "train"), on_check=on_check, project=project)
    return point, status, units


# -- the path -----------------------------------------------------------------------------------
def narrow_slots(spec: UnitSpec, dropped_a: list[list[int]], dropped_b: list[list[int]], widths: list[int]):
    """Slots (E_A, E_B, E') per hidden layer: E_A among A_1's dropped units, E_B among B_1's, E' outside both;
    or None when some layer has no room.

    E_A and E_B share as few slots as the room for E' allows (``|E_A u E_B| + h* <= h``), so that the two moves
    of theta* are real moves; only when both draws drop the same h* units and nothing else are they equal (then
    segment 7 has nothing to do and is merged away: 12 segments).
    """
    ea, eb, ep = [], [], []
    for li, layer in enumerate(spec.layers):
        w, h = widths[li], layer.size
        in_b = set(dropped_b[li])
        a = choose_slots(dropped_a[li], w, prefer=[u for u in dropped_a[li] if u not in in_b])
        if a is None:
            return None
        b = choose_slots(dropped_b[li], w, prefer=[u for u in dropped_b[li] if u not in set(a)])
        if b is None:
            return None
        if len(set(a) | set(b)) + w > h:  # not enough room for E': share as many slots as possible
            common = [u for u in dropped_a[li] if u in in_b]
            a = choose_slots(dropped_a[li], w, prefer=common)
            b = choose_slots(dropped_b[li], w, prefer=[u for u in a if u in in_b])
            if len(set(a) | set(b)) + w > h:
                return None
        busy = set(a) | set(b)
        e = choose_slots([u for u in range(h) if u not in busy], w)
        if e is None:
            return None
        ea.append(a)
        eb.append(b)
        ep.append(e)
    return ea, eb, ep


def theorem3_path(a: Point, b: Point, spec: UnitSpec, a1: Point, b1: Point, star: Point,
                  units: list[list[int]], slots) -> tuple[list[Point], list[Step]]:
    """The thirteen segments A, A_1, ..., theta*, ..., B_1, B (see the module docstring)."""
    ea, eb, ep = slots
    everyone = [list(range(layer.size)) for layer in spec.layers]
    x1 = embed_tower(a1, spec, star, units, ea)                                # 2 (b)
    x2 = top_from(x1, spec, star, units[-1], ea[-1])                           # 3 (a)
    x3 = zero_rows_except(x2, spec, ea)                                        # 4 (b)
    x4 = move_tower(x3, spec, ea, ep)                                          # 5 (b)
    x5 = top_from(x4, spec, reroute_top(x4, spec, ea[-1], ep[-1]))             # 6 (a)
    x6 = move_tower(zero_rows_except(x5, spec, ep), spec, ep, eb)              # 7 (b)
    x7 = top_from(x6, spec, reroute_top(x6, spec, ep[-1], eb[-1]))             # 8 (a)
    x8 = zero_rows_except(x7, spec, eb)                                        # 9 (b)
    outside = [[u for u in everyone[li] if u not in set(eb[li])] for li in range(len(spec.layers))]
    x9 = rows_from(x8, spec, b1, outside)                                      # 10 (b)
    x10 = top_from(x9, spec, b1)                                               # 11 (a)
    x11 = rows_from(x10, spec, b1, eb)                                         # 12 (b)
    mismatch = [k for k in b1 if not torch.equal(x11[k], b1[k])]
    if mismatch:  # a bug, not a user error
        raise RuntimeError(f"the Theorem 3 construction does not end at B_1 (parameters {mismatch})")
    beads = [a, a1, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, b1, b]
    steps = [Step("L3A", "n", "Lemma 3: A to A_1 (Algorithm 1 dropout of A_2 .. A_d)"),
             Step("A1-star", "b", "write theta* into dropped slots E_A of A_1 (they reach nothing)"),
             Step("A1-star", "a", "top layer: from A_1's units to theta*'s"),
             Step("A1-star", "b", "zero every row outside E_A: theta* alone"),
             Step("star", "b", "copy theta* into slots E' away from E_A and E_B"),
             Step("star", "a", "top layer: from E_A to E' (the same function)"),
             Step("star", "b", "zero E_A; copy theta* from E' into B_1's dropped slots E_B"),
             Step("star", "a", "top layer: from E' to E_B (the same function)"),
             Step("star", "b", "zero E': theta* alone, on E_B"),
             Step("star-B1", "b", "B_1's rows on every unit outside E_B (nothing reads them)"),
             Step("star-B1", "a", "top layer: from theta*'s units to B_1's"),
             Step("star-B1", "b", "B_1's rows on E_B: B_1"),
             Step("L3B", "n", "Lemma 3 reversed: B_1 to B")]
    return beads, steps


class KuditipudiNarrow:
    """Theorem 3 as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "kuditipudi_narrow"
    summary: ClassVar[str] = ("Kuditipudi et al. (2019) Theorem 3: 13-segment path between noise-stable networks "
                              "through a narrow network theta* that it trains")
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = NarrowConfig
    State: ClassVar[type] = ConstructionState

    check_energy = staticmethod(check_hidden_units)

    def run(self, start: Path, energy: Energy, *, threshold: float, config: NarrowConfig,
            objective: Objective | None = None, state: ConstructionState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        say = progress or (lambda message: None)
        state = state or ConstructionState()
        if state.finished and state.outcome is not None:
            return start, Outcome.from_dict(state.outcome)
        if objective is None:
            raise ConfigError("kuditipudi_narrow trains theta*: pass objective=Objective(inputs, targets, loss)")
        clock = time.perf_counter()
        spec = hidden_units(energy.model)
        a, b = start.beads[0], start.beads[-1]
        ts = torch.linspace(0.0, 1.0, config.grid_size, dtype=torch.float64)
        widths = narrow_widths(spec, config)
        condition = 1.5 * max(w / h for w, h in zip(widths, spec.sizes))
        extras: dict[str, Any] = {"p": config.p, "r": config.r, "draws": config.draws, "grid_size": config.grid_size,
                                  "layers": spec.names(), "sizes": spec.sizes, "metric": energy.metric.value,
                                  "narrow_width": widths, "paper_p_range": [condition, 0.75],
                                  "paper_condition_holds": condition <= config.p <= 0.75}
        if config.straight_line:
            extras.update(straight_line(energy, a, b, ts))
            say(f"straight segment A-B: max energy {extras['straight_line_max_energy']:.4g}")

        def enough(mask) -> bool:
            return keeps_every_layer(mask) and all(len(d) >= w for d, w in zip(dropped_sets(spec, mask), widths))

        found = {w: endpoint_draws(w, pt, energy, spec, p=config.p, r=config.r, draws=config.draws, seed=config.seed,
                                   ts=ts, say=say, accept=enough) for w, pt in (("a", a), ("b", b))}
        for w in ("a", "b"):
            extras[f"lemma3_{w}"] = draw_extras(spec, found[w], threshold)
            extras[f"lemma3_{w}"]["draws_too_few_dropped"] = config.draws - len(found[w])
        stable = {w: sorted((d for d in found[w] if d.max_energy <= threshold),
                            key=lambda d: (d.max_energy, d.end_energy)) for w in ("a", "b")}
        empty = [w for w in ("a", "b") if not found[w]]
        if empty:
            message = (f"too few dropped units at p={config.p:g}: none of the {config.draws} Algorithm 1 draws of "
                       f"endpoint(s) {', '.join(w.upper() for w in empty)} drops h* = {widths} units (and keeps at "
                       f"least one) in every hidden layer (of {spec.sizes}); raise p or lower --narrow-width")
            say(message)
            return finish(*stopped(start, "too_few_dropped", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        bad = [w for w in ("a", "b") if not stable[w]]
        if bad:
            parts = []
            for w in bad:
                text = not_stable_message(w, found[w], energy(a if w == "a" else b), config.p, config.draws, threshold)
                skipped = config.draws - len(found[w])
                parts.append(text + (f" ({skipped} draw(s) dropped fewer than h* = {widths} units)" if skipped else ""))
            message = f"not noise stable at p={config.p:g}: " + "; ".join(parts)
            say(message)
            return finish(*stopped(start, "not_noise_stable", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        target = config.narrow_level * threshold
        say(f"training theta* (width {widths}) to energy <= {target:.4g}")
        tick = time.perf_counter()
        star, status, units = train_narrow(energy, objective, spec, widths, config.narrow_training, target,
                                           config.seed, say)
        star_energy = energy(star)
        extras["narrow"] = {"width": widths, "units": units, "energy": star_energy, "target": target,
                            "reached": status.reached, "steps": status.steps, "reason": status.reason,
                            "train_time_s": time.perf_counter() - tick, "objective": objective.describe(),
                            "training": config.narrow_training.to_dict()}
        say(f"theta*: energy {star_energy:.4g} after {status.steps} steps ({status.reason})")
        if not status.reached:
            message = (f"the narrow network theta* (width {widths}) reached only {star_energy:.4g} after "
                       f"{status.steps} steps ({status.reason}), above its target {target:.4g}: widen it "
                       "(--narrow-width) or train longer (--narrow-max-steps)")
            say(message)
            return finish(*stopped(start, "narrow_not_trained", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        pairs = sorted(((da, db) for da in stable["a"] for db in stable["b"]),
                       key=lambda pair: (max(pair[0].max_energy, pair[1].max_energy), pair[0].index, pair[1].index))
        chosen = None
        for da, db in pairs:
            slots = narrow_slots(spec, dropped_sets(spec, da.mask), dropped_sets(spec, db.mask), widths)
            if slots is not None:
                chosen = (da, db, slots)
                break
        if chosen is None:
            message = (f"no room to move theta* (width {widths}) from A_1's dropped units to B_1's through slots away "
                       f"from both (|E_A u E_B| + h* <= h) for any of {len(pairs)} stable draw pairs; lower "
                       "--narrow-width")
            say(message)
            return finish(*stopped(start, "no_room", message, extras, clock=clock, elapsed=state.elapsed_s),
                          state, checkpoint)
        da, db, slots = chosen
        extras.update(draw_a=da.index, draw_b=db.index,
                      slots={name: {"E_A": slots[0][li], "E_B": slots[1][li], "E_prime": slots[2][li]}
                             for li, name in enumerate(spec.names())},
                      kept_units={w: {n: s for n, s in zip(spec.names(), kept_sets(spec, d.mask))}
                                  for w, d in (("a", da), ("b", db))})
        beads, steps = theorem3_path(a, b, spec, da.point, db.point, star, units, slots)
        beads, steps = merge_equal(beads, steps)
        path = Path(beads)
        say(f"constructed {path.n_pieces} segments through theta*")
        records = evaluate_steps(path, steps, energy, ts, say)
        waypoints = {"lemma3_a_max": da.max_energy, "lemma3_b_max": db.max_energy, "theta_1_a": da.end_energy,
                     "theta_1_b": db.end_energy, "theta_star": star_energy}
        outcome = finish_outcome(records, extras, threshold=threshold, tolerance=config.tolerance,
                                 waypoints=waypoints, clock=clock, elapsed=state.elapsed_s)
        say(outcome.message)
        return finish(path, outcome, state, checkpoint)


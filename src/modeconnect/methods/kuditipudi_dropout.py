"""The Theorem 1 path of Kuditipudi et al. (2019) between two dropout-stable networks (method ``kuditipudi_dropout``).

Every segment is one of the paper's two step types:

* (a) interpolate the *top* layer's weights (and bias): the network output is affine in them, so a loss that is
  convex in the output (MSE, MAE, cross-entropy, perplexity) stays below the larger end value; the 0-1 error
  stays below the sum of the end values (a sample misclassified inside was misclassified at an end);
* (b) rewrite the incoming weights of units that cannot reach the output (their outgoing weights, or those of
  every unit they feed, are zero): the network function does not change along the segment.

The path is Lemma 1 from A to its dropout version A_1 through every A_i (one type (a) segment, then five
segments per lower layer: build an idle shadow copy with the new inputs (b), switch the top layer to it (a),
rewrite the original (b), switch back (a), clear the shadow and the dropped units (b); for a 3-layer net these
are Figure 1's six segments), then Lemma 2 from A_1 to B_1 (move A_1's active units, layer by layer, to slots
disjoint from B_1's, each move a (b)-(a)-(b) triple through an idle copy, never a jump; then write B_1's units
(b), switch the top layer from A_1's to B_1's (a), clear A_1's units (b)), then Lemma 1 from B backwards.

The masks are the best of ``masks`` random ones for each endpoint (:mod:`modeconnect.kuditipudi.dropout`). An
endpoint that is not dropout stable at ``p`` (no mask keeps every ``A_i`` at or below the threshold) ends the
run with reason ``not_dropout_stable`` and the numbers, not with a path. See ``docs/kuditipudi.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..energy import Energy
from ..errors import ConfigError
from ..kuditipudi.dropout import DropoutConfig, Mask, dropout_stability
from ..kuditipudi.units import (
    UnitSpec,
    as_index,
    copy_tower,
    hidden_units,
    in_rows,
    reroute_top,
    scale_outgoing,
    set_in_rows,
    zero_outgoing,
    zero_units,
)
from ..metrics import Metric
from ..params import Point
from ..path import Path
from ..seeding import derive_seed
from ..train import Objective
from .base import Checkpoint, ConstructionState, Outcome, Progress, finish_construction

__all__ = ["KuditipudiConfig", "KuditipudiDropout", "lemma1_path", "lemma2_path", "theorem1_path", "Step",
           "segment_bound", "measured_slack", "check_hidden_units"]


@dataclass(frozen=True)
class KuditipudiConfig:
    """Settings of the Theorem 1 construction. The level L0 is passed to ``run``."""

    p: float = 0.5
    """Drop fraction; every hidden layer keeps floor(h (1 - p)) units. Must be >= 0.5: the shadow copies of
    Lemma 1 and the disjoint units of Lemma 2 need as many free slots as kept units (measure stability at a
    smaller p with `modeconnect dropout`)."""
    masks: int = 20
    """Random masks tried per endpoint; the one whose worst A_i is lowest is used."""
    rescale: float | None = None
    """Factor r on kept units' outputs (None: 1 / (1 - p))."""
    tolerance: float = 1.0
    """The path is accepted when its grid maximum is <= tolerance * L0."""
    grid_size: int = 33
    """Points per segment on the evaluation grid, endpoints included."""
    straight_line: bool = True
    """Also evaluate the straight segment A-B on the same grid (its barrier, for comparison)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed of the masks; a run sets it from its own seed."""

    def __post_init__(self) -> None:
        if not (isinstance(self.p, (int, float)) and 0.5 <= self.p < 1):
            raise ConfigError(f"p must be in [0.5, 1) for the Theorem 1 path, got {self.p!r}: with fewer than half "
                              "the units dropped there are no free slots for Lemma 1's shadow copies and two "
                              "networks' kept units cannot be made disjoint (Lemma 2); `modeconnect dropout` "
                              "measures stability at any p")
        DropoutConfig(p=self.p, masks=self.masks, rescale=self.rescale)  # validates masks and rescale
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1):
            raise ConfigError(f"tolerance must be >= 1, got {self.tolerance}")
        if not (isinstance(self.grid_size, int) and 3 <= self.grid_size <= 100_000):
            raise ConfigError(f"grid_size must be an integer in [3, 100000], got {self.grid_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Step:
    """What one segment of the constructed path does."""

    lemma: str
    """``"1A"`` (A to A_1), ``"2"`` (A_1 to B_1) or ``"1B"`` (B_1 to B)."""
    kind: str
    """``"a"``: top-layer interpolation (convex); ``"b"``: rewrite of idle units (function unchanged)."""
    what: str


# -- the construction ---------------------------------------------------------------------------
def _sets(spec: UnitSpec, mask: Mask, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    kept = [as_index(mask[layer.name], device) for layer in spec.layers]
    dropped = [as_index(~mask[layer.name].to(torch.bool), device) for layer in spec.layers]
    return kept, dropped


def lemma1_path(point: Point, spec: UnitSpec, mask: Mask, r: float) -> tuple[list[Point], list[Step]]:
    """Beads from ``point`` (theta) to its dropout version theta_1 through every theta_i (Lemma 1).

    ``len(steps) == 1 + 5 (d - 2)``: Figure 1's six segments for d = 3. theta_i (after its fifth step) has the
    mask applied from hidden layer i on, with the dropped units' incoming weights zeroed.
    """
    n = len(spec.layers)
    device = point[spec.layers[0].weight].device
    K, D = _sets(spec, mask, device)
    for li in range(1, n):
        if len(D[li]) < len(K[li]):
            raise ConfigError(f"layer {spec.layers[li].name!r} keeps {len(K[li])} of {spec.layers[li].size} units: "
                              "Lemma 1's shadow copy needs at least as many dropped units as kept ones (p >= 1/2)")
    top = spec.layers[-1]
    x = scale_outgoing(point, top, K[-1], r)
    x = zero_outgoing(x, top, D[-1])
    beads, steps = [dict(point), x], [Step("1", "a", f"top layer: outputs of units kept in {top.name} times r, "
                                                     f"dropped ones zero (theta_{n})")]
    for lo in range(n - 1, 0, -1):  # going theta_{lo+1} -> theta_lo (1-based): rewrite the inputs of layer lo
        below, layer = spec.layers[lo - 1], spec.layers[lo]
        shadow = {li: D[li][: len(K[li])] for li in range(lo, n)}
        y = scale_outgoing(x, below, K[lo - 1], r, rows=K[lo])
        y = zero_outgoing(y, below, D[lo - 1], rows=K[lo])
        new_rows = in_rows(y, layer, K[lo])
        x1 = set_in_rows(x, layer, shadow[lo], new_rows)
        x1 = copy_tower(x1, spec, {li: (K[li], shadow[li]) for li in range(lo + 1, n)},
                        {li: (K[li], shadow[li]) for li in range(lo, n - 1)})
        x2 = reroute_top(x1, spec, K[-1], shadow[n - 1])
        x3 = set_in_rows(x2, layer, K[lo], new_rows)
        x4 = reroute_top(x3, spec, shadow[n - 1], K[-1])
        x5 = x4
        for li in range(lo - 1, n):
            x5 = zero_units(x5, spec.layers[li], D[li])
        beads += [x1, x2, x3, x4, x5]
        x = x5
        tower = ", ".join(s.name for s in spec.layers[lo:])
        steps += [Step("1", "b", f"shadow copy in dropped slots of {tower}, reading {below.name}'s kept units times "
                                 "r and none of its dropped ones"),
                  Step("1", "a", "top layer: switch from the original units to the shadow copy"),
                  Step("1", "b", f"rewrite the (now idle) kept units of {layer.name} like the shadow"),
                  Step("1", "a", "top layer: switch back to the original units"),
                  Step("1", "b", f"zero the incoming weights of the dropped units of "
                                 f"{', '.join(s.name for s in spec.layers[lo - 1:])} (theta_{lo})")]
    return beads, steps


def _choose(candidates: list[int], count: int) -> list[int]:
    if len(candidates) < count:
        raise RuntimeError("not enough free slots")  # excluded by the checks in lemma2_path
    return candidates[:count]


def lemma2_path(p_point: Point, q_point: Point, spec: UnitSpec, kept_p: list[list[int]],
                kept_q: list[list[int]]) -> tuple[list[Point], list[Step]]:
    """Beads from P to Q, two networks whose units outside ``kept_p`` / ``kept_q`` are idle (zero in and out).

    First P's kept units are moved, layer by layer from the bottom, into slots disjoint from Q's: the units of
    layer j that collide with Q's are copied into free slots together with a copy of every layer above (b),
    the top layer switches to the copy (a, same function), the originals are cleared (b). Then Q's units are
    written into their (idle) slots (b), the top layer goes from P's to Q's (a), and P's units are cleared (b).
    Needs ``|kept_p| + |kept_q| <= h`` and ``2 |kept_p| <= h`` in every layer (true for p >= 1/2).
    """
    n = len(spec.layers)
    S = [sorted(int(u) for u in s) for s in kept_p]
    KQ = [sorted(int(u) for u in s) for s in kept_q]
    T = []
    for li, layer in enumerate(spec.layers):
        h, sp, sq = layer.size, set(S[li]), set(KQ[li])
        if len(sp) + len(sq) > h or 2 * len(sp) > h:
            raise ConfigError(f"layer {layer.name!r}: {len(sp)} and {len(sq)} kept units of {h}; Lemma 2 needs "
                              "at least half the units of every hidden layer idle in both networks (p >= 1/2)")
        free = [u for u in range(h) if u not in sp and u not in sq]
        T.append(sorted([u for u in S[li] if u not in sq] + _choose(free, len(sp & sq))))
    x = dict(p_point)
    beads: list[Point] = []
    steps: list[Step] = []
    for j in range(n):
        if S[j] == T[j]:
            continue
        moving = [u for u in S[j] if u not in T[j]]
        dest = [u for u in T[j] if u not in S[j]]
        to = dict(zip(moving, dest))
        rows = {j: (moving, dest)}
        inputs: dict[int, tuple[list[int], list[int]]] = {}
        prev = (S[j], [to.get(u, u) for u in S[j]])
        new_sets = {j: T[j]}
        for li in range(j + 1, n):
            busy = set(S[li])
            wanted = [u for u in T[li] if u not in busy]
            rest = [u for u in range(spec.layers[li].size) if u not in busy and u not in T[li] and u not in KQ[li]]
            other = [u for u in range(spec.layers[li].size) if u not in busy and u not in T[li] and u in KQ[li]]
            N = _choose(wanted + rest + other, len(S[li]))
            rows[li] = (S[li], N)
            inputs[li - 1] = prev
            prev = (S[li], N)
            new_sets[li] = sorted(N)
        x1 = copy_tower(x, spec, rows, inputs)
        src = [s for s, d in zip(*prev) if s != d]
        dst = [d for s, d in zip(*prev) if s != d]
        x2 = reroute_top(x1, spec, src, dst)
        x3 = zero_units(x2, spec.layers[j], moving)
        for li in range(j + 1, n):
            x3 = zero_units(x3, spec.layers[li], S[li])
        beads += [x1, x2, x3]
        above = [s.name for s in spec.layers[j + 1:]]
        copy = f"{len(moving)} unit(s) of {spec.layers[j].name}" + (f" with all of {', '.join(above)}" if above else "")
        steps += [Step("2", "b", f"copy {copy} into idle slots (away from B_1's units)"),
                  Step("2", "a", "top layer: switch to the copy (the same function)"),
                  Step("2", "b", f"zero the original units (now idle) of {', '.join(s.name for s in spec.layers[j:])}")]
        S = [new_sets.get(li, S[li]) for li in range(n)]
        x = x3
    x1 = x
    for li, layer in enumerate(spec.layers):
        x1 = set_in_rows(x1, layer, KQ[li], in_rows(q_point, layer, KQ[li]))
    x2 = dict(x1)
    for key in spec.top:
        x2[key] = q_point[key]
    x3 = x2
    for li, layer in enumerate(spec.layers):
        x3 = zero_units(x3, layer, S[li])
    mismatch = [k for k in q_point if not torch.equal(x3[k], q_point[k])]
    if mismatch:  # a bug, not a user error: every parameter of Q was either copied or is zero in both
        raise RuntimeError(f"Lemma 2 construction does not end at B_1 (parameters {mismatch})")
    beads += [x1, x2, dict(q_point)]
    steps += [Step("2", "b", "write B_1's units into their idle slots"),
              Step("2", "a", "top layer: from A_1's units (and bias) to B_1's"),
              Step("2", "b", "zero A_1's units (now idle): B_1")]
    return beads, steps


def _same(a: Point, b: Point) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def theorem1_path(a: Point, b: Point, spec: UnitSpec, mask_a: Mask, mask_b: Mask,
                  r: float) -> tuple[list[Point], list[Step]]:
    """Beads A, ..., A_1, ..., B_1, ..., B and one :class:`Step` per segment (consecutive equal beads merged)."""
    beads_a, steps_a = lemma1_path(a, spec, mask_a, r)
    beads_b, steps_b = lemma1_path(b, spec, mask_b, r)
    kept_a = [as_index(mask_a[layer.name]).tolist() for layer in spec.layers]
    kept_b = [as_index(mask_b[layer.name]).tolist() for layer in spec.layers]
    beads_2, steps_2 = lemma2_path(beads_a[-1], beads_b[-1], spec, kept_a, kept_b)
    beads = list(beads_a)
    steps = [Step("1A", s.kind, s.what) for s in steps_a]
    beads_2[-1] = beads_b[-1]
    beads += beads_2
    steps += steps_2
    rev = list(reversed(beads_b))
    beads += rev[1:]
    steps += [Step("1B", s.kind, s.what) for s in reversed(steps_b)]
    beads[0], beads[-1] = a, b  # the endpoints as given, bit for bit
    out_beads, out_steps = [beads[0]], []
    for bead, step in zip(beads[1:], steps):
        if _same(bead, out_beads[-1]):
            continue
        out_beads.append(bead)
        out_steps.append(step)
    if len(out_beads) == 1:
        out_beads.append(b)
        out_steps.append(Step("2", "a", "A and B are equal"))
    return out_beads, out_steps


def segment_bound(kind: str, metric: Metric, e0: float, e1: float) -> float:
    """What the step type guarantees along a segment with end energies ``e0``, ``e1``.

    (b): the function is unchanged, so ``e0`` (= ``e1``). (a): the output is affine in t, so a loss convex in
    the output is <= max(e0, e1); perplexity is exp of such a mean, also <= max; the 0-1 error in percent is
    <= e0 + e1 (a sample correct at both ends is correct inside: the set of logits with the right argmax is
    convex).
    """
    if kind == "b":
        return max(e0, e1)
    if metric is Metric.ERROR_RATE:
        return min(100.0, e0 + e1)
    return max(e0, e1)


def measured_slack(path_max: float, endpoint_max: float, waypoint_max: float) -> tuple[float, bool]:
    """``(slack, within)``: how far the construction's waypoints (dropout versions, Lemma 3 segments, theta*) lie
    above the worse endpoint (at least 0), and whether the path's maximum stays within it (allowing the rounding
    between two batchings of one point). Every Kuditipudi construction reports these."""
    slack = max(0.0, waypoint_max - endpoint_max)
    bound = endpoint_max + slack
    return slack, path_max <= bound + 1e-6 * max(1.0, abs(bound))


def check_hidden_units(energy: Energy) -> None:
    """ConfigError (naming the layer) when the model's hidden units cannot be read: before any training."""
    hidden_units(energy.model)


class KuditipudiDropout:
    """The Theorem 1 construction as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "kuditipudi_dropout"
    summary: ClassVar[str] = "Kuditipudi et al. (2019) Theorem 1 path between dropout-stable networks (no training)"
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = KuditipudiConfig
    State: ClassVar[type] = ConstructionState

    check_energy = staticmethod(check_hidden_units)

    def run(self, start: Path, energy: Energy, *, threshold: float, config: KuditipudiConfig,
            objective: Objective | None = None, state: ConstructionState | None = None,
            checkpoint: Checkpoint | None = None, progress: Progress | None = None) -> tuple[Path, Outcome]:
        say = progress or (lambda message: None)
        state = state or ConstructionState()
        if state.finished and state.outcome is not None:
            return start, Outcome.from_dict(state.outcome)
        clock = time.perf_counter()
        a, b = start.beads[0], start.beads[-1]
        metric = energy.metric
        ts = torch.linspace(0.0, 1.0, config.grid_size, dtype=torch.float64)
        extras: dict[str, Any] = {"p": config.p, "grid_size": config.grid_size, "metric": metric.value}
        if config.straight_line:
            line = torch.nan_to_num(energy.along_segment(a, b, ts).to(torch.float64), nan=float("inf"))
            extras["straight_line_max_energy"] = float(line.max())
            extras["straight_line_argmax_t"] = float(ts[int(line.argmax())])
            say(f"straight segment A-B: max energy {extras['straight_line_max_energy']:.4g}")
        spec = hidden_units(energy.model)
        extras.update(layers=spec.names(), sizes=spec.sizes)
        masks, reports = {}, {}
        for which, point in (("a", a), ("b", b)):
            dcfg = DropoutConfig(p=config.p, masks=config.masks, rescale=config.rescale,
                                 mask_seed=derive_seed(config.seed, "kuditipudi", "masks", which))
            sampled, report = dropout_stability(point, energy, spec, dcfg, progress=say)
            best = report.best_mask
            masks[which], reports[which] = sampled[best], report
            extras[f"dropout_{which}"] = {"best_mask": best, "best_mask_energies": report.energies[best],
                                          "theta_1": report.full, "layerwise": report.layerwise,
                                          "kept_units": {name: as_index(sampled[best][name]).tolist()
                                                         for name in spec.names()}}
            say(f"endpoint {which.upper()}: best of {config.masks} masks at p={config.p:g} gives theta_i energies "
                f"{', '.join(f'{e:.4g}' for e in report.energies[best])}")
        unstable = [w for w in ("a", "b") if not reports[w].stable(threshold)]
        if unstable:
            parts = []
            for w in unstable:
                rep = reports[w]
                worst = rep.energies[rep.best_mask]
                parts.append(f"endpoint {w.upper()} (energy {rep.energy:.4g}): the best of {rep.n_masks} masks "
                             f"keeping {rep.kept} of {rep.sizes} units gives theta_1..theta_{len(worst)} energies "
                             f"{', '.join(f'{e:.4g}' for e in worst)}, above L0={threshold:.4g}")
            message = f"not dropout stable at p={config.p:g}: " + "; ".join(parts)
            if "straight_line_max_energy" in extras:  # the returned path is the plain segment A-B
                extras["max_interpolated_energy"] = extras["straight_line_max_energy"]
            say(message)
            outcome = Outcome(connected=False, reason="not_dropout_stable", message=message,
                              elapsed_s=state.elapsed_s + time.perf_counter() - clock, extras=extras)
            return finish_construction(start, outcome, state, checkpoint)
        r = config.rescale if config.rescale is not None else 1.0 / (1.0 - config.p)
        beads, steps = theorem1_path(a, b, spec, masks["a"], masks["b"], r)
        path = Path(beads)
        say(f"constructed {path.n_pieces} segments (Lemma 1 A: {sum(s.lemma == '1A' for s in steps)}, Lemma 2: "
            f"{sum(s.lemma == '2' for s in steps)}, Lemma 1 B: {sum(s.lemma == '1B' for s in steps)})")
        records = []
        for i, step in enumerate(steps):
            values = path.energies(i, ts, energy)
            e0, e1 = float(values[0]), float(values[-1])
            bound = segment_bound(step.kind, metric, e0, e1)
            vmax = float(values.max())
            records.append({"segment": i, "lemma": step.lemma, "step": step.kind, "what": step.what,
                            "start_energy": e0, "end_energy": e1, "max_energy": vmax,
                            "argmax_t": float(ts[int(values.argmax())]), "bound": bound,
                            "within_bound": vmax <= bound + 1e-6 * max(1.0, abs(bound)),
                            "spread": vmax - float(values.min())})
            say(f"segment {i} ({step.lemma}{step.kind}): max {vmax:.4g}, step bound {bound:.4g}: {step.what}")
        worst = max(range(len(records)), key=lambda k: records[k]["max_energy"])
        vmax = records[worst]["max_energy"]
        accept = config.tolerance * threshold
        # the measured dropout slack: how far the best masks' theta_i lie above the endpoints (as the other
        # constructions report theirs); Theorem 1's convex steps keep a loss within it, the 0-1 error within
        # the per-step bound (the sum of a top-layer segment's ends)
        ends = max(reports["a"].energy, reports["b"].energy)
        waypoints = max(max(reports[w].energies[reports[w].best_mask]) for w in ("a", "b"))
        slack, within = measured_slack(vmax, ends, waypoints)
        extras.update(measured_slack=slack, path_over_endpoints=vmax - ends, within_slack=within)
        extras.update(segments=records, n_segments=len(records), max_interpolated_energy=vmax,
                      theorem_bound=max(rec["bound"] for rec in records),
                      every_segment_within_bound=all(rec["within_bound"] for rec in records),
                      lemma_segments={k: sum(s.lemma == k for s in steps) for k in ("1A", "2", "1B")})
        connected = vmax <= accept
        where = f"segment {worst} ({records[worst]['lemma']}{records[worst]['step']})"
        message = (f"the constructed path of {len(records)} segments stays <= {vmax:.4g} (max at {where})"
                   + (f" <= {accept:.4g}" if connected else f" > tolerance x L0 = {accept:.4g}"))
        message += (f", {vmax - ends:.4g} over the endpoints (measured dropout slack {slack:.4g}: "
                    f"{'within' if extras['within_slack'] else 'beyond'} it)")
        if "straight_line_max_energy" in extras:
            message += f"; the straight segment A-B reaches {extras['straight_line_max_energy']:.4g}"
        outcome = Outcome(connected=connected, reason="connected" if connected else "barrier_above_threshold",
                          message=message, worst_barrier=vmax, worst_segment=worst,
                          elapsed_s=state.elapsed_s + time.perf_counter() - clock, extras=extras)
        return finish_construction(path, outcome, state, checkpoint)

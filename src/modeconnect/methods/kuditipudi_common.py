"""What the two noise-stability paths of Kuditipudi et al. (2019) share (methods ``kuditipudi_noise``, Theorem 2,
and ``kuditipudi_narrow``, Theorem 3): moving whole towers of units between slots, evaluating the segments
against their step bounds, the measured slack and the barrier record.

Step kinds of a segment (``Step.kind``):

* ``"a"``: only the top layer moves (convex in the output: <= the larger end for convex losses, <= the sum of the
  ends for the 0-1 error; :func:`~modeconnect.methods.kuditipudi_dropout.segment_bound`);
* ``"b"``: only rows of units that cannot reach the output change (the function is constant);
* ``"n"``: a Lemma 3 segment theta -> theta_1 (no bound from the step: its measured maximum *is* the noise slack).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..energy import Energy
from ..kuditipudi.units import UnitSpec, copy_tower, in_rows, reroute_top, set_in_rows, zero_units
from ..params import Point
from ..path import Path
from .base import ConstructionState, Outcome, finish_construction
from .kuditipudi_dropout import Step, measured_slack, segment_bound

__all__ = ["ConstructionState", "embed_tower", "move_tower", "zero_rows_except", "rows_from", "top_from",
           "evaluate_steps", "straight_line", "finish_outcome", "choose_slots"]


def _pairs(spec: UnitSpec, src: Sequence[Sequence[int]], dst: Sequence[Sequence[int]]):
    n = len(spec.layers)
    rows = {li: (list(src[li]), list(dst[li])) for li in range(n)}
    inputs = {li: (list(src[li]), list(dst[li])) for li in range(n - 1)}
    return rows, inputs


def embed_tower(x: Mapping[str, Tensor], spec: UnitSpec, source: Mapping[str, Tensor],
                src: Sequence[Sequence[int]], dst: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """``x`` with the rows of slots ``dst`` (every hidden layer) set to ``source``'s rows of units ``src``,
    re-routed so that the copy of layer j reads the copy ``dst`` of layer j-1 (the first layer reads the input).
    The top layer is not touched: the copy is idle until a type (a) step switches to it."""
    rows, inputs = _pairs(spec, src, dst)
    relocated = copy_tower(source, spec, rows, inputs)
    out = dict(x)
    for li, layer in enumerate(spec.layers):
        out = set_in_rows(out, layer, dst[li], in_rows(relocated, layer, dst[li]))
    return out


def move_tower(x: Mapping[str, Tensor], spec: UnitSpec, src: Sequence[Sequence[int]],
               dst: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """A copy of ``x``'s tower ``src`` into the (idle) slots ``dst`` of ``x`` itself (type (b))."""
    return embed_tower(x, spec, x, src, dst)


def zero_rows_except(x: Mapping[str, Tensor], spec: UnitSpec, keep: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """Incoming weights and biases of every hidden unit outside ``keep[li]`` set to zero."""
    out = dict(x)
    for li, layer in enumerate(spec.layers):
        kept = set(int(u) for u in keep[li])
        out = zero_units(out, layer, [u for u in range(layer.size) if u not in kept])
    return out


def rows_from(x: Mapping[str, Tensor], spec: UnitSpec, source: Mapping[str, Tensor],
              units: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """``x`` with the rows of ``units[li]`` copied from ``source`` as they are (no re-routing)."""
    out = dict(x)
    for li, layer in enumerate(spec.layers):
        if len(units[li]):
            out = set_in_rows(out, layer, units[li], in_rows(source, layer, units[li]))
    return out


def top_from(x: Mapping[str, Tensor], spec: UnitSpec, source: Mapping[str, Tensor], src: Sequence[int] | None = None,
             dst: Sequence[int] | None = None) -> dict[str, Tensor]:
    """``x`` with the top layer (weight and bias) of ``source``; with ``src`` / ``dst`` the source's columns of
    units ``src`` are moved to ``dst`` (the source's other columns must be zero)."""
    top = dict(source) if src is None else reroute_top(source, spec, list(src), list(dst))
    out = dict(x)
    for key in spec.top:
        out[key] = top[key]
    return out


def choose_slots(candidates: Sequence[int], count: int, prefer: Sequence[int] = ()) -> list[int] | None:
    """``count`` slots from ``candidates``, those in ``prefer`` first (in order), or None when too few."""
    cand = [int(u) for u in candidates]
    first = [u for u in prefer if u in set(cand)]
    rest = [u for u in cand if u not in set(first)]
    picked = (first + rest)[:count]
    return sorted(picked) if len(picked) == count else None


# -- evaluation ---------------------------------------------------------------------------------
def straight_line(energy: Energy, a: Point, b: Point, ts: Tensor) -> dict[str, float]:
    line = torch.nan_to_num(energy.along_segment(a, b, ts).to(torch.float64), nan=float("inf"))
    ends = max(float(line[0]), float(line[-1]))
    return {"straight_line_max_energy": float(line.max()), "straight_line_argmax_t": float(ts[int(line.argmax())]),
            "straight_line_barrier": float(line.max()) - ends}


def evaluate_steps(path: Path, steps: Sequence[Step], energy: Energy, ts: Tensor,
                   say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every segment on the grid ``ts``: end and maximum energies and, for (a) / (b) steps, the step's bound."""
    records = []
    metric = energy.metric
    for i, step in enumerate(steps):
        values = torch.nan_to_num(path.energies(i, ts, energy).to(torch.float64), nan=float("inf"))
        e0, e1, vmax = float(values[0]), float(values[-1]), float(values.max())
        bound = None if step.kind == "n" else segment_bound(step.kind, metric, e0, e1)
        within = None if bound is None else vmax <= bound + 1e-6 * max(1.0, abs(bound))
        records.append({"segment": i, "part": step.lemma, "step": step.kind, "what": step.what, "start_energy": e0,
                        "end_energy": e1, "max_energy": vmax, "argmax_t": float(ts[int(values.argmax())]),
                        "bound": bound, "within_bound": within, "spread": vmax - float(values.min())})
        shown = "measured (noise stability)" if bound is None else f"step bound {bound:.4g}"
        say(f"segment {i} ({step.lemma} {step.kind}): max {vmax:.4g}, {shown}: {step.what}")
    return records


def finish_outcome(records: list[dict[str, Any]], extras: dict[str, Any], *, threshold: float, tolerance: float,
                   waypoints: Mapping[str, float], clock: float, elapsed: float) -> Outcome:
    """The Outcome of a built path: its maximum, barrier and slack next to the straight line's.

    ``waypoints`` are the energies the theorem's bound is made of besides the endpoints (Lemma 3 segment maxima,
    theta_1's, theta*'s). The *measured slack* is ``max(waypoints) - max(L(A), L(B))`` (at least 0); the path is
    ``within_slack`` when its sampled maximum is at most ``max(L(A), L(B)) + slack``.
    """
    worst = max(range(len(records)), key=lambda k: records[k]["max_energy"])
    vmax = records[worst]["max_energy"]
    ends = max(records[0]["start_energy"], records[-1]["end_energy"])
    slack, within = measured_slack(vmax, ends, max(waypoints.values(), default=ends))
    accept = tolerance * threshold
    parts: dict[str, int] = {}
    for rec in records:
        parts[rec["part"]] = parts.get(rec["part"], 0) + 1
    extras.update(segments=records, n_segments=len(records), part_segments=parts, max_interpolated_energy=vmax,
                  endpoint_max_energy=ends, path_barrier=vmax - ends, waypoint_energies=dict(waypoints),
                  measured_slack=slack, within_slack=within,
                  every_segment_within_bound=all(r["within_bound"] is not False for r in records))
    connected = vmax <= accept
    where = f"segment {worst} ({records[worst]['part']} {records[worst]['step']})"
    message = (f"the constructed path of {len(records)} segments stays <= {vmax:.4g} (max at {where}; barrier "
               f"{vmax - ends:.4g} over the endpoints, measured slack {slack:.4g})"
               + (f" <= {accept:.4g}" if connected else f" > tolerance x L0 = {accept:.4g}"))
    if "straight_line_max_energy" in extras:
        message += (f"; the straight segment A-B reaches {extras['straight_line_max_energy']:.4g} (barrier "
                    f"{extras['straight_line_barrier']:.4g})")
    return Outcome(connected=connected, reason="connected" if connected else "barrier_above_threshold",
                   message=message, worst_barrier=vmax, worst_segment=worst,
                   elapsed_s=elapsed + time.perf_counter() - clock, extras=extras)


def stopped(start: Path, reason: str, message: str, extras: dict[str, Any], *, clock: float, elapsed: float
            ) -> tuple[Path, Outcome]:
    """No construction: the plain segment A-B is returned (certification reports it) with the reason."""
    if "straight_line_max_energy" in extras:
        extras["max_interpolated_energy"] = extras["straight_line_max_energy"]
    return start, Outcome(connected=False, reason=reason, message=message,
                          elapsed_s=elapsed + time.perf_counter() - clock, extras=extras)


finish = finish_construction
"""Record a built or stopped path's outcome (:func:`~modeconnect.methods.base.finish_construction`)."""


def merge_equal(beads: list[Point], steps: list[Step]) -> tuple[list[Point], list[Step]]:
    """Drop segments whose two ends are equal (a step with nothing to do), keeping the first and last bead."""
    out_beads, out_steps = [beads[0]], []
    for bead, step in zip(beads[1:], steps):
        if all(torch.equal(bead[k], out_beads[-1][k]) for k in bead):
            continue
        out_beads.append(bead)
        out_steps.append(step)
    out_beads[-1] = beads[-1]
    return out_beads, out_steps

"""Greedy DSS on a 2-D landscape whose every number is worked out by hand.

A parameter point is ``{"w": tensor([w1, w2])}`` (float64). The model ignores its input's value except as a
factor, ``f(x) = x * E(w)``, and the energy is the MAE of ``f`` against zero on the single input ``x = 1``, so
the energy *is* the explicit function

    E(w1, w2) = (sum_j H_j * max(0, 1 - |w1 - c_j| / r)) * max(0, 1 - w2)

a row of tents of height ``H_j`` and half-width ``r`` centred at ``w1 = c_j``, which fade out as ``w2`` rises
to 1. The endpoints ``A = (-1, 0)`` and ``B = (1, 0)`` have energy 0. On the straight segment
``w(t) = (-1 + 2t, 0)`` the 33-point grid ``t_k = k/32`` samples ``w1_k = -1 + k/16``.

Beads train on the same loss with plain SGD (lr 1/16, the energy checked after every step). A bead started
at a tent's centre ``(c, w2_0)`` has gradient exactly ``(0, -H)``: torch's ``|.|`` has gradient 0 at 0, so
``w1`` never moves, and each step raises ``w2`` by ``H/16``. Training stops at the first step ``k`` with
``H * (1 - w2_0 - k H / 16) <= alpha * L0``. All these numbers are binary fractions, so the trained bead is
known exactly, not approximately.

Everything asserted below follows from that arithmetic (the formulas are repeated in plain Python in
``hand_energy``): t*, the bead's start and end, whether one bead suffices, the bead count, the final grid
maxima and the normalized length.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modeconnect import CertifyConfig, Energy, Objective, TrainConfig, connect
from modeconnect.methods import DSSConfig, DSSState, Reason, greedy_dss
from modeconnect.path import Path

L0 = 0.25
ALPHA = 0.55  # beads are trained to alpha * L0 = 0.1375
GRID = 33
SGD = TrainConfig(optimizer="sgd", lr=1 / 16, check_every=1, max_steps=100)
NO_TRAINING = TrainConfig(optimizer="sgd", lr=1 / 16, check_every=1, max_steps=0)


class Tents(nn.Module):
    """``forward(x) = x * E(w)`` with ``E`` as in the module docstring."""

    def __init__(self, tents: list[tuple[float, float]], radius: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.tents, self.radius = tents, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.w[0], self.w[1]
        row = sum(h * torch.clamp(1 - (w1 - c).abs() / self.radius, min=0) for c, h in self.tents)
        return x * (row * torch.clamp(1 - w2, min=0))


def hand_energy(tents, radius, w1: float, w2: float) -> float:
    """The same formula in plain floats: the reference the assertions are computed from."""
    return sum(h * max(0.0, 1 - abs(w1 - c) / radius) for c, h in tents) * max(0.0, 1 - w2)


def hand_grid(tents, radius, a, b, n=GRID) -> list[float]:
    """E at the n grid points of the straight segment from a to b (pairs of floats)."""
    return [hand_energy(tents, radius, a[0] + k / (n - 1) * (b[0] - a[0]), a[1] + k / (n - 1) * (b[1] - a[1]))
            for k in range(n)]


def point(w1: float, w2: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([w1, w2], dtype=torch.float64)}


A, B = (-1.0, 0.0), (1.0, 0.0)


def landscape(tents, radius):
    x = torch.ones(1, 1, dtype=torch.float64)
    y = torch.zeros(1, 1, dtype=torch.float64)
    return Energy(Tents(tents, radius), x, y, "mae", strategy="loop"), Objective(x, y, "mae")


def run(tents, radius, **settings):
    """Greedy DSS from A to B at L0 with alpha = 0.55; returns the path, the outcome and the DSS state."""
    settings.setdefault("bead_training", SGD)
    energy, objective = landscape(tents, radius)
    state = DSSState()
    path, outcome = greedy_dss(Path([point(*A), point(*B)]), energy, objective,
                               DSSConfig(alpha=ALPHA, grid_size=GRID, **settings), threshold=L0, state=state)
    return path, outcome, state


def beads(path) -> list[list[float]]:
    return [bead["w"].tolist() for bead in path.beads[1:-1]]


def test_the_model_computes_the_hand_formula():
    tents, radius = [(-0.5, 1.0), (0.4375, 0.875)], 0.25
    energy, _ = landscape(tents, radius)
    for w1, w2 in [(-1, 0), (-0.5, 0), (-0.4, 0.3), (0.4375, 0.328125), (0.5, 0.875), (0.2, 1.5)]:
        assert energy(point(w1, w2)) == pytest.approx(hand_energy(tents, radius, w1, w2), abs=1e-15)


@pytest.mark.parametrize("height, tolerance", [
    (0.2, 1.0),    # below L0
    (0.25, 1.0),   # exactly L0: accepted, the rule is max <= tolerance * L0
    (0.3, 1.25),   # above L0 but within tolerance * L0 = 0.3125
])
def test_a_straight_segment_within_the_acceptance_level_needs_no_bead(height, tolerance):
    tents, radius = [(0.25, height)], 0.5  # one low tent, its top on the grid at t = 0.625
    path, outcome, state = run(tents, radius, tolerance=tolerance)
    assert outcome.connected and outcome.reason == Reason.CONNECTED.value
    assert path.n_beads == 0 and state.bead_log == []
    assert path.normalized_length == 1.0
    assert outcome.worst_barrier == max(hand_grid(tents, radius, A, B)) == height


def test_a_barrier_just_above_the_acceptance_level_gets_a_bead():
    tents, radius = [(0.25, 0.3)], 0.5  # 0.3 > 1.0 * L0; the bead starts at (0.25, 0) and climbs 0.3/16 per step
    path, outcome, state = run(tents, radius)
    assert outcome.connected and path.n_beads == 1
    [entry] = state.bead_log
    assert entry["t_star"] == 0.625 and entry["start_energy"] == 0.3
    # 0.3 (1 - 0.3 k / 16) <= 0.1375 first at k = 29: 0.3 * (1 - 8.7/16) = 0.136875
    assert entry["train_steps"] == 29 and entry["train_final_energy"] == pytest.approx(0.136875, abs=1e-12)
    assert beads(path)[0][0] == 0.25 and beads(path)[0][1] == pytest.approx(29 * 0.3 / 16, abs=1e-12)


def test_one_bead_at_the_grid_argmax_connects():
    """One tent (H=1, r=0.5) at w1 = 0.25, i.e. t = 0.625 = 20/32, a grid point.

    * grid maximum of A-B: E = 1 at k = 20, so t* = 0.625 and the bead starts at (0.25, 0) with energy 1;
    * training: w2 rises by 1/16 per step; 1 - k/16 <= 0.1375 first at k = 14, so the bead is (0.25, 0.875)
      with energy 0.125;
    * A-P: w(s) = (-1 + 1.25 s, 0.875 s), E = (1 - 2.5 (1 - s)) (1 - 0.875 s) on s > 0.6, grid max at s = 28/32:
      0.6875 * 0.234375 = 0.1611328125;
    * P-B: w(s) = (0.25 + 0.75 s, 0.875 (1 - s)), E = (1 - 1.5 s) (0.125 + 0.875 s) on s < 2/3, grid max at
      s = 8/32: 0.625 * 0.34375 = 0.21484375;
    both at most L0 = 0.25: one bead suffices, and the normalized length is (|A-P| + |P-B|) / |A-B|.
    """
    tents, radius = [(0.25, 1.0)], 0.5
    straight = hand_grid(tents, radius, A, B)
    k = max(range(2, GRID - 2), key=lambda i: straight[i])  # inside the t* margin [0.05, 0.95]
    assert (k, straight[k]) == (20, 1.0)

    path, outcome, state = run(tents, radius)

    assert outcome.connected and outcome.reason == Reason.CONNECTED.value
    assert path.n_beads == 1 and len(state.bead_log) == 1
    entry = state.bead_log[0]
    assert entry["segment"] == 0 and entry["t_star"] == k / 32 == 0.625
    assert entry["start_energy"] == 1.0  # the bead started on the segment at (0.25, 0)
    assert entry["train_steps"] == 14 and entry["train_final_energy"] == 0.125
    assert beads(path) == [[0.25, 0.875]]  # exact: w1 never moved, w2 = 14/16
    p = (0.25, 0.875)
    left, right = hand_grid(tents, radius, A, p), hand_grid(tents, radius, p, B)
    assert max(left) == 0.1611328125 and left.index(max(left)) == 28
    assert max(right) == 0.21484375 and right.index(max(right)) == 8
    assert max(left) <= L0 and max(right) <= L0
    assert outcome.worst_barrier == 0.21484375 and outcome.worst_segment == 1
    assert path.normalized_length == pytest.approx((math.hypot(1.25, 0.875) + math.hypot(0.75, 0.875)) / 2,
                                                   rel=1e-12)
    # internal records of greedy DSS (DSSState.segments): depth and grid maximum of each final segment
    assert [(s.depth, s.max_energy, s.argmax_t) for s in state.segments] == [(1, 0.1611328125, 0.875),
                                                                              (1, 0.21484375, 0.25)]


TWO_TENTS = ([(-0.5, 1.0), (0.4375, 0.875)], 0.25)
"""Tent 1 (H=1) at t = 0.25 (k=8); tent 2 (H=0.875) at w1 = 0.4375, t = 0.71875 (k=23); r = 0.25, no overlap."""


def test_two_barriers_need_two_beads():
    """* A-B: grid max 1 at k = 8 (tent 1 beats tent 2's 0.875), t* = 0.25, bead 1 from (-0.5, 0) -> (-0.5, 0.875)
      in 14 steps, as in the one-tent case;
    * A-P1 passes (max 0.1806640625 at s = 26/32), P1-B does not: it crosses tent 2 while w2 = 0.875 (1 - s) is
      still low. w1(s) = -0.5 + 1.5 s hits 0.4375 at s = 20/32 exactly, where E = 0.875 * (1 - 0.328125) =
      0.587890625 (s = 19/32 and 21/32 give 0.458 and 0.497): t* = 0.625, bead 2 starts at (0.4375, 0.328125);
    * training: w2 rises by 0.875/16 = 7/128 per step; 0.875 (1 - (42 + 7k)/128) <= 0.1375 first at k = 10:
      bead 2 is (0.4375, 0.875) with energy 0.109375;
    * P1-P2 runs at w2 = 0.875 (E <= 0.125) and P2-B has E = 0.875 (1 - 2.25 s)(0.125 + 0.875 s), grid max
      0.1484947... at s = 5/32: connected with two beads.
    """
    tents, radius = TWO_TENTS
    path, outcome, state = run(tents, radius)
    assert outcome.connected and outcome.reason == Reason.CONNECTED.value
    assert path.n_beads == 2
    assert [(e["segment"], e["t_star"], e["start_energy"], e["train_steps"]) for e in state.bead_log] == [
        (0, 0.25, 1.0, 14), (1, 0.625, 0.587890625, 10)]
    assert beads(path) == [[-0.5, 0.875], [0.4375, 0.875]]
    corners = [A, (-0.5, 0.875), (0.4375, 0.875), B]
    grids = [hand_grid(tents, radius, a, b) for a, b in zip(corners, corners[1:])]
    assert [max(g) for g in grids] == [0.1806640625, 0.125, 0.875 * 0.6484375 * 0.26171875]
    assert all(max(g) <= L0 for g in grids)
    assert outcome.worst_barrier == max(max(g) for g in grids) == 0.1806640625
    assert path.normalized_length == pytest.approx(
        (math.hypot(0.5, 0.875) + 0.9375 + math.hypot(0.5625, 0.875)) / 2, rel=1e-12)
    # internal: bead 2 went into a depth-1 segment, so the two pieces it made are at depth 2
    assert [s.depth for s in state.segments] == [1, 2, 2]


def test_one_bead_is_not_enough_for_two_barriers():
    tents, radius = TWO_TENTS
    path, outcome, state = run(tents, radius, max_beads=1)
    assert not outcome.connected and outcome.reason == Reason.BEAD_BUDGET_EXHAUSTED.value
    assert beads(path) == [[-0.5, 0.875]]
    # the segment left failing is P1-B, with the grid maximum worked out above
    p1_b = hand_grid(tents, radius, (-0.5, 0.875), B)
    assert max(p1_b) == 0.587890625 and p1_b.index(max(p1_b)) == 20
    assert outcome.worst_barrier == 0.587890625 and outcome.worst_segment == 1


@pytest.mark.parametrize("centre, t_star, start_energy", [
    (0.3, 21 / 32, 0.975),    # t = 0.65 lies between grid points 20/32 (E = 0.9) and 21/32 (E = 0.975)
    (0.95, 30 / 32, 0.85),    # t = 0.975 is outside the margin: the highest grid point inside is 30/32
])
def test_tstar_is_the_grid_argmax_inside_the_margin(centre, t_star, start_energy):
    tents, radius = [(centre, 1.0)], 0.5
    straight = hand_grid(tents, radius, A, B)
    inside = [k for k in range(GRID) if 0.05 <= k / 32 <= 0.95]
    assert max(inside, key=lambda k: straight[k]) / 32 == t_star
    # no training allowed: DSS stops at the first bead, whose start the log records
    path, outcome, state = run(tents, radius, bead_training=NO_TRAINING)
    assert outcome.reason == Reason.BEAD_NOT_TRAINED.value and not outcome.connected
    assert path.n_beads == 0
    [entry] = state.bead_log
    assert entry["t_star"] == t_star and entry["train_steps"] == 0 and not entry["train_reached"]
    assert entry["start_energy"] == pytest.approx(start_energy, abs=1e-12)
    assert outcome.worst_barrier == pytest.approx(max(straight), abs=1e-12)


def test_a_bead_starting_below_alpha_l0_is_kept_where_it_started():
    """Midpoint rule with narrow tents (r = 0.08) at w1 = -0.4 and 0.6: the segment fails, but its midpoint (0, 0)
    has energy 0 <= alpha L0, so the bead takes 0 training steps and is exactly the midpoint; the string stays
    straight (normalized length exactly 1). With max_beads = 1 DSS stops at the next failing segment."""
    tents, radius = [(-0.4, 1.0), (0.6, 1.0)], 0.08
    path, outcome, state = run(tents, radius, tstar="midpoint", max_beads=1)
    assert outcome.reason == Reason.BEAD_BUDGET_EXHAUSTED.value
    [entry] = state.bead_log
    assert entry["t_star"] == 0.5 and entry["start_energy"] == 0.0 and entry["train_steps"] == 0
    assert beads(path) == [[0.0, 0.0]]
    assert path.normalized_length == 1.0
    # both halves still cross a tent: on A-M (w1 = -1 + s) the grid point nearest to -0.4 is s = 19/32,
    # w1 = -0.40625, and on M-B (w1 = s) it is s = 19/32, w1 = 0.59375: E = 1 - 0.00625 / 0.08 = 0.921875 on both
    halves = [hand_grid(tents, radius, A, (0.0, 0.0)), hand_grid(tents, radius, (0.0, 0.0), B)]
    assert [max(h) for h in halves] == [pytest.approx(0.921875, abs=1e-12)] * 2
    assert outcome.worst_barrier == pytest.approx(0.921875, abs=1e-12)


def test_connect_certifies_the_one_bead_path():
    """Through the public entry point: the one-tent path of ``test_one_bead_at_the_grid_argmax_connects``, then
    certification. Off the grid the true maximum is on P-B, where (1 - 1.5 s)(0.125 + 0.875 s) peaks at
    s = 0.6875 / 2.625 (derivative 0.6875 - 2.625 s): value 0.2150297..., at most L0."""
    tents, radius = [(0.25, 1.0)], 0.5
    energy, objective = landscape(tents, radius)
    result = connect(point(*A), point(*B), energy, threshold=L0, objective=objective, alpha=ALPHA,
                     bead_training=SGD, certification=CertifyConfig(resolution=1e-3))
    assert result.connected
    assert beads(result.path) == [[0.25, 0.875]]
    summary = result.summary()
    assert summary["n_beads"] == 1 and summary["reason"] == "connected"
    s = 0.6875 / 2.625
    true_max = (1 - 1.5 * s) * (0.125 + 0.875 * s)
    assert 0.21484375 <= summary["certified_max_energy"] <= true_max + 1e-12
    assert summary["certified_max_energy"] == pytest.approx(true_max, abs=1e-5)
    assert summary["certified"] is True

"""Greedy DSS: the known answers of the control tasks, every stopping reason, order, t* rule, determinism."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.methods import DSSConfig, DSSState, Order, Reason, TStar, choose_tstar, greedy_dss
from modeconnect.methods.dss_beads import BeadConstraint, chord_geometry, perturb, restart_ts
from modeconnect.params import point_from_module
from modeconnect.path import Path
from modeconnect.tasks import make_task
from modeconnect.train import Objective, TrainConfig, train_to_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_endpoints(task, threshold, seeds=(1, 2)):
    points = []
    for seed in (seeds[:1] if task.derive_endpoint_b is not None else seeds):
        p, status = train_to_target(point_from_module(task.make_model(seed)), energy=task.energy,
                                    objective=task.objective, target=threshold * task.endpoint_fraction,
                                    config=task.endpoint_training, seed=seed)
        assert status.reached
        points.append(p)
    if task.derive_endpoint_b is not None:
        points.append(task.derive_endpoint_b(points[0]))
    return points


def run(task, threshold, endpoints, state=None, **settings):
    """Greedy DSS between ``endpoints``; returns ``(path, outcome)``."""
    settings.setdefault("bead_training", task.bead_training)
    return greedy_dss(Path(list(endpoints)), task.energy, task.objective, DSSConfig(**settings), threshold=threshold,
                      state=state)


@pytest.fixture(scope="module")
def quadratic():
    task = make_task("quadratic")
    return task, trained_endpoints(task, 0.02, seeds=(2, 3))


@pytest.fixture(scope="module")
def permutation():
    task = make_task("permutation")
    return task, trained_endpoints(task, 0.02)


def test_convex_control_needs_no_bead():
    task = make_task("convex")
    a, b = trained_endpoints(task, task.default_threshold)
    path, outcome = run(task, task.default_threshold, (a, b))
    assert outcome.connected and outcome.reason == Reason.CONNECTED
    assert path.n_beads == 0 and outcome.extras["beads_trained"] == 0
    assert path.normalized_length == 1.0
    # convexity: the maximum of the only segment is an endpoint's energy
    assert outcome.worst_barrier == pytest.approx(max(task.energy(a), task.energy(b)), rel=1e-6)


def test_permutation_task_is_not_connected_and_says_why(permutation):
    task, (a, b) = permutation
    # the two endpoints compute the same function
    assert task.energy(a) == pytest.approx(task.energy(b), abs=1e-7)
    path, outcome = run(task, 0.02, (a, b), bead_training=TrainConfig(lr=0.01, max_steps=300))
    assert not outcome.connected
    assert outcome.reason == Reason.BEAD_NOT_TRAINED
    assert "bead" in outcome.message and "target" in outcome.message
    assert outcome.worst_barrier > 0.02 and outcome.worst_barrier == max(outcome.extras["segment_max_energy"])


@pytest.mark.parametrize("settings, reason", [
    ({"max_depth": 0}, Reason.DEPTH_EXHAUSTED),
    ({"max_beads": 0}, Reason.BEAD_BUDGET_EXHAUSTED),
    ({"max_time_s": 1e-9}, Reason.TIME_EXHAUSTED),
])
def test_each_budget_is_reported(permutation, settings, reason):
    task, (a, b) = permutation
    path, outcome = run(task, 0.02, (a, b), **settings)
    assert not outcome.connected and outcome.reason == reason
    assert outcome.extras["beads_trained"] == 0 and path.n_beads == 0
    assert outcome.worst_barrier > 0.02
    # every segment of the final path was evaluated
    assert len(outcome.extras["segment_max_energy"]) == path.n_pieces
    assert all(m is not None for m in outcome.extras["segment_max_energy"])


def test_connected_path_satisfies_its_acceptance_rule(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, outcome = run(task, 0.02, (a, b), alpha=0.8, state=state)
    assert outcome.connected and path.n_beads >= 2
    assert all(m <= 0.02 for m in outcome.extras["segment_max_energy"])
    assert path.normalized_length >= 1.0
    # endpoints untouched, every intermediate bead trained to alpha * L0
    assert all(torch.equal(path.beads[0][k], a[k]) and torch.equal(path.beads[-1][k], b[k]) for k in a)
    assert all(task.energy(bead) <= 0.8 * 0.02 for bead in path.beads[1:-1])
    # the depth recorded matches the nesting of insertions
    assert outcome.extras["depth"] == max(entry["depth"] for entry in state.bead_log) >= 1


def test_same_seed_same_path_different_seed_different_path(quadratic):
    task, (a, b) = quadratic
    # the seed reaches a bead only through the order of its minibatches: train beads on minibatches of 32
    # (the task's own bead training is full-batch, where the seed has nothing to change)
    minibatch = replace(task.bead_training, batch_size=32)

    def dss(seed):
        state = DSSState()
        path, outcome = run(task, 0.02, (a, b), seed=seed, bead_training=minibatch, state=state)
        assert state.bead_log and all(entry["train_steps"] > 0 for entry in state.bead_log)  # beads were trained
        first = path.beads[state.bead_births.index(1)]  # the first bead trained, wherever it sits on the path
        return path, outcome, first, state.bead_log[0]

    p1, o1, first1, log1 = dss(5)
    p2, o2, _, _ = dss(5)
    p3, _, first3, log3 = dss(6)
    # same seed: bit-identical beads
    assert (o1.connected, o1.reason, p1.n_beads) == (o2.connected, o2.reason, p2.n_beads)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(p1.beads, p2.beads) for k in x)
    # another seed: the first bead starts from the same point of the same segment, but is trained on other
    # minibatches, so it ends elsewhere (and so does the string)
    assert p1.n_beads >= 1 and p3.n_beads >= 1
    assert (log1["segment"], log1["t_star"], log1["start_energy"]) == (log3["segment"], log3["t_star"],
                                                                      log3["start_energy"])
    assert not all(torch.equal(first1[k], first3[k]) for k in first1)
    assert p1.n_beads != p3.n_beads or not all(torch.equal(x[k], y[k]) for x, y in zip(p1.beads, p3.beads) for k in x)


def tent_line(centres, radius=0.08):
    """A one-parameter landscape: E(w) = sum of unit tents max(0, 1 - |w - c| / radius), as an MAE on one input.

    Between A = -1 and B = 1 the segment parameter is t = (w + 1) / 2. A bead started where E = 0 needs no
    training (0 steps): it is exactly the point where it started, so the whole run is known in advance.
    """

    class Line(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def forward(self, x):
            return x * sum(torch.clamp(1 - (self.w - c).abs() / radius, min=0) for c in centres)

    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    ends = [{"w": torch.tensor([v], dtype=torch.float64)} for v in (-1.0, 1.0)]
    return Energy(Line(), x, y, "mae", strategy="loop"), Objective(x, y, "mae"), ends


def two_pending_failing_segments(order):
    """Midpoint rule on tents at t = 0.3 and t = 0.8 (w = -0.4 and 0.6), each narrower than the gaps between
    the midpoints DSS visits, at L0 = 0.25 and with at most 3 beads.

    Both orders first split [0, 1] at t = 0.5 and then [0, 0.5] at t = 0.25 (the leftmost and, at depth 1,
    also the shallowest). That leaves three unchecked segments: [0, 0.25] (depth 2, passes), [0.25, 0.5]
    (depth 2, fails: tent at 0.3) and [0.5, 1] (depth 1, fails: tent at 0.8). Depth-first takes the leftmost
    unchecked one first, so its third bead splits [0.25, 0.5] at t = 0.375 (segment 1); breadth-first takes
    the shallowest, so its third bead splits [0.5, 1] at t = 0.75 (segment 2).
    """
    energy, objective, ends = tent_line([-0.4, 0.6])
    state, lines = DSSState(), []
    config = DSSConfig(tstar="midpoint", order=order, max_beads=3,
                       bead_training=TrainConfig(optimizer="sgd", lr=0.1, max_steps=10))
    path, outcome = greedy_dss(Path(ends), energy, objective, config, threshold=0.25, state=state,
                               progress=lines.append)
    assert outcome.reason == Reason.BEAD_BUDGET_EXHAUSTED and path.n_beads == 3
    assert all(entry["train_steps"] == 0 and entry["t_star"] == 0.5 for entry in state.bead_log)
    # the segments in the order DSS evaluated them, as (index, depth), from its progress lines
    visited = []
    for line in lines:
        found = re.match(r"segment (\d+) \(depth (\d+)\)", line)
        if found:
            visited.append((int(found[1]), int(found[2])))
    ts = [(float(bead["w"]) + 1) / 2 for bead in path.beads]
    return [entry["segment"] for entry in state.bead_log], [entry["depth"] for entry in state.bead_log], ts, visited


def test_depth_first_takes_the_leftmost_unchecked_segment():
    segments, depths, ts, visited = two_pending_failing_segments(Order.DEPTH_FIRST)
    assert segments == [0, 0, 1] and depths == [1, 2, 3]
    assert ts == [0.0, 0.25, 0.375, 0.5, 1.0]
    # it checked [0, 0.25] (segment 0, depth 2) before the failing [0.25, 0.5], never reaching [0.5, 1]
    assert visited == [(0, 0), (0, 1), (0, 2), (1, 2)]


def test_breadth_first_takes_the_shallowest_unchecked_segment():
    segments, depths, ts, visited = two_pending_failing_segments(Order.BREADTH_FIRST)
    assert segments == [0, 0, 2] and depths == [1, 2, 2]
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0]
    # after the second bead it went to [0.5, 1] (segment 2, depth 1) before either depth-2 segment
    assert visited[:3] == [(0, 0), (0, 1), (2, 1)]


def test_breadth_first_refines_round_by_round(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, outcome = run(task, 0.02, (a, b), order=Order.BREADTH_FIRST, state=state)
    depths = [entry["depth"] for entry in state.bead_log]
    assert len(depths) >= 2 and depths == sorted(depths)
    assert outcome.connected == all(m <= 0.02 for m in outcome.extras["segment_max_energy"])


def test_identical_endpoints_give_an_empty_path(quadratic):
    task, (a, _) = quadratic
    path, outcome = run(task, 0.02, (a, {k: v.clone() for k, v in a.items()}))
    assert outcome.connected and path.n_beads == 0
    assert path.length == 0.0 and path.normalized_length == 1.0


def test_checkpoint_is_called_after_every_bead(quadratic):
    task, (a, b) = quadratic
    seen = []
    path, _ = greedy_dss(Path([a, b]), task.energy, task.objective, DSSConfig(bead_training=task.bead_training),
                         threshold=0.02, checkpoint=lambda p, s: seen.append((p.n_beads, s.finished)))
    assert seen[-1] == (path.n_beads, True)
    assert [n for n, finished in seen if not finished] == list(range(1, path.n_beads + 1))


def test_tstar_rules():
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    cfg = DSSConfig()
    bump = torch.exp(-((ts - 0.7) ** 2) / 0.01)
    assert choose_tstar(ts, bump, cfg, 1.0) == pytest.approx(0.7)
    assert choose_tstar(ts, bump, DSSConfig(tstar=TStar.MIDPOINT), 1.0) == 0.5
    # a maximum at the endpoint is never returned: the bead would duplicate it
    rising = ts.clone()
    assert choose_tstar(ts, rising, cfg, 1.0) == pytest.approx(0.95)
    assert choose_tstar(ts, rising, DSSConfig(tstar_margin=0.2), 1.0) == pytest.approx(0.8)
    # flat (or noise below flat_tolerance * L0) profile -> 0.5; "flat" is relative to L0
    wiggle = 0.3 + 1e-6 * torch.sin(50 * ts)
    assert choose_tstar(ts, wiggle, cfg, 1.0) == 0.5
    assert choose_tstar(ts, wiggle, cfg, 1e-4) != 0.5
    # a NaN spike counts as the worst place
    spiky = torch.zeros(21, dtype=torch.float64)
    spiky[6] = float("inf")
    assert choose_tstar(ts, spiky, cfg, 1.0) == pytest.approx(0.3)
    # every interior point non-finite (e.g. the model overflows): still a t* inside the margin, no crash
    blown = torch.full((21,), float("inf"), dtype=torch.float64)
    assert choose_tstar(ts, blown, cfg, 1.0) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [
    {"alpha": 0.0}, {"alpha": 1.5}, {"tolerance": 0.9}, {"grid_size": 2}, {"tstar": "max"}, {"order": "random"},
    {"max_depth": -1}, {"tstar_margin": 0.5}, {"max_time_s": 0}, {"restarts": -1}, {"restart_shift": 0.5},
    {"restart_perturbation": 2.0}, {"bead_constraint": "sphere"},
])
def test_invalid_settings_are_refused_with_a_message(bad):
    with pytest.raises(ConfigError) as info:
        DSSConfig(**bad)
    assert any(name in str(info.value) for name in bad)


def test_config_round_trips_through_dict():
    cfg = DSSConfig(alpha=0.6, tstar="midpoint", order="breadth_first", bead_constraint="hyperplane", restarts=2,
                    bead_training=TrainConfig(lr=0.003, max_steps=10, dense_checks=5, proximal=0.1))
    again = DSSConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.tstar is TStar.MIDPOINT and again.bead_training.max_steps == 10
    assert again.bead_constraint is BeadConstraint.HYPERPLANE and again.bead_training.proximal == 0.1


def test_bead_births_record_the_string_after_every_bead(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, _ = run(task, 0.02, (a, b), state=state)
    births = state.bead_births
    assert len(births) == len(path.beads) and births[0] == births[-1] == 0
    assert sorted(births[1:-1]) == list(range(1, path.n_beads + 1))  # every bead of this run was trained here
    # replaying the log: bead k went into segment `segment` of the string as it was after bead k-1
    for k, entry in enumerate(state.bead_log, start=1):
        if not entry["train_reached"]:  # a bead that failed to train is logged but never inserted
            continue
        before = [i for i, birth in enumerate(births) if birth < k]
        after = [i for i, birth in enumerate(births) if birth <= k]
        inserted = [i for i in after if i not in before]
        assert len(inserted) == 1 and after.index(inserted[0]) == entry["segment"] + 1


def test_resuming_with_a_state_that_does_not_match_the_path_is_refused(quadratic):
    task, (a, b) = quadratic
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    with pytest.raises(ConfigError, match="bead births"):
        greedy_dss(Path([a, mid, b]), task.energy, task.objective, DSSConfig(), threshold=0.02,
                   state=DSSState(bead_births=[0, 0]))


# -- where beads go: geometry, constraints, stuck beads -------------------------------------------------


def test_bead_log_records_each_beads_geometry(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, outcome = run(task, 0.02, (a, b), state=state)
    assert path.n_beads >= 1
    for k, entry in enumerate(state.bead_log, start=1):
        assert {"displacement", "chord_distance", "start_chord_distance", "stuck_reason", "restarts"} <= set(entry)
        if not entry["train_reached"]:
            continue
        bead = path.beads[state.bead_births.index(k)]
        assert entry["chord_distance"] == pytest.approx(chord_geometry(a, b, [bead])[0], rel=1e-9)
        assert entry["displacement"] > 0
    first = state.bead_log[0]
    # the first bead starts on the chord, so it ends no further from the chord than from its start
    assert first["start_chord_distance"] == pytest.approx(0.0, abs=1e-6)  # float32 interpolation
    assert first["chord_distance"] <= first["displacement"] + 1e-12
    kept = [e for e in state.bead_log if e["train_reached"]]
    assert outcome.extras["bead_displacement_max"] == max(e["displacement"] for e in kept)
    assert outcome.extras["bead_chord_distance_max"] == max(e["chord_distance"] for e in kept)


class Plateau(nn.Module):
    """``E(w) = box(w1) (1 - w2)_+ - 1e-3 (w1 + w3)`` on ``w`` in R^3, endpoints at ``w1 = -1`` and ``1``.

    The box is 1 on |w1| <= 0.8 and 0 beyond 0.9, so the segment between the endpoints crosses a barrier of
    height 1 and a bead started in the middle has no reason to move along it, nor in w3: only w2 matters.
    The tiny slopes in w1 and w3 are enough for Adam, which moves every coordinate by about its learning
    rate per step: plain training slides along the chord (w1) and away from it (w3) as fast as it climbs w2.
    """

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, x):
        w1, w2, w3 = self.w
        box = torch.clamp((0.9 - w1.abs()) / 0.1, min=0, max=1)
        return x * (box * torch.clamp(1 - w2, min=0) - 1e-3 * (w1 + w3))


def plateau_bead(**settings):
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    energy, objective = Energy(Plateau(), x, y, "mae", strategy="loop"), Objective(x, y, "mae")
    ends = [{"w": torch.tensor([v, 0.0, 0.0], dtype=torch.float64)} for v in (-1.0, 1.0)]
    training = TrainConfig(lr=0.05, check_every=1, max_steps=200, proximal=settings.pop("proximal", 0.0))
    state = DSSState()
    greedy_dss(Path(ends), energy, objective, DSSConfig(max_beads=1, tstar="midpoint", bead_training=training,
                                                        **settings),
               threshold=0.25, state=state)
    entry = state.bead_log[0]
    assert entry["train_reached"] and entry["t_star"] == 0.5
    return entry


def test_proximal_and_hyperplane_beads_stay_closer_to_where_they_started():
    plain = plateau_bead()
    pulled = plateau_bead(proximal=0.1)
    plane = plateau_bead(bead_constraint="hyperplane")
    # plain Adam wanders: it slides along the chord (displacement well above its distance from the chord)
    # and drifts off it in w3 (distance from the chord about sqrt(2) x the 0.8 it needs to climb in w2)
    # (relative to the endpoint distance 2: plain moves ~0.8 in each of w1, w2, w3)
    assert plain["displacement"] > 1.2 * plain["chord_distance"]
    assert plain["chord_distance"] * 2 > 1.1
    # the proximal pull keeps the irrelevant coordinates home: closer to the chord and to the start
    assert pulled["chord_distance"] < 0.8 * plain["chord_distance"]
    assert pulled["displacement"] < 0.8 * plain["displacement"]
    # the hyperplane constraint forbids sliding: the whole displacement is off the chord
    assert plane["displacement"] == pytest.approx(plane["chord_distance"], rel=1e-9)
    assert plane["displacement"] < 0.85 * plain["displacement"]


def zero_gradient_run(**settings):
    """A tent of half-width 0.5 centred on the midpoint: DSS starts its bead at the tip, where torch's |.| has
    gradient 0, so plain SGD cannot move it (energy 1, target 0.2)."""
    energy, objective, ends = tent_line([0.0], radius=0.5)
    state = DSSState()
    config = DSSConfig(max_beads=1, bead_training=TrainConfig(optimizer="sgd", lr=0.1, check_every=1, max_steps=50),
                       **settings)
    path, outcome = greedy_dss(Path(ends), energy, objective, config, threshold=0.25, state=state)
    return path, outcome, state.bead_log[0]


def test_a_stuck_bead_reports_why():
    path, outcome, entry = zero_gradient_run(restarts=0)
    assert outcome.reason == Reason.BEAD_NOT_TRAINED and path.n_beads == 0
    assert entry["t_star"] == 0.5 and entry["train_reason"] == "zero_gradient" and entry["train_steps"] == 1
    assert entry["stuck_reason"] == "zero_gradient" and entry["restarts"] == 0
    assert "zero_gradient" in outcome.message and "every gradient was exactly zero" in outcome.message
    assert "step_cap" not in outcome.message


def test_a_stuck_bead_restarts_off_the_saddle_and_trains():
    path, outcome, entry = zero_gradient_run()
    assert entry["stuck_reason"] == "zero_gradient" and entry["restarts"] == 1
    assert entry["restart_t"] in (0.4, 0.6) and entry["train_reached"] and path.n_beads == 1
    # the same settings give the same restart, bit for bit
    again, _, entry_again = zero_gradient_run()
    assert entry_again == entry and torch.equal(again.beads[1]["w"], path.beads[1]["w"])


def test_restart_points_are_seeded_and_deterministic():
    point = {"a": torch.zeros(3, 2), "buffer:n": torch.tensor(4)}
    one, same, other = perturb(point, 0.5, 7), perturb(point, 0.5, 7), perturb(point, 0.5, 8)
    assert torch.equal(one["a"], same["a"]) and not torch.equal(one["a"], other["a"])
    assert float(torch.linalg.vector_norm(one["a"])) == pytest.approx(0.5)
    assert torch.equal(one["buffer:n"], point["buffer:n"])  # buffers are not parameters: left alone
    normal = {"a": torch.ones(3, 2), "buffer:n": torch.tensor(0)}
    flat = perturb(point, 0.5, 7, normal)
    assert float(torch.sum(flat["a"])) == pytest.approx(0.0, abs=1e-6)  # orthogonal to the normal
    assert restart_ts(0.5, 0.1, 4, seed=3) == restart_ts(0.5, 0.1, 4, seed=3)
    ts = restart_ts(0.5, 0.1, 4, seed=3)
    assert sorted(ts) == [0.3, 0.4, 0.6, 0.7] and abs(ts[0] - 0.5) == pytest.approx(0.1)
    assert {restart_ts(0.5, 0.1, 1, seed=s)[0] for s in range(20)} == {0.4, 0.6}
    assert restart_ts(0.95, 0.1, 2, seed=0) in ([0.99, 0.85], [0.85, 0.99])  # kept inside (0, 1)


def test_persistence_needs_trained_beads_and_every_split_barrier_at_least_twice_the_acceptance_level():
    from modeconnect.methods.dss_beads import persistence

    assert persistence([], 1.0) == (False, "")
    assert persistence([{"train_reached": False, "barrier": 9.0}], 1.0) == (False, "")
    persistent, clause = persistence([{"train_reached": True, "barrier": 3.0},
                                      {"train_reached": True, "barrier": 2.0}], 1.0)
    assert persistent and "persistent barrier" in clause and "at least 2" in clause
    persistent, clause = persistence([{"train_reached": True, "barrier": 3.0},
                                      {"train_reached": True, "barrier": 1.5}], 1.0)
    assert not persistent and "persistent" not in clause

"""Greedy DSS: the known answers of the control tasks, every stopping reason, order, t* rule, determinism."""

from __future__ import annotations

import pytest
import torch

from modeconnect.params import point_from_module
from modeconnect.path import Path
from modeconnect.seeding import derive_seed
from modeconnect.strings import DSSConfig, DSSState, Order, Reason, TStar, choose_tstar, greedy_dss
from modeconnect.tasks import make_task
from modeconnect.train import TrainConfig, train_to_target


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


def run(task, threshold, endpoints, **settings):
    settings.setdefault("bead_training", task.bead_training)
    config = DSSConfig(threshold=threshold, **settings)
    return greedy_dss(Path(list(endpoints)), task.energy, task.objective, config)


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
    path, status = run(task, task.default_threshold, (a, b))
    assert status.connected and status.reason is Reason.CONNECTED
    assert path.n_beads == 0 and status.beads_trained == 0
    assert path.normalized_length == 1.0
    # convexity: the segment maximum is an endpoint's energy
    assert path.segments[0].max_energy == pytest.approx(max(task.energy(a), task.energy(b)), rel=1e-6)


def test_permutation_task_is_not_connected_and_says_why(permutation):
    task, (a, b) = permutation
    # the two endpoints compute the same function
    assert task.energy(a) == pytest.approx(task.energy(b), abs=1e-7)
    path, status = run(task, 0.02, (a, b), bead_training=TrainConfig(lr=0.01, max_steps=300))
    assert not status.connected
    assert status.reason is Reason.BEAD_NOT_TRAINED
    assert "bead" in status.message and "target" in status.message
    assert status.worst_barrier > 0.02 and status.worst_barrier == path.max_interpolated_energy


@pytest.mark.parametrize("settings, reason", [
    ({"max_depth": 0}, Reason.DEPTH_EXHAUSTED),
    ({"max_beads": 0}, Reason.BEAD_BUDGET_EXHAUSTED),
    ({"max_time_s": 1e-9}, Reason.TIME_EXHAUSTED),
])
def test_each_budget_is_reported(permutation, settings, reason):
    task, (a, b) = permutation
    path, status = run(task, 0.02, (a, b), **settings)
    assert not status.connected and status.reason is reason
    assert status.beads_trained == 0 and path.n_beads == 0
    assert status.worst_barrier > 0.02
    assert all(s.evaluated for s in path.segments)


def test_connected_path_satisfies_its_acceptance_rule(quadratic):
    task, (a, b) = quadratic
    path, status = run(task, 0.02, (a, b), alpha=0.8)
    assert status.connected and path.n_beads >= 2
    assert all(s.max_energy <= 0.02 for s in path.segments)
    assert path.normalized_length >= 1.0
    # endpoints untouched, every intermediate bead trained to alpha * L0
    assert all(torch.equal(path.beads[0][k], a[k]) and torch.equal(path.beads[-1][k], b[k]) for k in a)
    assert all(task.energy(bead) <= 0.8 * 0.02 for bead in path.beads[1:-1])
    # the depth recorded matches the nesting of insertions
    assert path.depth == max(s.depth for s in path.segments) >= 1


def test_same_seed_same_path_different_seed_different_path(quadratic):
    task, (a, b) = quadratic
    p1, s1 = run(task, 0.02, (a, b), seed=5)
    p2, s2 = run(task, 0.02, (a, b), seed=5)
    assert s1.connected == s2.connected and p1.n_beads == p2.n_beads
    assert all(torch.equal(x[k], y[k]) for x, y in zip(p1.beads, p2.beads) for k in x)
    assert [s.max_energy for s in p1.segments] == [s.max_energy for s in p2.segments]
    assert derive_seed(5, "bead", 0) != derive_seed(6, "bead", 0)


def test_breadth_first_refines_round_by_round(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, status = greedy_dss(Path([a, b]), task.energy, task.objective,
                              DSSConfig(threshold=0.02, order=Order.BREADTH_FIRST, bead_training=task.bead_training),
                              state=state)
    depths = [entry["depth"] for entry in state.bead_log]
    assert len(depths) >= 2 and depths == sorted(depths)
    assert status.connected == all(s.max_energy <= 0.02 for s in path.segments)


def test_depth_first_takes_the_leftmost_segment(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    greedy_dss(Path([a, b]), task.energy, task.objective,
               DSSConfig(threshold=0.02, bead_training=task.bead_training), state=state)
    # after a bead is inserted into segment i, the next bead (if any) goes into segment i or later
    segments = [entry["segment"] for entry in state.bead_log]
    depths = [entry["depth"] for entry in state.bead_log]
    for k in range(1, len(segments)):
        if depths[k] > depths[k - 1]:  # going deeper: must be the left child
            assert segments[k] == segments[k - 1]


def test_identical_endpoints_give_an_empty_path(quadratic):
    task, (a, _) = quadratic
    path, status = run(task, 0.02, (a, {k: v.clone() for k, v in a.items()}))
    assert status.connected and path.n_beads == 0
    assert path.length == 0.0 and path.normalized_length == 1.0


def test_checkpoint_is_called_after_every_bead(quadratic):
    task, (a, b) = quadratic
    seen = []
    path, status = greedy_dss(Path([a, b]), task.energy, task.objective,
                              DSSConfig(threshold=0.02, bead_training=task.bead_training),
                              checkpoint=lambda p, s: seen.append((p.n_beads, s.finished)))
    assert seen[-1] == (path.n_beads, True)
    assert [n for n, finished in seen if not finished] == list(range(1, path.n_beads + 1))


def test_tstar_rules():
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    cfg = DSSConfig(threshold=1.0)
    bump = torch.exp(-((ts - 0.7) ** 2) / 0.01)
    assert choose_tstar(ts, bump, cfg) == pytest.approx(0.7)
    assert choose_tstar(ts, bump, DSSConfig(threshold=1.0, tstar=TStar.MIDPOINT)) == 0.5
    # a maximum at the endpoint is never returned: the bead would duplicate it
    rising = ts.clone()
    assert choose_tstar(ts, rising, cfg) == pytest.approx(0.95)
    assert choose_tstar(ts, rising, DSSConfig(threshold=1.0, tstar_margin=0.2)) == pytest.approx(0.8)
    # flat (or noise below flat_tolerance * L0) profile -> 0.5
    assert choose_tstar(ts, 0.3 + 1e-6 * torch.sin(50 * ts), cfg) == 0.5
    # a NaN spike counts as the worst place
    spiky = torch.zeros(21, dtype=torch.float64)
    spiky[6] = float("inf")
    assert choose_tstar(ts, spiky, cfg) == pytest.approx(0.3)
    # every interior point non-finite (e.g. the model overflows): still a t* inside the margin, no crash
    blown = torch.full((21,), float("inf"), dtype=torch.float64)
    assert choose_tstar(ts, blown, cfg) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [
    {"threshold": 0.0}, {"threshold": float("nan")}, {"threshold": 1.0, "alpha": 0.0},
    {"threshold": 1.0, "alpha": 1.5}, {"threshold": 1.0, "tolerance": 0.9}, {"threshold": 1.0, "grid_size": 2},
    {"threshold": 1.0, "tstar": "max"}, {"threshold": 1.0, "order": "random"}, {"threshold": 1.0, "max_depth": -1},
    {"threshold": 1.0, "tstar_margin": 0.5}, {"threshold": 1.0, "max_time_s": 0},
])
def test_invalid_settings_are_refused_with_a_message(bad):
    from modeconnect.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        DSSConfig(**bad)
    assert any(name in str(info.value) for name in bad if name != "threshold" or len(bad) == 1)


def test_config_round_trips_through_dict():
    cfg = DSSConfig(threshold=0.1, alpha=0.6, tstar="midpoint", order="breadth_first",
                    bead_training=TrainConfig(lr=0.003, max_steps=10))
    again = DSSConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.tstar is TStar.MIDPOINT and again.bead_training.max_steps == 10


def test_bead_births_record_the_string_after_every_bead(quadratic):
    task, (a, b) = quadratic
    state = DSSState()
    path, status = greedy_dss(Path([a, b]), task.energy, task.objective,
                              DSSConfig(threshold=0.02, bead_training=task.bead_training), state=state)
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
    with pytest.raises(ValueError, match="bead births"):
        greedy_dss(Path([a, mid, b]), task.energy, task.objective, DSSConfig(threshold=0.02),
                   state=DSSState(bead_births=[0, 0]))

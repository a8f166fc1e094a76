"""Breadth-first string evolution (Appendix A, steps 0-3): all beads trained together at a falling level."""

from __future__ import annotations

import json

import pytest
import torch

from modeconnect import METHODS, connect
from modeconnect.connect import connect_path
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.methods.string_evolution import (
    Batching,
    StringEvolutionConfig,
    StringEvolutionState,
    train_string,
)
from modeconnect.params import interpolate
from modeconnect.path import Path
from modeconnect.train import TrainConfig, train_to_target

L0 = 0.02
BEADS = TrainConfig(lr=0.05, max_steps=3000)


@pytest.fixture(scope="module")
def pair(tanh_pair):
    """Two 1-8-1 tanh networks below L0 / 2 whose straight segment peaks near 0.26 (conftest's tanh_pair)."""
    return tanh_pair


@pytest.fixture(scope="module")
def default_run(pair):
    """String evolution with its defaults on the pair, run once for several tests."""
    return _run(pair)


def _run(pair, **settings):
    (a, b), energy, objective = pair
    return connect(a, b, energy, threshold=L0, method="string_evolution", objective=objective, bead_training=BEADS,
                   **settings)


def _beads(pair, n=3):
    (a, b), _, _ = pair
    g = torch.Generator().manual_seed(5)
    return [{k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in interpolate(a, b, t).items()}
            for t in torch.linspace(0.2, 0.8, n).tolist()]


def test_it_is_registered_with_validated_settings():
    assert METHODS["string_evolution"].Config is StringEvolutionConfig
    with pytest.raises(ConfigError, match="level_decay must be in"):
        StringEvolutionConfig(level_decay=1.0)
    with pytest.raises(ConfigError, match="persistence and max_rounds must be >= 1"):
        StringEvolutionConfig(persistence=0)
    with pytest.raises(ConfigError, match="unknown batching 'gpu'"):
        StringEvolutionConfig(batching="gpu")


@pytest.mark.parametrize("batch_size", [None, 16])
def test_one_batched_step_equals_the_loop_of_single_steps(pair, batch_size):
    _, energy, objective = pair
    beads = _beads(pair)
    one_step = TrainConfig(lr=0.05, max_steps=1, check_every=1, batch_size=batch_size)
    batched, _, used = train_string(beads, energy=energy, objective=objective, target=0.0, config=one_step, seed=3,
                                    batching=Batching.VMAP)
    assert used is Batching.VMAP
    for bead, got in zip(beads, batched):
        alone, _, used_alone = train_string([bead], energy=energy, objective=objective, target=0.0, config=one_step,
                                            seed=3)
        assert used_alone is Batching.LOOP  # a single bead is not worth vmap
        reference, _ = train_to_target(bead, energy=energy, objective=objective, target=0.0, config=one_step, seed=3)
        assert any(not torch.equal(got[k], bead[k]) for k in bead)  # it moved
        for k in bead:
            torch.testing.assert_close(got[k], alone[0][k], rtol=0, atol=1e-13)
            torch.testing.assert_close(got[k], reference[k], rtol=0, atol=1e-13)


def test_batched_training_stops_each_bead_where_it_would_stop_alone(pair):
    _, energy, objective = pair
    beads = _beads(pair)
    config = TrainConfig(lr=0.05, max_steps=400, check_every=10, batch_size=32)
    target = 0.05
    results = {mode: train_string(beads, energy=energy, objective=objective, target=target, config=config, seed=1,
                                  batching=mode) for mode in (Batching.VMAP, Batching.LOOP)}
    steps = [s.steps for s in results[Batching.VMAP][1]]
    assert len(set(steps)) > 1, "the beads should stop at different steps for this test to mean something"
    for i, bead in enumerate(beads):
        reference, status = train_to_target(bead, energy=energy, objective=objective, target=target, config=config,
                                            seed=1)
        for mode, (points, statuses, _) in results.items():
            assert statuses[i].steps == status.steps and statuses[i].reason == status.reason, mode
            for k in bead:
                torch.testing.assert_close(points[i][k], reference[k], rtol=0, atol=1e-10)


def test_the_string_connects_at_a_falling_level(default_run):
    result = default_run
    assert result.connected and result.certificate.certified and result.outcome.reason == "connected"
    extras = result.outcome.extras
    levels = extras["levels"]
    assert levels[0] > levels[-1] == L0 and all(x > y for x, y in zip(levels, levels[1:]))
    for high, low in zip(levels, levels[1:-1]):  # each step halves the level (level_decay 0.5) until L0
        assert low == pytest.approx(0.5 * high)
    assert set(extras["batching"]) <= {"vmap", "loop"} and extras["beads_trained"] == result.path.n_beads >= 2
    assert extras["rounds"] == len(extras["round_log"]) and extras["bead_steps"] > 0


def test_a_barrier_that_persists_is_reported_as_such(pair):
    result = _run(pair, persistence=1, level_start="threshold")
    assert not result.connected and result.outcome.reason == "persistent_barrier"
    assert "for 1 consecutive rounds (persistence=1)" in result.outcome.message
    assert result.outcome.worst_barrier > L0 and result.path.n_beads == 0


def test_identical_endpoints_need_no_bead(pair):
    (a, _), energy, objective = pair
    result = connect(a, a, energy, threshold=L0, method="string_evolution", objective=objective)
    assert result.connected and result.path.n_beads == 0 and result.outcome.extras["rounds"] == 1


def test_the_same_seed_gives_the_same_path_bit_for_bit(pair, default_run):
    first, second = default_run, _run(pair)
    assert first.path.n_beads == second.path.n_beads >= 2
    for p, q in zip(first.path.beads, second.path.beads):
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert first.outcome.extras["round_log"] == second.outcome.extras["round_log"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(pair, default_run):
    (a, b), energy, objective = pair
    config, reference = default_run.config, default_run
    assert reference.outcome.extras["rounds"] >= 4
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_round_three(path, state):
        if state.round == 3:
            saved["path"], saved["state"] = path.copy(), json.loads(json.dumps(state.to_dict()))
            raise Stop

    with pytest.raises(Stop):
        connect_path(Path([a, b]), energy, threshold=L0, method="string_evolution", config=config,
                     objective=objective, checkpoint=stop_after_round_three, certify_path=False)
    resumed = connect_path(saved["path"], energy, threshold=L0, method="string_evolution", config=config,
                           objective=objective, state=StringEvolutionState.from_dict(saved["state"]),
                           certify_path=False)
    assert resumed.path.n_beads == reference.path.n_beads
    for p, q in zip(resumed.path.beads, reference.path.beads):
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert resumed.outcome.extras["round_log"] == reference.outcome.extras["round_log"]


def test_cubic_pair_connects_and_is_certified_through_run_connect():
    result = run_connect(ConnectRunConfig(task="cubic", threshold=0.05, seed=1, method="string_evolution"))
    assert result["connected"] and result["certified"] and result["method"] == "string_evolution"


def test_the_permutation_pair_fails_with_a_persistent_barrier():
    """Appendix E, default settings: a network and its hidden-unit swap. The beads stall near the symmetric saddle
    (energy 1/6) once the level falls below it, and the segments around them stay above the level round after round."""
    result = run_connect(ConnectRunConfig(task="permutation", method="string_evolution"))
    assert not result["connected"] and not result["certified"]
    assert result["reason"] == "persistent_barrier" and "persistence=6" in result["message"]
    assert result["worst_barrier"] > 5 * result["threshold"]
    last = result["round_log"][-1]
    assert last["level"] > result["threshold"]  # reported before the level reached L0: early
    assert last["trained"] > 0 and last["reached"] < last["trained"]


def test_auto_batching_follows_an_energy_that_pins_the_loop(pair):
    from modeconnect import Energy
    from modeconnect.methods.string_training import prefers_loop

    (a, b), energy, objective = pair
    pinned = Energy(energy.model, energy.inputs, energy.targets, "mse", strategy="loop")
    assert prefers_loop(pinned) and not prefers_loop(energy)
    beads = [interpolate(a, b, t) for t in (0.25, 0.5, 0.75)]
    config = TrainConfig(lr=0.01, max_steps=1)
    _, _, used = train_string(beads, energy=pinned, objective=objective, target=0.0, config=config, seed=0)
    _, _, used_free = train_string(beads, energy=energy, objective=objective, target=0.0, config=config, seed=0)
    assert used is Batching.LOOP and used_free is Batching.VMAP

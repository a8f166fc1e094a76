"""Appendix E: DSS between a network and its permuted copy fails with a persistent high-energy segment."""

from __future__ import annotations

import pytest

from modeconnect.experiments import ConnectRunConfig, run_connect


@pytest.fixture(scope="module")
def default_run():
    """``modeconnect connect --task permutation`` with every default."""
    return run_connect(ConnectRunConfig(task="permutation"))


def test_with_default_settings_the_pair_fails_on_a_persistent_barrier(default_run):
    result = default_run
    threshold = result["threshold"]
    assert not result["connected"] and not result["certified"]
    assert result["reason"] == "persistent_barrier"
    assert "persistent barrier" in result["message"] and "barrier" in result["message"].split(">")[0]
    # every bead trained: the run failed on the landscape, not on training
    assert len(result["bead_log"]) == result["n_beads"] == 10
    assert all(b["train_reached"] for b in result["bead_log"])
    # every segment that DSS split had a barrier above 10 x L0, and the final string still has one
    assert all(b["barrier"] > 10 * threshold for b in result["bead_log"])
    assert result["certified_max_energy"] > 10 * threshold
    assert result["endpoint_energies"][0] == result["endpoint_energies"][1]
    # endpoint A is trained to half of L0 (the task's endpoint_fraction), and stops close to it
    assert result["endpoint_target"] == 0.5 * threshold
    assert 0.8 * result["endpoint_target"] < result["endpoint_energies"][0] <= result["endpoint_target"]


def test_the_first_bead_starts_on_the_symmetric_saddle_and_is_restarted_off_it(default_run):
    first = default_run["bead_log"][0]
    # the profile between a network and its permuted copy is symmetric: t* is exactly the midpoint, where the
    # two swapped units coincide; training stalls at 1/6, and a restart shifted along the segment trains
    assert first["t_star"] == 0.5 and first["stuck_reason"] == "stalled"
    assert first["restarts"] >= 1 and first["restart_t"] != 0.5 and first["train_reached"]


def test_without_restarts_the_bead_on_the_saddle_is_reported_stuck():
    result = run_connect(ConnectRunConfig(task="permutation", method_settings={"restarts": 0}))
    (bead,) = result["bead_log"]
    assert result["reason"] == "bead_not_trained"
    assert bead["t_star"] == 0.5 and not bead["train_reached"]
    assert abs(bead["train_final_energy"] - 1 / 6) < 1e-3
    # it stops as soon as it is stuck (not at the step cap) and says so
    assert bead["train_reason"] == "stalled" and bead["train_steps"] < 500
    assert "stalled" in result["message"] and "symmetric start" in result["message"]

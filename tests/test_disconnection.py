"""Appendix E: DSS between a network and its permuted copy fails with a persistent high-energy segment."""

from __future__ import annotations

from modeconnect.experiments import ConnectRunConfig, run_connect


def test_the_permutation_pair_keeps_a_barrier_while_beads_train():
    result = run_connect(ConnectRunConfig(task="permutation", method_settings={"grid_size": 32, "max_depth": 8}))
    threshold = result["threshold"]
    assert not result["connected"] and not result["certified"]
    trained = [b for b in result["bead_log"] if b["train_reached"]]
    assert len(trained) >= 3, "the off-centre grid must let beads break the symmetry and train"
    # every segment that DSS split had a barrier above 10 x L0, and the final string still has one
    assert all(b["barrier"] > 10 * threshold for b in result["bead_log"])
    assert result["certified_max_energy"] > 10 * threshold
    assert result["endpoint_energies"][0] == result["endpoint_energies"][1]


def test_on_the_symmetric_grid_the_first_bead_is_stuck_at_one_sixth():
    """Without restarts from a perturbed start, a bead started on the symmetric saddle never trains."""
    result = run_connect(ConnectRunConfig(task="permutation", method_settings={
        "restarts": 0, "bead_training": {"max_steps": 300}}))
    (bead,) = result["bead_log"]
    assert bead["t_star"] == 0.5 and not bead["train_reached"]
    assert abs(bead["train_final_energy"] - 1 / 6) < 1e-3

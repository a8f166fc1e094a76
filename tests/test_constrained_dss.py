"""Constrained DSS (Appendix A): beads held to the hyperplane between their neighbours, with spring and kappa terms."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modeconnect import METHODS, connect
from modeconnect.connect import connect_path
from modeconnect.errors import ConfigError
from modeconnect.methods.constrained_dss import (
    ConstrainedDSSConfig,
    ConstrainedDSSState,
    Constraint,
    Hyperplane,
    constraint_terms,
    train_on_hyperplane,
)
from modeconnect.params import distance, interpolate
from modeconnect.path import Path
from modeconnect.train import TrainConfig

L0 = 0.02
BEADS = TrainConfig(lr=0.05, max_steps=3000)


@pytest.fixture(scope="module")
def pair(tanh_pair):
    """Two 1-8-1 tanh networks below L0 / 2 whose straight segment peaks near 0.26 (conftest's tanh_pair)."""
    return tanh_pair


@pytest.fixture(scope="module")
def default_run(pair):
    """Constrained DSS with its defaults (PROJECT) on the pair, run once for several tests."""
    return _run(pair)


def _run(pair, **settings):
    (a, b), energy, objective = pair
    return connect(a, b, energy, threshold=L0, method="constrained_dss", objective=objective, bead_training=BEADS,
                   **settings)


def test_it_is_registered_with_validated_documented_settings():
    assert METHODS["constrained_dss"].Config is ConstrainedDSSConfig
    with pytest.raises(ConfigError, match="zeta must be a finite number >= 0"):
        ConstrainedDSSConfig(zeta=-1.0)
    with pytest.raises(ConfigError, match="unknown constraint 'soft'; choose one of: project, penalty"):
        ConstrainedDSSConfig(constraint="soft")
    assert ConstrainedDSSConfig(kappa_form="cosine").kappa_form.value == "cosine"


def test_spring_and_kappa_terms_match_a_hand_calculation():
    # two parameters in two tensors (and a buffer, which is not a coordinate); a = (0, 0), b = (2, 0), theta = (1.5, 2)
    a = {"w": torch.tensor([0.0], dtype=torch.float64), "v": torch.tensor([0.0], dtype=torch.float64),
         "buffer:n": torch.tensor([5.0])}
    b = {"w": torch.tensor([2.0], dtype=torch.float64), "v": torch.tensor([0.0], dtype=torch.float64),
         "buffer:n": torch.tensor([9.0])}
    theta = {"w": torch.tensor([1.5], dtype=torch.float64), "v": torch.tensor([2.0], dtype=torch.float64),
             "buffer:n": torch.tensor([0.0])}
    # |a - theta| = sqrt(1.5^2 + 2^2) = 2.5, |b - theta| = sqrt(0.5^2 + 2^2) = sqrt(4.25)
    # midpoint (1, 0), normal (1, 0)
    terms = constraint_terms(theta, a, b, zeta=0.1, kappa=3.0)
    assert float(terms["spring"]) == pytest.approx(0.1 * (2.5 + math.sqrt(4.25)), abs=1e-15)
    assert float(terms["deviation"]) == pytest.approx(3.0 * 0.5, abs=1e-15)  # offset n . (theta - m) = 0.5
    cosine = constraint_terms(theta, a, b, zeta=0.0, kappa=3.0, kappa_form="cosine")  # |theta - m| = sqrt(4.25)
    assert float(cosine["deviation"]) == pytest.approx(3.0 * 0.5 / math.sqrt(4.25), abs=1e-15)
    assert float(cosine["spring"]) == 0.0
    on_plane = constraint_terms({**theta, "w": torch.tensor([1.0], dtype=torch.float64)}, a, b, zeta=0, kappa=3.0)
    assert float(on_plane["deviation"]) == 0.0
    at_midpoint = constraint_terms({**theta, "w": torch.tensor([1.0], dtype=torch.float64),
                                    "v": torch.tensor([0.0], dtype=torch.float64)}, a, b, zeta=0, kappa=1,
                                   kappa_form="cosine")
    assert float(at_midpoint["deviation"]) == 0.0  # the cosine is defined as 0 where theta = m
    # the projection lands on the plane: w = 1, v unchanged
    point = {k: v.clone() for k, v in theta.items()}
    Hyperplane(a, b).project_(point)
    assert point["w"].item() == 1.0 and point["v"].item() == 2.0


def test_a_projected_bead_lies_on_the_bisecting_hyperplane(pair):
    """The trainer itself: a start off the plane is projected onto it, and so is every step."""
    (a, b), energy, objective = pair
    start = interpolate(a, b, 0.3)  # off the plane: projected before the first step
    bead, status = train_on_hyperplane(start, a, b, energy=energy, objective=objective, target=L0, config=BEADS,
                                       seed=0, constraint=Constraint.PROJECT, zeta=1e-4, kappa=0.0)
    assert status.reached and status.steps > 0
    assert abs(distance(bead, a) - distance(bead, b)) <= 1e-10

def test_every_bead_of_a_projected_run_lies_on_its_hyperplane(default_run):
    """Every bead constrained DSS inserts (PROJECT by default) is equidistant from the neighbours it was trained
    between, in float64, to 1e-10."""
    result = default_run
    log = result.outcome.extras["bead_log"]
    assert result.connected and result.certificate.certified and len(log) >= 2
    for entry in log:
        left, right = entry["neighbour_distances"]
        assert abs(left - right) <= 1e-10 and abs(entry["hyperplane_offset"]) <= 1e-10
        assert entry["displacement"] > 0 and entry["chord_distance"] >= 0 and entry["displacement_abs"] > 0


def test_the_penalty_mode_connects_and_records_where_beads_went(pair):
    result = _run(pair, constraint="penalty", zeta=1e-4, kappa=1e-2)
    assert result.connected and result.certificate.certified
    log = result.outcome.extras["bead_log"]
    assert log and all(e["train_reached"] for e in log)
    assert any(abs(e["hyperplane_offset"]) > 1e-6 for e in log)  # a soft constraint: beads may leave the plane
    first = log[0]  # the first bead splits the endpoints' segment: its start is on the chord
    assert first["start_chord_distance"] == pytest.approx(0.0, abs=1e-12) and first["t_star"] == 0.5
    assert first["chord_distance"] == pytest.approx(first["displacement"], rel=0.05)


def test_identical_endpoints_need_no_bead(pair):
    (a, _), energy, objective = pair
    result = connect(a, a, energy, threshold=L0, method="constrained_dss", objective=objective)
    assert result.connected and result.path.n_beads == 0 and result.outcome.extras["beads_trained"] == 0


def test_the_same_seed_gives_the_same_path_bit_for_bit(pair, default_run):
    first, second = default_run, _run(pair)
    assert first.path.n_beads == second.path.n_beads >= 2
    for p, q in zip(first.path.beads, second.path.beads):
        assert all(torch.equal(p[k], q[k]) for k in p)
    strip = ("elapsed_s", "bead_training_time_s", "segment_evaluation_time_s")
    assert ({k: v for k, v in first.outcome.extras.items() if k not in strip}
            == {k: v for k, v in second.outcome.extras.items() if k not in strip})


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(pair, default_run):
    (a, b), energy, objective = pair
    config, reference = default_run.config, default_run
    assert reference.outcome.extras["beads_trained"] >= 2
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_first_bead(path, state):
        saved["path"], saved["state"] = path.copy(), json.loads(json.dumps(state.to_dict()))  # as the store keeps it
        raise Stop

    with pytest.raises(Stop):
        connect_path(Path([a, b]), energy, threshold=L0, method="constrained_dss", config=config,
                     objective=objective, checkpoint=stop_after_first_bead, certify_path=False)
    assert saved["state"]["beads_trained"] == 1
    resumed = connect_path(saved["path"], energy, threshold=L0, method="constrained_dss", config=config,
                           objective=objective, state=ConstrainedDSSState.from_dict(saved["state"]),
                           certify_path=False)
    assert resumed.path.n_beads == reference.path.n_beads
    for p, q in zip(resumed.path.beads, reference.path.beads):
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert resumed.outcome.extras["bead_log"] == reference.outcome.extras["bead_log"]
    assert resumed.outcome.reason == reference.outcome.reason == "connected"


def test_cubic_pair_connects_and_is_certified_through_run_connect():
    from modeconnect.experiments import ConnectRunConfig, run_connect

    result = run_connect(ConnectRunConfig(task="cubic", threshold=0.05, seed=1, method="constrained_dss"))
    assert result["connected"] and result["certified"] and result["method"] == "constrained_dss"
    assert result["method_config"]["constraint"] == "project" and result["n_beads"] == result["beads_trained"]

"""The library entry point on user-built modules: results, invariants and every bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect import DSSConfig, Energy, Objective, connect, point_from_module
from modeconnect.errors import ArchitectureMismatch, ConfigError, NonFiniteEnergyError, ThresholdError
from modeconnect.train import TrainConfig, train_to_target

REQUIRED_KEYS = {"connected", "reason", "threshold", "tolerance", "normalized_length", "path_length", "distance",
                 "n_beads", "depth", "max_interpolated_energy", "certified_max_energy", "certification_resolution",
                 "endpoint_energies", "wall_time_s"}


@pytest.fixture(scope="module")
def trained_pair():
    from modeconnect.tasks._init import seeded

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=g)
    y = torch.sin(3 * x)
    energy = Energy(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), x, y, "mse", strategy="vmap")
    objective = Objective(x, y, "mse")
    models = []
    for seed in (1, 2):
        model = seeded(lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), seed)
        point, status = train_to_target(point_from_module(model), energy=energy, objective=objective, target=0.01,
                                        config=TrainConfig(lr=0.02, max_steps=5000), seed=seed)
        assert status.reached
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(point[name])
        models.append(model)
    return models, energy, objective


def test_connect_two_modules_gives_a_certified_summary(trained_pair):
    (a, b), energy, objective = trained_pair
    before = [p.detach().clone() for p in a.parameters()]
    # this pair is not linearly connected at 0.01 but connects with a few beads (3 here), well inside max_beads
    result = connect(a, b, energy, threshold=0.01, objective=objective, max_beads=20)
    assert result.connected
    summary = result.summary()
    assert REQUIRED_KEYS <= set(summary)
    assert summary["connected"] is True and summary["reason"] == "connected"
    assert summary["n_beads"] == result.path.n_beads >= 1
    assert summary["normalized_length"] == pytest.approx(result.path.normalized_length)
    assert summary["normalized_length"] > 1.0  # the beads bend the path
    assert summary["distance"] == pytest.approx(result.path.chord)
    assert summary["max_interpolated_energy"] <= 0.01
    assert summary["endpoint_energies"] == [pytest.approx(energy(result.path.beads[0])),
                                            pytest.approx(energy(result.path.beads[-1]))]
    # every intermediate bead was trained to alpha * L0 (alpha = 0.8 by default)
    assert all(energy(bead) <= 0.8 * 0.01 for bead in result.path.beads[1:-1])
    # the certificate refines the grid: it can only find a higher (or equal) maximum, and here it stays below L0
    assert summary["certified_max_energy"] >= summary["max_interpolated_energy"] - 1e-12
    assert summary["certified"] is True and summary["certified_max_energy"] <= 0.01
    assert summary["certification_resolution"] <= 1e-3
    # the caller's module is never modified
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))


def test_connect_accepts_a_full_config(trained_pair):
    (a, b), energy, objective = trained_pair
    cfg = DSSConfig(tstar="midpoint")
    result = connect(a, b, energy, threshold=0.01, objective=objective, config=cfg)
    assert result.threshold == 0.01 and result.config.tstar.value == "midpoint"


def test_mismatched_architectures_are_named(trained_pair):
    (a, _), energy, objective = trained_pair
    other = nn.Sequential(nn.Linear(1, 9), nn.Tanh(), nn.Linear(9, 1))
    with pytest.raises(ArchitectureMismatch, match=r"0\.weight: shape \(8, 1\) in model_a vs \(9, 1\) in model_b"):
        connect(a, other, energy, threshold=0.01, objective=objective)


def test_threshold_below_an_endpoint_is_refused(trained_pair):
    (a, b), energy, objective = trained_pair
    with pytest.raises(ThresholdError, match="endpoint A has energy .* above the threshold 1e-06"):
        connect(a, b, energy, threshold=1e-6, objective=objective)


def test_non_finite_energy_is_refused(trained_pair):
    (a, b), energy, objective = trained_pair
    broken = point_from_module(a)
    broken["0.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteEnergyError, match="endpoint A is nan"):
        connect(broken, b, energy, threshold=0.01, objective=objective)


@pytest.mark.parametrize("settings, message", [
    ({"alpha": 2.0}, "alpha must be in"),
    ({"tolerance": 0.5}, "tolerance must be >= 1"),
    ({"alpah": 0.5}, r"unknown setting\(s\) alpah"),
    ({"tstar": "random"}, "unknown tstar"),
])
def test_invalid_settings_are_refused(trained_pair, settings, message):
    (a, b), energy, objective = trained_pair
    with pytest.raises(ConfigError, match=message):
        connect(a, b, energy, threshold=0.01, objective=objective, **settings)


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf")])
def test_a_threshold_that_is_not_a_positive_number_is_refused(trained_pair, threshold):
    (a, b), energy, objective = trained_pair
    with pytest.raises(ConfigError, match="threshold must be a positive finite number"):
        connect(a, b, energy, threshold=threshold, objective=objective)


def test_non_module_input_is_refused(trained_pair):
    (_, b), energy, objective = trained_pair
    with pytest.raises(ConfigError, match="model_a must be an nn.Module or a dict"):
        connect([1, 2], b, energy, threshold=0.01, objective=objective)


def test_batchnorm_model_is_refused_with_the_layer_name():
    from modeconnect.errors import UnsupportedModelError

    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(UnsupportedModelError, match="layer '1' \\(BatchNorm1d\\)"):
        Energy(model, torch.zeros(4, 2), torch.zeros(4, 1), "mse")


def test_time_split_names_every_phase_and_sums_them():
    from modeconnect.connect import time_split

    result = {"endpoint_time_s": 2.0, "method_time_s": 5.0, "bead_training_time_s": 3.0,
              "segment_evaluation_time_s": 1.5, "certification_time_s": 4.0, "proof_time_s": None}
    assert time_split(result) == ("endpoints 2.0 s, bead training 3.0 s, segment evaluation 1.5 s, "
                                  "other method work 0.5 s, certification 4.0 s; total 11.0 s")
    bare = {"endpoint_time_s": 1.0, "method_time_s": 2.0, "certification_time_s": 0.5, "proof_time_s": 0.25}
    assert time_split(bare) == "endpoints 1.0 s, method 2.0 s, certification 0.5 s, proof 0.2 s; total 3.8 s"

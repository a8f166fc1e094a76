"""Lemma 3 and the Theorem 2 path of Kuditipudi et al. (2019): Algorithm 1, the ten segments, the measured slack,
the reasons for not building a path, the method and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from kuditipudi_nets import check_steps, convnet, data, mlp, trained

from modeconnect import Energy, connect
from modeconnect.cli import main
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.lemma3 import algorithm1_masks, algorithm1_point, kept_sets
from modeconnect.kuditipudi.units import hidden_units
from modeconnect.methods.kuditipudi_noise import NoiseConfig, lemma2_room, theorem2_path
from modeconnect.params import point_from_module
from modeconnect.path import Path

FINE = torch.linspace(0, 1, 17, dtype=torch.float64)


def roomy_masks(spec, p=0.75, seed=0):
    for k in range(200):
        ma, mb = algorithm1_masks(spec, p, 2, seed + k)
        nonempty = all(len(s) for s in kept_sets(spec, ma) + kept_sets(spec, mb))
        if nonempty and lemma2_room(spec, kept_sets(spec, ma), kept_sets(spec, mb)) is not None:
            return ma, mb
    raise AssertionError("no mask pair with room")


def test_algorithm1_point_scales_outgoing_columns_and_keeps_rows():
    model = mlp(0)
    spec, theta = hidden_units(model), point_from_module(model)
    mask = algorithm1_masks(spec, 0.5, 1, seed=3)[0]
    theta_1 = algorithm1_point(theta, spec, mask, 2.0)
    for k in ("0.weight", "0.bias", "2.bias", "4.bias"):  # A_1, every row and bias: untouched
        assert torch.equal(theta_1[k], theta[k])
    for layer in spec.layers:
        w0, w1 = theta[layer.outgoing.key], theta_1[layer.outgoing.key]
        keep = mask[layer.name]
        assert torch.equal(w1[:, ~keep], torch.zeros_like(w1[:, ~keep]))
        assert torch.allclose(w1[:, keep], 2.0 * w0[:, keep])
    draws = algorithm1_masks(spec, 0.5, 400, seed=0)  # Bernoulli(1 - p) per unit, not an exact count
    counts = torch.tensor([int(m["0"].sum()) for m in draws], dtype=torch.float64)
    assert abs(float(counts.mean()) - 4.0) < 0.3 and len(set(counts.tolist())) > 3


@pytest.mark.parametrize("make,conv", [(mlp, False), (convnet, True)])
def test_theorem2_path_has_ten_segments_exact_ends_and_step_invariants(make, conv):
    x, _ = data(conv)
    model = make(0)
    spec = hidden_units(model)
    a, b = point_from_module(make(1)), point_from_module(make(2))
    ma, mb = roomy_masks(spec)
    a1, b1 = algorithm1_point(a, spec, ma, 4.0), algorithm1_point(b, spec, mb, 4.0)
    beads, steps = theorem2_path(a, b, spec, a1, b1, ma, mb)
    assert len(steps) == 10 and len(beads) == 11
    assert [s.kind for s in steps] == ["n", "b", "b", "a", "b", "b", "a", "b", "b", "n"]
    assert beads[0] is a and beads[-1] is b
    assert all(torch.equal(beads[1][k], a1[k]) and torch.equal(beads[-2][k], b1[k]) for k in a)
    check_steps(model, beads, steps, x)


def test_no_room_is_refused_by_the_pure_construction():
    model = mlp(0, width=4)
    spec = hidden_units(model)
    full = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in spec.layers}
    theta = point_from_module(model)
    with pytest.raises(ConfigError, match="raise p"):
        theorem2_path(theta, theta, spec, theta, theta, full, full)


@pytest.fixture(scope="module")
def pair():
    x, y = data()
    a, b = trained(mlp(0, 16), x, y), trained(mlp(1, 16), x, y)
    return x, y, a, b, Energy(mlp(0, 16), x, y, "cross_entropy")


def test_method_builds_ten_segments_within_the_measured_slack(pair):
    x, y, a, b, energy = pair
    ends = max(energy(a), energy(b))
    result = connect(a, b, energy, threshold=3.0, method="kuditipudi_noise", draws=6, grid_size=9)
    out = result.outcome
    ex = out.extras
    assert out.reason == "connected" and ex["n_segments"] == 10 and result.path.n_pieces == 10
    assert all(torch.equal(result.path.beads[0][k], a[k]) and torch.equal(result.path.beads[-1][k], b[k]) for k in a)
    assert ex["measured_slack"] == pytest.approx(max(0.0, max(ex["waypoint_energies"].values()) - ends))
    assert ex["endpoint_max_energy"] == pytest.approx(ends)
    for i, rec in enumerate(ex["segments"]):  # every (a)/(b) segment, on a finer grid, within max(ends) + slack
        if rec["step"] != "n":
            fine = float(result.path.energies(i, FINE, energy).max())
            assert fine <= ends + ex["measured_slack"] + 1e-6, rec
    assert ex["path_barrier"] == pytest.approx(ex["max_interpolated_energy"] - ends)
    assert ex["straight_line_barrier"] == pytest.approx(ex["straight_line_max_energy"] - ends, abs=1e-6)
    assert ex["within_slack"] and ex["every_segment_within_bound"]
    again = connect(a, b, energy, threshold=3.0, method="kuditipudi_noise", draws=6, grid_size=9)
    assert again.outcome.extras["draw_a"] == ex["draw_a"]  # the same seed gives the same draws


def test_not_noise_stable_returns_the_plain_segment_with_a_reason(pair):
    x, y, a, b, energy = pair
    level = max(energy(a), energy(b)) * 1.0001
    result = connect(a, b, energy, threshold=level, method="kuditipudi_noise", draws=3, grid_size=9)
    assert result.outcome.reason == "not_noise_stable" and not result.outcome.connected
    assert result.path.n_pieces == 1 and "Algorithm 1 draws at p=0.75" in result.outcome.message
    extras = result.outcome.extras
    assert extras["lemma3_a"]["draws_stable"] == 0 or extras["lemma3_b"]["draws_stable"] == 0


def test_small_p_leaves_no_room(pair):
    x, y, a, b, energy = pair
    result = connect(a, b, energy, threshold=1e6, method="kuditipudi_noise", p=0.1, draws=3, grid_size=5)
    assert result.outcome.reason == "no_room" and "raise p" in result.outcome.message


@pytest.mark.parametrize("bad", [{"p": 0.0}, {"p": 1.0}, {"draws": 0}, {"grid_size": 2}, {"tolerance": 0.5},
                                 {"rescale": -1.0}])
def test_config_is_validated(bad):
    with pytest.raises(ConfigError):
        NoiseConfig(**bad)


def test_cli_connect_with_the_noise_path(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["connect", "--task", "quadratic", "--method", "kuditipudi_noise", "--threshold", "0.5", "--draws",
                 "4", "--grid-size", "5", "--endpoint-max-steps", "300", "--out", str(out), "--quiet", "--json"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["method"] == "kuditipudi_noise" and config["config"]["method_config"]["draws"] == 4
    assert result["p"] == 0.75 and "straight_line_max_energy" in result
    if result["reason"] == "connected":
        assert result["n_segments"] == 10 == Path.load(out / "path").n_pieces and result["within_slack"]
    else:  # too few units at this width for a usable draw: a reason, and the plain segment
        assert result["reason"] in ("not_noise_stable", "no_usable_draw", "no_room")
        assert Path.load(out / "path").n_pieces == 1

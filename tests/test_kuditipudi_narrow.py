"""The Theorem 3 path of Kuditipudi et al. (2019) through a narrow network theta*: the narrow network the method
trains, the thirteen segments and their invariants, the measured slack, the reasons, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from kuditipudi_nets import check_steps, convnet, data, mlp, outputs, trained
from torch import nn

from modeconnect import Energy, Objective, connect
from modeconnect.cli import main
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.lemma3 import algorithm1_masks, algorithm1_point, dropped_sets
from modeconnect.kuditipudi.units import hidden_units
from modeconnect.methods.kuditipudi_narrow import (
    NarrowConfig,
    narrow_masks,
    narrow_slots,
    narrow_start,
    narrow_widths,
    theorem3_path,
    train_narrow,
)
from modeconnect.params import point_from_module
from modeconnect.train import TrainConfig

FINE = torch.linspace(0, 1, 17, dtype=torch.float64)


def usable_masks(spec, widths, p=0.5, seed=0):
    for k in range(200):
        ma, mb = algorithm1_masks(spec, p, 2, seed + k)
        ok = all(bool(m[n].any()) for m in (ma, mb) for n in spec.names())
        slots = narrow_slots(spec, dropped_sets(spec, ma), dropped_sets(spec, mb), widths) if ok else None
        if slots is not None:
            return ma, mb, slots
    raise AssertionError("no usable mask pair")


def test_narrow_network_is_a_width_h_star_network_and_training_keeps_it_narrow():
    x, y = data()
    model = mlp(0)
    spec = hidden_units(model)
    energy = Energy(model, x, y, "cross_entropy")
    star, status, units = train_narrow(energy, Objective(x, y, "cross_entropy"), spec, [2, 3],
                                       TrainConfig(lr=0.05, max_steps=40), target=0.0, seed=1, say=lambda m: None)
    masks = narrow_masks(star, spec, units)
    assert units == [[0, 1], [0, 1, 2]] and status.steps == 40
    assert all(torch.equal(star[k] * (1 - masks[k]), torch.zeros_like(star[k])) for k in masks)  # zero outside
    start = narrow_start(star, spec, masks, 5)
    assert energy(star) < energy(start) or energy(star) < 1.0
    narrow = nn.Sequential(nn.Linear(5, 2), nn.ReLU(), nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3))
    with torch.no_grad():  # the same function as a genuinely narrow 5-2-3-3 network
        narrow[0].weight.copy_(star["0.weight"][:2]), narrow[0].bias.copy_(star["0.bias"][:2])
        narrow[2].weight.copy_(star["2.weight"][:3, :2]), narrow[2].bias.copy_(star["2.bias"][:3])
        narrow[4].weight.copy_(star["4.weight"][:, :3]), narrow[4].bias.copy_(star["4.bias"])
        assert torch.allclose(narrow(x), outputs(model, star, x), atol=1e-6)


@pytest.mark.parametrize("make,conv", [(mlp, False), (convnet, True)])
def test_theorem3_path_has_thirteen_segments_exact_ends_and_step_invariants(make, conv):
    x, _ = data(conv)
    model = make(0)
    spec = hidden_units(model)
    a, b = point_from_module(make(1)), point_from_module(make(2))
    widths = [2] * len(spec.layers)
    ma, mb, slots = usable_masks(spec, widths)
    units = [list(range(w)) for w in widths]
    star = narrow_start(a, spec, narrow_masks(a, spec, units), seed=9)
    a1, b1 = algorithm1_point(a, spec, ma, 2.0), algorithm1_point(b, spec, mb, 2.0)
    beads, steps = theorem3_path(a, b, spec, a1, b1, star, units, slots)
    assert len(steps) == 13 and len(beads) == 14
    assert [s.kind for s in steps] == ["n", "b", "a", "b", "b", "a", "b", "a", "b", "b", "a", "b", "n"]
    assert beads[0] is a and beads[-1] is b
    assert all(torch.equal(beads[1][k], a1[k]) and torch.equal(beads[-2][k], b1[k]) for k in a)
    for k in (4, 9):  # theta* alone, on E_A and on E_B: the narrow network's function exactly
        assert torch.allclose(outputs(model, beads[k], x), outputs(model, star, x), atol=1e-5)
    check_steps(model, beads, steps, x)


def test_slots_share_units_only_when_there_is_no_other_room():
    spec = hidden_units(mlp(0))  # two hidden layers of 8
    ea, eb, ep = narrow_slots(spec, [[0, 1, 2], [0, 1, 2]], [[3, 4, 5], [0, 1, 2]], [2, 2])
    assert not set(ea[0]) & set(eb[0])  # disjoint where the dropped units allow it
    assert len(set(ea[1]) & set(eb[1])) == 1  # three common dropped units for two slots each: one shared
    for li in range(2):
        assert not set(ep[li]) & (set(ea[li]) | set(eb[li]))
    assert narrow_slots(spec, [[0, 1, 2], [0, 1, 2]], [[3, 4, 5], [0, 1, 2]], [3, 3]) is None  # 6 + 3 > 8
    assert narrow_slots(spec, [[0], [0]], [[0], [0]], [2, 2]) is None  # fewer dropped units than h*


@pytest.fixture(scope="module")
def pair():
    x, y = data()
    a, b = trained(mlp(0, 16), x, y), trained(mlp(1, 16), x, y)
    return x, y, a, b, Energy(mlp(0, 16), x, y, "cross_entropy"), Objective(x, y, "cross_entropy")


def test_method_trains_theta_star_and_builds_thirteen_segments_within_the_slack(pair):
    x, y, a, b, energy, objective = pair
    ends = max(energy(a), energy(b))
    training = TrainConfig(lr=0.05, max_steps=300, check_every=20)
    result = connect(a, b, energy, threshold=1.0, method="kuditipudi_narrow", objective=objective, p=0.4, draws=6,
                     grid_size=9, narrow_width=3, narrow_training=training)
    out, ex = result.outcome, result.outcome.extras
    assert out.reason in ("connected", "barrier_above_threshold"), out.message
    assert ex["n_segments"] == 13 == result.path.n_pieces
    assert all(torch.equal(result.path.beads[0][k], a[k]) and torch.equal(result.path.beads[-1][k], b[k]) for k in a)
    assert ex["narrow"]["reached"] and ex["narrow"]["energy"] <= 1.0 and ex["narrow"]["width"] == [3, 3]
    assert ex["waypoint_energies"]["theta_star"] == pytest.approx(ex["narrow"]["energy"])
    assert ex["measured_slack"] == pytest.approx(max(0.0, max(ex["waypoint_energies"].values()) - ends))
    for i, rec in enumerate(ex["segments"]):  # (a)/(b) segments on a finer grid: within max(ends) + slack
        if rec["step"] != "n":
            assert float(result.path.energies(i, FINE, energy).max()) <= ends + ex["measured_slack"] + 1e-6, rec
    assert ex["within_slack"] and ex["every_segment_within_bound"]
    assert ex["path_barrier"] == pytest.approx(ex["max_interpolated_energy"] - ends)
    assert "straight_line_barrier" in ex and ex["paper_p_range"][0] == pytest.approx(1.5 * 3 / 16)


def test_reasons_instead_of_hidden_barriers(pair):
    x, y, a, b, energy, objective = pair
    common = dict(method="kuditipudi_narrow", objective=objective, draws=3, grid_size=5)
    unstable = connect(a, b, energy, threshold=max(energy(a), energy(b)) * 1.0001, p=0.4, **common)
    assert unstable.outcome.reason == "not_noise_stable" and unstable.path.n_pieces == 1
    untrained = connect(a, b, energy, threshold=5.0, p=0.4, narrow_level=0.001,
                        narrow_training=TrainConfig(max_steps=0), **common)
    assert untrained.outcome.reason == "narrow_not_trained" and "--narrow-max-steps" in untrained.outcome.message
    too_wide = connect(a, b, energy, threshold=5.0, p=0.2, narrow_width=15, **common)
    assert too_wide.outcome.reason == "too_few_dropped" and untrained.path.n_pieces == 1


def test_config_defaults_and_validation():
    spec = hidden_units(mlp(0, 16))
    assert narrow_widths(spec, NarrowConfig(p=0.2)) == [2, 2]  # floor(0.2 * 16 / 1.5)
    assert narrow_widths(spec, NarrowConfig(narrow_width=40)) == [16, 16]
    for bad in ({"narrow_width": 0}, {"narrow_level": 1.5}, {"p": 1.0},
                {"narrow_training": TrainConfig(dropout=0.5)}):
        with pytest.raises(ConfigError):
            NarrowConfig(**bad)


def test_cli_connect_trains_theta_star_like_the_endpoints(tmp_path):
    out = tmp_path / "run"
    code = main(["connect", "--task", "quadratic", "--method", "kuditipudi_narrow", "--threshold", "0.5", "--p", "0.5",
                 "--draws", "4", "--grid-size", "5", "--endpoint-max-steps", "300", "--narrow-max-steps", "300",
                 "--out", str(out), "--quiet"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]
    narrow = config["method_config"]["narrow_training"]
    assert narrow["max_steps"] == 300 and narrow["lr"] == config["endpoint_training"]["lr"]
    result = json.loads((out / "result.json").read_text())
    assert result["reason"] in ("connected", "barrier_above_threshold", "not_noise_stable", "narrow_not_trained",
                                "too_few_dropped", "no_room")
    if result["reason"] in ("connected", "barrier_above_threshold"):
        assert result["n_segments"] == 13 and result["narrow"]["steps"] <= 300


def test_run_defaults_train_theta_star_like_the_task_s_endpoints():
    from modeconnect.experiments import ConnectRunConfig

    run = ConnectRunConfig(task="quadratic", method="kuditipudi_narrow", method_settings={"narrow_training":
                                                                                          {"max_steps": 77}}).resolve()
    endpoint = run.endpoint_training
    narrow = run.method_config.narrow_training
    assert narrow.max_steps == 77 and (narrow.lr, narrow.optimizer, narrow.batch_size) == \
        (endpoint.lr, endpoint.optimizer, endpoint.batch_size)
    assert run.method_config.seed == run.config.seed


def test_mnist_kuditipudi_sets_its_theorem3_level_from_measurements():
    from modeconnect.tasks.mnist import KUDITIPUDI_NARROW_DEFAULTS

    p, width = KUDITIPUDI_NARROW_DEFAULTS["method_settings"]["p"], KUDITIPUDI_NARROW_DEFAULTS["method_settings"][
        "narrow_width"]
    assert 1.5 * width / 16 <= p <= 0.75  # Theorem 3's condition at the task's width 16
    assert KUDITIPUDI_NARROW_DEFAULTS["threshold"] > 11.6  # theta* of width 3 measured at 11.6%: inside the level

"""Training with unit dropout (TrainConfig.dropout, the perturb hook of train_to_target, --endpoint-dropout)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect.cli import main
from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.dropout import DropoutConfig, dropout_perturbation, dropout_stability
from modeconnect.kuditipudi.units import hidden_units
from modeconnect.train import Objective, TrainConfig, train_to_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1]) ** 0.5)
    return net


def _problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 2, generator=g)
    y = (torch.sin(2 * x[:, :1]) + x[:, 1:] ** 2) / 2
    net = _net(0)
    return net, Energy(net, x[:128], y[:128], "mse", strategy="loop"), Objective(x[128:], y[128:], "mse")


def test_each_step_keeps_exactly_the_required_units_and_masks_are_reproducible():
    net, _, _ = _problem()
    spec = hidden_units(net)
    params = dict(net.named_parameters())
    perturb = dropout_perturbation(spec, 0.25, seed=3)
    seen = []
    for step in range(5):
        dropped = perturb(params, step)
        alive = [int((dropped[layer.outgoing.key] != 0).any(0).sum()) for layer in spec.layers]
        assert alive == [24, 24]  # floor(32 * 0.75) units reach the next layer, in both hidden layers
        seen.append(tuple(int(i) for i in (dropped["2.weight"] != 0).any(0).nonzero().flatten()))
    assert len(set(seen)) > 1  # a fresh mask per step
    again = dropout_perturbation(spec, 0.25, seed=3)(params, 2)
    assert all(torch.equal(again[k], perturb(params, 2)[k]) for k in params)


def test_gradients_reach_only_the_kept_units():
    net, energy, objective = _problem()
    spec = hidden_units(net)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    dropped = dropout_perturbation(spec, 0.5, seed=0)(params, 0)
    loss = ((torch.func.functional_call(net, dropped, (objective.inputs,)) - objective.targets) ** 2).mean()
    loss.backward()
    kept_first = (dropped["2.weight"] != 0).any(0)
    grad_rows = params["0.weight"].grad.abs().sum(1) > 0
    assert not bool((grad_rows & ~kept_first).any())  # a dropped unit's incoming weights get no gradient
    assert bool(grad_rows[kept_first].any())


def test_dropout_training_makes_the_network_dropout_stable():
    net, energy, objective = _problem()
    spec = hidden_units(net)
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    config = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, check_every=100, max_steps=1500)
    plain, _ = train_to_target(start, energy=energy, objective=objective, target=0.0, config=config, seed=0)
    dropped_cfg = TrainConfig(**{**config.to_dict(), "dropout": 0.5})
    robust, _ = train_to_target(start, energy=energy, objective=objective, target=0.0, config=dropped_cfg, seed=0,
                                perturb=dropout_perturbation(spec, 0.5, seed=0))
    measure = DropoutConfig(p=0.5, masks=10)
    _, plain_report = dropout_stability(plain, energy, spec, measure)
    _, robust_report = dropout_stability(robust, energy, spec, measure)
    # the slack theta_1 - theta of the best mask: dropout training shrinks it
    plain_slack = plain_report.best_energy - plain_report.energy
    robust_slack = robust_report.best_energy - robust_report.energy
    assert robust_slack < 0.5 * plain_slack, (plain_report.energy, plain_report.best_energy,
                                              robust_report.energy, robust_report.best_energy)


def test_dropout_needs_the_hook_and_a_valid_fraction():
    net, energy, objective = _problem()
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    with pytest.raises(ConfigError, match="needs the model's hidden units"):
        train_to_target(start, energy=energy, objective=objective, target=0.0,
                        config=TrainConfig(dropout=0.2, max_steps=1), seed=0)
    for bad in (1.0, -0.1, "0.2"):
        with pytest.raises(ConfigError, match="dropout must be in"):
            TrainConfig(dropout=bad)


def test_cli_endpoint_dropout_is_recorded_and_bead_dropout_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["connect", "--task", "cubic", "--threshold", "0.2", "--endpoint-dropout", "0.25",
                 "--endpoint-max-steps", "3000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "trained with unit dropout p=0.25" in err
    assert '"dropout": 0.25' in (out / "config.json").read_text()
    assert main(["connect", "--task", "cubic", "--bead-dropout", "0.2", "--out", str(tmp_path / "bad")]) == 2
    assert "--bead-dropout must stay 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_min_steps_keeps_training_past_the_target():
    net, energy, objective = _problem()
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    target = energy(start) * 2  # reached before the first step
    _, early = train_to_target(start, energy=energy, objective=objective, target=target,
                               config=TrainConfig(max_steps=100, check_every=10), seed=0)
    assert early.reached and early.steps == 0
    point, late = train_to_target(start, energy=energy, objective=objective, target=target,
                                  config=TrainConfig(max_steps=100, check_every=10, min_steps=40), seed=0)
    assert late.reached and late.steps == 40 and late.final_energy == energy(point)
    with pytest.raises(ConfigError, match="min_steps must be between 0 and max_steps=10"):
        TrainConfig(max_steps=10, min_steps=11)

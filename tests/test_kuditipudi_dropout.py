"""Dropout stability (Kuditipudi et al. 2019, Definition 1): hidden units, masks, rescaling, storage, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconnect import Energy
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.dropout import (
    DropoutConfig,
    apply_dropout,
    dropout_stability,
    keep_count,
    load_dropout,
    sample_masks,
    save_dropout,
)
from modeconnect.kuditipudi.units import hidden_units
from modeconnect.params import point_from_module


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 3, bias=False))


def test_hidden_units_of_mlp_and_convnet():
    spec = hidden_units(mlp())
    assert spec.names() == ["0", "2"] and spec.sizes == [7, 5] and spec.top == ("4.weight", "4.bias")
    conv = hidden_units(convnet())
    assert conv.sizes == [6, 4]
    assert conv.layers[-1].outgoing.group == 4  # 2x2 pixels per channel after the Flatten
    assert conv.top == ("7.weight",)


@pytest.mark.parametrize("module, name", [
    (nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)), "'1' (BatchNorm1d)"),
    (nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1)), "'1' (Dropout)"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 1)), "'0' (Conv2d with groups=2)"),
])
def test_unsupported_layer_is_refused_by_name(module, name):
    with pytest.raises(ConfigError, match=name.replace("(", r"\(").replace(")", r"\)")):
        hidden_units(module)


def test_non_sequential_model_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ConfigError, match="Net, not an nn.Sequential"):
        hidden_units(Net())


@pytest.mark.parametrize("p", [0.0, 0.2, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("build", [mlp, convnet])
def test_masks_keep_exactly_floor_h_times_one_minus_p(p, build):
    spec = hidden_units(build())
    masks = sample_masks(spec, p, 6, seed=3)
    for mask in masks:
        for layer in spec.layers:
            assert mask[layer.name].dtype == torch.bool
            assert int(mask[layer.name].sum()) == keep_count(layer.size, p)
    assert keep_count(10, 0.3) == 7 and keep_count(32, 0.2) == 25 and keep_count(7, 0.5) == 3
    assert sample_masks(spec, p, 6, seed=3)[5][spec.names()[0]].tolist() == masks[5][spec.names()[0]].tolist()


def test_a_mask_keeping_no_unit_is_refused():
    spec = hidden_units(nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)))
    with pytest.raises(ConfigError, match="keeps floor"):
        sample_masks(spec, 0.5, 1)


def test_rescaling_multiplies_kept_unit_outputs_by_r_and_zeroes_the_rest():
    model = mlp()
    spec, point = hidden_units(model), point_from_module(model)
    mask = sample_masks(spec, 0.4, 1, seed=1)[0]
    x = torch.randn(9, 3)
    m0, m1 = (mask[n].to(torch.float32) for n in spec.names())
    r = 1.7

    def manual(from_layer: int) -> torch.Tensor:
        h = torch.relu(model[0](x))
        if from_layer == 1:
            h = h * m0 * r
        h = torch.tanh(model[2](h)) * m1 * r
        return model[4](h)

    for i in (1, 2):
        theta_i = apply_dropout(point, spec, mask, r, from_layer=i)
        out = functional_call(model, theta_i, (x,))
        assert torch.allclose(out, manual(i), atol=1e-6)
    assert DropoutConfig(p=0.2).r == pytest.approx(1.25) and DropoutConfig(p=0.2, rescale=1.0).r == 1.0


def test_channelwise_dropout_of_a_convnet():
    model = convnet()
    spec, point = hidden_units(model), point_from_module(model)
    mask = sample_masks(spec, 0.5, 1, seed=0)[0]
    theta = apply_dropout(point, spec, mask, 2.0)
    x = torch.randn(4, 1, 8, 8)
    h1 = model[2](model[1](model[0](x))) * mask["0"].float().view(1, -1, 1, 1) * 2.0
    h2 = model[5](model[4](model[3](h1))) * mask["3"].float().view(1, -1, 1, 1) * 2.0
    assert torch.allclose(functional_call(model, theta, (x,)), model[7](model[6](h2)), atol=1e-5)
    dropped = ~mask["3"]
    assert bool((theta["3.weight"][dropped] == 0).all())  # dropped channels' filters are zeroed (idle slots)


def test_stability_is_evaluated_in_batches_and_round_trips(tmp_path):
    model = mlp()
    x, y = torch.randn(40, 3), torch.randn(40, 2)
    energy = Energy(model, x, y, "mse", strategy="vmap")
    spec, point = hidden_units(model), point_from_module(model)
    lines = []
    masks, report = dropout_stability(point, energy, spec, DropoutConfig(p=0.5, masks=5, chunk=3),
                                      progress=lines.append)
    assert len(lines) == 4  # 10 networks in chunks of 3
    for m in (0, 4):
        for i in (1, 2):
            assert report.energies[m][i - 1] == pytest.approx(energy(apply_dropout(point, spec, masks[m], 2.0,
                                                                                   from_layer=i)), rel=1e-9)
    full = report.full
    assert full["min"] <= full["median"] <= full["max"] and len(full["values"]) == 5
    assert report.energies[report.best_mask] == min(report.energies, key=max)
    save_dropout(tmp_path, masks, report)
    masks2, report2, record = load_dropout(tmp_path)
    assert report2.energies == report.energies and record["kept"] == [3, 2]
    assert all(torch.equal(a[n], b[n]) for a, b in zip(masks, masks2) for n in spec.names())


def test_cli_dropout_writes_reloadable_files(tmp_path):
    from modeconnect.cli import main

    out = tmp_path / "drop"
    args = ["dropout", "--task", "quadratic", "--threshold", "0.3", "--p", "0.5", "--masks", "3", "--out", str(out),
            "--quiet", "--json"]
    assert main(args) == 0
    masks, report, record = load_dropout(out)
    assert len(masks) == 3 and report.kept == [2, 2] and record["task"] == "quadratic"
    assert (out / "endpoint.safetensors").exists()
    assert main(args) == 0  # the same command again reuses the saved endpoint
    assert json.loads((out / "dropout.json").read_text())["energies"] == report.energies

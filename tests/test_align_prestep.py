"""Alignment as a pre-step of every method: connect(align=...), --align on the CLI, recorded in the run."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modeconnect import Energy, Objective, connect
from modeconnect.align import apply_permutations, infer_spec, random_permutations
from modeconnect.cli import main as cli_main
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig
from modeconnect.params import distance, point_from_module


def _net_and_its_permutation():
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    a = point_from_module(net)
    b = apply_permutations(a, infer_spec(net), random_permutations(infer_spec(net), seed=4))
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    y = net(x).detach()
    return net, a, b, Energy(net, x, y, "mse"), Objective(x, y, "mse")


def test_weight_alignment_undoes_a_permutation_before_the_method(tmp_path):
    net, a, b, energy, objective = _net_and_its_permutation()
    assert distance(a, b) > 1.0 and energy(b) < 1e-20  # same function, far away in weights
    aligned = connect(net, b, energy, threshold=1e-3, objective=objective, align="weight", certify_path=False)
    assert aligned.connected and aligned.path.n_beads == 0 and aligned.path.chord == 0.0
    assert aligned.alignment["method"] == "weight" and aligned.alignment["distance_after"] == 0.0
    assert aligned.summary()["alignment"]["distance_before"] == pytest.approx(distance(a, b))


def test_align_is_a_validated_run_setting():
    with pytest.raises(ConfigError, match="unknown alignment method|align"):
        ConnectRunConfig(align="sideways")


def test_cli_align_is_recorded_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--align", "weight", "--quiet",
            "--out", str(out)]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert "after weight alignment of B" in first
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["run"]["align"] == "weight"
    result = json.loads((out / "result.json").read_text())
    assert result["alignment"]["distance_after"] < result["alignment"]["distance_before"]
    assert result["distance"] == pytest.approx(result["alignment"]["distance_after"])
    assert cli_main(argv) == 0  # the finished run is read back, not recomputed
    assert capsys.readouterr().out.splitlines()[:-1] == first.splitlines()[:-1]
    with pytest.raises(SystemExit):
        cli_main(["connect", "--task", "cubic", "--align", "sideways"])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err

"""Proofs from the command line and the library entry point: connect --prove, modeconnect prove DIR."""

from __future__ import annotations

import json

import pytest
import torch

from modeconnect import Energy, Objective, connect
from modeconnect.cli import main as cli_main
from modeconnect.errors import ConfigError

CUBIC = ["--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet"]


def test_connect_prove_reports_a_proof_of_the_cubic_path(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["connect", *CUBIC, "--prove", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "proof              PROVED: energy <= " in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["proved"] is True and result["proof"]["kind"] == "proof"
    assert result["certified_max_energy"] <= result["proof_upper_bound"] <= result["tolerance"] * 0.05
    assert json.loads((out / "config.json").read_text())["config"]["proof"]["initial_pieces"] >= 1


def test_prove_a_finished_run_afterwards(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["connect", *CUBIC, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["proof"] is None  # not asked for
    capsys.readouterr()
    assert cli_main(["prove", str(out), "--quiet", "--proof-initial-pieces", "4"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("proof              PROVED")
    record = json.loads((out / "proof.json").read_text())
    assert record["proved"] is True and record["config"]["initial_pieces"] == 4
    assert record["sampled_max"] == pytest.approx(result["certified_max_energy"], rel=1e-12)
    assert not (out / ".lock").exists()


def test_prove_of_an_unfinished_or_foreign_directory_is_a_one_line_error(tmp_path, capsys):
    code = cli_main(["prove", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("modeconnect: error:") and "Traceback" not in err
    code = cli_main(["prove", str(tmp_path), "--proof-max-bounds", "1"])
    assert code == 2


def test_library_prove_and_its_preconditions():
    x = torch.linspace(-1, 1, 32, dtype=torch.float64).unsqueeze(1)
    y = 2 * x + 1
    a, b = torch.nn.Linear(1, 1).double(), torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        a.weight.fill_(2.1), a.bias.fill_(0.95), b.weight.fill_(1.9), b.bias.fill_(1.05)
    energy, objective = Energy(a, x, y, "mse"), Objective(x, y, "mse")
    result = connect(a, b, energy, threshold=0.05, objective=objective, prove=True)
    assert result.proof.proved and result.summary()["proved"] is True
    assert result.proof.upper_bound >= result.certificate.max_energy
    with pytest.raises(ConfigError, match="keep certify_path=True"):
        connect(a, b, energy, threshold=0.05, objective=objective, prove=True, certify_path=False)

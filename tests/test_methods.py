"""The path-method seam: a method registered only here runs through connect(), the CLI and the run directory
without any of them being edited; kill -9 in the middle of a run resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import pytest
import torch

from modeconnect import METHODS, Energy, Objective, connect, register
from modeconnect.cli import main as cli_main
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.methods import Outcome, unregister
from modeconnect.params import interpolate
from modeconnect.path import Path


@dataclass(frozen=True)
class ToyConfig:
    fractions: str = "0.5"
    """Comma-separated positions in (0, 1) of untrained beads on the straight line."""
    stop_early: bool = False
    """Report 'gave_up' instead of checking the beads' energies."""

    def __post_init__(self) -> None:
        values = [float(v) for v in self.fractions.split(",")]
        if not all(0 < v < 1 for v in values):
            raise ConfigError(f"fractions must lie in (0, 1), got {self.fractions}")


@dataclass
class ToyState:
    placed: list[float] = field(default_factory=list)
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyState:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class ToyLine:
    """Puts beads on the straight line at the configured fractions, one checkpoint per bead."""

    name: ClassVar[str] = "toy_line"
    summary: ClassVar[str] = "beads on the straight line (a test method)"
    trains: ClassVar[bool] = False
    Config: ClassVar[type] = ToyConfig
    State: ClassVar[type] = ToyState
    runs: ClassVar[list[dict]] = []

    def run(self, start, energy, *, threshold, config, objective, state, checkpoint, progress):
        state = state or ToyState()
        a, b = start.beads[0], start.beads[-1]
        ToyLine.runs.append({"resumed_with": list(state.placed), "objective": objective})
        for f in (float(v) for v in config.fractions.split(",")):
            if f in state.placed:
                continue
            path = Path([a] + [interpolate(a, b, g) for g in sorted(state.placed + [f])] + [b])
            state.placed.append(f)
            if checkpoint:
                checkpoint(path, state)
        path = Path([a] + [interpolate(a, b, g) for g in sorted(state.placed)] + [b])
        worst = max(energy(bead) for bead in path.beads)
        ok = worst <= threshold and not config.stop_early
        state.finished = True
        outcome = Outcome(connected=ok, reason="connected" if ok else "gave_up", message="toy", worst_barrier=worst,
                          elapsed_s=0.0, extras={"placed": sorted(state.placed)})
        if checkpoint:
            checkpoint(path, state)
        return path, outcome


@pytest.fixture
def toy():
    register(ToyLine)
    ToyLine.runs.clear()
    yield ToyLine
    unregister(ToyLine.name)


def _linear_pair():
    x = torch.linspace(-1, 1, 16, dtype=torch.float64).unsqueeze(1)
    y = 2 * x + 1
    a, b = torch.nn.Linear(1, 1).double(), torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        a.weight.fill_(2.1), a.bias.fill_(0.95), b.weight.fill_(1.9), b.bias.fill_(1.05)
    return a, b, Energy(a, x, y, "mse"), Objective(x, y, "mse")


def test_a_test_registered_method_runs_through_connect(toy):
    a, b, energy, _ = _linear_pair()
    result = connect(a, b, energy, threshold=0.05, method="toy_line", fractions="0.25,0.75")
    assert result.method == "toy_line" and result.config == ToyConfig(fractions="0.25,0.75")
    assert result.connected and result.path.n_beads == 2
    # what lives outside the method is still done: geometry and certification of the returned path
    assert result.path.normalized_length == pytest.approx(1.0, abs=1e-12)
    assert result.certificate is not None and result.certificate.certified
    summary = result.summary()
    assert summary["method"] == "toy_line" and summary["placed"] == [0.25, 0.75]
    assert summary["method_config"] == {"fractions": "0.25,0.75", "stop_early": False}
    assert toy.runs[-1]["objective"] is None  # a method that trains nothing is handed no objective


def test_endpoint_checks_happen_outside_the_method(toy):
    a, b, energy, _ = _linear_pair()
    with pytest.raises(Exception, match="endpoint A has energy .* above the threshold"):
        connect(a, b, energy, threshold=1e-6, method="toy_line")
    assert toy.runs == []  # refused before the method ran


def test_unknown_method_and_unknown_setting_are_clear_errors(toy):
    a, b, energy, _ = _linear_pair()
    with pytest.raises(ConfigError, match="unknown path method 'nope'; choose one of: greedy_dss, .*toy_line"):
        connect(a, b, energy, threshold=0.05, method="nope")
    with pytest.raises(ConfigError, match="unknown setting.*alpha"):
        connect(a, b, energy, threshold=0.05, method="toy_line", alpha=0.5)
    with pytest.raises(ConfigError, match="fractions must lie in"):
        connect(a, b, energy, threshold=0.05, method="toy_line", fractions="0.5,2")


def test_the_cli_lists_and_runs_a_registered_method(toy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["connect", "--help"])
    assert "toy_line" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["connect", "--method", "toy_line", "--help"])
    text = capsys.readouterr().out
    assert "--fractions STR" in text and "--stop-early BOOL" in text and "--alpha" not in text
    out = tmp_path / "run"
    code = cli_main(["connect", "--task", "convex", "--method", "toy_line", "--fractions", "0.2,0.6",
                     "--stop-early", "true", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "method             toy_line" in captured.out and "NO (gave_up)" in captured.out
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "toy_line" and result["n_beads"] == 2 and result["connected"] is False
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == "toy_line"
    assert config["method_config"] == {"fractions": "0.2,0.6", "stop_early": True}
    saved = json.loads((out / "path" / "path.json").read_text())["metadata"]["method_state"]
    assert saved == {"method": "toy_line", "state": {"placed": [0.2, 0.6], "finished": True}}
    # another method's settings are refused on this method's command line
    with pytest.raises(SystemExit):
        cli_main(["connect", "--task", "convex", "--method", "toy_line", "--alpha", "0.5"])
    assert "unrecognized arguments: --alpha" in capsys.readouterr().err


def test_a_registered_method_resumes_in_its_run_directory(toy, tmp_path):
    config = ConnectRunConfig(task="convex", method="toy_line", method_settings={"fractions": "0.3,0.5,0.7"})

    class Stop(Exception):
        pass

    def stop_after_two(path, state):
        if len(state.placed) == 2:
            raise Stop

    out = tmp_path / "r"
    with pytest.raises(Stop):
        run_connect(config, str(out), after_checkpoint=stop_after_two)
    resumed = run_connect(config, str(out))
    assert toy.runs[-1]["resumed_with"] == [0.3, 0.5]
    assert resumed["placed"] == [0.3, 0.5, 0.7] and resumed["n_beads"] == 3
    # a run directory of one method is not resumed by another
    with pytest.raises(Exception, match="holds a different run"):
        run_connect(ConnectRunConfig(task="convex"), str(out))


def test_the_registry_is_one_dict_and_greedy_dss_is_in_it():
    assert list(METHODS)[0] == "greedy_dss" and {"constrained_dss", "string_evolution"} <= set(METHODS)
    with pytest.raises(ConfigError, match="lacks 'Config'"):
        register(type("NotAMethod", (), {"name": "x", "run": None}))


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_the_uninterrupted_result(tmp_path):
    """A real process is killed with SIGKILL right after its second saved bead; rerunning finishes identically."""
    argv = [sys.executable, "-m", "modeconnect", "connect", "--task", "quadratic", "--threshold", "0.02", "--seed", "2",
            "--quiet", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300,
                                          env=env).stdout)
    assert reference["beads_trained"] >= 3
    out = tmp_path / "killed"
    proc = subprocess.Popen(argv + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        state_file = out / "path" / "path.json"
        if state_file.exists():
            try:
                births = json.loads(state_file.read_text())["metadata"]["method_state"]["state"]["beads_trained"]
            except (ValueError, KeyError):
                births = 0
            if births >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    if not killed:
        pytest.skip("the run finished before it could be killed (machine too fast for this check)")
    assert not (out / "result.json").exists()
    resumed = json.loads(subprocess.run(argv + ["--out", str(out)], capture_output=True, text=True, check=True,
                                        timeout=300, env=env).stdout)
    timing = {"wall_time_s", "certification_time_s", "method_time_s", "endpoint_time_s", "bead_training_time_s",
              "segment_evaluation_time_s", "certificate", "method_energy_evaluations"}  # the last: this session's
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in reference.items()
                                                                     if k not in timing}
    assert resumed["certificate"]["max_energy"] == reference["certificate"]["max_energy"]

"""--device / device=: resolution, clear errors without a GPU, paths moved between devices, results recorded."""

from __future__ import annotations

import pytest
import torch

from modeconnect.cli import main
from modeconnect.device import DEVICE_ENV_VAR, default_device, resolve_device
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.path import Bezier, Path

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible here)")


def test_names_resolve_and_auto_falls_back_to_the_cpu(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_a_missing_gpu_is_a_clear_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="asks for a GPU but .*use --device cpu, or auto"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="only 1 GPU"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_the_environment_variable_names_the_default(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV_VAR, "tpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        default_device()


def test_path_to_moves_beads_and_control_points_and_keeps_itself_when_already_there():
    a, b, c = ({"w": torch.full((2,), float(v))} for v in (0, 1, 3))
    path = Path([a, b, c], [Bezier([{"w": torch.ones(2)}]), Bezier([{"w": torch.zeros(2)}])])
    assert path.to("cpu") is path
    moved = path.to("meta")  # a device every build has: tensors without storage
    assert all(v.device.type == "meta" for bead in moved.beads for v in bead.values())
    assert all(v.device.type == "meta" for piece in moved.pieces for c in piece.controls for v in c.values())
    assert path.beads[0]["w"].device.type == "cpu"  # the original is untouched


def test_a_run_records_its_device_and_the_cli_refuses_a_missing_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    result = run_connect(ConnectRunConfig(task="cubic", threshold=0.2), device="cpu")
    assert result["device"] == "cpu"
    if not torch.cuda.is_available():
        out = tmp_path / "run"
        assert main(["connect", "--task", "cubic", "--device", "cuda", "--out", str(out)]) == 2
        assert "asks for a GPU" in capsys.readouterr().err
        assert not out.exists()


@GPU
def test_a_connect_on_the_gpu_matches_the_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    config = ConnectRunConfig(task="cubic", threshold=0.2)
    cpu, gpu = run_connect(config, device="cpu"), run_connect(config, device="cuda")
    assert gpu["device"].startswith("cuda") and gpu["connected"] == cpu["connected"]
    assert gpu["endpoint_energies"] == pytest.approx(cpu["endpoint_energies"], rel=1e-3, abs=1e-4)

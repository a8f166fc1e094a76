"""Run directories: the files written, resume after interruption, refusal of a different config."""

from __future__ import annotations

import json

import pytest
import torch

from modeconnect.errors import StoreError
from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.experiments.connect_run import TIMING_FIELDS
from modeconnect.path import Path
from modeconnect.tasks import make_task

# quadratic at L0 = 0.02 with this seed needs several beads (checked in test_resumed_run_equals_uninterrupted)
CONFIG = ConnectRunConfig(task="quadratic", threshold=0.02, seed=2)
TIMING_KEYS = TIMING_FIELDS


def comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return out, run_connect(CONFIG, str(out))


def test_run_directory_files(finished):
    out, result = finished
    for name in ("config.json", "env.json", "endpoint_a.safetensors", "endpoint_b.safetensors", "result.json",
                 "path/path.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "path").glob("beads-*.safetensors"))) == 1
    stored = json.loads((out / "result.json").read_text())
    assert stored["n_beads"] == result["n_beads"] and stored["connected"] == result["connected"]
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["threshold"] == 0.02 and len(config["run_id"]) == 16
    assert config["config"]["method"] == "greedy_dss" and config["config"]["method_config"]["alpha"] == 0.8
    # the stored path is the certified one, with the method's state under its name
    path = Path.load(out / "path", like=make_task("quadratic").make_model(0))
    assert path.n_beads == result["n_beads"]
    saved = path.metadata["method_state"]
    assert saved["method"] == "greedy_dss"
    assert [s["max_energy"] for s in saved["state"]["segments"]] == result["segment_max_energy"]
    assert path.normalized_length == pytest.approx(result["normalized_length"])


def test_resumed_run_equals_uninterrupted(finished, tmp_path):
    _, full = finished
    assert full["beads_trained"] >= 3, "the chosen config must need several beads for this test to mean anything"

    class Interrupt(Exception):
        pass

    def stop_after_two(path, state):
        if state.beads_trained == 2:
            raise Interrupt

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        run_connect(CONFIG, str(out), after_checkpoint=stop_after_two)
    assert not (out / "result.json").exists()
    assert Path.load(out / "path").n_beads == 2
    messages = []
    resumed = run_connect(CONFIG, str(out), progress=messages.append)
    assert any("resuming greedy_dss with 2 bead(s)" in m for m in messages)
    assert comparable(resumed) == comparable(full)
    a, b = Path.load(out / "path"), Path.load(finished[0] / "path")
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.beads, b.beads) for k in x)


def test_finished_run_is_not_recomputed(finished):
    out, result = finished
    messages = []
    again = run_connect(CONFIG, str(out), progress=messages.append)
    assert again == json.loads((out / "result.json").read_text())
    assert any("already holds the finished run" in m for m in messages)
    assert not any("training" in m for m in messages)


def test_a_different_config_is_refused(finished):
    out, _ = finished
    expected = r"holds a different run \(method_config.alpha: 0.8 there vs 0.6 now\)"
    with pytest.raises(StoreError, match=expected):
        run_connect(ConnectRunConfig(task="quadratic", threshold=0.02, seed=2, method_settings={"alpha": 0.6}),
                    str(out))
    assert not (out / ".lock").exists(), "a refused directory keeps no lock file"


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a modeconnect run directory"):
        run_connect(CONFIG, str(tmp_path))


def test_same_seed_same_numbers_without_a_directory(finished):
    _, full = finished
    assert comparable(run_connect(CONFIG)) == comparable(full)

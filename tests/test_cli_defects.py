"""Regression tests for what a hostile user found: each bad input is a one-line error with exit status 2,
each tampered file is refused, and nothing is left behind by a refused command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modeconnect import cli
from modeconnect.experiments.store import SweepDirectory
from modeconnect.experiments.sweep import pair_row


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(code: int, stderr: str, message: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("modeconnect: error:") and message in last, last


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("defects") / "cubic"
    assert cli.main(["connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                     "--out", str(out)]) == 0
    return out


def unfinished_copy(finished: Path, where: Path) -> Path:
    """A copy of a finished run without its result: re-running it loads the path and certifies again."""
    out = where / "copy"
    shutil.copytree(finished, out)
    (out / "result.json").unlink()
    return out


# -- bad values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--threshold", "-inf"], "threshold must be a positive finite number, got -inf"),
    (["--threshold=-inf"], "threshold must be a positive finite number, got -inf"),
    (["--threshold", "inf"], "threshold must be a positive finite number, got inf"),
    (["--grid-size", "1000000000"], "grid_size must be between 3"),
    (["--bead-lr", "-1e-3"], "lr must be a positive number"),
    (["--certify-initial-grid", "2"], "initial_grid must be None or an int >= 3"),
    (["--method", "constrained_dss", "--zeta", "-1"], "zeta must be a finite number >= 0, got -1.0"),
    (["--method", "string_evolution", "--grid-size", "2"], "grid_size must be between 3 and 100,000, got 2"),
    (["--prove", "--proof-slack", "-1"], "proof slack must be a finite number >= 0, got -1.0"),
    (["--prove", "--proof-dtype", "float16"], "proof dtype must be one of float64, float32, got 'float16'"),
    (["--prove", "--proof-max-bounds", "0"], "proof max_bounds must be an int >= initial_pieces"),
])
def test_bad_settings_are_one_line_errors(capsys, argv, message):
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--quiet", *argv)
    assert_error(code, stderr, message)


def test_out_at_an_existing_file(capsys, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--quiet", "--out", str(target))
    assert_error(code, stderr, "exists and is a file")
    assert target.read_text() == "mine"


def test_out_where_nothing_can_be_written(capsys):
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--quiet", "--out", "/proc/modeconnect-run")
    assert_error(code, stderr, "choose a writable --out")


def test_empty_out_is_refused_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--quiet", "--out", "")
    assert_error(code, stderr, "must not be empty")
    assert list(tmp_path.iterdir()) == []


def test_a_refused_directory_keeps_no_lock(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--quiet", "--out", str(tmp_path))
    assert_error(code, stderr, "is not a modeconnect run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_missing_data_dir_is_named_as_the_flag(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "connect", "--task", "mnist", "--data-dir", str(tmp_path / "nope"))
    assert_error(code, stderr, f"--data-dir {tmp_path / 'nope'} does not exist")
    assert "MODECONNECT_DATA" not in stderr


def test_data_list_takes_a_data_dir(capsys, tmp_path):
    (tmp_path / "ptb").mkdir()
    code, stdout, _ = run_cli(capsys, "data", "list", "--data-dir", str(tmp_path))
    assert code == 0
    lines = {line.split()[0]: line for line in stdout.splitlines()}
    assert lines["ptb"].endswith("[present]") and lines["mnist"].endswith("[absent]")


def test_show_json_into_a_closed_pipe_has_no_traceback(finished, monkeypatch, tmp_path):
    """``modeconnect show DIR --json | head``: the reader goes away and the write fails with EPIPE."""
    class ClosedPipe:
        def __init__(self) -> None:
            self.handle = open(tmp_path / "sink", "w")

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return self.handle.fileno()

    pipe = ClosedPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    try:
        assert cli.main(["show", str(finished), "--json"]) == 0
    finally:
        pipe.handle.close()


def test_show_json_piped_into_head_in_a_real_process(finished):
    proc = subprocess.run(f"{sys.executable} -m modeconnect show {finished} --json | head -c 1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == "{" and "Traceback" not in proc.stderr


# -- tampered files -------------------------------------------------------------------------------

def test_a_flipped_byte_in_the_beads_file_is_refused_on_resume(capsys, finished, tmp_path):
    out = unfinished_copy(finished, tmp_path)
    (beads,) = (out / "path").glob("beads-*.safetensors")
    data = bytearray(beads.read_bytes())
    data[-5] ^= 0x01
    beads.write_bytes(bytes(data))
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert_error(code, stderr, "SHA-256")
    assert not (out / "result.json").exists()


def test_a_flipped_byte_in_an_endpoint_file_is_refused(capsys, finished, tmp_path):
    out = unfinished_copy(finished, tmp_path)
    file = out / "endpoint_b.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10
    file.write_bytes(bytes(data))
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert_error(code, stderr, "endpoint_b.safetensors has SHA-256")


@pytest.mark.parametrize("name", ["../../other-run/path/beads-0123456789ab.safetensors", "/etc/passwd"])
def test_a_tensor_file_outside_the_run_is_never_opened(capsys, finished, tmp_path, name):
    out = unfinished_copy(finished, tmp_path)
    meta_file = out / "path" / "path.json"
    meta = json.loads(meta_file.read_text())
    meta["tensors"] = name
    meta_file.write_text(json.dumps(meta))
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert_error(code, stderr, "field 'tensors' must name a beads-<12 hex digits>.safetensors file")


def test_a_path_from_another_run_is_refused(capsys, finished, tmp_path):
    """The path's end beads must be the run's endpoints: a path copied from another run is not resumed."""
    other = tmp_path / "other"
    assert cli.main(["connect", "--task", "cubic", "--threshold", "0.05", "--seed", "2", "--quiet",
                     "--out", str(other)]) == 0
    capsys.readouterr()
    out = unfinished_copy(finished, tmp_path)
    shutil.rmtree(out / "path")
    shutil.copytree(other / "path", out / "path")
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert_error(code, stderr, "does not start and end at this run's endpoints")


@pytest.mark.parametrize("content", ["[]", '{"format": "modeconnect.path", "version": 2}',
                                     '{"format": "modeconnect.path", "version": 2, "tensors": 123}'])
def test_path_json_of_the_wrong_shape_is_an_error(capsys, finished, tmp_path, content):
    out = unfinished_copy(finished, tmp_path)
    (out / "path" / "path.json").write_text(content)
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("modeconnect: error:")


def test_an_unknown_state_key_is_an_error(capsys, finished, tmp_path):
    out = unfinished_copy(finished, tmp_path)
    meta_file = out / "path" / "path.json"
    meta = json.loads(meta_file.read_text())
    meta["metadata"]["method_state"]["state"]["surprise"] = 1
    meta_file.write_text(json.dumps(meta))
    code, _, stderr = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--seed", "1", "--quiet",
                              "--out", str(out))
    assert_error(code, stderr, "unknown field(s) surprise")


# -- sweeps ----------------------------------------------------------------------------------------

def test_a_sweep_directory_in_use_is_refused(tmp_path):
    """While one sweep works in a directory, a second one (other levels) is refused instead of racing it."""
    out = tmp_path / "sweep"
    sweep = SweepDirectory(out)
    entered, release = threading.Event(), threading.Event()

    def hold():
        with sweep.lock():
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(30)
    try:
        proc = subprocess.run([sys.executable, "-m", "modeconnect", "sweep", "--task", "quadratic", "--levels", "0.1",
                               "--pairs", "1", "--quiet", "--no-figures", "--out", str(out)],
                              capture_output=True, text=True, timeout=120)
    finally:
        release.set()
        holder.join()
    assert proc.returncode == 2 and "is in use by process" in proc.stderr
    assert not (out / "sweep.json").exists() and not (out / ".lock").exists()


def test_a_pair_that_did_not_connect_has_empty_geometry():
    result = {"connected": False, "reason": "bead_not_trained", "n_beads": 0, "normalized_length": 1.0,
              "depth": 0, "path_length": 1.0, "distance": 1.0, "worst_barrier": 0.3,
              "endpoint_energies": [0.01, 0.01]}
    row = pair_row(0.1, 0, 7, "runs/x", result)
    assert row["status"] == "not_connected" and row["reason"] == "bead_not_trained"
    assert row["normalized_length"] is None and row["n_beads"] is None and row["depth"] is None
    assert row["worst_barrier"] == 0.3


def test_no_env_leak_from_data_dir(capsys, tmp_path, monkeypatch):
    """--data-dir applies to the command (and its workers) through the environment; a bad one changes nothing."""
    monkeypatch.delenv("MODECONNECT_DATA", raising=False)
    run_cli(capsys, "connect", "--task", "mnist", "--data-dir", str(tmp_path / "missing"))
    assert "MODECONNECT_DATA" not in os.environ


@pytest.mark.parametrize("argv, message", [
    (["--method", "constrained_dss", "--constraint", "bogus"], "argument --constraint: invalid choice: 'bogus'"),
    (["--method", "constrained_dss", "--kappa", "nan"], "argument --kappa: expected a number, got nan"),
    (["--align", "bogus"], "argument --align: invalid choice: 'bogus'"),
    (["--method", "nosuch"], "argument --method: invalid choice: 'nosuch'"),
])
def test_bad_choices_of_the_new_methods_are_usage_errors(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        cli.main(["connect", "--task", "cubic", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()


def test_a_bead_step_cap_below_the_endpoints_is_noted_before_any_training(capsys, tmp_path):
    from modeconnect.experiments import ConnectRunConfig

    config = ConnectRunConfig(task="cubic", threshold=0.05, method_settings={"bead_training": {"max_steps": 10}})
    (note,) = config.resolve().notes()
    assert "beads get max_steps=10 but endpoints 20000" in note and "--bead-max-steps" in note
    assert ConnectRunConfig(task="cubic", threshold=0.05).resolve().notes() == []


@pytest.mark.parametrize("variable, value, task", [("MODECONNECT_HEARTBEAT_S", "-1", "quadratic"),
                                                   ("MODECONNECT_HEARTBEAT_S", "soon", "quadratic"),
                                                   ("MODECONNECT_THREADS", "0", "mnist"),
                                                   ("MODECONNECT_THREADS", "two", "mnist")])
def test_malformed_environment_settings_are_one_line_errors(capsys, monkeypatch, tmp_path, variable, value, task):
    """The heartbeat interval and the pinned thread count come from the environment: a bad value names the
    variable, exits with status 2 and writes no run directory (mnist: the only tasks whose energy measures
    its threads; it needs the shared MNIST files)."""
    shared = Path(os.environ.get("MODECONNECT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    extra = []
    if task == "mnist":
        if not (shared / "mnist").is_dir():
            pytest.skip(f"the shared MNIST files are not at {shared}")
        extra = ["--data-dir", str(shared)]
    monkeypatch.setenv(variable, value)
    out = tmp_path / "run"
    code, _, stderr = run_cli(capsys, "connect", "--task", task, "--threshold", "2" if task == "mnist" else "0.1",
                              *extra, "--out", str(out))
    assert_error(code, stderr, variable)
    assert not out.exists()

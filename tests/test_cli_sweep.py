"""What a user sees from `modeconnect sweep`, `show`, `plot` and `data`: tables, files, interruption, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modeconnect import cli
from modeconnect.experiments.connect_run import TIMING_FIELDS

SHARED = Path(os.environ.get("MODECONNECT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SWEEP = ["sweep", "--task", "quadratic", "--levels", "0.1,0.05", "--pairs", "2", "--seed", "1"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def numbers(table: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in table["rows"]]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sweep"
    code = cli.main([*SWEEP, "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_sweep_prints_the_table_and_writes_files(swept, capsys):
    table = json.loads((swept / "table.json").read_text())
    code, stdout, _ = run_cli(capsys, "show", str(swept))
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "sweep of quadratic: 2 pair(s) per level, energy = mae"
    for agg, line in zip(table["aggregates"], lines[2:]):
        assert line.split()[0] == f"{agg['level']:g}"
        assert f"{agg['n_connected']} of 2" in line and f"{agg['normalized_length_mean']:.4f}" in line
    assert (swept / "table.csv").read_text().count("\n") == 4 + 2 + 1


def test_sweep_draws_the_two_panel_figure(swept, capsys):
    pytest.importorskip("matplotlib")
    code, stdout, _ = run_cli(capsys, "plot", str(swept), "--quiet")
    assert code == 0 and stdout.strip() == str(swept / "figures" / "sweep.png")
    assert (swept / "figures" / "sweep.png").stat().st_size > 10_000


def test_plot_of_a_run_writes_profile_string_pictures_gif_and_html(swept, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    run = swept / "runs" / "L0.05" / "pair-00"
    code, stdout, _ = run_cli(capsys, "plot", str(run), "--quiet")
    assert code == 0
    names = sorted(Path(line).name for line in stdout.split())
    assert names == ["profile.png", "snapshots.png", "string.gif", "string.html", "string.png"]
    picture = json.loads((run / "string_picture.json").read_text())
    result = json.loads((run / "result.json").read_text())
    final = picture["stages"][-1]
    assert len(final["beads"]) == result["n_beads"] + 2
    # the picture's energies at the beads are the energies DSS saw: the endpoints' are in the result
    assert final["bead_energies"][0] == pytest.approx(result["endpoint_energies"][0], rel=1e-6)
    assert len(picture["stages"]) == len(set(result["bead_births"]))


def test_plot_of_something_else_is_a_clear_error(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "plot", str(tmp_path))
    assert code == 2 and "neither a sweep nor a run directory" in stderr


def test_a_killed_pool_sweep_resumes_without_redoing_finished_pairs(swept, tmp_path):
    """SIGKILL the driver of a 2-worker sweep midway: its workers die with it, and re-running finishes the rest."""
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "modeconnect", *SWEEP, "--workers", "2", "--out", str(out), "--no-figures"]
    # a few more pairs at a lower level so that the sweep is still running when it is killed
    argv[argv.index("0.1,0.05")] = "0.1,0.05,0.01"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "table.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert children, "the pool had no worker processes"
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{c}").exists() and _state(c) != "Z" for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{c}").exists() and _state(c) != "Z" for c in children), "orphaned workers"
    finished = {p.parent: p.stat().st_mtime_ns for p in out.glob("runs/*/*/result.json")}
    assert 1 <= len(finished) < 6, "kill the sweep midway"

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} of 6 pairs already finished" in again.stderr
    assert all(p.joinpath("result.json").stat().st_mtime_ns == t for p, t in finished.items())
    table = json.loads((out / "table.json").read_text())
    assert len(table["rows"]) == 6
    reference = json.loads((swept / "table.json").read_text())
    assert numbers(table)[:4] == numbers(reference)


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_ctrl_c_on_a_sweep_says_how_to_continue(tmp_path):
    out = tmp_path / "interrupted"
    # a shell that starts the tests in the background leaves SIGINT ignored, and Python keeps it ignored: restore
    # the default in the child so that Ctrl-C reaches main() as it does in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "modeconnect", *SWEEP, "--levels", "0.01,0.005",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "sweep.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    # 130 from main(); now and then the interpreter reports the SIGINT itself (-2) after main() has handled it
    # and printed its message (seen about 1 run in 8 under load; cause not found yet)
    assert proc.returncode in (130, -signal.SIGINT), stderr
    assert "re-run the same command to continue" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--task", "quadratic", "--levels", "0.1,x", "--out", "o"], "comma-separated"),
    (["sweep", "--task", "quadratic", "--levels", "0.1,0.1", "--out", "o"], "distinct"),
    (["sweep", "--task", "quadratic", "--levels", "0.1", "--workers", "0", "--out", "o"], "workers must be"),
    (["sweep", "--task", "quadratic", "--levels", "0.1", "--address", "x:1", "--out", "o"], "--executor ray"),
    (["data", "fetch", "nosuch", "--from", "http://127.0.0.1:9"], "unknown dataset 'nosuch'"),
])
def test_sweep_and_data_errors_are_one_line(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(capsys, *argv)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_data_check_passes_on_the_shared_data_and_names_a_corrupt_file(capsys, tmp_path):
    if not (SHARED / "ptb").is_dir():
        pytest.skip(f"real-data test: {SHARED} not found")
    code, stdout, _ = run_cli(capsys, "data", "check", "ptb", "--data-dir", str(SHARED))
    assert code == 0 and stdout.count("SHA-256 matches") == 3
    shutil.copytree(SHARED / "ptb", tmp_path / "ptb")
    with open(tmp_path / "ptb" / "ptb.valid.txt", "r+b") as handle:
        handle.seek(100)
        handle.write(b"#")
    code, stdout, _ = run_cli(capsys, "data", "check", "--data-dir", str(tmp_path))
    assert code == 1
    bad = [line for line in stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and "ptb.valid.txt" in bad[0]

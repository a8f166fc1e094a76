"""What a user sees: summaries, files, exit codes, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modeconnect import cli


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convex_reports_zero_beads_and_length_one(capsys, tmp_path):
    out = tmp_path / "convex"
    code, stdout, stderr = run_cli(capsys, "connect", "--task", "convex", "--out", str(out))
    assert code == 0
    assert "connected          yes" in stdout
    assert "beads              0 intermediate" in stdout
    assert "normalized length  1 (" in stdout
    assert "training endpoint A" in stderr  # progress goes to stderr
    result = json.loads((out / "result.json").read_text())
    assert result["n_beads"] == 0 and result["normalized_length"] == 1.0 and result["connected"] is True


def test_permutation_reports_failure_and_why(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "connect", "--task", "permutation", "--bead-max-steps", "200",
                              "--out", str(tmp_path / "perm"))
    assert code == 0
    assert "connected          NO (bead_not_trained)" in stdout
    assert "ABOVE tolerance x L0" in stdout
    result = json.loads((tmp_path / "perm" / "result.json").read_text())
    assert result["connected"] is False and result["certified"] is False
    assert result["certified_max_energy"] > result["threshold"]
    assert result["endpoint_energies"][0] == pytest.approx(result["endpoint_energies"][1], abs=1e-7)


def test_cubic_at_005_connects_and_show_prints_it(capsys, tmp_path):
    out = tmp_path / "c"
    code, stdout, _ = run_cli(capsys, "connect", "--task", "cubic", "--threshold", "0.05", "--quiet", "--out", str(out))
    assert code == 0 and "connected          yes" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["connected"] and result["certified_max_energy"] <= 0.05 * 1.05
    assert result["n_beads"] >= 1 and result["normalized_length"] > 1.0
    code, shown, _ = run_cli(capsys, "show", str(out))
    assert code == 0
    assert shown.splitlines()[:-1] == stdout.splitlines()[:-1]  # same summary, only "saved in" differs
    code, shown_json, _ = run_cli(capsys, "show", str(out), "--json")
    assert json.loads(shown_json) == result


def test_json_output(capsys):
    code, stdout, stderr = run_cli(capsys, "connect", "--task", "convex", "--json", "--quiet")
    assert code == 0 and stderr == ""
    assert json.loads(stdout)["n_beads"] == 0


@pytest.mark.parametrize("argv, message", [
    (["connect", "--task", "convex", "--alpha", "2"], "alpha must be in (0, 1]"),
    (["connect", "--task", "quadratic", "--threshold", "1e-6", "--endpoint-max-steps", "20"],
     "endpoint A reached energy"),
    (["connect", "--task", "convex", "--threshold", "-1"], "threshold must be a positive"),
    (["connect", "--task", "convex", "--certify-resolution", "2"], "resolution must be in (0, 1)"),
    (["show", "/nonexistent/run"], "is not a directory"),
])
def test_errors_are_one_line_with_exit_code_2(capsys, argv, message):
    code, stdout, stderr = run_cli(capsys, *argv)
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("modeconnect: error:")


def test_show_of_an_unfinished_run_says_resume(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, _, stderr = run_cli(capsys, "show", str(tmp_path))
    assert code == 2 and "unfinished run: re-run its command to resume" in stderr


def test_interrupt_tells_how_to_resume(capsys, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_connect", interrupted)
    code, _, stderr = run_cli(capsys, "connect", "--task", "convex", "--out", str(tmp_path / "x"))
    assert code == 130 and "re-run the same command to resume" in stderr


def test_bad_flag_value_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["connect", "--task", "imagenet"])
    assert info.value.code == 2
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_real_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "modeconnect", "connect", "--task", "convex", "--alpha", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "modeconnect: error: alpha must be in (0, 1], got 0.0" in proc.stderr
    assert "Traceback" not in proc.stderr

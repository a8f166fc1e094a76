"""Live progress: timestamped lines off a terminal, bars on one, nothing with --quiet; never a different result."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from modeconnect import cli
from modeconnect.cli_settings import run_config_from
from modeconnect.errors import ConfigError
from modeconnect.experiments.connect_run import run_connect
from modeconnect.experiments.sweep import SweepConfig, run_sweep
from modeconnect.progress import PROGRESS_ENV_VAR, Reporter, closing_bars, open_task

STAMP = re.compile(r"^\[ *\d+\.\ds\] \S")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = "━"  # rich's bar character
CONNECT = ["connect", "--task", "quadratic", "--seed", "1"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recorder:
    """A progress callable that also opens tasks, recording everything it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.tasks: list[dict] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def task(self, description, total=None):
        record = {"description": description, "total": total, "updates": [], "closed": False}
        self.tasks.append(record)
        recorder = self

        class _Task:
            def update(self, completed=None, *, total=None, info=None):
                record["updates"].append((completed, info))

            def advance(self, amount=1, *, info=None):
                done = (record["updates"][-1][0] if record["updates"] else 0) + amount
                record["updates"].append((done, info))

            def say(self, message):
                recorder.lines.append("task: " + message)

            def close(self):
                record["closed"] = True

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        return _Task()

    def named(self, prefix: str) -> list[dict]:
        return [t for t in self.tasks if t["description"].startswith(prefix)]


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV_VAR, raising=False)
    monkeypatch.setenv("TERM", "xterm")


def _numbers(result: dict) -> dict:
    """The result without what depends on the clock or the machine."""
    if isinstance(result, dict):
        return {k: _numbers(v) for k, v in result.items()
                if not (k.endswith("_s") or k in ("device",))}
    if isinstance(result, list):
        return [_numbers(v) for v in result]
    return result


def _config(argv: list[str], **overrides):
    """The run config the CLI builds from ``argv``."""
    return run_config_from(cli.build_parser(cli.method_from_argv(argv)).parse_args(argv), **overrides)


def _run_here(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _run_in_pty(argv: list[str], columns: int = 120) -> tuple[int, str]:
    """Run the CLI in a child whose stdout and stderr are a pseudo-terminal; everything it wrote, raw."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV_VAR} | {"TERM": "xterm"}
    child = subprocess.Popen([sys.executable, "-m", "modeconnect", *argv], stdin=subprocess.DEVNULL, stdout=slave,
                             stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return child.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One quadratic connect two ways in this process: off a terminal and with --quiet."""
    root = tmp_path_factory.mktemp("progress")
    lines = _run_here(CONNECT + ["--out", str(root / "lines")])
    quiet = _run_here(CONNECT + ["--quiet", "--out", str(root / "quiet")])
    results = {name: json.loads((root / name / "result.json").read_text()) for name in ("lines", "quiet")}
    return {"lines": lines, "quiet": quiet, "results": results}


@pytest.fixture(scope="module")
def on_terminal(tmp_path_factory):
    """The same connect in a child process on a pseudo-terminal: its raw output and its result."""
    root = tmp_path_factory.mktemp("progress-pty")
    code, raw = _run_in_pty(CONNECT + ["--out", str(root / "bars")])
    return code, raw, json.loads((root / "bars" / "result.json").read_text())


def test_off_a_terminal_progress_is_timestamped_lines_without_escape_codes(runs):
    code, stdout, stderr = runs["lines"]
    assert code == 0
    lines = stderr.splitlines()
    assert any("training endpoint A" in line for line in lines) and any("certifying" in line for line in lines)
    assert all(STAMP.match(line) for line in lines), [line for line in lines if not STAMP.match(line)]
    for text in (stdout, stderr):
        assert "\x1b" not in text and "\r" not in text and BAR not in text
    assert stdout.startswith("task               quadratic")


def test_quiet_prints_only_the_summary(runs):
    code, stdout, stderr = runs["quiet"]
    assert code == 0 and stderr == ""
    assert stdout.splitlines()[:-2] == runs["lines"][1].splitlines()[:-2]  # all but wall time and where it is saved


@pytest.mark.slow  # a child process: torch's import is most of its few seconds
def test_a_pseudo_terminal_shows_bars_and_ends_with_the_same_summary(runs, on_terminal):
    code, raw, result = on_terminal
    assert _numbers(result) == _numbers(runs["results"]["lines"])  # the bars changed nothing
    assert code == 0
    assert BAR in raw and "\x1b[" in raw  # a drawn bar, redrawn in place
    assert re.search(r"endpoint A .*━.* \d+/\d+", ANSI.sub("", raw))  # the bar counts steps of the step cap
    plain = ANSI.sub("", raw).replace("\r\n", "\n")
    tail = plain[plain.index("task               quadratic"):].splitlines()
    summary = runs["lines"][1].splitlines()
    # after the summary starts, nothing but the summary: no bar was left drawn under it
    assert [line.rstrip() for line in tail[:-2]] == summary[:-2]
    assert tail[-1].startswith("saved in") and BAR not in "\n".join(tail)
    # the event lines are the same as off a terminal, timestamped
    events = [ANSI.sub("", line).split("] ", 1)[1] for line in plain.splitlines() if STAMP.match(line)]
    expected = [line.split("] ", 1)[1] for line in runs["lines"][2].splitlines()]
    assert events == expected


def test_reporting_never_changes_the_result(runs, tmp_path):
    results = runs["results"]
    assert _numbers(results["lines"]) == _numbers(results["quiet"])
    recorded = run_connect(_config(CONNECT), str(tmp_path / "recorded"), progress=Recorder())
    assert _numbers(recorded) == _numbers(results["lines"])


def test_phases_report_their_counts_to_the_reporter(tmp_path):
    recorder = Recorder()
    config = _config(CONNECT)
    result = run_connect(config, str(tmp_path / "run"), progress=recorder)
    resolved = config.resolve()
    for which in "AB":
        (bar,) = recorder.named(f"endpoint {which}")
        assert bar["total"] == resolved.endpoint_training.max_steps and bar["closed"]
        steps = [u[0] for u in bar["updates"]]
        assert steps == sorted(steps) and steps[0] == 0
        done = next(line for line in recorder.lines if line.startswith(f"endpoint {which}: energy"))
        assert done.endswith(f"after {steps[-1]} steps")  # the bar's last count is the training's last step
        assert f"(target {result['endpoint_target']:.4g})" in bar["updates"][-1][1]
    beads = recorder.named("bead ")
    assert len(beads) == result["beads_trained"] >= 1
    assert all(b["total"] == resolved.method_config.bead_training.max_steps and b["closed"] for b in beads)
    for bead, log in zip(beads, result["bead_log"]):
        assert bead["updates"][-1][0] == log["train_steps"]
    (cert,) = recorder.named("certifying")
    assert cert["total"] == result["n_pieces"] and cert["closed"]
    assert cert["updates"][-1][1].endswith(f"{result['certificate']['n_evaluations']} evaluations")


def test_a_sweep_counts_its_pairs_and_shows_each_pairs_bars_but_not_its_lines(tmp_path):
    recorder = Recorder()
    recorder.bars = True  # a reporter that draws bars: pairs run in this process show theirs
    base = _config(["sweep", "--task", "quadratic", "--levels", "0.05", "--out", "x"], threshold=None)
    table = run_sweep(SweepConfig(base=base, levels=(0.05,), pairs=2), str(tmp_path / "sweep"), progress=recorder)
    (bar,) = recorder.named("sweep")
    assert bar["total"] == 2 and [u[0] for u in bar["updates"]] == [1, 2] and bar["closed"]
    assert len(table["rows"]) == 2
    assert len(recorder.named("endpoint A")) == 2 and len(recorder.named("certifying")) == 2
    assert not any("training endpoint" in line for line in recorder.lines)  # one line per pair, as before
    assert sum("pair" in line and "done" in line for line in recorder.lines) == 2
    again = Recorder()
    run_sweep(SweepConfig(base=base, levels=(0.05,), pairs=2), str(tmp_path / "sweep"), progress=again)
    assert again.named("sweep") == []  # nothing left to do: no bar


# -- the reporter on its own ----------------------------------------------------------------------------------
def test_reporter_off_a_terminal_prints_lines_and_no_bars():
    stream = io.StringIO()
    say = Reporter(stream=stream)
    assert not say.bars
    say("one")
    with open_task(say, "work", total=10) as task:
        task.update(5, info="half")
        task.advance(2)
        task.say("a status line")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["one", "a status line"]
    assert all(STAMP.match(line) for line in lines)


def test_reporter_on_a_terminal_draws_bars_and_takes_them_down():
    stream = FakeTerminal()
    say = Reporter(stream=stream)
    assert say.bars
    with open_task(say, "outer", total=4) as outer:
        with open_task(say, "inner", total=None) as inner:
            inner.update(3, info="status text")
            say("an event")
        assert say._live is not None  # the outer bar is still up
        outer.update(4)
    assert say._live is None
    text = stream.getvalue()
    assert BAR in text and "\x1b[" in text
    assert "an event" in ANSI.sub("", text)
    say("after")  # no bar up: a plain line, as off a terminal
    assert stream.getvalue().endswith("] after\n") and STAMP.match(stream.getvalue().splitlines()[-1])


def test_quiet_reporter_prints_nothing_even_on_a_terminal():
    stream = FakeTerminal()
    say = Reporter(quiet=True, stream=stream)
    say("x")
    with open_task(say, "work", total=3) as task:
        task.update(1)
        task.say("status")
    assert stream.getvalue() == ""


def test_progress_mode_setting(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV_VAR, "lines")
    assert not Reporter(stream=FakeTerminal()).bars
    monkeypatch.setenv(PROGRESS_ENV_VAR, "bars")
    assert Reporter(stream=io.StringIO()).bars
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv(PROGRESS_ENV_VAR)
    assert not Reporter(stream=FakeTerminal()).bars
    monkeypatch.setenv(PROGRESS_ENV_VAR, "fancy")
    with pytest.raises(ConfigError, match="not one of auto, bars, lines"):
        Reporter(stream=FakeTerminal())


def test_a_bar_left_open_by_an_error_is_taken_down():
    say = Reporter(stream=FakeTerminal())
    with pytest.raises(RuntimeError), closing_bars():
        open_task(say, "never closed", total=5).update(1)
        raise RuntimeError("boom")
    assert say._live is None


def test_every_long_running_command_takes_quiet():
    parser = cli.build_parser()
    commands = (["connect"], ["sweep", "--levels", "1", "--out", "x"], ["compare", "--methods", "bezier", "--out", "x"],
                ["components", "--levels", "1", "--out", "x"], ["dropout", "--task", "cubic", "--out", "x"],
                ["noise-stability", "--task", "cubic", "--out", "x"], ["reproduce", "x"], ["prove", "x"],
                ["plot", "x"], ["data", "fetch", "mnist", "--from", "http://x"])
    for argv in commands:
        assert parser.parse_args(argv + ["--quiet"]).quiet is True, argv


def test_dropout_masks_count_their_work_and_their_lines_become_the_bars_text():
    import torch
    from torch import nn

    from modeconnect import Energy
    from modeconnect.kuditipudi.dropout import DropoutConfig, dropout_stability
    from modeconnect.kuditipudi.units import hidden_units
    from modeconnect.params import point_from_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2))
    x, y = torch.randn(40, 3), torch.randn(40, 2)
    energy, spec, point = Energy(model, x, y, "mse", strategy="vmap"), hidden_units(model), point_from_module(model)
    config = DropoutConfig(p=0.5, masks=5, chunk=3)
    recorder, plain = Recorder(), []
    _, report = dropout_stability(point, energy, spec, config, progress=recorder)
    _, reference = dropout_stability(point, energy, spec, config, progress=plain.append)
    (bar,) = recorder.tasks
    assert bar["total"] == 10 and [u[0] for u in bar["updates"]] == [3, 6, 9, 10] and bar["closed"]
    assert recorder.lines == ["task: " + line for line in plain]  # the per-chunk lines become the bar's text
    assert report.energies == reference.energies


@pytest.mark.slow  # noise stability's first call in a process warms torch.func up (seconds)
def test_noise_stability_counts_its_work():
    import torch
    from torch import nn

    from modeconnect.kuditipudi.noise import NoiseStabilityConfig, noise_stability

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(10, 3)
    recorder = Recorder()
    config = NoiseStabilityConfig(batch_size=4, dropout_draws=1, power_iterations=20)
    measured = noise_stability(model, x.double(), config, progress=recorder)
    (bar,) = recorder.tasks
    pairs = len(measured.interlayer_cushion)  # one power iteration per (i, j) and batch, then the smoothness
    assert bar["total"] == 3 * (pairs + 1) and bar["updates"][-1][0] == bar["total"] and bar["closed"]


# -- NEB and string evolution ---------------------------------------------------------------------------------
NEB = CONNECT + ["--method", "neb", "--steps-per-cycle", "60", "--max-cycles", "3"]
EVOLUTION = CONNECT + ["--method", "string_evolution"]


class SpyReporter(Reporter):
    """A reporter that also records the tasks it is asked to open."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def task(self, description, total=None):
        self.opened.append(description)
        return super().task(description, total)


def test_neb_counts_its_cycles_and_each_cycles_steps_and_a_forced_bar_reporter_draws_them(tmp_path):
    recorder, plain = Recorder(), []
    result = run_connect(_config(NEB), str(tmp_path / "recorded"), progress=recorder)
    reference = run_connect(_config(NEB), str(tmp_path / "plain"), progress=plain.append)
    assert recorder.lines == plain and _numbers(result) == _numbers(reference)
    (outer,) = recorder.named("neb: AutoNEB cycles")
    assert outer["total"] == 3 and outer["closed"]
    assert [u[0] for u in outer["updates"]] == list(range(result["cycles"] + 1))  # from 0, one per cycle
    target = _config(NEB).resolve().method_config.tolerance * result["threshold"]
    assert [u[1] for u in outer["updates"][1:]] == [f"max barrier {b:.4g} (target {target:.4g})"
                                                   for b in result["cycle_max_barrier"]]
    inner = recorder.named("cycle ")
    assert [t["description"] for t in inner] == [f"cycle {e['cycle']}: NEB steps on {e['images']} image(s)"
                                                 for e in result["cycle_log"]]
    assert all(t["total"] == 60 and t["closed"] for t in inner)
    assert [u[0] for u in inner[0]["updates"]] == list(range(10, 61, 10))  # every BAR_EVERY steps, to the last
    loss = result["cycle_log"][0]["max_image_loss"]
    assert inner[0]["updates"][-1][1] == f"highest image loss {loss:.4g} (minibatch)"

    stream = io.StringIO()
    with SpyReporter(stream=stream, mode="bars") as bars:
        drawn = run_connect(_config(NEB), str(tmp_path / "bars"), progress=bars)
    assert _numbers(drawn) == _numbers(reference)
    assert "neb: AutoNEB cycles" in bars.opened and any(d.startswith("cycle 0: NEB steps on") for d in bars.opened)
    assert BAR in stream.getvalue() and "\x1b[" in stream.getvalue()


def test_neb_off_a_terminal_prints_the_same_lines_and_nothing_with_quiet(tmp_path):
    plain: list[str] = []
    run_connect(_config(NEB), str(tmp_path / "plain"), progress=plain.append)
    stream = io.StringIO()
    run_connect(_config(NEB), str(tmp_path / "lines"), progress=Reporter(stream=stream, mode="lines"))
    lines = stream.getvalue().splitlines()
    assert all(STAMP.match(line) for line in lines) and "\x1b" not in stream.getvalue()
    assert [line.split("] ", 1)[1] for line in lines] == plain  # no heartbeat: nothing was silent for 30 s
    quiet = FakeTerminal()
    run_connect(_config(NEB), str(tmp_path / "quiet"), progress=Reporter(quiet=True, stream=quiet, mode="bars"))
    assert quiet.getvalue() == ""


def test_string_evolution_counts_its_rounds_and_each_rounds_batched_training(tmp_path):
    recorder = Recorder()
    result = run_connect(_config(EVOLUTION), str(tmp_path / "run"), progress=recorder)
    resolved = _config(EVOLUTION).resolve()
    (outer,) = recorder.named("string evolution: rounds")
    assert outer["total"] == resolved.method_config.max_rounds and outer["closed"]
    rounds = [u[0] for u in outer["updates"]]
    assert rounds == list(range(len(rounds)))  # from 0, one update per round
    assert f"(target {resolved.method_config.tolerance * result['threshold']:.4g})" in outer["updates"][-1][1]
    inner = recorder.named("round ")
    assert inner and all(t["closed"] and t["total"] == resolved.method_config.bead_training.max_steps for t in inner)
    for task in inner:
        steps = [u[0] for u in task["updates"]]
        assert steps[0] == 0 and steps == sorted(steps)
        assert re.fullmatch(r"highest bead energy \S+ \(target \S+\)", task["updates"][-1][1])
    assert not any(line.startswith("task: ") for line in recorder.lines)  # no line turned into a status


# -- the heartbeat --------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_task_prints_a_heartbeat_after_the_interval_and_not_before():
    clock, stream = FakeClock(), io.StringIO()
    say = Reporter(stream=stream, mode="lines", heartbeat_s=30, clock=clock)
    say("training endpoint A")
    with open_task(say, "endpoint A", total=5000) as task:
        clock.now += 29.9
        task.update(1100, info="energy 0.04 (target 0.01)")
        assert len(stream.getvalue().splitlines()) == 1  # not yet
        clock.now += 0.2
        task.update(1200, info="energy 0.031 (target 0.01)")
        lines = stream.getvalue().splitlines()
        assert lines[-1] == "[   30.1s] endpoint A: 1200/5000, energy 0.031 (target 0.01)"
        clock.now += 20
        task.advance(100)
        assert len(stream.getvalue().splitlines()) == 2  # the heartbeat was a line: 30 s again from it
        clock.now += 10
        task.advance(100)
        assert stream.getvalue().splitlines()[-1] == "[   60.1s] endpoint A: 1400/5000, energy 0.031 (target 0.01)"
        clock.now += 25
        say("a line")  # any line restarts the silence
        clock.now += 25
        task.update(1500)
        assert stream.getvalue().splitlines()[-1].endswith("] a line")
    with open_task(say, "uncounted") as task:  # no total, no text
        clock.now += 31
        task.update(7)
    assert stream.getvalue().splitlines()[-1] == "[  141.1s] uncounted: 7"


def test_the_heartbeat_setting_and_where_there_is_none(monkeypatch):
    clock = FakeClock()
    monkeypatch.setenv("MODECONNECT_HEARTBEAT_S", "5")
    assert Reporter(stream=io.StringIO()).heartbeat_s == 5.0
    monkeypatch.setenv("MODECONNECT_HEARTBEAT_S", "0")
    assert Reporter(stream=io.StringIO()).heartbeat_s == 0.0
    monkeypatch.delenv("MODECONNECT_HEARTBEAT_S")
    assert Reporter(stream=io.StringIO()).heartbeat_s == 30.0
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("MODECONNECT_HEARTBEAT_S", bad)
        with pytest.raises(ConfigError, match="MODECONNECT_HEARTBEAT_S must be a number of seconds >= 0"):
            Reporter(stream=io.StringIO())
    monkeypatch.delenv("MODECONNECT_HEARTBEAT_S")
    for kwargs in ({"heartbeat_s": 0}, {"quiet": True}, {"mode": "bars"}):  # off, quiet, bars: no heartbeat line
        stream = FakeTerminal() if kwargs.get("mode") == "bars" else io.StringIO()
        say = Reporter(stream=stream, clock=clock, **{"mode": "lines", **kwargs})
        with open_task(say, "endpoint A", total=10) as task:
            clock.now += 1000
            task.update(5, info="energy 1")
        say.close()
        assert "endpoint A: 5/10" not in ANSI.sub("", stream.getvalue()), kwargs


# -- pool workers' progress -----------------------------------------------------------------------------------
class FakeQueue:
    def __init__(self, size: int | None = None) -> None:
        self.items: list[tuple] = []
        self.size = size

    def put_nowait(self, item) -> None:
        import queue

        if self.size is not None and len(self.items) >= self.size:
            raise queue.Full
        self.items.append(item)


@pytest.fixture
def worker_queue(monkeypatch):
    from modeconnect import worker_progress

    sent = FakeQueue()
    monkeypatch.setattr(worker_progress, "_queue", sent)
    return sent


def test_a_worker_sends_throttled_snapshots_of_its_innermost_task(worker_queue, monkeypatch):
    import pickle

    from modeconnect.worker_progress import OPEN_GAP_S, SEND_EVERY_S, WorkerProgress

    clock = FakeClock()
    progress = pickle.loads(pickle.dumps(WorkerProgress()))  # as a unit in a worker gets it
    progress.clock = clock
    pid = os.getpid()
    progress("a line")  # lines stay in the worker
    outer = open_task(progress, "endpoint A", total=100)
    assert worker_queue.items == [(pid, "endpoint A", None, 100, "")]
    for step in range(1, 11):  # ten updates in 0.1 s: none sent
        clock.now += 0.01
        outer.update(step, info=f"energy {step}")
    assert len(worker_queue.items) == 1
    clock.now += SEND_EVERY_S + 1e-6
    outer.update(20, info="energy 20")
    assert worker_queue.items[-1] == (pid, "endpoint A", 20, 100, "energy 20")
    clock.now += OPEN_GAP_S + 1e-6
    inner = open_task(progress, "bead 1", total=50)  # a new phase goes after the shorter gap
    assert worker_queue.items[-1] == (pid, "bead 1", None, 50, "")
    inner.close()  # too soon after: not sent, the next snapshot says it
    assert worker_queue.items[-1][1] == "bead 1"
    clock.now += SEND_EVERY_S + 1e-6
    outer.update(30)
    assert worker_queue.items[-1] == (pid, "endpoint A", 30, 100, "energy 20")
    outer.close()  # the last task: always sent
    assert worker_queue.items[-1] == (pid, None, None, None, "")


def test_a_full_or_missing_queue_drops_snapshots_without_waiting(monkeypatch):
    from modeconnect import worker_progress
    from modeconnect.worker_progress import WorkerProgress

    full = FakeQueue(size=1)
    monkeypatch.setattr(worker_progress, "_queue", full)
    for _ in range(3):
        with open_task(WorkerProgress(), "endpoint A", total=10) as task:
            task.update(1)
    assert len(full.items) == 1
    monkeypatch.setattr(worker_progress, "_queue", None)  # a unit run outside a pool: nothing to send to
    with open_task(WorkerProgress(), "endpoint A", total=10) as task:
        task.update(1)


def test_the_parent_shows_one_bar_per_worker():
    from modeconnect.worker_progress import WorkerBars

    recorder = Recorder()
    bars = WorkerBars(recorder)
    bars.receive((11, "endpoint A", None, 100, ""))
    bars.receive((22, "endpoint A", 5, 100, "energy 1"))
    bars.receive((11, "endpoint A", 40, 100, "energy 0.5"))
    bars.receive((11, "bead 1", 3, 50, "energy 2"))  # a new phase: the worker's old bar goes, a new one comes
    bars.receive((22, None, None, None, ""))  # worker 2 finished its unit
    assert [(t["description"], t["closed"]) for t in recorder.tasks] == [
        ("worker 1: endpoint A", True), ("worker 2: endpoint A", True), ("worker 1: bead 1", False)]
    assert recorder.tasks[0]["updates"] == [(None, None), (40, "energy 0.5")]
    bars.close()
    assert all(t["closed"] for t in recorder.tasks)


SWEEP = ["sweep", "--task", "quadratic", "--levels", "0.05", "--out", "x"]


@pytest.fixture(scope="module")
def plain_sweep(tmp_path_factory):
    """A 2-pair sweep run here with a plain progress callable: its config and table."""
    config = SweepConfig(base=_config(SWEEP, threshold=None), levels=(0.05,), pairs=2)
    return config, run_sweep(config, str(tmp_path_factory.mktemp("sweep") / "plain"), progress=[].append)


def test_a_sweep_run_here_off_a_terminal_prints_its_units_heartbeat_but_not_their_lines(plain_sweep, tmp_path):
    config, reference = plain_sweep

    class Ticking:  # a clock that moves one second each time it is read
        now = 0.0

        def __call__(self):
            self.now += 1.0
            return self.now

    stream = io.StringIO()
    say = Reporter(stream=stream, mode="lines", heartbeat_s=60, clock=Ticking())
    table = run_sweep(config, str(tmp_path / "sweep"), progress=say)
    assert _numbers(table["rows"]) == _numbers(reference["rows"])
    events = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    beats = [e for e in events if re.fullmatch(r"(endpoint [AB]|bead \d+): \d+/\d+, energy \S+ \(target \S+\)", e)]
    assert beats  # a unit's phases beat after a silence ...
    assert not any("training endpoint" in e or e.startswith("certifying") for e in events)  # ... but say nothing else
    assert sum("pair" in e and "done" in e for e in events) == 2


def test_pool_workers_progress_reaches_the_parent_and_changes_nothing(plain_sweep, tmp_path):
    from modeconnect.experiments.executors import make_executor

    config, reference = plain_sweep
    recorder = Recorder()
    recorder.bars = True
    with make_executor("local", 2, threads=1) as executor:
        table = run_sweep(config, str(tmp_path / "pool"), executor=executor, progress=recorder)
    assert _numbers(table["rows"]) == _numbers(reference["rows"])
    workers = recorder.named("worker ")
    assert all(re.fullmatch(r"worker [12]: .+", t["description"]) and t["closed"] for t in workers)
    # each unit's first phase is always sent: one endpoint A bar per pair
    assert sum(t["description"].endswith(": endpoint A") for t in workers) == 2
    (units,) = recorder.named("sweep")
    assert [u[0] for u in units["updates"]] == [1, 2]


def test_ray_units_progress_reaches_the_parent_changes_nothing_and_survives_a_dead_mailbox(plain_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    from modeconnect.experiments.executors import make_executor

    config, reference = plain_sweep
    recorder, orphaned = Recorder(), Recorder()
    recorder.bars = orphaned.bars = True
    with make_executor("ray", 2, threads=1) as executor:
        table = run_sweep(config, str(tmp_path / "ray"), executor=executor, progress=recorder)
        ray.kill(executor._mailbox.actor, no_restart=True)  # the mailbox dies: the units must not notice
        again = run_sweep(config, str(tmp_path / "dead"), executor=executor, progress=orphaned)
    assert _numbers(table["rows"]) == _numbers(reference["rows"]) == _numbers(again["rows"])
    workers = recorder.named("worker ")
    assert all(re.fullmatch(r"worker [12]: .+", t["description"]) and t["closed"] for t in workers)
    assert sum(t["description"].endswith(": endpoint A") for t in workers) == 2  # each unit's first phase
    assert not orphaned.named("worker ")
    (units,) = orphaned.named("sweep")
    assert [u[0] for u in units["updates"]] == [1, 2]

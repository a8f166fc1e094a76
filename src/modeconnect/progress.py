"""Progress: what long phases report, and how the command line shows it.

Core code takes ``progress``: a callable that receives one line of text, as it always has
(``progress("training endpoint A")``). A long phase whose work can be counted also opens a *task* on it::

    with open_task(progress, "endpoint A", total=max_steps) as task:
        ...
        task.update(step, info=f"energy {value:.4g}")   # where the phase is (a bar, on a terminal)
        task.say("batch 3/8 done")                      # a status line (see below)

:func:`open_task` works with any callable. A plain one (a library user's ``print``, a test's list) gets a
task that ignores counts and passes ``say`` on as a line, so it sees exactly the lines it always saw.
Only :class:`Reporter`, which the command line creates, knows about terminals and bars:

* on a terminal (stderr is a TTY) it draws a live progress bar per open task on stderr and prints the
  timestamped lines above them; a task's ``say`` lines become the bar's text instead of scrolling by
  (they are frequent status updates); a bar disappears when its task ends, so what stays on the screen
  is the lines and the command's summary;
* otherwise (a file, a pipe, CI) it prints the timestamped lines, ``[   12.3s] message``, and nothing
  else: no escape codes; except that a task that moves after ``$MODECONNECT_HEARTBEAT_S`` seconds (default
  30, 0: never) without a line prints a *heartbeat* line of where it is (``endpoint A: 1200/20000, energy
  0.031 (target 0.01)``), checked on the task's updates (no thread);
* quiet, it prints nothing (errors and the command's summary are not progress and still print).

``MODECONNECT_PROGRESS=lines`` (or ``bars``) overrides the terminal test; the default is ``auto``.
The bars are drawn by `rich <https://rich.readthedocs.io>`_, imported only when a bar is drawn. Units run in
a local process pool or on Ray show their bars in the parent through :mod:`modeconnect.worker_progress`.
Reporting never changes a result: tasks only read the numbers they are given.

>>> lines = []
>>> with open_task(lines.append, "endpoint A", total=100) as task:
...     task.update(50, info="energy 0.3")
...     task.say("half way")
>>> lines
['half way']
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .errors import ConfigError

Progress = Callable[[str], None]
"""``progress(line)``: a human-readable line about what is happening."""

PROGRESS_ENV_VAR = "MODECONNECT_PROGRESS"
"""``auto`` (bars on a terminal, lines otherwise), ``bars`` or ``lines``."""

MODES = ("auto", "bars", "lines")

HEARTBEAT_ENV_VAR = "MODECONNECT_HEARTBEAT_S"
"""Seconds of silence after which plain-line output prints a heartbeat line for the running task (0: never)."""

DEFAULT_HEARTBEAT_S = 30.0
"""The heartbeat interval when ``$MODECONNECT_HEARTBEAT_S`` is not set."""

_DRAWING: weakref.WeakSet[Reporter] = weakref.WeakSet()
"""Reporters with a live display up (see :func:`closing_bars`)."""


class Task:
    """A counted phase of work. This base class is the task a plain progress callable gets: ``say`` passes the
    line on, counts are ignored. Use it as a context manager (it closes on exit, errors included)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._progress = progress

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        """Set how much is done (and the total, or a short text shown next to the bar)."""

    def advance(self, amount: float = 1, *, info: str | None = None) -> None:
        """Add ``amount`` to what is done."""

    def say(self, message: str) -> None:
        """A status line: printed as a line on plain output, the bar's text on a terminal."""
        if self._progress is not None:
            self._progress(message)

    def close(self) -> None:
        """End the task (its bar disappears)."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_task(progress: Progress | None, description: str, total: float | None = None) -> Task:
    """A task on ``progress``: a bar when ``progress`` draws them (a :class:`Reporter` on a terminal), else a
    :class:`Task` that only passes ``say`` lines on. ``total`` None: the amount of work is not known."""
    opener = getattr(progress, "task", None)
    if callable(opener):
        return opener(description, total)
    return Task(progress)


def training_reporter(task: Task, target: float) -> Callable[[int, float], None]:
    """An ``on_check(step, energy)`` for :func:`modeconnect.train.train_to_target` that moves ``task``'s bar to
    ``step`` and shows the energy against its ``target``."""

    def on_check(step: int, value: float) -> None:
        task.update(step, info=f"energy {value:.4g} (target {target:.4g})")

    return on_check


def bars_only(progress: Progress | None) -> Progress | None:
    """What a unit of a sweep (compare, components) run in this process gets: the bars of ``progress`` when it
    draws them, without its lines (a sweep prints one line per finished unit, not each unit's own lines);
    None otherwise, so logs stay as they are."""
    if getattr(progress, "bars", False) and callable(getattr(progress, "task", None)):
        return _TasksOnly(progress)
    return None


def for_units(progress: Progress | None) -> Progress | None:
    """What a unit of a sweep run in this process gets: :func:`bars_only` where ``progress`` draws bars; off a
    terminal, a :class:`Reporter`'s heartbeat alone (a unit's tasks print no line but the heartbeat after a
    long silence, so a long unit does not look hung); None otherwise."""
    bars = bars_only(progress)
    if bars is not None:
        return bars
    if isinstance(progress, Reporter) and not progress.quiet and progress.heartbeat_s > 0:
        return _TasksOnly(progress, status_lines=False)
    return None


class _TasksOnly:
    def __init__(self, progress: Any, status_lines: bool = True) -> None:
        self._progress, self._status_lines = progress, status_lines

    def __call__(self, message: str) -> None:
        pass

    def task(self, description: str, total: float | None = None) -> Task:
        task = self._progress.task(description, total)
        return task if self._status_lines else _Unsaid(task)


class _Unsaid(Task):
    """A task whose ``say`` lines are dropped (its counts, and so its heartbeat, go on)."""

    def __init__(self, task: Task) -> None:
        super().__init__(None)
        self._task = task

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        self._task.update(completed, total=total, info=info)

    def advance(self, amount: float = 1, *, info: str | None = None) -> None:
        self._task.advance(amount, info=info)

    def say(self, message: str) -> None:
        pass

    def close(self) -> None:
        self._task.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def heartbeat_setting(value: float | str | None = None) -> float:
    """The heartbeat interval in seconds: ``value``, else ``$MODECONNECT_HEARTBEAT_S``, else
    :data:`DEFAULT_HEARTBEAT_S`; 0 turns it off."""
    where = "the heartbeat interval"
    if value is None:
        value, where = os.environ.get(HEARTBEAT_ENV_VAR) or DEFAULT_HEARTBEAT_S, f"${HEARTBEAT_ENV_VAR}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigError(f"{where} must be a number of seconds >= 0 (0: no heartbeat), got {value!r}")
    return seconds


class Reporter:
    """The command line's progress: timestamped lines, and live bars on a terminal (see the module doc).

    ``mode``: ``auto``, ``bars`` or ``lines`` (default: ``$MODECONNECT_PROGRESS``, else ``auto``).
    ``heartbeat_s``: on plain lines, a task that moves with no line printed for this long prints one
    (default: ``$MODECONNECT_HEARTBEAT_S``, else 30 s; 0: never). ``clock``: seconds, for the stamps (tests).
    Close it (or use it as a context manager) before printing a summary, so no bar is left drawn.
    """

    def __init__(self, quiet: bool = False, *, stream: TextIO | None = None, mode: str | None = None,
                 heartbeat_s: float | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream = stream if stream is not None else sys.stderr
        mode = mode if mode is not None else (os.environ.get(PROGRESS_ENV_VAR) or "auto")
        if mode not in MODES:
            raise ConfigError(f"progress mode {mode!r} (from ${PROGRESS_ENV_VAR}?) is not one of "
                              f"{', '.join(MODES)}; unset it or pick one")
        self.quiet = quiet
        self.bars = not quiet and (mode == "bars" or (mode == "auto" and _is_terminal(self.stream)))
        self.heartbeat_s = heartbeat_setting(heartbeat_s)
        self.clock = clock
        self.start = self.last_line = clock()
        self._live: _Bars | None = None

    def stamp(self, message: str) -> str:
        return f"[{self.clock() - self.start:7.1f}s] {message}"

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        self.last_line = self.clock()
        if self._live is not None:
            self._live.print(self.stamp(message))
        else:
            print(self.stamp(message), file=self.stream, flush=True)

    def task(self, description: str, total: float | None = None) -> Task:
        if self.quiet:
            return Task(None)
        if not self.bars:
            return _LineTask(self, description, total) if self.heartbeat_s > 0 else Task(self)
        if self._live is None:
            self._live = _Bars(self.stream)
            _DRAWING.add(self)
        return _BarTask(self, self._live, description, total)

    def _closed(self, live: _Bars) -> None:
        if live is self._live and live.empty():
            self.close()

    def close(self) -> None:
        """Take down any bar still drawn."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        _DRAWING.discard(self)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def closing_bars() -> Iterator[None]:
    """Take down every bar still drawn when the block ends, however it ends (a task that an error skipped
    closing must not leave its bar under the error message)."""
    try:
        yield
    finally:
        for reporter in list(_DRAWING):
            reporter.close()


class _LineTask(Task):
    """A task on plain lines: ``say`` prints a line; counts print nothing, except a heartbeat line
    (``endpoint A: 1200/20000, energy 0.031 (target 0.01)``) when the reporter has printed nothing for
    ``heartbeat_s`` since the later of its last line and this task's start. Checked when the task moves
    (no thread): a phase that stops updating prints no heartbeat."""

    def __init__(self, reporter: Reporter, description: str, total: float | None) -> None:
        super().__init__(reporter)
        self._reporter, self._description, self._total = reporter, description, total
        self._completed: float | None = None
        self._info = ""
        self._opened = reporter.clock()

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self._completed = completed
        if total is not None:
            self._total = total
        if info is not None:
            self._info = info
        self._beat()

    def advance(self, amount: float = 1, *, info: str | None = None) -> None:
        self.update((self._completed or 0) + amount, info=info)

    def _beat(self) -> None:
        reporter = self._reporter
        if reporter.clock() - max(reporter.last_line, self._opened) >= reporter.heartbeat_s:
            reporter(self.heartbeat_line())

    def heartbeat_line(self) -> str:
        """What the heartbeat says: the task, where it is out of its total, and its text."""
        parts = [self._description]
        if self._completed is not None:
            parts[0] += f": {self._completed:g}" + ("" if self._total is None else f"/{self._total:g}")
        if self._info:
            parts.append(self._info)
        return ", ".join(parts)


class _BarTask(Task):
    def __init__(self, reporter: Reporter, live: _Bars, description: str, total: float | None) -> None:
        super().__init__(None)
        self._reporter, self._live = reporter, live
        self._id = live.add(description, total)

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        if self._id is not None:
            self._live.update(self._id, completed=completed, total=total, info=info)

    def advance(self, amount: float = 1, *, info: str | None = None) -> None:
        if self._id is not None:
            self._live.update(self._id, advance=amount, info=info)

    def say(self, message: str) -> None:
        self.update(info=message)

    def close(self) -> None:
        if self._id is not None:
            self._live.remove(self._id)
            self._id = None
            self._reporter._closed(self._live)


class _Bars:
    """The one place that knows rich: a transient live display of bars on ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class Count(ProgressColumn):
            def render(self, task: Any) -> Text:
                done = f"{task.completed:g}"
                return Text(done if task.total is None else f"{done}/{task.total:g}", style="progress.download")

        console = Console(file=stream, force_terminal=True, highlight=False)
        self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(bar_width=30), Count(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False),
                                  console=console, transient=True, refresh_per_second=8,
                                  # a stray print to stdout goes above the bars only when stdout is this
                                  # terminal too; redirected (``--json > file``) it must stay in the file
                                  redirect_stdout=_is_terminal(sys.stdout))
        self._progress.start()
        self._running = True

    def print(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def add(self, description: str, total: float | None) -> Any:
        return self._progress.add_task(description, total=total, info="")

    def update(self, task_id: Any, *, info: str | None = None, **counts: Any) -> None:
        fields = {k: v for k, v in counts.items() if v is not None}
        if info is not None:
            fields["info"] = info
        self._progress.update(task_id, **fields)

    def remove(self, task_id: Any) -> None:
        self._progress.remove_task(task_id)

    def empty(self) -> bool:
        return not self._progress.task_ids

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._progress.stop()

"""A pool worker's progress, shown live in the parent: one bar per running worker under the units bar.

A unit run in a local process pool gets a :class:`WorkerProgress` as its ``progress``. It drops the unit's
lines (the parent prints one line per finished unit, as it always has) and turns the unit's tasks into
*snapshots* of the innermost open task, ``(worker pid, description, completed, total, info)``, put on the
pool's message queue: at most one per :data:`SEND_EVERY_S` while a task only moves, one per
:data:`OPEN_GAP_S` when a task opens or closes, and always ``(pid, None, ...)`` when the worker's last task
closes. A snapshot is whole, so one that is dropped is made good by the next.

Sending never waits: a full queue (a parent that does not read), a closed one or none at all (a unit run
somewhere else) drops the snapshot, and the queue is not flushed when the worker exits, so a dead parent
cannot hang a worker. A snapshot is a few hundred bytes, one atomic pipe write, so a worker killed while it
sends leaves no half message for the parent to wait on. The parent's :class:`WorkerBars` turns the
snapshots into bars on its own ``progress`` (``worker 2: endpoint B``); the executor drains the queue
between finished units (:mod:`modeconnect.experiments.executors`). Nothing here touches a tensor:
results are the same with it.

The queue is one kind of *sender*: anything with a ``put_nowait(message)`` that never waits (and raises
nothing but ``queue.Full``, ``ValueError`` or ``OSError``, which drop the snapshot). A Ray unit's sender
forwards to a small actor instead (:mod:`modeconnect.experiments.ray_mailbox`); the snapshots and the bars
are the same.
"""

from __future__ import annotations

import os
import queue as queue_module
import time
from typing import Any

from .progress import Progress, Task, open_task

__all__ = ["SEND_EVERY_S", "OPEN_GAP_S", "QUEUE_SIZE", "install", "WorkerProgress", "WorkerBars"]

SEND_EVERY_S = 0.25
"""At most one snapshot per this many seconds per worker while its task only moves (4 a second)."""

OPEN_GAP_S = 0.05
"""When a task opens or closes, its snapshot goes if this long has passed since the last one."""

QUEUE_SIZE = 1000
"""Snapshots the queue holds; beyond it, workers drop theirs."""

_queue: Any = None
"""This worker's sender (set by :func:`install` when a pool worker starts, or around a Ray unit)."""


def install(messages: Any) -> None:
    """In a worker: send snapshots with ``messages``, a sender (a multiprocessing queue, a Ray unit's sender;
    None: send nothing)."""
    global _queue
    _queue = messages
    if messages is not None and hasattr(messages, "cancel_join_thread"):
        messages.cancel_join_thread()  # exiting never waits for the parent to read


def _send(message: tuple) -> None:
    if _queue is None:
        return
    try:
        _queue.put_nowait(message)
    except (queue_module.Full, ValueError, OSError):  # full, closed, or a broken pipe: drop it
        pass


class WorkerProgress:
    """A unit's ``progress`` in a pool worker (picklable; see the module doc)."""

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._open: list[_ForwardedTask] = []
        self._last = float("-inf")

    def __reduce__(self) -> tuple:
        return WorkerProgress, ()  # a fresh one in the worker

    def __call__(self, message: str) -> None:
        pass

    def task(self, description: str, total: float | None = None) -> Task:
        task = _ForwardedTask(self, description, total)
        self._open.append(task)
        self.offer(OPEN_GAP_S)
        return task

    def offer(self, gap: float) -> None:
        """Send the innermost open task's snapshot if ``gap`` seconds have passed since the last one (and
        always when no task is open)."""
        if not self._open:
            _send((os.getpid(), None, None, None, ""))
            self._last = self.clock()
            return
        now = self.clock()
        if now - self._last >= gap:
            top = self._open[-1]
            _send((os.getpid(), top.description, top.completed, top.total, top.info))
            self._last = now

    def closed(self, task: _ForwardedTask) -> None:
        if task in self._open:
            self._open.remove(task)
            self.offer(OPEN_GAP_S)


class _ForwardedTask(Task):
    def __init__(self, owner: WorkerProgress, description: str, total: float | None) -> None:
        super().__init__(None)
        self.owner, self.description, self.total = owner, description, total
        self.completed: float | None = None
        self.info = ""

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        self.owner.offer(SEND_EVERY_S)

    def advance(self, amount: float = 1, *, info: str | None = None) -> None:
        self.update((self.completed or 0) + amount, info=info)

    def say(self, message: str) -> None:
        self.update(info=message)

    def close(self) -> None:
        self.owner.closed(self)


class WorkerBars:
    """In the parent: one bar per worker on ``progress``, moved by the workers' snapshots. Workers are
    numbered in the order they are first heard from."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._numbers: dict[int, int] = {}
        self._bars: dict[int, tuple[str, Task]] = {}

    def receive(self, message: tuple) -> None:
        pid, description, completed, total, info = message
        shown = self._bars.get(pid)
        if description is None:
            if shown is not None:
                shown[1].close()
                del self._bars[pid]
            return
        number = self._numbers.setdefault(pid, len(self._numbers) + 1)
        label = f"worker {number}: {description}"
        if shown is None or shown[0] != label:  # a new phase: a new bar (its clock starts again)
            if shown is not None:
                shown[1].close()
            shown = self._bars[pid] = (label, open_task(self.progress, label, total=total))
        shown[1].update(completed, total=total, info=info or None)

    def close(self) -> None:
        """Take every worker's bar down."""
        for _, task in self._bars.values():
            task.close()
        self._bars.clear()

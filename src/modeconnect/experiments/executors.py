"""Executors: where the independent units of an experiment run.

An executor maps a top-level (picklable) function over a list of argument
tuples and yields ``(index, result)`` pairs as units finish, in any order.
Units write their own files, so the executor only moves small arguments and
results. Three kinds:

* in-process (``workers=1``): units run one after another in this process;
* a local process pool (``workers=K > 1``): K spawned processes, each limited
  to its share of the machine's threads (``torch.set_num_threads``);
* Ray (``kind="ray"``): a local Ray instance, or a running cluster given by
  ``address``, so a sweep spreads over many machines.

A unit's numbers do not depend on where it ran: every random choice inside it
comes from seeds in its arguments. (Float reductions inside very large
operations may depend on the thread count; the built-in CPU tasks are
checked to give identical tables in-process, in a pool and on Ray.)

>>> with make_executor("local", workers=1) as ex:
...     sorted(ex.map(pow, [(2, 3), (3, 2)]))
[(0, 8), (1, 9)]
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any

import torch

from .. import worker_progress
from ..errors import ConfigError
from ..progress import Progress, bars_only, for_units
from ..worker_progress import WorkerBars, WorkerProgress
from .ray_mailbox import RayMailbox, RaySender, run_unit

__all__ = ["ExecutorKind", "Executor", "make_executor", "available_cpus", "idle_cpus", "threads_per_worker"]


class ExecutorKind(str, Enum):
    """Where units run."""

    LOCAL = "local"
    """This machine: in-process for one worker, a process pool for several."""
    RAY = "ray"
    """Ray tasks, on a local instance or on the cluster at ``address``."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cpu_times() -> dict[int, tuple[int, int]]:
    """``{cpu: (idle ticks, total ticks)}`` from /proc/stat for the CPUs this process may run on."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    times: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            cpu = int(name[3:])
            if allowed is None or cpu in allowed:
                ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                times[cpu] = (ticks[3] + ticks[4], sum(ticks))
    return times


def idle_cpus(window_s: float = 0.3) -> float | None:
    """How many of this process's CPUs were idle over the next ``window_s`` seconds (None where /proc/stat is
    unreadable). Another process keeping one of two cores busy gives about 1.0."""
    try:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
    except (OSError, ValueError):
        return None
    idle = 0.0
    for cpu, (idle_after, total_after) in after.items():
        idle_before, total_before = before.get(cpu, (idle_after, total_after))
        elapsed = total_after - total_before
        if elapsed > 0:
            idle += (idle_after - idle_before) / elapsed
    return idle


def threads_per_worker(workers: int, idle: float | None = None) -> int:
    """Each worker's share of the CPUs (at least one thread). With ``idle`` (measured idle CPUs) the share is
    of the idle ones: on a busy machine, threads that find no free core only add synchronisation (2 threads
    made a convnet loop 4.75x slower than 1 on a 2-core machine with one core busy)."""
    cpus = available_cpus()
    if idle is not None:
        cpus = min(cpus, max(1, round(idle)))
    return max(1, cpus // max(1, workers))


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the process that started it dies (so no orphan writes on)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except OSError:  # pragma: no cover - exotic libc
            pass


POLL_S = 0.1
"""How often a pool's parent reads its workers' progress while it waits for units (when it shows it)."""


def _init_worker(threads: int, messages: Any = None) -> None:
    _die_with_parent()
    worker_progress.install(messages)
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cancels the pool


def _call_with_threads(fn: Callable[..., Any], threads: int, args: tuple, sender: RaySender | None = None) -> Any:
    torch.set_num_threads(threads)
    return run_unit(fn, args, sender)


class Executor:
    """Runs independent units; use as a context manager so workers are released."""

    kind: ExecutorKind
    workers: int
    threads: int

    def map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def unit_progress(self, progress: Progress | None) -> tuple:
        """What to append to each unit's arguments as its ``progress``: ``()`` (the unit shows nothing) unless
        the executor can show the unit's bars on ``progress`` (when it draws them)."""
        return ()

    def close(self, abort: bool = False) -> None:
        """Release the workers; ``abort`` stops running units at once (they resume from their checkpoints)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(abort=exc_type is not None)


class InProcessExecutor(Executor):
    """Units one after another in this process, with ``threads`` torch threads (default: the current setting)."""

    def __init__(self, threads: int | None = None) -> None:
        self.kind, self.workers = ExecutorKind.LOCAL, 1
        self.threads = threads or torch.get_num_threads()

    def map(self, fn, arg_tuples):
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for i, args in enumerate(arg_tuples):
                yield i, fn(*args)
        finally:
            torch.set_num_threads(previous)

    def describe(self) -> str:
        return f"in-process ({self.threads} thread{'s' if self.threads != 1 else ''})"

    def unit_progress(self, progress: Progress | None) -> tuple:
        return (for_units(progress),)  # each unit's bars (or heartbeat), here, without its lines


class ProcessPoolExecutor(Executor):
    """A pool of spawned processes, each with ``threads`` torch threads; dies with its parent. ``idle`` is the
    number of idle CPUs measured when the pool was sized (None when threads were given).

    Units given :meth:`unit_progress` forward their progress on a queue the workers got when they started
    (:mod:`modeconnect.worker_progress`); while units run, ``map`` reads it every :data:`POLL_S` and shows one
    bar per running worker."""

    def __init__(self, workers: int, threads: int, idle: float | None = None) -> None:
        self.kind, self.workers, self.threads, self.idle = ExecutorKind.LOCAL, workers, threads, idle
        context = multiprocessing.get_context("spawn")
        self._messages = context.Queue(worker_progress.QUEUE_SIZE)
        self._bars: WorkerBars | None = None
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads, self._messages))

    def unit_progress(self, progress: Progress | None) -> tuple:
        if bars_only(progress) is None:  # lines only, or quiet: the workers' progress stays in the workers
            return ()
        if self._bars is None or self._bars.progress is not progress:
            self._bars = WorkerBars(progress)
        return (WorkerProgress(),)

    def _read_progress(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            try:
                message = self._messages.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            if self._bars is not None:
                self._bars.receive(message)

    def map(self, fn, arg_tuples):
        futures = {self._pool.submit(fn, *args): i for i, args in enumerate(arg_tuples)}
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=POLL_S if self._bars else None,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                self._read_progress()
                for future in sorted(done, key=futures.__getitem__):
                    yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()
            self._read_progress()
            if self._bars is not None:
                self._bars.close()

    def describe(self) -> str:
        text = f"local pool of {self.workers} processes ({self.threads} thread{'s' if self.threads != 1 else ''} each"
        if self.idle is not None:
            text += f"; {self.idle:.1f} of {available_cpus()} CPUs idle when it started"
            if self.idle < self.workers - 0.5:
                text += ": the workers will compete for them and each pair runs slower (see README, 'Where pairs run')"
        return text + ")"

    def close(self, abort: bool = False) -> None:
        if abort:  # workers ignore SIGINT; a running unit would otherwise finish before shutdown returns
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._bars is not None:
            self._bars.close()
        self._messages.close()


class RayExecutor(Executor):
    """Ray tasks with ``threads`` CPUs each, on a local instance or the cluster at ``address``.

    Units given :meth:`unit_progress` forward their progress to a small actor (:mod:`.ray_mailbox`, created on the
    first such call); while units run, ``map`` reads it every :data:`POLL_S` and shows one bar per running
    worker, as a local pool does."""

    def __init__(self, workers: int, threads: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'modeconnect[ray]'") from None
        self._ray = ray
        self.kind, self.workers, self.threads, self.address = ExecutorKind.RAY, workers, threads, address
        self._owns = not ray.is_initialized()
        if self._owns:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if address is None:  # always a private instance, never a cluster that happens to run here
                options["address"], options["num_cpus"] = "local", workers * threads
            else:
                options["address"] = address
            try:
                ray.init(**options)
            except ConnectionError as exc:
                raise ConfigError(f"could not reach the Ray cluster at {address!r}: {exc}; start it with "
                                  "'ray start --head' or leave out --address for a local instance. A cluster with "
                                  "token authentication (the default of 'ray start --head' in recent Ray) also "
                                  "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or $RAY_AUTH_TOKEN) "
                                  "here: see docs/ray_cluster.md") from None
        self._remote = ray.remote(num_cpus=threads)(_call_with_threads)
        self._mailbox: RayMailbox | None = None
        self._bars: WorkerBars | None = None

    def unit_progress(self, progress: Progress | None) -> tuple:
        if bars_only(progress) is None:  # lines only, or quiet: the units' progress stays in the workers
            return ()
        if self._mailbox is None:
            self._mailbox = RayMailbox(self._ray)
        if self._bars is None or self._bars.progress is not progress:
            self._bars = WorkerBars(progress)
        return (WorkerProgress(),)

    def _read_progress(self, wait_s: float = 0.0) -> None:
        if self._mailbox is not None and self._bars is not None:
            for message in self._mailbox.read(wait_s):
                self._bars.receive(message)

    def map(self, fn, arg_tuples):
        ray = self._ray
        sender = self._mailbox.sender() if self._mailbox is not None and self._bars is not None else None
        refs = {self._remote.remote(fn, self.threads, args, sender): i for i, args in enumerate(arg_tuples)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S if sender else None)
                self._read_progress()
                for ref in done:
                    yield refs[ref], ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if sender is not None:
                for _ in range(2):  # the read in flight, then the last snapshots (bounded: the actor may be gone)
                    self._read_progress(wait_s=0.5)
                self._bars.close()

    def describe(self) -> str:
        where = f"cluster at {self.address}" if self.address else f"local instance, {self.workers * self.threads} CPUs"
        return f"Ray ({where}; {self.threads} CPU{'s' if self.threads != 1 else ''} per unit)"

    def close(self, abort: bool = False) -> None:
        if self._bars is not None:
            self._bars.close()
        if self._mailbox is not None:
            self._mailbox.close()
        if self._owns:
            self._ray.shutdown()


def make_executor(kind: str | ExecutorKind = ExecutorKind.LOCAL, workers: int = 1, *, address: str | None = None,
                  threads: int | None = None) -> Executor:
    """Build an executor. ``threads`` per worker defaults to this machine's CPUs divided by ``workers``; for a
    local pool, to the CPUs found idle over 0.3 s divided by ``workers`` (at least one)."""
    try:
        kind = ExecutorKind(kind)
    except ValueError:
        raise ConfigError(f"unknown executor {kind!r}; choose one of: local, ray") from None
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads per worker must be >= 1, got {threads}")
    if address is not None and kind is not ExecutorKind.RAY:
        raise ConfigError("--address is the address of a Ray cluster: use it with --executor ray")
    if kind is ExecutorKind.LOCAL and workers == 1:
        return InProcessExecutor(threads)
    if kind is ExecutorKind.RAY:
        return RayExecutor(workers, threads or threads_per_worker(workers), address)
    if threads is not None:
        return ProcessPoolExecutor(workers, threads)
    idle = idle_cpus()
    return ProcessPoolExecutor(workers, threads_per_worker(workers, idle), idle)

"""Ray units' progress, carried to the parent by a small actor: the Ray side of :mod:`modeconnect.worker_progress`.

The parent creates a :class:`RayMailbox` (an actor holding the latest :data:`~modeconnect.worker_progress.QUEUE_SIZE`
snapshots; older ones go first when it is full) and gives each unit a :class:`RaySender`, which a Ray worker
installs as its :func:`~modeconnect.worker_progress.install` sender for the unit's run. Neither side ever waits:

* a sender fires each snapshot at the actor without waiting for the answer; it reads answers that have come
  (``ray.wait`` with no timeout), drops a snapshot while :data:`IN_FLIGHT` are unanswered (a slow actor), and stops
  sending for the rest of the unit on any error (a dead actor): progress can never fail or hang a unit;
* the parent keeps one read of the actor in flight and collects it when it has come, between waits for units.

A snapshot's worker is its Ray node and process id, so processes of two machines never share a bar. Nothing here
touches a unit's arguments or results: results are the same with it.
"""

from __future__ import annotations

import collections
from typing import Any

from .. import worker_progress

__all__ = ["IN_FLIGHT", "RayMailbox", "RaySender"]

IN_FLIGHT = 8
"""Snapshots a unit's sender leaves unanswered before it drops new ones."""


class _Mailbox:
    """The actor: the latest snapshots, handed over all at once."""

    def __init__(self, size: int) -> None:
        self._items: collections.deque = collections.deque(maxlen=size)

    def put(self, message: tuple) -> None:
        self._items.append(message)

    def take(self) -> list[tuple]:
        items = list(self._items)
        self._items.clear()
        return items


class RaySender:
    """A unit's sender (see the module doc): ``put_nowait`` never waits and never raises."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._in_flight: list = []
        self._node: str | None = None
        self._stopped = False

    def __reduce__(self) -> tuple:
        return RaySender, (self.actor,)  # a fresh one (nothing in flight) in the worker

    def put_nowait(self, message: tuple) -> None:
        if self._stopped:
            return
        try:
            import ray

            if self._in_flight:
                ready, self._in_flight = ray.wait(self._in_flight, num_returns=len(self._in_flight), timeout=0)
                ray.get(ready)  # raises if the actor is gone
            if len(self._in_flight) >= IN_FLIGHT:
                return
            if self._node is None:
                self._node = ray.get_runtime_context().get_node_id()
            self._in_flight.append(self.actor.put.remote(((self._node, message[0]), *message[1:])))
        except Exception:  # noqa: BLE001 - whatever went wrong, progress stops and the unit goes on
            self._stopped, self._in_flight = True, []


def run_unit(fn: Any, args: tuple, sender: RaySender | None) -> Any:
    """In a Ray worker: ``fn(*args)`` with ``sender`` installed for its progress (then none again: workers are
    reused)."""
    worker_progress.install(sender)
    try:
        return fn(*args)
    finally:
        worker_progress.install(None)


class RayMailbox:
    """In the parent: the actor (no CPU of its own), a sender for each unit, and what has arrived."""

    def __init__(self, ray: Any, size: int = worker_progress.QUEUE_SIZE) -> None:
        self._ray = ray
        self.actor: Any = ray.remote(num_cpus=0)(_Mailbox).remote(size)
        self._taking: Any = None

    def sender(self) -> RaySender | None:
        return RaySender(self.actor) if self.actor is not None else None

    def read(self, wait_s: float = 0.0) -> list[tuple]:
        """The snapshots of the read in flight if it has come within ``wait_s`` seconds (``[]`` otherwise, or once
        the actor is gone); then the next read goes."""
        if self.actor is None:
            return []
        ray = self._ray
        try:
            messages: list[tuple] = []
            if self._taking is not None:
                ready, _ = ray.wait([self._taking], timeout=wait_s)
                if not ready:
                    return []
                messages = ray.get(ready[0])
            self._taking = self.actor.take.remote()
            return messages
        except Exception:  # noqa: BLE001 - the actor is gone: no more progress, the units go on
            self.actor = self._taking = None
            return []

    def close(self) -> None:
        if self.actor is not None:
            try:
                self._ray.kill(self.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actor = self._taking = None

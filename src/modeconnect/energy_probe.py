"""How an :class:`~modeconnect.energy.Energy` chooses, by measurement, what its settings leave open.

``strategy="auto"`` leaves the strategy open until the first batch of at least two points;
``threads="auto"`` leaves the torch thread count open until the first evaluation. Both are decided by
timing the candidates on the first (up to 8) points of that evaluation:

* each candidate runs twice on those points; the first run is a warm-up (it also pays one-off costs such
  as vmap's tracing), the faster of the two counts; a candidate whose first run takes over twice the
  best time so far is not run again;
* the strategies are LOOP, VMAP and, for a plain MLP, MATMUL, at the process's thread count; VMAP and
  MATMUL must beat the loop by 10% (the loop is the simpler reference and uses less memory); a strategy
  that fails (an op without a batching rule under vmap) drops out;
* thread counts 1, 2, 4, ... up to the process's setting are then timed with the chosen strategy only; a
  count above 1 must win by 10% (on a busy machine a second thread finds no free core and only adds
  synchronisation: 2 threads made an MNIST convnet's loop 4.75x slower than 1 on 2 shared cores);
* the probe's values are kept: the winner's energies of the probed points are returned and not
  computed again, so a first call costs at most ``2 x candidates - 1`` probe-sized evaluations extra.

The environment variable ``MODECONNECT_THREADS`` (:data:`THREADS_ENV`) pins ``threads="auto"`` to a
count, so that a measured choice can be repeated: nothing is measured and the count is recorded as
``threads``. The choices are recorded (``chosen_strategy``, ``chosen_threads`` in :meth:`Energy.describe`). Strategies
and thread counts can differ in the last bits of the energies; pin them (a fixed ``strategy``,
``threads=1`` or a process limited to one thread) where runs must repeat bit for bit across machines.
"""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["measure", "thread_setting", "THREAD_COUNTS", "THREADS_ENV"]

THREAD_COUNTS = (1, 2, 4, 8, 16, 32, 64)
"""Thread counts tried by ``threads="auto"`` (those below the process's setting, and the setting itself)."""
_MARGIN = 0.9
_HOPELESS = 2.0
"""A candidate whose first run (warm-up included) takes more than this many times the best so far is not
run a second time: one more run could not bring it within reach."""
"""A batched strategy, or more than one thread, must take at most this fraction of the alternative's time."""


def measure(energy, n_points: int, get_chunk, get_one) -> Tensor:
    """Decide what is open on ``energy`` (see the module doc); returns the winner's energies of the probed
    points (float64), or an empty tensor when nothing was open."""
    from .energy import Strategy

    open_strategy = energy.chosen_strategy is None and n_points >= 2
    open_threads = energy.threads == "auto" and energy.chosen_threads is None
    if not (open_strategy or open_threads):
        return torch.zeros(0, dtype=torch.float64)
    n_probe = min(n_points, energy.points_per_chunk, 8)
    available = torch.get_num_threads()

    def trial(strategy, threads: int, rival: float = float("inf")) -> tuple[float, Tensor]:
        torch.set_num_threads(threads)
        try:
            best, values = float("inf"), None
            for _ in range(2):
                start = time.perf_counter()
                values = energy._run(strategy, 0, n_probe, get_chunk, get_one)
                best = min(best, time.perf_counter() - start)
                if best > _HOPELESS * rival:  # clearly slower even counting its warm-up: no second run
                    break
            return best, values
        finally:
            torch.set_num_threads(available)

    results: dict[tuple, tuple[float, Tensor]] = {}
    if open_strategy:
        candidates = [Strategy.LOOP, Strategy.VMAP] + ([Strategy.MATMUL] if energy._plan is not None else [])
        for strategy in candidates:
            try:
                rival = min((r[0] for r in results.values()), default=float("inf"))
                results[strategy, available] = trial(strategy, available, rival)
            except RuntimeError:  # e.g. an op without a batching rule under vmap
                if strategy is Strategy.LOOP:
                    raise
        loop_time = results[Strategy.LOOP, available][0]
        best = min((k[0] for k in results), key=lambda s: results[s, available][0])
        energy.chosen_strategy = best if results[best, available][0] < _MARGIN * loop_time else Strategy.LOOP
    strategy = energy.chosen_strategy or Strategy.LOOP
    threads = available
    if open_threads:
        counts = [c for c in THREAD_COUNTS if c < available] + [available]
        for count in counts:
            if (strategy, count) not in results:
                rival = min((results[strategy, c][0] for c in counts if (strategy, c) in results), default=float("inf"))
                results[strategy, count] = trial(strategy, count, rival)
        threads = counts[0]
        for count in counts[1:]:
            if results[strategy, count][0] < _MARGIN * results[strategy, threads][0]:
                threads = count
        energy.chosen_threads = threads
    return results[strategy, threads][1]


def thread_setting(value: int | str | None) -> int | str | None:
    """An energy's ``threads`` argument, checked, with ``"auto"`` pinned by :data:`THREADS_ENV` when it is set."""
    return _pinned(_as_threads(value))


def _as_threads(value: int | str | None) -> int | str | None:
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"threads must be None (the process's setting), 'auto' (measured) or an int >= 1, got {value!r}")


THREADS_ENV = "MODECONNECT_THREADS"
"""An environment variable that pins ``threads="auto"`` to a count (to repeat a run's measured choice)."""


def _pinned(threads: int | str | None) -> int | str | None:
    """``threads``, or the count in :data:`THREADS_ENV` when ``threads`` is ``"auto"`` and the variable is set."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if threads != "auto" or not value:
        return threads
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads >= 1 (it pins threads='auto'), "
                          f"got {value!r}; unset it to let the count be measured")
    return int(value)

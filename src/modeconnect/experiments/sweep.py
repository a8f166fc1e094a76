"""The energy sweep: normalized geodesic length and bead count as the energy level decreases.

For every level L0 and every pair j, a connect run trains two endpoints to L0
(their seeds derived from the pair seed, itself derived from the sweep's base
seed, so pair j uses the same initialisations at every level), connects them
with greedy DSS and certifies the path. Each (level, pair) unit is an ordinary
run directory under ``runs/``, so a sweep resumes exactly: finished pairs are
read back, interrupted ones continue from their last bead.

The table has one row per pair and one aggregate row per level. Aggregates of
normalized length, bead count and depth are over the *connected* pairs (the
paper averages over successful connections); ``success_rate`` is the fraction
of pairs whose endpoints trained that connected. Standard errors are the
sample standard deviation over sqrt(n) and need n >= 2.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..progress import open_task
from ..seeding import derive_seed
from .connect_run import ConnectRunConfig, EndpointTrainingError, run_connect
from .executors import Executor, make_executor
from .store import RunDirectory, SweepDirectory

__all__ = ["SweepConfig", "run_sweep", "aggregate", "pair_row", "table_csv", "tidy_csv", "finished_unit", "result_row",
           "mean_stderr", "parse_levels", "PAIR_FIELDS"]

PAIR_FIELDS = ["level", "pair", "seed", "status", "connected", "reason", "method", "normalized_length", "n_beads",
               "depth", "beads_trained", "path_length", "distance", "worst_barrier", "max_interpolated_energy",
               "certified_max_energy", "certified", "endpoint_energy_a", "endpoint_energy_b", "wall_time_s",
               "endpoint_time_s", "method_time_s", "bead_training_time_s", "segment_evaluation_time_s",
               "certification_time_s", "run_dir", "message"]
"""Columns of a pair row (CSV order)."""

GEOMETRY_FIELDS = ("normalized_length", "n_beads", "depth", "path_length")
"""Left empty in the row of a pair that did not connect: its path is not a connection, so its length and
beads describe nothing about the level set (the reason and the worst barrier say what happened)."""

LEVEL_FIELDS = ["level", "n_pairs", "n_endpoint_failed", "n_connected", "success_rate",
                "normalized_length_mean", "normalized_length_stderr", "n_beads_mean", "n_beads_stderr",
                "depth_mean", "depth_stderr", "endpoint_energy_mean", "wall_time_s_mean", "wall_time_s_total",
                "bead_training_time_s_total", "segment_evaluation_time_s_total", "certification_time_s_total",
                "endpoint_time_s_total"]
"""Columns of an aggregate (level) row."""


def parse_levels(text: str) -> tuple[float, ...]:
    """Parse ``"0.1,0.05,0.02"`` into levels, with a clear error for anything else.

    >>> parse_levels("0.1, 0.05,0.02")
    (0.1, 0.05, 0.02)
    """
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--levels must be comma-separated numbers such as 0.1,0.05,0.02, got {text!r}") from None
    return levels


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the connect settings shared by every pair, the levels, the number of pairs and the base seed."""

    base: ConnectRunConfig
    """Settings of every connect run (its threshold and seed are replaced per unit)."""
    levels: tuple[float, ...]
    """Energy levels L0, in the order given (a figure puts them on a decreasing axis)."""
    pairs: int = 4
    """Independent pairs of endpoints per level."""
    seed: int = 0
    """Base seed: pair j's seed is derived from (seed, j), the same at every level."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        if not self.levels:
            raise ConfigError("a sweep needs at least one level (--levels 0.1,0.05,...)")
        bad = [v for v in self.levels if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ConfigError(f"levels must be positive finite energies, got {bad}")
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"levels must be distinct, got {list(self.levels)}")
        if not isinstance(self.pairs, int) or self.pairs < 1:
            raise ConfigError(f"pairs must be a positive integer, got {self.pairs!r}")

    def identity(self) -> dict[str, Any]:
        """What every pair of the sweep shares: a sweep directory refuses a different identity.

        The resolved settings (task defaults filled in), less the per-unit threshold and seed. Levels and
        pairs are not part of it, so a later session may add levels or pairs to a sweep.
        """
        record = self.base.resolve().record()
        record.pop("threshold")
        record["run"] = {k: v for k, v in record["run"].items() if k not in ("threshold", "seed")}
        if isinstance(record["method_config"], dict):
            record["method_config"].pop("seed", None)  # derived from each pair's seed
        return {"base": record, "seed": self.seed}

    def pair_seed(self, pair: int) -> int:
        return derive_seed(self.seed, "pair", pair)

    def unit(self, level: float, pair: int) -> ConnectRunConfig:
        return replace(self.base, threshold=level, seed=self.pair_seed(pair))

    def units(self) -> list[tuple[float, int]]:
        return [(level, pair) for level in self.levels for pair in range(self.pairs)]


def result_row(fields: Sequence[str], identity: dict[str, Any], result: dict[str, Any] | None,
               failure: str | None = None, geometry: Sequence[str] = GEOMETRY_FIELDS) -> dict[str, Any]:
    """A table row with ``fields`` for one run: ``identity`` (which unit it is), then the finished run's
    ``result`` or, when its endpoints failed to train, the ``failure`` message. A run that did not connect
    has its ``geometry`` fields left empty: its path is not a connection."""
    row: dict[str, Any] = dict.fromkeys(fields)
    row.update(identity)
    if result is None:
        row.update(status="endpoint_failed", connected=False, reason="endpoint_failed", message=failure)
        return row
    for key in fields:
        if key in result:
            row[key] = result[key]
    row["status"] = "connected" if result["connected"] else "not_connected"
    row["endpoint_energy_a"], row["endpoint_energy_b"] = result["endpoint_energies"]
    if not result["connected"]:
        row.update(dict.fromkeys(g for g in geometry if g in row))
    return row


def pair_row(level: float, pair: int, seed: int, run_dir: str, result: dict[str, Any] | None,
             failure: str | None = None) -> dict[str, Any]:
    """One table row for a finished pair (``result``) or one whose endpoints failed to train (``failure``)."""
    return result_row(PAIR_FIELDS, {"level": level, "pair": pair, "seed": seed, "run_dir": run_dir}, result,
                      failure)


def mean_stderr(values: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def aggregate(rows: Sequence[dict[str, Any]], levels: Sequence[float]) -> list[dict[str, Any]]:
    """One row per level (in ``levels`` order) from the pair rows; levels with no finished pair are left out.

    >>> rows = [{"level": 0.1, "status": "connected", "connected": True, "normalized_length": 1.0, "n_beads": 1,
    ...          "depth": 1, "endpoint_energy_a": 0.1, "endpoint_energy_b": 0.1, "wall_time_s": 1.0},
    ...         {"level": 0.1, "status": "connected", "connected": True, "normalized_length": 1.2, "n_beads": 3,
    ...          "depth": 2, "endpoint_energy_a": 0.1, "endpoint_energy_b": 0.1, "wall_time_s": 1.0}]
    >>> agg = aggregate(rows, [0.1])[0]
    >>> agg["n_beads_mean"], agg["n_beads_stderr"], agg["success_rate"]
    (2.0, 1.0, 1.0)
    """
    out = []
    for level in levels:
        mine = [r for r in rows if r["level"] == level]
        if not mine:
            continue
        trained = [r for r in mine if r["status"] != "endpoint_failed"]
        connected = [r for r in trained if r["connected"]]
        agg: dict[str, Any] = dict.fromkeys(LEVEL_FIELDS)
        agg.update(level=level, n_pairs=len(mine), n_endpoint_failed=len(mine) - len(trained),
                   n_connected=len(connected),
                   success_rate=len(connected) / len(trained) if trained else None)
        for key in ("normalized_length", "n_beads", "depth"):
            agg[f"{key}_mean"], agg[f"{key}_stderr"] = mean_stderr([float(r[key]) for r in connected
                                                                       if r.get(key) is not None])
        energies = [e for r in trained for e in (r["endpoint_energy_a"], r["endpoint_energy_b"])]
        agg["endpoint_energy_mean"] = mean_stderr(energies)[0]
        times = [float(r["wall_time_s"]) for r in trained]
        agg["wall_time_s_mean"] = mean_stderr(times)[0]
        agg["wall_time_s_total"] = math.fsum(times)
        for key in ("bead_training_time_s", "segment_evaluation_time_s", "certification_time_s", "endpoint_time_s"):
            agg[f"{key}_total"] = math.fsum(float(r.get(key) or 0.0) for r in trained)
        out.append(agg)
    return out


def tidy_csv(groups: Sequence[tuple[str, Sequence[dict[str, Any]]]], fields: Sequence[str]) -> str:
    """Rows of several kinds as one CSV: a ``row`` column names each row's kind; empty cells are missing values."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["row", *dict.fromkeys(fields)], lineterminator="\n")
    writer.writeheader()
    for kind, rows in groups:
        for row in rows:
            writer.writerow({"row": kind, **{k: ("" if v is None else v) for k, v in row.items()}})
    return buffer.getvalue()


def table_csv(table: dict[str, Any]) -> str:
    """The table as tidy CSV: a ``row`` column says ``pair`` or ``level``; empty cells are missing values."""
    return tidy_csv((("pair", table["rows"]), ("level", table["aggregates"])), PAIR_FIELDS + LEVEL_FIELDS)


def run_unit(config: dict[str, Any], out: str, progress: Callable[[str], None] | None = None,
             ) -> tuple[dict[str, Any] | None, str | None]:
    """Run (or resume, or read back) one pair; a worker's entry point. Returns (result, failure message)."""
    try:
        return run_connect(ConnectRunConfig.from_dict(config), out, progress=progress), None
    except EndpointTrainingError as exc:
        return None, str(exc)


def finished_unit(out: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None] | None:
    """``(result, None)`` for a finished run directory, ``(None, message)`` for one whose endpoints failed,
    None for one not finished (or not started)."""
    store = RunDirectory(out)
    result = store.result()
    if result is not None:
        return result, None
    failure = store.failure()
    return (None, failure["message"]) if failure is not None else None


def run_sweep(
    config: SweepConfig,
    out: str,
    *,
    executor: Executor | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a sweep into ``out``; returns the table (also written as table.json and table.csv)."""
    say = progress or (lambda message: None)
    config.base.resolve()  # fail fast on a bad task or setting, before any directory is written
    sweep = SweepDirectory(out)
    with sweep.lock():
        return _run_sweep_locked(config, sweep, out, executor, say)


def _run_sweep_locked(config: SweepConfig, sweep: SweepDirectory, out: str, executor: Executor | None,
                      say: Callable[[str], None]) -> dict[str, Any]:
    identity = config.identity()
    resumed = sweep.open(identity, config.seed)
    sweep.record_plan({"levels": list(config.levels), "pairs": config.pairs})
    units = config.units()
    dirs = {unit: str(sweep.run_dir(*unit)) for unit in units}
    rows: dict[tuple[float, int], dict[str, Any]] = {}
    energy: dict[str, Any] = {}

    def record(unit: tuple[float, int], outcome: tuple[dict[str, Any] | None, str | None]) -> None:
        result, failure = outcome
        level, pair = unit
        rows[unit] = pair_row(level, pair, config.pair_seed(pair), os.path.relpath(dirs[unit], out), result, failure)
        if result is not None and not energy:
            energy.update(result["energy"])

    for unit in units:
        done = finished_unit(dirs[unit])
        if done is not None:
            record(unit, done)
    # lowest levels first: they take longest, so starting them early keeps a pool's workers busy to the end
    todo = sorted((unit for unit in units if unit not in rows), key=lambda unit: unit[0])
    if resumed:
        say(f"continuing the sweep in {out}: {len(rows)} of {len(units)} pairs already finished")

    def table() -> dict[str, Any]:
        ordered = [rows[u] for u in units if u in rows]
        return {"format": "modeconnect.sweep_table", "version": 1, "task": config.base.task,
                "energy": dict(energy), "levels": list(config.levels), "pairs": config.pairs, "seed": config.seed,
                "settings": identity["base"], "rows": ordered,
                "aggregates": aggregate(ordered, config.levels)}

    def save() -> dict[str, Any]:
        current = table()
        if current["rows"]:
            sweep.save_table(current, table_csv(current))
        return current

    if not todo:
        say("every pair is finished")
        return save()
    owned = executor is None
    executor = executor or make_executor("local", 1)
    say(f"sweep of {config.base.task}: {len(config.levels)} level(s) x {config.pairs} pair(s); "
        f"running {len(todo)} on {executor.describe()}")
    clock = time.perf_counter()
    try:
        inner = executor.unit_progress(say)  # each pair's bars (here, or from pool workers)
        with open_task(say, "sweep: pairs", total=len(todo)) as bar:
            for k, (index, outcome) in enumerate(
                    executor.map(run_unit, [(config.unit(*u).to_dict(), dirs[u]) + inner for u in todo]), start=1):
                unit = todo[index]
                record(unit, outcome)
                save()
                bar.update(k, info=f"last: L0={unit[0]:g} pair {unit[1]}")
                say(f"L0={unit[0]:g} pair {unit[1]}: {_describe_row(rows[unit])} "
                    f"[{k}/{len(todo)} done, {time.perf_counter() - clock:.0f}s]")
    finally:
        if owned:
            executor.close()
    return save()


def _describe_row(row: dict[str, Any]) -> str:
    if row["status"] == "endpoint_failed":
        return "endpoints did not train"
    if not row["connected"]:
        barrier = row.get("worst_barrier")
        return f"NOT connected ({row['reason']})" + ("" if barrier is None else f", worst barrier {barrier:.4g}")
    return f"connected, {row['n_beads']} beads, normalized length {row['normalized_length']:.4g}"

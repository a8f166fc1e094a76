"""Every path method on the same endpoints: ``modeconnect compare``.

For each pair j (seed derived from the base seed, as a sweep's pair j) and each method m, a connect run
joins the same two endpoints with m and certifies the result. The endpoints are trained once per pair: the
first method's run trains them, and every other method's run adopts them (checked against their SHA-256)
before it starts. Each (method, pair) unit is an ordinary run directory, so a comparison resumes exactly.

Layout of the directory::

    compare.json                   identity (settings shared by every unit) and the plan
    runs/<method>/pair-<j>/        one run directory per (method, pair)
    table.json, table.csv          one row per unit and one aggregate row per method
    profiles.json                  energy along normalised arc length, per unit (for the figure)
    figures/profiles.png           drawn by ``modeconnect compare`` / ``modeconnect plot DIR``

Aggregates are over the pairs whose endpoints trained; normalized length over the connected ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path as FsPath
from typing import Any

import torch

from .._io import read_json, write_json
from ..errors import ConfigError, StoreError
from ..methods import METHODS
from ..params import distance
from ..path import Path
from ..progress import open_task
from ..seeding import derive_seed
from .connect_run import ConnectRunConfig, EndpointTrainingError, run_connect
from .executors import Executor, make_executor
from .store import RUNS_DIR, TABLE_CSV, TABLE_JSON, SweepDirectory
from .sweep import finished_unit, mean_stderr, result_row, tidy_csv

__all__ = ["CompareConfig", "CompareDirectory", "run_compare", "energy_profile", "parse_methods", "parse_settings",
           "UNIT_FIELDS", "METHOD_FIELDS", "PROFILES"]

COMPARE = "compare.json"
PROFILES = "profiles.json"
PROFILE_POINTS = 17
"""Points per piece (ends included) in a unit's stored energy profile."""

UNIT_FIELDS = ["method", "pair", "seed", "status", "connected", "reason", "certified", "certified_max_energy",
               "normalized_length", "n_beads", "trained_points", "trained_parameters", "wall_time_s",
               "method_time_s", "certification_time_s", "method_energy_evaluations", "certification_evaluations",
               "endpoint_energy_a", "endpoint_energy_b", "run_dir", "message"]
"""Columns of a unit row (CSV order)."""

METHOD_FIELDS = ["method", "n_pairs", "n_endpoint_failed", "n_connected", "n_certified", "certified_max_energy_mean",
                 "normalized_length_mean", "normalized_length_stderr", "trained_points_mean",
                 "trained_parameters_mean", "wall_time_s_mean", "method_energy_evaluations_mean"]
"""Columns of an aggregate (method) row."""


def parse_settings(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["neb.max_time_s=600", "bezier.steps=500"]`` -> ``{"neb": {"max_time_s": 600}, ...}``.

    A value is read as JSON where it parses (numbers, true/false, null), else kept as text; nested settings
    use dots (``greedy_dss.bead_training.lr=0.01``). The method's schema validates them when a run resolves.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name or not method:
            raise ConfigError(f"--setting takes METHOD.NAME=VALUE (e.g. neb.max_time_s=600), got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = out.setdefault(method, {})
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"greedy_dss,neb"`` -> ``("greedy_dss", "neb")``, each checked against the registry."""
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    if not names:
        raise ConfigError("--methods needs at least one method name, e.g. greedy_dss,bezier,neb")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"unknown path method(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods names a method twice: {','.join(names)}")
    return tuple(names)


@dataclass(frozen=True)
class CompareConfig:
    """A comparison: the connect settings shared by every unit, the methods, the pairs and the base seed."""

    base: ConnectRunConfig
    """Settings of every connect run (task, threshold, alignment, endpoint training, certification); its method
    and seed are replaced per unit, and every method runs with its own defaults (and the task's bead training)."""
    methods: tuple[str, ...]
    """Path methods, in the table's order; the first one's runs train the endpoints."""
    pairs: int = 2
    """Independent endpoint pairs; every method connects every pair."""
    seed: int = 0
    """Base seed: pair j's seed is derived from (seed, j), as in a sweep."""
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-method setting overrides, ``{method: {setting: value}}`` (``--setting neb.max_time_s=600``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", parse_methods(self.methods))
        stray = [m for m in self.settings if m not in self.methods]
        if stray:
            raise ConfigError(f"settings given for {', '.join(map(repr, stray))}, which --methods does not name")
        object.__setattr__(self, "settings", {m: dict(v) for m, v in self.settings.items()})
        if not isinstance(self.pairs, int) or isinstance(self.pairs, bool) or self.pairs < 1:
            raise ConfigError(f"pairs must be a positive integer, got {self.pairs!r}")
        if self.base.method_settings:
            raise ConfigError("compare runs every method with its own defaults; give a method's settings as "
                              "settings={method: {...}} (--setting METHOD.NAME=VALUE)")

    def identity(self) -> dict[str, Any]:
        """What every unit shares; a directory refuses a different identity (methods and pairs may grow).
        Per-method settings are not shared: each unit's run directory checks its own (a changed setting makes
        that method's runs refuse their directories)."""
        record = replace(self.base, method=self.methods[0]).resolve().record()
        for key in ("method", "method_config"):
            record.pop(key)
        record["run"] = {k: v for k, v in record["run"].items() if k not in ("seed", "method", "method_settings")}
        return {"base": record, "seed": self.seed}

    def pair_seed(self, pair: int) -> int:
        return derive_seed(self.seed, "pair", pair)

    def unit(self, method: str, pair: int) -> ConnectRunConfig:
        """Method ``method``'s run on pair ``pair``. Every unit runs at the first method's level and with its
        endpoint training (it adopts that method's endpoints): where a task sets other defaults for this
        method (``Task.method_defaults``), the first method's values are pinned as explicit settings."""
        config = replace(self.base, method=method, seed=self.pair_seed(pair),
                         method_settings=dict(self.settings.get(method, {})))
        if method == self.methods[0]:
            return config
        first, mine = replace(config, method=self.methods[0], method_settings={}).resolve(), config.resolve()
        if mine.threshold != first.threshold:
            config = replace(config, threshold=first.threshold)
        if mine.endpoint_training != first.endpoint_training:
            config = replace(config, endpoint_training=first.endpoint_training.to_dict())
        return config


class CompareDirectory(SweepDirectory):
    """A comparison's files (see the module docstring); the sweep directory's locking and tables."""

    def open(self, identity: dict[str, Any], seed: int) -> bool:
        from .store import _open_identified

        if (self.root / "sweep.json").exists():
            raise StoreError(f"{self.root} is a sweep directory; choose another --out for the comparison")
        return _open_identified(self.root, COMPARE, "comparison", identity, seed)

    def record_plan(self, plan: dict[str, Any]) -> None:
        write_json(self.root / COMPARE, {**read_json(self.root / COMPARE), "plan": plan})

    def unit_dir(self, method: str, pair: int) -> FsPath:
        return self.root / RUNS_DIR / method / f"pair-{pair:02d}"

    @staticmethod
    def is_comparison(root: str | os.PathLike) -> bool:
        return (FsPath(root) / COMPARE).is_file()


def compare_unit(config: dict[str, Any], out: str, endpoints_from: str | None,
                 progress: Callable[[str], None] | None = None) -> tuple[dict | None, str | None]:
    """Run (or resume, or read back) one (method, pair) unit; a worker's entry point."""
    try:
        return run_connect(ConnectRunConfig.from_dict(config), out, endpoints_from=endpoints_from,
                           progress=progress), None
    except EndpointTrainingError as exc:
        return None, str(exc)


def unit_row(method: str, pair: int, seed: int, run_dir: str, result: dict[str, Any] | None,
             failure: str | None = None) -> dict[str, Any]:
    """One table row for a finished unit (``result``) or one whose endpoints failed to train (``failure``)."""
    row = result_row(UNIT_FIELDS, {"method": method, "pair": pair, "seed": seed, "run_dir": run_dir}, result,
                     failure, geometry=("normalized_length",))
    if result is not None:
        row["certification_evaluations"] = (result.get("certificate") or {}).get("n_evaluations")
    return row


def aggregate(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (in ``methods`` order) from the unit rows."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        tried = [r for r in mine if r["status"] != "endpoint_failed"]
        connected = [r for r in tried if r["connected"]]
        agg: dict[str, Any] = dict.fromkeys(METHOD_FIELDS)
        agg.update(method=method, n_pairs=len(mine), n_endpoint_failed=len(mine) - len(tried),
                   n_connected=len(connected), n_certified=sum(bool(r["certified"]) for r in tried))
        agg["normalized_length_mean"], agg["normalized_length_stderr"] = mean_stderr(
            [float(r["normalized_length"]) for r in connected if r["normalized_length"] is not None])
        for key in ("certified_max_energy", "trained_points", "trained_parameters", "wall_time_s",
                    "method_energy_evaluations"):
            agg[f"{key}_mean"] = mean_stderr([float(r[key]) for r in tried if r.get(key) is not None])[0]
        out.append(agg)
    return out


def table_csv(table: dict[str, Any]) -> str:
    """The table as tidy CSV: a ``row`` column says ``unit`` or ``method``; empty cells are missing values."""
    return tidy_csv((("unit", table["rows"]), ("method", table["aggregates"])), UNIT_FIELDS + METHOD_FIELDS)


@torch.no_grad()
def energy_profile(path: Path, energy: Any, points_per_piece: int = PROFILE_POINTS) -> dict[str, list[float]]:
    """Energy along ``path`` against normalised arc length in [0, 1].

    Each piece is sampled at ``points_per_piece`` equally spaced t (ends included, shared ends kept once);
    arc length is the polyline length through those points in parameter space (exact for straight pieces).
    """
    if points_per_piece < 2:
        raise ConfigError(f"points_per_piece must be >= 2, got {points_per_piece}")
    ts = torch.linspace(0.0, 1.0, points_per_piece, dtype=torch.float64)
    arc, values, total = [], [], 0.0
    for i in range(path.n_pieces):
        points = path.points(i, ts)
        piece_values = path.energies(i, ts, energy).tolist()
        first = 0 if i == 0 else 1
        for k in range(first, points_per_piece):
            if k > 0:
                total += distance({n: v[k] for n, v in points.items()}, {n: v[k - 1] for n, v in points.items()})
            arc.append(total)
            values.append(piece_values[k])
    scale = total if total > 0 else 1.0
    return {"s": [a / scale for a in arc], "energy": [v if math.isfinite(v) else None for v in values],
            "length": total}


def run_compare(config: CompareConfig, out: str, *, executor: Executor | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) a comparison into ``out``; returns the table (also table.json / table.csv)."""
    say = progress or (lambda message: None)
    for method in config.methods:
        config.unit(method, 0).resolve()  # fail fast on a bad setting, before any directory is written
    directory = CompareDirectory(out)
    with directory.lock():
        return _run_locked(config, directory, out, executor, say)


def _run_locked(config: CompareConfig, directory: CompareDirectory, out: str, executor: Executor | None,
                say: Callable[[str], None]) -> dict[str, Any]:
    identity = config.identity()
    resumed = directory.open(identity, config.seed)
    directory.record_plan({"methods": list(config.methods), "pairs": config.pairs, "settings": config.settings})
    units = [(m, p) for m in config.methods for p in range(config.pairs)]
    dirs = {u: directory.unit_dir(*u) for u in units}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    energy: dict[str, Any] = {}

    def record(unit: tuple[str, int], outcome: tuple[dict[str, Any] | None, str | None]) -> None:
        result, failure = outcome
        rows[unit] = unit_row(*unit, config.pair_seed(unit[1]), os.path.relpath(dirs[unit], out), result, failure)
        if result is not None and not energy:
            energy.update(result["energy"])

    def table() -> dict[str, Any]:
        ordered = [rows[u] for u in units if u in rows]
        return {"format": "modeconnect.compare_table", "version": 1, "task": config.base.task,
                "threshold": identity["base"]["threshold"], "align": config.base.align, "energy": dict(energy),
                "methods": list(config.methods), "pairs": config.pairs, "seed": config.seed,
                "method_settings": config.settings,
                "settings": identity["base"], "rows": ordered, "aggregates": aggregate(ordered, config.methods)}

    def save() -> dict[str, Any]:
        current = table()
        if current["rows"]:
            write_json(directory.root / TABLE_JSON, current)
            (directory.root / TABLE_CSV).write_text(table_csv(current))
        return current

    for unit in units:
        done = finished_unit(dirs[unit])
        if done is not None:
            record(unit, done)
    if resumed:
        say(f"continuing the comparison in {out}: {len(rows)} of {len(units)} runs already finished")
    first = config.methods[0]
    # phase 1: the first method trains each pair's endpoints; phase 2: the others adopt them
    phases = [[u for u in units if u[0] == first and u not in rows],
              [u for u in units if u[0] != first and u not in rows]]
    owned = executor is None
    executor = executor or make_executor("local", 1)
    clock, done_count, todo = time.perf_counter(), 0, sum(map(len, phases))
    if todo:
        say(f"comparing {len(config.methods)} method(s) on {config.pairs} pair(s) of {config.base.task}; "
            f"running {todo} on {executor.describe()}")
    bar = open_task(say, "compare: runs", total=todo)
    inner = executor.unit_progress(say)  # each run's bars (here, or from pool workers)
    try:
        for phase, work in enumerate(phases):
            if phase == 1:
                work = [u for u in work if rows.get((first, u[1]), {}).get("status") != "endpoint_failed"]
                for u in units:
                    if u[0] != first and u not in rows and rows.get((first, u[1]), {}).get("status") == \
                            "endpoint_failed":
                        record(u, (None, rows[(first, u[1])]["message"]))
            args = [(config.unit(*u).to_dict(), str(dirs[u]), None if phase == 0 else str(dirs[(first, u[1])]))
                    + inner for u in work]
            for index, outcome in executor.map(compare_unit, args):
                unit = work[index]
                record(unit, outcome)
                save()
                done_count += 1
                bar.update(done_count, info=f"last: {unit[0]} pair {unit[1]}")
                say(f"{unit[0]} pair {unit[1]}: {_describe(rows[unit])} "
                    f"[{done_count}/{todo} done, {time.perf_counter() - clock:.0f}s]")
    finally:
        bar.close()
        if owned:
            executor.close()
    current = save()
    _save_profiles(config, directory, units, dirs, rows, say)
    return current


def _save_profiles(config: CompareConfig, directory: CompareDirectory, units, dirs, rows, say) -> None:
    """Energy profiles of every finished unit (computed once; kept in profiles.json)."""
    file = directory.root / PROFILES
    stored = read_json(file) if file.exists() else {}
    missing = [u for u in units if rows.get(u, {}).get("status") not in (None, "endpoint_failed")
               and f"{u[0]}/{u[1]}" not in stored]
    if not missing:
        return
    task = config.unit(*missing[0]).resolve().task
    say(f"energy profiles of {len(missing)} path(s) ({PROFILE_POINTS} points per piece)")
    for unit in missing:
        path = Path.load(dirs[unit] / "path", like=task.energy.template)
        stored[f"{unit[0]}/{unit[1]}"] = {"method": unit[0], "pair": unit[1], "connected": rows[unit]["connected"],
                                          **energy_profile(path, task.energy)}
    write_json(file, {k: stored[k] for k in sorted(stored)})


def read_profiles(root: str | os.PathLike) -> dict[str, Any]:
    file = FsPath(root) / PROFILES
    return read_json(file) if file.exists() else {}


def _describe(row: dict[str, Any]) -> str:
    if row["status"] == "endpoint_failed":
        return "endpoints did not train"
    cert = row.get("certified_max_energy")
    tail = "" if cert is None else f", sampled max {cert:.4g}"
    if not row["connected"]:
        return f"NOT connected ({row['reason']}){tail}"
    return f"connected, normalized length {row['normalized_length']:.4g}{tail}"



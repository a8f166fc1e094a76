"""Connected components of a level set: ``modeconnect components``.

N models of a task are trained once (model i from a seed derived from the base seed) to the task's endpoint
fraction of the lowest level, and stored under ``models/``. For a task whose endpoint B is derived from A
rather than trained (the permutation control, the Section 2.3.1 counterexample), odd-numbered models are that
derived B of their own seed's A, so both kinds of endpoint are counted. At every level L, in increasing order, pairs of
models are connected only *across* the components found so far (a union-find), in rounds:

* each round pairs up the current components by a greedy maximal matching (components ordered by their
  smallest model, pairs of components taken in lexicographic order), so each component takes part in at most
  one connection per round; for a matched pair of components the candidate is the smallest untried cross pair
  (i, j);
* a pair of components whose cross pairs have failed ``tries`` times at this level (or that has no untried
  cross pair left) is left apart: it is not matched again at this level;
* a round's units run in parallel on the executor; when all have finished, the certified connections are
  merged in the order of (i, j), so the partition never depends on the number of workers or finish order;
* the level ends when no pair of components can be matched.

A connection counts only if the path method connected **and** its sampled certificate holds (the largest
energy found by refined sampling is within tolerance x L). A connection certified at a lower level L' < L is
also one at L (every sampled energy is <= tolerance x L' <= tolerance x L), so level L starts from the
partition of the level below it: the count is non-increasing in L. The count is an upper bound on the number
of components of the level set that hold these models: a failed connection is not a proof of a barrier.

When all N models are connected, exactly N - 1 connections run per level, in about log2(N) rounds.

Layout of the directory::

    components_config.json     identity (settings shared by every unit, seed, model level) and the plan
    models/model-<i>/          endpoint.safetensors, endpoint.json (identity, SHA-256), model.json or failed.json
    runs/L<level>/pair-<i>-<j>/  one connect run directory per scheduled pair (endpoints adopted from models/)
    components.json            per level: components, members, certified edges, failed pairs, rounds
    components.csv             the same as tidy CSV
    figures/                   graph.png (certified connections per level), count.png (components vs level)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any

from .._io import read_json, read_tensors, write_json, write_tensors
from ..errors import ConfigError, StoreError
from ..params import Point, check_compatible
from ..progress import open_task
from ..seeding import derive_seed
from .connect_run import ConnectRunConfig, EndpointTrainingError, run_connect, thread_limit
from .endpoint_store import ENDPOINT_FILE, ENDPOINT_JSON, single_endpoint
from .executors import Executor, make_executor
from .store import FAILED, RUNS_DIR, RunDirectory, SweepDirectory, _open_identified
from .sweep import finished_unit, tidy_csv

__all__ = ["UnionFind", "ComponentsConfig", "ComponentsDirectory", "next_round", "counts_as_connection",
           "run_components", "components_csv", "COMPONENTS_JSON", "COMPONENTS_CSV", "COMPONENTS_CONFIG"]

COMPONENTS_CONFIG, COMPONENTS_JSON, COMPONENTS_CSV = "components_config.json", "components.json", "components.csv"
MODELS_DIR, MODEL_JSON = "models", "model.json"
CSV_FIELDS = ["level", "n_components", "components", "n_units", "complete", "model", "seed", "status", "energy",
              "a", "b", "inherited_from", "certified", "connected", "reason", "certified_max_energy",
              "worst_barrier", "normalized_length", "n_beads", "wall_time_s", "run_dir", "message"]


class UnionFind:
    """Disjoint sets over given elements; the representative of a set is its smallest element.

    >>> uf = UnionFind(range(5))
    >>> uf.union(3, 1), uf.union(4, 3), uf.union(1, 4)
    (True, True, False)
    >>> uf.groups(), uf.find(4)
    ([[0], [1, 3, 4], [2]], 1)
    """

    def __init__(self, elements: Iterable[int]) -> None:
        self._parent = {int(e): int(e) for e in elements}

    def find(self, x: int) -> int:
        root = x
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[x] != root:  # path compression
            self._parent[x], x = root, self._parent[x]
        return root

    def union(self, x: int, y: int) -> bool:
        """Merge the sets of x and y; True if they were apart."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return False
        low, high = min(rx, ry), max(rx, ry)
        self._parent[high] = low
        return True

    def groups(self) -> list[list[int]]:
        """The sets, each sorted, ordered by their smallest element."""
        out: dict[int, list[int]] = {}
        for x in sorted(self._parent):
            out.setdefault(self.find(x), []).append(x)
        return [out[r] for r in sorted(out)]


def counts_as_connection(result: dict[str, Any] | None) -> bool:
    """True when the method connected and the sampled certificate holds (both are required)."""
    return bool(result is not None and result.get("connected") and result.get("certified") is True)


def next_round(uf: UnionFind, tried: Iterable[tuple[int, int]], failed: Iterable[tuple[int, int]],
               tries: int) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, of the next round: a greedy matching of the components that may still be joined.

    ``tried``: pairs already run at this level; ``failed``: those of them that did not count as a connection.

    >>> next_round(UnionFind(range(5)), [], [], tries=2)
    [(0, 1), (2, 3)]
    """
    tried = set(tried)
    groups = uf.groups()
    fails: dict[tuple[int, int], int] = {}
    for i, j in failed:
        key = tuple(sorted((uf.find(i), uf.find(j))))
        fails[key] = fails.get(key, 0) + 1
    matched: set[int] = set()
    chosen = []
    for x, gx in enumerate(groups):
        for gy in groups[x + 1:]:
            if gx[0] in matched:
                break
            if gy[0] in matched or fails.get((gx[0], gy[0]), 0) >= tries:
                continue
            pair = next((p for p in sorted(tuple(sorted((i, j))) for i in gx for j in gy) if p not in tried), None)
            if pair is not None:
                chosen.append(pair)
                matched.update((gx[0], gy[0]))
    return sorted(chosen)


@dataclass(frozen=True)
class ComponentsConfig:
    """A component count: the connect settings shared by every unit, the levels, the models and the seeds."""

    base: ConnectRunConfig
    """Settings of every connect run (its threshold and seed are replaced per unit)."""
    levels: tuple[float, ...]
    """Levels L; the models are trained to the task's endpoint fraction of the lowest one."""
    models: int = 8
    """Number of models N (model i's seed is derived from (seed, i))."""
    seed: int = 0
    """Base seed of the models and of every connection."""
    tries: int = 2
    """Failed cross pairs between two components, at one level, before they are left apart at that level."""

    def __post_init__(self) -> None:
        levels = tuple(sorted(float(v) for v in self.levels))
        if not levels:
            raise ConfigError("give at least one level (--level L or --levels L1,L2,...)")
        bad = [v for v in levels if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ConfigError(f"levels must be positive finite energies, got {bad}")
        if len(set(levels)) != len(levels):
            raise ConfigError(f"levels must be distinct, got {list(self.levels)}")
        object.__setattr__(self, "levels", levels)
        for name, least in (("models", 2), ("tries", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")

    @property
    def model_level(self) -> float:
        return self.levels[0]

    def identity(self) -> dict[str, Any]:
        """What every unit shares (models, levels and tries may change between sessions; the lowest level may not,
        since the models are trained to it)."""
        record = self.base.resolve().record()
        record.pop("threshold")
        record["run"] = {k: v for k, v in record["run"].items() if k not in ("threshold", "seed")}
        if isinstance(record["method_config"], dict):
            record["method_config"].pop("seed", None)
        return {"base": record, "seed": self.seed, "model_level": self.model_level}

    def model_seed(self, i: int) -> int:
        return derive_seed(self.seed, "model", i)

    def model_config(self, i: int) -> ConnectRunConfig:
        return replace(self.base, threshold=self.model_level, seed=self.model_seed(i))

    def unit(self, level: float, i: int, j: int) -> ConnectRunConfig:
        return replace(self.base, threshold=level, seed=derive_seed(self.seed, "pair", i, j))


class ComponentsDirectory(SweepDirectory):
    """A component count's files (see the module docstring); the sweep directory's locking."""

    def open(self, identity: dict[str, Any], seed: int) -> bool:
        for other in ("sweep.json", "compare.json"):
            if (self.root / other).exists():
                raise StoreError(f"{self.root} holds a {other[:-5]} directory; choose another --out for components")
        return _open_identified(self.root, COMPONENTS_CONFIG, "components run", identity, seed)

    def record_plan(self, plan: dict[str, Any]) -> None:
        write_json(self.root / COMPONENTS_CONFIG, {**read_json(self.root / COMPONENTS_CONFIG), "plan": plan})

    def model_dir(self, i: int) -> FsPath:
        return self.root / MODELS_DIR / f"model-{i:02d}"

    def unit_dir(self, level: float, i: int, j: int) -> FsPath:
        return self.root / RUNS_DIR / f"L{level:g}" / f"pair-{i:02d}-{j:02d}"

    @staticmethod
    def is_components(root: str | os.PathLike) -> bool:
        return (FsPath(root) / COMPONENTS_CONFIG).is_file()

    @staticmethod
    def read_record(root: str | os.PathLike) -> dict[str, Any]:
        file = FsPath(root) / COMPONENTS_JSON
        if not file.exists():
            raise StoreError(f"{root} has no {COMPONENTS_JSON}: no model has been trained yet; re-run its command")
        return read_json(file)


# -- units (workers' entry points) -----------------------------------------------------------------------------
def _model_done(out: FsPath) -> tuple[float | None, str | None] | None:
    if (out / FAILED).exists():
        return None, read_json(out / FAILED)["message"]
    if (out / MODEL_JSON).exists():
        return read_json(out / MODEL_JSON)["energy"], None
    return None


def train_model(config: dict[str, Any], out: str, derived: bool = False) -> tuple[float | None, str | None]:
    """Train (or read back) one model; returns (its energy, None) or (None, why it did not train).

    ``derived``: the model is the task's endpoint B derived from the endpoint A of its seed (tasks with
    ``derive_endpoint_b``, whose second endpoint is constructed rather than trained: the permutation control,
    the Section 2.3.1 counterexample); odd-numbered models of such a task are derived, so both kinds of
    endpoint take part in the count."""
    root = FsPath(out)
    done = _model_done(root)
    if done is not None:
        return done
    run = ConnectRunConfig.from_dict(config).resolve()
    derived = derived and run.task.derive_endpoint_b is not None
    root.mkdir(parents=True, exist_ok=True)
    with thread_limit(run.task.threads):
        try:
            point = single_endpoint(run, "a", None if derived else root, None, lambda message: None)
        except EndpointTrainingError as exc:
            write_json(root / FAILED, {"status": "endpoint_failed", "message": str(exc)})
            return None, str(exc)
        if derived:
            point = run.task.derive_endpoint_b(point)
            digest = write_tensors(root / ENDPOINT_FILE, point)
            write_json(root / ENDPOINT_JSON, {"identity": {"task": run.task.name, "seed": run.config.seed,
                                                           "endpoint": "b, derived from a"}, "sha256": digest})
        energy = float(run.task.energy(point))
    write_json(root / MODEL_JSON, {"energy": energy, "init_seed": derive_seed(run.config.seed, "endpoint", "a"),
                                   "derived_endpoint_b": derived})
    return energy, None


def load_model(root: str | os.PathLike, like: Point) -> Point:
    """A stored model (checked against its recorded SHA-256 and the task's parameter names and shapes)."""
    root = FsPath(root)
    saved = read_json(root / ENDPOINT_JSON)
    point = read_tensors(root / ENDPOINT_FILE, sha256=saved.get("sha256"))
    check_compatible(like, point, "the task's model", str(root / ENDPOINT_FILE))
    return {k: point[k] for k in like}


def connect_models(config: dict[str, Any], out: str, model_a: str, model_b: str,
                   progress: Callable[[str], None] | None = None) -> tuple[dict | None, str | None]:
    """Connect two stored models (adopted as the run's endpoints A and B, not retrained); run, resume or read back."""
    done = finished_unit(out)
    if done is not None:
        return done
    cfg = ConnectRunConfig.from_dict(config)
    run = cfg.resolve()
    store = RunDirectory(out)
    with store.lock():
        store.open(run.record(), cfg.seed)
        for which, source in (("a", model_a), ("b", model_b)):
            if store.endpoint(which, run.task.energy.template) is None:
                store.save_endpoint(which, load_model(source, run.task.energy.template))
    try:
        return run_connect(cfg, out, progress=progress), None
    except EndpointTrainingError as exc:
        return None, str(exc)


# -- the experiment --------------------------------------------------------------------------------------------
def run_components(config: ComponentsConfig, out: str, *, executor: Executor | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) a component count into ``out``; returns the record (also components.json / .csv)."""
    say = progress or (lambda message: None)
    config.base.resolve()  # fail fast on a bad task or setting, before any directory is written
    directory = ComponentsDirectory(out)
    with directory.lock():
        owned = executor is None
        executor = executor or make_executor("local", 1)
        try:
            return _Session(config, directory, executor, say).run()
        finally:
            if owned:
                executor.close()


class _Session:
    """One session's work in a locked components directory."""

    def __init__(self, config: ComponentsConfig, directory: ComponentsDirectory, executor: Executor,
                 say: Callable[[str], None]) -> None:
        self.config, self.dir, self.executor, self.say = config, directory, executor, say
        self.models: dict[int, dict[str, Any]] = {}
        self.levels: list[dict[str, Any]] = []
        self.energy: dict[str, Any] = {}
        self.clock = time.perf_counter()
        self.ran = 0

    def run(self) -> dict[str, Any]:
        config = self.config
        self.identity = config.identity()
        resumed = self.dir.open(self.identity, config.seed)
        self.dir.record_plan({"levels": list(config.levels), "models": config.models, "tries": config.tries})
        if resumed:
            self.say(f"continuing the components run in {self.dir.root}")
        self.say(f"{config.models} models of {config.base.task}, levels {', '.join(f'{v:g}' for v in config.levels)}; "
                 f"units run on {self.executor.describe()}")
        self._train_models()
        alive = [i for i, m in self.models.items() if m["status"] == "trained"]
        if len(alive) < config.models:
            self.say(f"{config.models - len(alive)} model(s) did not train and are left out")
        for level in config.levels:
            self._level(level, alive)
        return self.save()

    def _train_models(self) -> None:
        config, todo = self.config, []
        for i in range(config.models):
            done = _model_done(self.dir.model_dir(i))
            if done is None:
                todo.append(i)
            else:
                self._record_model(i, done)
        if todo:
            self.say(f"training {len(todo)} model(s) to the endpoint fraction of L={config.model_level:g}")
        args = [(config.model_config(i).to_dict(), str(self.dir.model_dir(i)), i % 2 == 1) for i in todo]
        with open_task(self.say, "training models", total=len(todo)) as bar:
            for index, outcome in self.executor.map(train_model, args):
                self._record_model(todo[index], outcome)
                energy = outcome[0]
                bar.advance()
                self.say(f"model {todo[index]}: " + (f"energy {energy:.4g}" if energy is not None else
                                                     "did NOT train") + f" [{time.perf_counter() - self.clock:.0f}s]")
        self.models = dict(sorted(self.models.items()))

    def _record_model(self, i: int, outcome: tuple[float | None, str | None]) -> None:
        energy, failure = outcome
        self.models[i] = {"model": i, "seed": self.config.model_seed(i), "status": "trained" if failure is None
                          else "endpoint_failed", "energy": energy, "message": failure,
                          "dir": os.path.relpath(self.dir.model_dir(i), self.dir.root)}

    def _level(self, level: float, alive: list[int]) -> None:
        config, uf = self.config, UnionFind(alive)
        entry: dict[str, Any] = {"level": level, "complete": False, "edges": [], "failed": [], "rounds": []}
        below = self.levels[-1] if self.levels else {"edges": []}  # its edges hold every lower level's too
        for edge in below["edges"]:
            if uf.union(edge["a"], edge["b"]):
                origin = below["level"] if edge["inherited_from"] is None else edge["inherited_from"]
                entry["edges"].append({**edge, "level": level, "inherited_from": origin})
        self.levels.append(entry)
        tried: set[tuple[int, int]] = set()
        failed: list[tuple[int, int]] = []
        while True:
            self._update(entry, uf)
            pairs = next_round(uf, tried, failed, config.tries)
            if not pairs:
                break
            entry["rounds"].append([list(p) for p in pairs])
            outcomes = self._run_round(level, pairs, len(entry["rounds"]))
            for pair in pairs:  # merged in (i, j) order, whatever order the units finished in
                tried.add(pair)
                row = self._unit_row(level, pair, *outcomes[pair])
                if counts_as_connection(outcomes[pair][0]):
                    uf.union(*pair)
                    entry["edges"].append(row)
                else:
                    failed.append(pair)
                    entry["failed"].append(row)
            self.save()
        entry["complete"] = True
        self._update(entry, uf)
        self.save()
        self.say(f"L={level:g}: {entry['n_components']} component(s) of {len(alive)} models after "
                 f"{entry['n_units']} connection(s) in {len(entry['rounds'])} round(s)")

    def _run_round(self, level: float, pairs: list[tuple[int, int]], number: int) -> dict:
        outcomes: dict[tuple[int, int], tuple[dict | None, str | None]] = {}
        todo = []
        for pair in pairs:
            done = finished_unit(self.dir.unit_dir(level, *pair))
            if done is None:
                todo.append(pair)
            else:
                outcomes[pair] = done
        if todo:
            self.say(f"L={level:g} round {number}: connecting {len(todo)} pair(s) across components")
        inner = self.executor.unit_progress(self.say)  # each unit's bars (here, or from pool workers)
        args = [(self.config.unit(level, *p).to_dict(), str(self.dir.unit_dir(level, *p)),
                 str(self.dir.model_dir(p[0])), str(self.dir.model_dir(p[1]))) + inner for p in todo]
        with open_task(self.say, f"L={level:g} round {number}: pairs", total=len(todo)) as bar:
            for index, outcome in self.executor.map(connect_models, args):
                pair = todo[index]
                outcomes[pair] = outcome
                self.ran += 1
                bar.advance()
                self.say(f"L={level:g} models {pair[0]}-{pair[1]}: {_describe(outcome[0], outcome[1])} "
                         f"[{time.perf_counter() - self.clock:.0f}s]")
        return outcomes

    def _unit_row(self, level: float, pair: tuple[int, int], result: dict | None, failure: str | None) -> dict:
        if result is not None and not self.energy:
            self.energy.update(result["energy"])
        row: dict[str, Any] = {"a": pair[0], "b": pair[1], "level": level, "inherited_from": None,
                               "run_dir": os.path.relpath(self.dir.unit_dir(level, *pair), self.dir.root)}
        for key in ("connected", "certified", "reason", "certified_max_energy", "worst_barrier", "normalized_length",
                    "n_beads", "wall_time_s"):
            row[key] = None if result is None else result.get(key)
        if result is None:
            row.update(connected=False, reason="endpoint_failed", message=failure)
        elif result["connected"] and not result["certified"]:
            row.update(reason="not_certified", message="the method connected, but refined sampling found energy "
                       f"{result['certified_max_energy']:.4g} above tolerance x L")
        else:
            row["message"] = result.get("message")
        return row

    @staticmethod
    def _update(entry: dict[str, Any], uf: UnionFind) -> None:
        entry["components"] = uf.groups()
        entry["n_components"] = len(entry["components"])
        entry["n_units"] = len(entry["edges"]) + len(entry["failed"]) - sum(
            e["inherited_from"] is not None for e in entry["edges"])

    def record(self) -> dict[str, Any]:
        config = self.config
        return {"format": "modeconnect.components", "version": 1, "task": config.base.task,
                "energy": dict(self.energy), "settings": self.identity["base"], "method": config.base.method,
                "seed": config.seed, "n_models": config.models, "model_level": config.model_level,
                "levels": list(config.levels), "tries": config.tries,
                "schedule": "rounds of a greedy matching of components; union on certified connections",
                "models": list(self.models.values()), "by_level": self.levels}

    def save(self) -> dict[str, Any]:
        record = self.record()
        write_json(self.dir.root / COMPONENTS_JSON, record)
        tmp = self.dir.root / (COMPONENTS_CSV + ".tmp")
        tmp.write_text(components_csv(record))
        os.replace(tmp, self.dir.root / COMPONENTS_CSV)
        return record


def components_csv(record: dict[str, Any]) -> str:
    """The record as tidy CSV: a ``row`` column says ``level``, ``model``, ``edge`` or ``failed``; components are
    written as ``0 1 2|3 4`` (members separated by spaces, components by bars)."""
    levels = [{"level": e["level"], "n_components": e["n_components"], "n_units": e["n_units"],
               "complete": e["complete"], "components": "|".join(" ".join(map(str, c)) for c in e["components"])}
              for e in record["by_level"]]
    models = [{k: m[k] for k in ("model", "seed", "status", "energy", "message")} for m in record["models"]]
    edges = [{k: v for k, v in e.items() if k in CSV_FIELDS} for lv in record["by_level"] for e in lv["edges"]]
    failed = [{k: v for k, v in e.items() if k in CSV_FIELDS} for lv in record["by_level"] for e in lv["failed"]]
    return tidy_csv((("level", levels), ("model", models), ("edge", edges), ("failed", failed)), CSV_FIELDS)


def _describe(result: dict | None, failure: str | None) -> str:
    if result is None:
        return f"endpoints refused ({failure})"
    cert = f"sampled max {result['certified_max_energy']:.4g}"
    if counts_as_connection(result):
        return f"connected and certified ({result['n_beads']} beads, {cert})"
    if result["connected"]:
        return f"connected but NOT certified ({cert})"
    barrier = result.get("worst_barrier")
    return f"NOT connected ({result['reason']}" + ("" if barrier is None else f", worst barrier {barrier:.4g}") + ")"

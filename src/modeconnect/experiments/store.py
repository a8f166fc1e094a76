"""The run directory: every file name a run writes lives here.

A run directory holds::

    config.json               the resolved run configuration and its run_id (hash of canonical JSON)
    env.json                  versions, platform, threads, device, seed
    endpoint_a.safetensors    the trained endpoints (each written as soon as it is trained)
    endpoint_b.safetensors
    path/beads-<id>.safetensors  the string after every new bead (beads)
    path/path.json            segments, shapes and the DSS state (resume point)
    result.json               the final summary (written last: its presence means "finished")
    failed.json               instead of result.json when an endpoint could not be trained (also final)
    .lock                     held (flock) by the process working in the directory

A sweep directory holds::

    sweep.json                the sweep configuration and its id; levels and pairs may grow between sessions
    env.json
    runs/L<level>/pair-<j>/   one run directory per (level, pair)
    table.json, table.csv     one row per pair and one aggregate row per level (rewritten as pairs finish)
    figures/                  what ``modeconnect plot`` draws
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path as FsPath
from typing import Any

import numpy
import safetensors
import torch

from .._io import read_json, read_tensors, write_json, write_tensors
from ..errors import ArchitectureMismatch, StoreError
from ..params import Point, check_compatible
from ..path import PATH_JSON, Path

CONFIG = "config.json"
ENV = "env.json"
RESULT = "result.json"
FAILED = "failed.json"
LOCK = ".lock"
PATH_DIR = "path"
ENDPOINT = "endpoint_{}.safetensors"
SWEEP = "sweep.json"
RUNS_DIR = "runs"
TABLE_JSON = "table.json"
TABLE_CSV = "table.csv"
FIGURES_DIR = "figures"
PICTURE = "string_picture.json"


def run_id(config: dict[str, Any]) -> str:
    """Hash of the canonical JSON of a config (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def environment(seed: int) -> dict[str, Any]:
    from .. import __version__

    return {
        "modeconnect": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "seed": seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (for naming what differs between two configs)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _open_identified(root: FsPath, filename: str, kind: str, config: dict[str, Any], seed: int) -> bool:
    """Create ``root/filename`` holding ``config`` and its id, or check that it holds the same; True if it did."""
    config_file = root / filename
    rid = run_id(config)
    if config_file.exists():
        stored = read_json(config_file)
        if stored.get("run_id") != rid:
            old, new = _leaves(stored.get("config", {})), _leaves(config)
            diff = [f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now"
                    for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise StoreError(
                f"{root} holds a different {kind} ({'; '.join(diff) or 'unknown difference'}); "
                "use another --out directory, or delete this one to start over"
            )
        return True
    if root.exists() and any(p.name != LOCK for p in root.iterdir()):
        raise StoreError(f"{root} exists and is not a modeconnect {kind} directory; choose an empty or new --out")
    write_json(config_file, {"run_id": rid, "config": config})
    write_json(root / ENV, environment(seed))
    return False


class RunDirectory:
    """A run's files. ``open`` creates it or checks that an existing one holds the same config."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = FsPath(root)

    def open(self, config: dict[str, Any], seed: int) -> bool:
        """Prepare the directory for ``config``; returns True if it already held this run (resume)."""
        return _open_identified(self.root, CONFIG, "run", config, seed)

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the directory (released by the kernel if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreError(f"{self.root} is in use by {holder}; wait for it to finish or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # endpoints
    def endpoint(self, which: str, like: Point) -> Point | None:
        """The saved endpoint (parameters in ``like``'s order, checked against it), or None if not saved yet."""
        file = self.root / ENDPOINT.format(which)
        if not file.exists():
            return None
        stored = read_tensors(file)
        try:
            check_compatible(like, stored, "the task's model", str(file))
        except ArchitectureMismatch as exc:
            raise StoreError(f"{exc}; delete {file} to train the endpoint again") from None
        return {name: stored[name] for name in like}

    def save_endpoint(self, which: str, point: Point) -> None:
        write_tensors(self.root / ENDPOINT.format(which), point)

    # the string
    def checkpoint(self) -> Path | None:
        return Path.load(self.root / PATH_DIR) if (self.root / PATH_DIR / PATH_JSON).exists() else None

    def save_checkpoint(self, path: Path) -> None:
        path.save(self.root / PATH_DIR)

    # the result
    def result(self) -> dict[str, Any] | None:
        file = self.root / RESULT
        return read_json(file) if file.exists() else None

    def save_result(self, result: dict[str, Any]) -> None:
        write_json(self.root / RESULT, result)

    def failure(self) -> dict[str, Any] | None:
        file = self.root / FAILED
        return read_json(file) if file.exists() else None

    def save_failure(self, record: dict[str, Any]) -> None:
        write_json(self.root / FAILED, record)

    @staticmethod
    def read_result(root: str | os.PathLike) -> dict[str, Any]:
        """Read a finished run's result, with a clear error for anything else."""
        root = FsPath(root)
        if not root.is_dir():
            raise StoreError(f"{root} is not a directory")
        if not (root / RESULT).exists():
            state = "an unfinished run: re-run its command to resume" if (root / CONFIG).exists() else \
                "not a modeconnect run directory"
            raise StoreError(f"{root} has no {RESULT}; it is {state}")
        return read_json(root / RESULT)


class SweepDirectory:
    """A sweep's files: its identity (the settings shared by all pairs), its run directories and its table."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = FsPath(root)

    def open(self, identity: dict[str, Any], seed: int) -> bool:
        """Create the directory for a sweep, or check that it holds one with the same ``identity``."""
        return _open_identified(self.root, SWEEP, "sweep", identity, seed)

    def record_plan(self, plan: dict[str, Any]) -> None:
        """Store the levels and pair count of the latest session beside the identity."""
        stored = read_json(self.root / SWEEP)
        write_json(self.root / SWEEP, {**stored, "plan": plan})

    def run_dir(self, level: float, pair: int) -> FsPath:
        return self.root / RUNS_DIR / f"L{level:g}" / f"pair-{pair:02d}"

    def save_table(self, table: dict[str, Any], csv_text: str) -> None:
        write_json(self.root / TABLE_JSON, table)
        tmp = self.root / (TABLE_CSV + ".tmp")
        tmp.write_text(csv_text)
        os.replace(tmp, self.root / TABLE_CSV)

    @staticmethod
    def is_sweep(root: str | os.PathLike) -> bool:
        return (FsPath(root) / SWEEP).is_file()

    @staticmethod
    def read_table(root: str | os.PathLike) -> dict[str, Any]:
        root = FsPath(root)
        if not (root / TABLE_JSON).exists():
            raise StoreError(f"{root} has no {TABLE_JSON}: no pair of this sweep has finished yet; "
                             "re-run its command to continue")
        return read_json(root / TABLE_JSON)

"""The run directory: every file name a run writes lives here.

A run directory holds::

    config.json               the resolved run configuration and its run_id (hash of canonical JSON)
    env.json                  versions, platform, threads, device, seed
    endpoint_a.safetensors    the trained endpoints (each written as soon as it is trained)
    endpoint_b.safetensors
    endpoints.json            the endpoint files' SHA-256, checked whenever they are read
    path/beads-<id>.safetensors  the path after every checkpoint (beads and curve control points)
    path/path.json            pieces, shapes, the tensor file's SHA-256 and the method's state (resume point)
    result.json               the final summary (written last: its presence means "finished")
    failed.json               instead of result.json when an endpoint could not be trained (also final)
    .lock                     held (flock) by the process working in the directory, removed when it is done

A sweep directory holds (and is locked the same way while a sweep works in it)::

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
from ..errors import ArchitectureMismatch, ConfigError, StoreError
from ..params import Point, check_compatible
from ..path import PATH_JSON, Path

CONFIG = "config.json"
ENV = "env.json"
RESULT = "result.json"
FAILED = "failed.json"
LOCK = ".lock"
PATH_DIR = "path"
ENDPOINT = "endpoint_{}.safetensors"
ENDPOINTS_JSON = "endpoints.json"
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
            keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            # name the resolved settings that differ; the raw command-line overrides only if nothing else does
            keys = [k for k in keys if not (k.startswith("run.") or ".run." in k)] or keys
            diff = [f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in keys]
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


def _checked_root(root: str | os.PathLike, kind: str) -> FsPath:
    if not str(root).strip():
        raise ConfigError(f"the {kind} directory (--out) must not be empty; name a new or existing {kind} directory")
    return FsPath(root)


@contextlib.contextmanager
def lock_directory(root: FsPath):
    """Hold an exclusive ``flock`` on ``root/.lock`` while working in ``root``; remove the lock file after.

    A directory the command created is removed again if nothing but the lock was written (a refused run
    leaves no trace). The lock file is unlinked while still held; a process that opened the old file
    meanwhile notices that it locked a file no longer in place and reports the directory as busy.
    """
    created = not root.exists()
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} exists and is a file, not a directory; choose another --out")
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / LOCK, "a+")
    except OSError as exc:
        raise StoreError(f"cannot write in {root} ({exc.strerror or exc}); choose a writable --out") from None
    lock_file = root / LOCK
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.stat(lock_file).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(f"{root} is in use by {holder}; wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            lock_file.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)
            if created:
                with contextlib.suppress(OSError):
                    root.rmdir()  # only succeeds when nothing was written


class RunDirectory:
    """A run's files. ``open`` creates it or checks that an existing one holds the same config."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = _checked_root(root, "run")

    def open(self, config: dict[str, Any], seed: int) -> bool:
        """Prepare the directory for ``config``; returns True if it already held this run (resume)."""
        return _open_identified(self.root, CONFIG, "run", config, seed)

    def lock(self):
        """Hold an exclusive lock on the directory (released by the kernel if the process dies)."""
        return lock_directory(self.root)

    # endpoints
    def _endpoint_hashes(self) -> dict[str, str]:
        file = self.root / ENDPOINTS_JSON
        if not file.exists():
            return {}
        data = read_json(file)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise StoreError(f"{file} must map endpoint names to SHA-256 digests; delete it and the endpoint "
                             "files to train the endpoints again")
        return data

    def endpoint(self, which: str, like: Point) -> Point | None:
        """The saved endpoint (parameters in ``like``'s order, checked against it and its recorded SHA-256),
        or None if not saved yet (a file whose hash was never recorded was interrupted while being saved)."""
        file = self.root / ENDPOINT.format(which)
        digest = self._endpoint_hashes().get(which)
        if not file.exists() or digest is None:
            return None
        stored = read_tensors(file, sha256=digest)
        try:
            check_compatible(like, stored, "the task's model", str(file))
        except ArchitectureMismatch as exc:
            raise StoreError(f"{exc}; delete {file} to train the endpoint again") from None
        return {name: stored[name] for name in like}

    def save_endpoint(self, which: str, point: Point) -> None:
        digest = write_tensors(self.root / ENDPOINT.format(which), point)
        write_json(self.root / ENDPOINTS_JSON, {**self._endpoint_hashes(), which: digest})

    # the path
    def checkpoint(self, like: Point, endpoints: dict[str, Point]) -> tuple[Path, dict[str, Any]] | None:
        """The saved path and its method state ``{"method": name, "state": {...}}``, or None if none is saved.

        The path's end beads must equal the run's endpoint files exactly: a path that belongs elsewhere is
        refused rather than resumed into a wrong result.
        """
        if not (self.root / PATH_DIR / PATH_JSON).exists():
            return None
        path = Path.load(self.root / PATH_DIR, like=like)
        for which, bead in (("a", path.beads[0]), ("b", path.beads[-1])):
            if set(bead) != set(endpoints[which]) or not all(
                    torch.equal(bead[k], endpoints[which][k]) for k in bead):
                raise StoreError(f"{self.root / PATH_DIR} does not start and end at this run's endpoints "
                                 f"(endpoint {which.upper()} differs); delete {self.root / PATH_DIR} to restart "
                                 "the search from the endpoints")
        state = path.metadata.get("method_state")
        if not isinstance(state, dict):
            raise StoreError(f"{self.root / PATH_DIR / PATH_JSON} has no method state; delete "
                             f"{self.root / PATH_DIR} to restart the search from the endpoints")
        return path, state

    def save_checkpoint(self, path: Path, method: str, state: dict[str, Any]) -> None:
        path.metadata["method_state"] = {"method": method, "state": state}
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
        self.root = _checked_root(root, "sweep")

    def lock(self):
        """Hold an exclusive lock on the sweep directory while a sweep works in it."""
        return lock_directory(self.root)

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

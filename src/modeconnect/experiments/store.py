"""The run directory: every file name a run writes lives here.

A run directory holds::

    config.json               the resolved run configuration and its run_id (hash of canonical JSON)
    env.json                  versions, platform, threads, device, seed
    endpoint_a.safetensors    the trained endpoints (each written as soon as it is trained)
    endpoint_b.safetensors
    path/beads-<id>.safetensors  the string after every new bead (beads)
    path/path.json            segments, shapes and the DSS state (resume point)
    result.json               the final summary (written last: its presence means "finished")
"""

from __future__ import annotations

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
PATH_DIR = "path"
ENDPOINT = "endpoint_{}.safetensors"


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


class RunDirectory:
    """A run's files. ``open`` creates it or checks that an existing one holds the same config."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = FsPath(root)

    def open(self, config: dict[str, Any], seed: int) -> bool:
        """Prepare the directory for ``config``; returns True if it already held this run (resume)."""
        config_file = self.root / CONFIG
        rid = run_id(config)
        if config_file.exists():
            stored = read_json(config_file)
            if stored.get("run_id") != rid:
                old, new = _leaves(stored.get("config", {})), _leaves(config)
                diff = [f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now"
                        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
                raise StoreError(
                    f"{self.root} holds a different run ({'; '.join(diff) or 'unknown difference'}); "
                    "use another --out directory, or delete this one to start over"
                )
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise StoreError(f"{self.root} exists and is not a modeconnect run directory; choose an empty or new --out")
        write_json(config_file, {"run_id": rid, "config": config})
        write_json(self.root / ENV, environment(seed))
        return False

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

"""One trained endpoint of a task, outside a connect run: for measurements of a single model
(``modeconnect dropout``, ``modeconnect noise-stability``).

The endpoint is trained exactly as ``connect`` trains it with the same seed (derived seed, target
``endpoint_fraction * L0``, endpoint training), saved as ``DIR/endpoint.safetensors`` with its identity
and SHA-256 in ``DIR/endpoint.json`` and reused by a later command of the same settings in the same
directory; or it is taken from a connect run directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path as FsPath

from .._io import read_json, read_tensors, write_json, write_tensors
from ..errors import ConfigError, StoreError
from ..params import Point, check_compatible
from ..seeding import derive_seed
from .connect_run import ResolvedRun, train_endpoint
from .store import RunDirectory

__all__ = ["single_endpoint", "ENDPOINT_FILE", "ENDPOINT_JSON"]

ENDPOINT_FILE, ENDPOINT_JSON = "endpoint.safetensors", "endpoint.json"


def single_endpoint(run: ResolvedRun, which: str, out: FsPath | None, from_run: str | None,
                    say: Callable[[str], None]) -> Point:
    """The endpoint: from ``from_run``, from ``out`` (same identity as ``modeconnect dropout`` writes), or trained
    by connect's own endpoint training (and then saved in ``out``)."""
    task, seed = run.task, run.config.seed
    if from_run is not None:
        point = RunDirectory(from_run).endpoint(which, task.energy.template)
        if point is None:
            raise StoreError(f"{from_run} holds no endpoint {which.upper()}; run `modeconnect connect` there first")
        say(f"endpoint {which.upper()} loaded from {from_run}")
        return point
    identity = {"task": task.describe(), "seed": seed, "endpoint": which, "threshold": run.threshold,
                "endpoint_training": run.endpoint_training.to_dict(), "from_run": None}
    if out is not None and (out / ENDPOINT_JSON).exists():
        saved = read_json(out / ENDPOINT_JSON)
        if isinstance(saved, dict) and saved.get("identity") == json.loads(json.dumps(identity)):
            point = read_tensors(out / ENDPOINT_FILE, sha256=saved.get("sha256"))
            check_compatible(task.energy.template, point, "the task's model", str(out / ENDPOINT_FILE))
            say(f"endpoint {which.upper()} loaded from {out / ENDPOINT_FILE}")
            return {k: point[k] for k in task.energy.template}
        raise ConfigError(f"{out} holds an endpoint of other settings ({out / ENDPOINT_JSON}); use another --out")
    point = train_endpoint(task, which, derive_seed(seed, "endpoint", which), task.endpoint_fraction * run.threshold,
                            run.endpoint_training, say)
    if out is not None:
        digest = write_tensors(out / ENDPOINT_FILE, point)
        write_json(out / ENDPOINT_JSON, {"identity": identity, "sha256": digest})
    return point

"""``modeconnect prove DIR``: prove a finished run's path after the fact, and store the proof beside it.

The run's task and energy are rebuilt from its ``config.json`` (real tasks need their data directory),
its path is loaded (hash-checked) and its sampled certificate recomputed with the run's own certification
settings (a pure function of the path), then :func:`modeconnect.proof.prove` bounds the energy over every
continuous piece. The record is written to ``DIR/proof.json``; the run's ``result.json`` is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path as FsPath
from typing import Any

from .._io import read_json, write_json
from ..certify import certify
from ..connect import proof_fields, run_proof
from ..errors import StoreError
from ..proof import ProofConfig
from ..settings import apply_overrides
from .connect_run import ConnectRunConfig
from .store import CONFIG, PATH_DIR, RESULT, RunDirectory, lock_directory

__all__ = ["prove_run", "PROOF_JSON"]

PROOF_JSON = "proof.json"


def prove_run(directory: str, overrides: Mapping[str, Any] | None = None, *,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prove the path of the finished run in ``directory``; returns the proof record (also in proof.json)."""
    say = progress or (lambda message: None)
    root = FsPath(directory)
    result = RunDirectory.read_result(root)  # a clear error for anything but a finished run
    stored = read_json(root / CONFIG)
    if not isinstance(stored, dict) or "config" not in stored:
        raise StoreError(f"{root / CONFIG} is not a modeconnect run configuration")
    run = ConnectRunConfig.from_dict(stored["config"]["run"]).resolve()
    config = apply_overrides(ProofConfig(), dict(overrides or {}))
    with lock_directory(root):
        path = RunDirectory(root).checkpoint(run.task.energy.template, _endpoints_of(run, root))[0]
        tolerance = float(result.get("tolerance", 1.0))
        say(f"re-checking the path by refined sampling at resolution {run.certify.resolution:g}")
        certificate = certify(path, run.task.energy, run.certify, threshold=run.threshold, tolerance=tolerance)
        say(f"proving the energy stays <= {tolerance:g} x {run.threshold:g} on {path.n_pieces} piece(s)")
        proof, seconds = run_proof(path, run.task.energy, threshold=run.threshold, tolerance=tolerance,
                                   certificate=certificate, config=config, progress=say)
        record = {**proof_fields(proof, seconds)["proof"], "proof_time_s": seconds,
                  "sampled_certificate": certificate.to_dict(), "run": str(root),
                  "proved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(root / PROOF_JSON, record)
    return record


def _endpoints_of(run, root: FsPath) -> dict[str, Any]:
    """The endpoints the saved path must join (after the run's alignment pre-step, when it had one)."""
    from ..connect import align_endpoint
    from ..seeding import derive_seed

    store = RunDirectory(root)
    like = run.task.energy.template
    a, b = store.endpoint("a", like), store.endpoint("b", like)
    if a is None or b is None or not (root / PATH_DIR).is_dir():
        raise StoreError(f"{root} has no saved endpoints and path; it is not a finished connect run ({RESULT} "
                         "without them)")
    b, _ = align_endpoint(a, b, run.task.energy, run.config.align, inputs=run.task.objective.inputs[:256],
                          seed=derive_seed(run.config.seed, "align"))
    return {"a": a, "b": b}

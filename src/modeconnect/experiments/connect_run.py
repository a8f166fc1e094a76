"""The ``connect`` experiment: train two endpoints of a task, connect them with greedy DSS, certify, store.

A run is a pure function of its :class:`ConnectRunConfig`. With an output
directory it is resumable: the endpoints are saved as soon as each is trained,
the string after every new bead, and ``result.json`` last; re-running the same
config continues from the last saved state and ends with the same numbers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..connect import connect_path
from ..errors import ConfigError, ModeconnectError
from ..params import Point
from ..path import Path
from ..seeding import derive_seed
from ..strings.greedy import DSSConfig, DSSState
from ..tasks import TASKS, Task, make_task
from ..train import TrainConfig, train_to_target
from .store import RunDirectory

__all__ = ["ConnectRunConfig", "EndpointTrainingError", "run_connect", "TIMING_FIELDS"]

TIMING_FIELDS = frozenset({"wall_time_s", "certification_time_s", "dss_time_s", "endpoint_time_s",
                           "bead_training_time_s", "segment_evaluation_time_s"})
"""Result fields that measure time: everything else in a result is a pure function of the config."""


def _opt(help: str, **kw: Any) -> Any:
    return field(metadata={"help": help}, **kw)


@dataclass(frozen=True)
class ConnectRunConfig:
    """Every setting of a connect run. CLI flags are derived from these fields."""

    task: str = _opt(f"task to run: {', '.join(TASKS)}", default="cubic")
    threshold: float | None = _opt("energy level L0 (default: the task's own)", default=None)
    seed: int = _opt("base seed; endpoint and bead seeds are derived from it", default=0)
    alpha: float = _opt("beads are trained to alpha * L0", default=0.8)
    tolerance: float = _opt("a segment passes when its grid max <= tolerance * L0", default=1.0)
    tstar: str = _opt("where a new bead starts: argmax or midpoint", default="argmax")
    grid_size: int = _opt("points per segment on the acceptance grid", default=33)
    order: str = _opt("segment order: depth_first (the paper) or breadth_first", default="depth_first")
    max_depth: int = _opt("cap on nested bead insertions", default=10)
    max_beads: int = _opt("cap on intermediate beads", default=64)
    max_time_s: float | None = _opt("wall-time budget for DSS in seconds", default=None)
    bead_max_steps: int | None = _opt("step cap per bead (default: the task's own)", default=None)
    bead_lr: float | None = _opt("bead learning rate (default: the task's own)", default=None)
    endpoint_max_steps: int | None = _opt("step cap per endpoint (default: the task's own)", default=None)
    resolution: float | None = _opt("certification resolution in segment units t (default: the task's own)",
                                    default=None)
    activation: str | None = _opt("polynomial tasks: sigmoid (paper), relu or tanh", default=None)
    data_seed: int | None = _opt("seed of the task's data sample (default 0)", default=None)
    n_eval: int | None = _opt("real tasks: size of the restricted evaluation subset (default: the task's own)",
                              default=None)
    n_train: int | None = _opt("real tasks: training examples (PTB: tokens) used (default: the task's own)",
                               default=None)
    batchnorm: str | None = _opt("cifar10: BatchNorm layers with statistics recomputed, interpolated or frozen "
                                 "(default: no BatchNorm)", default=None)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def task_options(self) -> dict[str, Any]:
        out = {}
        if self.activation is not None:
            out["activation"] = self.activation
        for key in ("data_seed", "n_eval", "n_train", "batchnorm"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def build(self) -> tuple[Task, DSSConfig, dict[str, Any]]:
        """The task, the DSS config with task defaults filled in, and the resolved config to record."""
        task = make_task(self.task, **self.task_options())
        threshold = task.default_threshold if self.threshold is None else self.threshold
        bead = task.bead_training
        bead = TrainConfig(**{**bead.to_dict(),
                              **({"max_steps": self.bead_max_steps} if self.bead_max_steps is not None else {}),
                              **({"lr": self.bead_lr} if self.bead_lr is not None else {})})
        dss = DSSConfig(threshold=threshold, alpha=self.alpha, tolerance=self.tolerance, grid_size=self.grid_size,
                        tstar=self.tstar, order=self.order, max_depth=self.max_depth, max_beads=self.max_beads,
                        max_time_s=self.max_time_s, bead_training=bead, seed=self.seed)
        resolution = self.certify_resolution(task)
        if not 0 < resolution < 1:
            raise ConfigError(f"resolution must be in (0, 1), got {resolution}")
        resolved = {"run": self.to_dict(), "task": task.describe(), "dss": dss.to_dict(),
                    "endpoint_training": self.endpoint_training(task).to_dict(), "resolution": resolution}
        return task, dss, resolved

    def certify_resolution(self, task: Task) -> float:
        """This run's certification resolution: the flag if given, else the task's default."""
        return task.certify_resolution if self.resolution is None else self.resolution

    def endpoint_training(self, task: Task) -> TrainConfig:
        """The task's endpoint training settings with this run's overrides."""
        if self.endpoint_max_steps is None:
            return task.endpoint_training
        return TrainConfig(**{**task.endpoint_training.to_dict(), "max_steps": self.endpoint_max_steps})


class EndpointTrainingError(ModeconnectError):
    """An endpoint did not reach its target energy."""


def _train_endpoint(task: Task, which: str, seed: int, target: float, config: TrainConfig,
                    say: Callable[[str], None]) -> Point:
    say(f"training endpoint {which.upper()} (seed {seed}) to energy <= {target:.4g}")
    start = task.energy.point_of(task.make_model(seed))  # parameters (+ BatchNorm statistics if the policy says)
    point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=target,
                                    config=config, seed=seed)
    if not status.reached:
        raise EndpointTrainingError(
            f"endpoint {which.upper()} reached energy {status.final_energy:.4g} after {status.steps} steps "
            f"({status.reason}), above its target {target:.4g}: raise --threshold, increase "
            "--endpoint-max-steps, or try another --seed"
        )
    say(f"endpoint {which.upper()}: energy {status.final_energy:.4g} after {status.steps} steps")
    return point


def run_connect(
    config: ConnectRunConfig,
    out: str | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    after_checkpoint: Callable[[Path, DSSState], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or read back) a connect experiment; returns the result record.

    ``after_checkpoint`` is called after each saved bead (used by tests to simulate interruption).
    """
    say = progress or (lambda message: None)
    task, dss, resolved = config.build()
    with _thread_limit(task.threads):
        if out is None:
            return _run(config, task, dss, None, say, after_checkpoint)
        return _run_in(RunDirectory(out), config, task, dss, resolved, say, after_checkpoint)


@contextlib.contextmanager
def _thread_limit(threads: int | None):
    """Run with at most ``threads`` torch threads (the task's own limit), then restore the setting."""
    previous = torch.get_num_threads()
    if threads is not None and threads < previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_in(store: RunDirectory, config: ConnectRunConfig, task: Task, dss: DSSConfig, resolved: dict[str, Any],
            say: Callable[[str], None], after_checkpoint: Callable[[Path, DSSState], None] | None) -> dict[str, Any]:
    out = store.root
    with store.lock():
        resumed = store.open(resolved, config.seed)
        done = store.result()
        if done is not None:
            say(f"{out} already holds the finished run; showing its result")
            return done
        failed = store.failure()
        if failed is not None:
            raise EndpointTrainingError(f"{failed['message']} (recorded in {out})")
        if resumed:
            say(f"resuming the run in {out}")
        try:
            return _run(config, task, dss, store, say, after_checkpoint)
        except EndpointTrainingError as exc:
            store.save_failure({"status": "endpoint_failed", "message": str(exc), "task": task.name,
                                "seed": config.seed, "threshold": dss.threshold})
            raise


def _run(config: ConnectRunConfig, task: Task, dss: DSSConfig, store: RunDirectory | None,
         say: Callable[[str], None], after_checkpoint: Callable[[Path, DSSState], None] | None) -> dict[str, Any]:

    seeds = {"a": derive_seed(config.seed, "endpoint", "a"), "b": derive_seed(config.seed, "endpoint", "b")}
    endpoint_target = task.endpoint_fraction * dss.threshold
    endpoint_config = config.endpoint_training(task)
    endpoints: dict[str, Point] = {}
    endpoint_clock = time.perf_counter()
    for which in ("a", "b"):
        stored = store.endpoint(which, task.energy.template) if store is not None else None
        if stored is not None:
            endpoints[which] = stored
            continue
        if which == "b" and task.derive_endpoint_b is not None:
            endpoints["b"] = task.derive_endpoint_b(endpoints["a"])
            say("endpoint B: derived from endpoint A by the task (not trained)")
        else:
            endpoints[which] = _train_endpoint(task, which, seeds[which], endpoint_target, endpoint_config, say)
        if store is not None:
            store.save_endpoint(which, endpoints[which])

    endpoint_time = time.perf_counter() - endpoint_clock
    path = store.checkpoint() if store is not None else None
    if path is not None:
        state = DSSState(**path.metadata.get("dss_state", {}))
        say(f"resuming DSS with {path.n_beads} bead(s) already on the string")
    else:
        path, state = Path([endpoints["a"], endpoints["b"]]), DSSState()

    def checkpoint(p: Path, s: DSSState) -> None:
        p.metadata["dss_state"] = s.to_dict()
        if store is not None:
            store.save_checkpoint(p)
        if after_checkpoint is not None and not s.finished:
            after_checkpoint(p, s)

    say(f"connecting with greedy DSS: L0={dss.threshold:g}, alpha={dss.alpha:g}, tolerance={dss.tolerance:g}, "
        f"t*={dss.tstar.value}, order={dss.order.value}")
    connection = connect_path(path, task.energy, task.objective, dss, state=state, checkpoint=checkpoint,
                              resolution=config.certify_resolution(task), progress=say)
    # wall_time_s covers connecting (summed over resumed sessions) and certifying; endpoint training is
    # reported on its own (endpoint_time_s, this session only: 0 when the endpoints were loaded).
    result = connection.summary()
    result.update({
        "task": task.name,
        "seed": config.seed,
        "endpoint_seeds": seeds if task.derive_endpoint_b is None else {"a": seeds["a"], "b": "derived"},
        "endpoint_target": endpoint_target,
        "energy": task.energy.describe(),
        "certification_time_s": connection.certification_time_s,
        "endpoint_time_s": endpoint_time,
        "dss_time_s": connection.status.elapsed_s,
        "bead_training_time_s": state.bead_training_s,
        "segment_evaluation_time_s": state.segment_evaluation_s,
        "bead_log": state.bead_log,
        "bead_births": state.bead_births,
        "segment_max_energy": [s.max_energy for s in connection.path.segments],
        "certified_segment_max_energy": connection.certificate.segment_max,
    })
    if store is not None:
        store.save_result(result)
    return result

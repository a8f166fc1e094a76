"""The ``connect`` experiment: train two endpoints of a task, connect them with a path method, certify, store.

A run is a pure function of its :class:`ConnectRunConfig`. With an output directory it is resumable:
the endpoints are saved as soon as each is trained, the path and the method's state whenever the
method checkpoints, and ``result.json`` last; re-running the same config continues from the last saved
state and ends with the same numbers.

The settings schema is nested and declared once: the method's own ``Config`` (greedy DSS's alpha,
tolerance, grid, ... and its bead training), the endpoint :class:`~modeconnect.train.TrainConfig` and the
:class:`~modeconnect.certify.CertifyConfig`. A run config holds only what the user set (``method_settings``,
``endpoint_training``, ``certify``, as nested overrides, checked against the schema on creation); the
task supplies its own defaults for training and certification, and :meth:`ConnectRunConfig.resolve`
records every value actually used.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..align import as_align_method
from ..certify import CertifyConfig
from ..connect import align_endpoint, connect_path
from ..device import default_device, describe_device, resolve_device
from ..errors import ConfigError, ModeconnectError
from ..methods import DEFAULT_METHOD, METHODS, get_method
from ..params import Point
from ..path import Path
from ..progress import open_task, training_reporter
from ..proof import ProofConfig
from ..seeding import derive_seed
from ..settings import apply_overrides, from_dict, to_dict
from ..tasks import TASKS, Task, make_task
from ..tasks.base import budget_warning
from ..train import TrainConfig, train_to_target
from .store import RunDirectory

__all__ = ["ConnectRunConfig", "ResolvedRun", "EndpointTrainingError", "run_connect", "train_endpoint",
           "thread_limit", "TIMING_FIELDS", "TASK_OPTIONS"]

TIMING_FIELDS = frozenset({"wall_time_s", "certification_time_s", "method_time_s", "endpoint_time_s",
                           "bead_training_time_s", "segment_evaluation_time_s", "proof_time_s",
                           "method_energy_evaluations", "device"})
"""Result fields that measure time or the last session's work (``method_energy_evaluations`` counts the
energy evaluations of the session that finished the run; ``device`` where that session ran): everything else
in a result is a pure function of the config."""

TASK_OPTIONS = ("activation", "data_seed", "n_eval", "n_train", "batchnorm", "width", "depth", "input_dim", "sigma")
"""Run settings handed to the task's factory."""


@dataclass(frozen=True)
class ConnectRunConfig:
    """Every setting of a connect run. CLI flags are derived from these fields and the nested schemas."""

    task: str = "cubic"
    """The task to run (see ``modeconnect.tasks.TASKS``)."""
    threshold: float | None = None
    """Energy level L0 (default: the task's own)."""
    seed: int = 0
    """Base seed; endpoint and method seeds are derived from it."""
    method: str = DEFAULT_METHOD
    """The path method (see ``modeconnect.methods.METHODS``)."""
    align: str = "none"
    """Permutation alignment of endpoint B to A before the method: none, weight or activation (Git Re-Basin)."""
    method_settings: dict[str, Any] = field(default_factory=dict)
    """Overrides of the method's Config (nested: ``{"bead_training": {"lr": 1e-4}}``); the rest are its
    defaults, and bead training starts from the task's own."""
    endpoint_training: dict[str, Any] = field(default_factory=dict)
    """Overrides of the task's endpoint TrainConfig."""
    certify: dict[str, Any] = field(default_factory=dict)
    """Overrides of the certification settings (the task's resolution, CertifyConfig's other defaults)."""
    prove: bool = False
    """Also bound the energy over every continuous piece (a proof, not a sample; see modeconnect.proof)."""
    proof: dict[str, Any] = field(default_factory=dict)
    """Overrides of the proof settings (ProofConfig), used with prove."""
    activation: str | None = None
    """Polynomial tasks: sigmoid (paper), relu or tanh (default: the task's own)."""
    data_seed: int | None = None
    """Seed of the task's data sample (default 0)."""
    n_eval: int | None = None
    """Real tasks: size of the restricted evaluation subset (default: the task's own)."""
    n_train: int | None = None
    """Real tasks: training examples (PTB: tokens) used (default: the task's own)."""
    batchnorm: str | None = None
    """cifar10: BatchNorm layers with statistics recomputed, interpolated or frozen (default: no BatchNorm)."""
    width: int | None = None
    """Synthetic tasks: hidden width (kuditipudi-disconnected H, teacher-student m, linear nets; default: the
    task's own). Tasks without a width refuse it."""
    depth: int | None = None
    """Synthetic tasks: number of layers (linear nets; default: the task's own)."""
    input_dim: int | None = None
    """Synthetic tasks: input dimension n (default: the task's own)."""
    sigma: float | None = None
    """Synthetic tasks: noise or covariance scale of the data (Gaussian mixture; default: the task's own)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        cls = get_method(self.method)
        as_align_method(self.align)
        if self.threshold is not None and (isinstance(self.threshold, bool) or not (
                isinstance(self.threshold, (int, float)) and self.threshold == self.threshold
                and 0 < self.threshold < float("inf"))):
            raise ConfigError(f"threshold must be a positive finite number, got {self.threshold!r}")
        if not isinstance(self.prove, bool):
            raise ConfigError(f"prove must be true or false, got {self.prove!r}")
        for name in ("method_settings", "endpoint_training", "certify", "proof"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a mapping of setting names to values, got {type(value).__name__}")
            object.__setattr__(self, name, dict(value))
        # validate every override against its schema now, not when the run reaches it
        method_config = apply_overrides(cls.Config(), self.method_settings)
        if getattr(getattr(method_config, "bead_training", None), "dropout", 0):
            raise ConfigError("dropout trains endpoints only (--endpoint-dropout): a bead must reach the level as a "
                              "whole network, so --bead-dropout must stay 0")
        apply_overrides(TrainConfig(), self.endpoint_training)
        apply_overrides(CertifyConfig(), self.certify)
        apply_overrides(ProofConfig(), self.proof)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConnectRunConfig:
        return from_dict(cls, data)

    def task_options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in TASK_OPTIONS if getattr(self, key) is not None}

    def resolve(self) -> ResolvedRun:
        """Build the task and every config with the task's defaults filled in."""
        task = make_task(self.task, **self.task_options())
        cls = METHODS[self.method]
        if hasattr(cls, "check_energy"):  # a method that cannot apply to this model says so before any training
            try:
                cls.check_energy(task.energy)
            except ConfigError as exc:
                raise ConfigError(f"method {self.method!r} does not apply to task {self.task!r}: {exc}") from None
        defaults = cls.Config()
        if hasattr(defaults, "bead_training"):  # methods that train points start from the task's bead training
            defaults = replace(defaults, bead_training=task.bead_training)
        if hasattr(defaults, "narrow_training"):  # Theorem 3's narrow network is trained like the endpoints
            defaults = replace(defaults, narrow_training=replace(task.endpoint_training, dropout=0.0))
        if hasattr(defaults, "seed"):
            defaults = replace(defaults, seed=self.seed)
        own = task.defaults_for(self.method)  # the task's defaults for this method, under the user's settings
        method_config = apply_overrides(apply_overrides(defaults, own.get("method_settings", {})),
                                        self.method_settings)
        endpoint = apply_overrides(apply_overrides(task.endpoint_training, own.get("endpoint_training", {})),
                                   self.endpoint_training)
        certify = apply_overrides(CertifyConfig(resolution=task.certify_resolution), self.certify)
        threshold = float(own.get("threshold", task.default_threshold)) if self.threshold is None \
            else float(self.threshold)
        proof = apply_overrides(ProofConfig(), self.proof) if self.prove else None
        return ResolvedRun(self, task, threshold, method_config, endpoint, certify, proof)


@dataclass(frozen=True, eq=False)
class ResolvedRun:
    """A run config with the task built and every default filled in."""

    config: ConnectRunConfig
    task: Task
    threshold: float
    method_config: Any
    endpoint_training: TrainConfig
    certify: CertifyConfig
    proof: ProofConfig | None = None
    """The proof settings when the run proves its path (``prove``), else None."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the endpoints live and the path is found (not part of the run's identity)."""

    def notes(self) -> list[str]:
        """Sentences about settings that are valid but likely to make the run fail for a dull reason."""
        bead = getattr(self.method_config, "bead_training", None)
        note = None if bead is None else budget_warning(self.task.name, bead, self.endpoint_training)
        return [note] if note else []

    def record(self) -> dict[str, Any]:
        """What ``config.json`` holds (and what the run's identity hashes)."""
        return {"run": self.config.to_dict(), "task": self.task.describe(), "threshold": self.threshold,
                "method": self.config.method, "method_config": to_dict(self.method_config),
                "endpoint_training": self.endpoint_training.to_dict(), "certify": self.certify.to_dict(),
                "proof": None if self.proof is None else self.proof.to_dict()}


class EndpointTrainingError(ModeconnectError):
    """An endpoint did not reach its target energy."""


def train_endpoint(task: Task, which: str, seed: int, target: float, config: TrainConfig,
                   say: Callable[[str], None], device: torch.device | None = None) -> Point:
    """Train endpoint ``which`` of ``task`` from ``seed`` to ``target`` (on ``device``, default the CPU), or raise
    EndpointTrainingError. The initialisation is drawn on the CPU, so it is the same on every device."""
    say(f"training endpoint {which.upper()} (seed {seed}) to energy <= {target:.4g}")
    model = task.make_model(seed)
    start = task.energy.point_of(model)  # parameters (+ state the energy's policy carries)
    if device is not None:
        start = {k: v.to(device) for k, v in start.items()}
    perturb = None
    if config.dropout:
        from ..kuditipudi.dropout import dropout_perturbation
        from ..kuditipudi.units import hidden_units

        perturb = dropout_perturbation(hidden_units(model), config.dropout, seed)
        say(f"endpoint {which.upper()} is trained with unit dropout p={config.dropout:g} (a fresh mask per step)")
    with open_task(say, f"endpoint {which.upper()}", total=config.max_steps) as bar:
        point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=target,
                                        config=config, seed=seed, perturb=perturb,
                                        on_check=training_reporter(bar, target))
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
    after_checkpoint: Callable[[Path, Any], None] | None = None,
    endpoints_from: str | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Run (or resume, or read back) a connect experiment; returns the result record.

    ``device``: where endpoints are trained and the path is found and certified (``"cpu"``, ``"cuda"``,
    ``"auto"``; default ``$MODECONNECT_DEVICE`` or the CPU). Not part of the run's identity: a run resumes on
    any device, and its files are the same.

    ``after_checkpoint`` is called after each saved checkpoint (used by tests to simulate interruption).
    ``endpoints_from``: a run directory (of the same task, threshold, seed and endpoint training) whose saved
    endpoints this run adopts instead of training its own (``modeconnect compare`` shares a pair's endpoints
    between methods this way); its files are checked against their recorded SHA-256.
    """
    say = progress or (lambda message: None)
    run = config.resolve()
    run = replace(run, device=resolve_device(device) if device is not None else default_device())
    if run.device.type != "cpu":
        say(f"device: {describe_device(run.device)}")
    for note in run.notes():
        say(f"note: {note}")
    with thread_limit(run.task.threads):
        if endpoints_from is not None and out is None:
            raise ConfigError("endpoints_from adopts saved endpoints into a run directory: give out as well")
        if out is None:
            return _run(run, None, say, after_checkpoint)
        source = RunDirectory(endpoints_from) if endpoints_from is not None else None
        return _run_in(RunDirectory(out), run, say, after_checkpoint, source)


@contextlib.contextmanager
def thread_limit(threads: int | None):
    """Run with at most ``threads`` torch threads (the task's own limit), then restore the setting."""
    previous = torch.get_num_threads()
    if threads is not None and threads < previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_in(store: RunDirectory, run: ResolvedRun, say: Callable[[str], None],
            after_checkpoint: Callable[[Path, Any], None] | None,
            source: RunDirectory | None = None) -> dict[str, Any]:
    out = store.root
    with store.lock():
        resumed = store.open(run.record(), run.config.seed)
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
            if source is not None:
                _adopt_endpoints(store, source, run, say)
            return _run(run, store, say, after_checkpoint)
        except EndpointTrainingError as exc:
            store.save_failure({"status": "endpoint_failed", "message": str(exc), "task": run.task.name,
                                "seed": run.config.seed, "threshold": run.threshold})
            raise


def _adopt_endpoints(store: RunDirectory, source: RunDirectory, run: ResolvedRun, say: Callable[[str], None]) -> None:
    """Copy the endpoints saved in ``source`` into ``store`` (those it does not hold yet)."""
    for which in ("a", "b"):
        if store.endpoint(which, run.task.energy.template) is not None:
            continue
        point = source.endpoint(which, run.task.energy.template)
        if point is None:
            failed = source.failure()
            if failed is not None:
                raise EndpointTrainingError(f"{failed['message']} (recorded in {source.root})")
            raise ConfigError(f"{source.root} holds no saved endpoint {which.upper()} to adopt; run it first")
        store.save_endpoint(which, point)
        say(f"endpoint {which.upper()}: adopted from {source.root}")


def _endpoints(run: ResolvedRun, store: RunDirectory | None, say: Callable[[str], None]) -> dict[str, Point]:
    task, seed = run.task, run.config.seed
    seeds = {"a": derive_seed(seed, "endpoint", "a"), "b": derive_seed(seed, "endpoint", "b")}
    target = task.endpoint_fraction * run.threshold
    endpoints: dict[str, Point] = {}
    for which in ("a", "b"):
        stored = store.endpoint(which, task.energy.template) if store is not None else None
        if stored is not None:
            endpoints[which] = {k: v.to(run.device) for k, v in stored.items()}
            continue
        if which == "b" and task.derive_endpoint_b is not None:
            endpoints["b"] = task.derive_endpoint_b(endpoints["a"])
            say("endpoint B: derived from endpoint A by the task (not trained)")
        else:
            endpoints[which] = train_endpoint(task, which, seeds[which], target, run.endpoint_training, say,
                                              run.device)
        if store is not None:
            store.save_endpoint(which, endpoints[which])
    return endpoints


def _run(run: ResolvedRun, store: RunDirectory | None, say: Callable[[str], None],
         after_checkpoint: Callable[[Path, Any], None] | None) -> dict[str, Any]:
    task, name = run.task, run.config.method
    method = METHODS[name]
    seed = run.config.seed
    endpoint_clock = time.perf_counter()
    endpoints = _endpoints(run, store, say)
    endpoint_time = time.perf_counter() - endpoint_clock
    # the alignment pre-step is a deterministic function of the endpoints, so a resumed run recomputes it
    endpoints["b"], alignment = align_endpoint(endpoints["a"], endpoints["b"], task.energy, run.config.align,
                                               inputs=task.objective.inputs[:256],
                                               seed=derive_seed(seed, "align"))
    if alignment is not None:
        say(f"aligned endpoint B to A by {alignment['method']} matching: distance {alignment['distance_before']:.4g}"
            f" -> {alignment['distance_after']:.4g}")

    path, state = None, None
    if store is not None:
        saved = store.checkpoint(task.energy.template, endpoints)
        if saved is not None:
            path, state = saved[0].to(run.device), _saved_state(saved[1], name, method, store)
            say(f"resuming {name} with {path.n_beads} bead(s) already on the path")
    if path is None:
        path = Path([endpoints["a"], endpoints["b"]])

    def checkpoint(p: Path, s: Any) -> None:
        if store is not None:
            store.save_checkpoint(p, name, s.to_dict())
        if after_checkpoint is not None and not getattr(s, "finished", False):
            after_checkpoint(p, s)

    say(f"connecting with {name} at L0={run.threshold:g}")
    connection = connect_path(path, task.energy, threshold=run.threshold, method=name, config=run.method_config,
                              objective=task.objective if method.trains else None, state=state,
                              checkpoint=checkpoint, certification=run.certify,
                              prove=run.proof if run.proof is not None else False, progress=say)
    # wall_time_s covers the method (summed over resumed sessions) and certifying; endpoint training is
    # reported on its own (endpoint_time_s, this session only: 0 when the endpoints were loaded).
    connection.alignment = alignment
    result = connection.summary()
    result.update({
        "task": task.name,
        "seed": seed,
        "endpoint_seeds": ({"a": derive_seed(seed, "endpoint", "a"), "b": derive_seed(seed, "endpoint", "b")}
                           if task.derive_endpoint_b is None else
                           {"a": derive_seed(seed, "endpoint", "a"), "b": "derived"}),
        "endpoint_target": task.endpoint_fraction * run.threshold,
        "energy": task.energy.describe(),
        "endpoint_time_s": endpoint_time,
        "device": str(run.device),
    })
    if store is not None:
        store.save_result(result)
    return result


def _saved_state(saved: Mapping[str, Any], name: str, method: type, store: RunDirectory) -> Any:
    if saved.get("method") != name:
        raise ConfigError(f"{store.root}/path holds the state of method {saved.get('method')!r}, not {name!r}; "
                          "delete the path/ directory to start over")
    try:
        return method.State.from_dict(saved.get("state", {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{store.root}/path has a {name} state that does not load ({exc}); "
                          "delete the path/ directory to start over") from None

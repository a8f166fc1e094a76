"""``connect``: the library entry point. Two models in, a path from any registered method, certified, out.

The steps every method shares live here, outside the methods: the endpoints are checked (same
architecture, finite energies at or below the threshold), the method makes a path, and the path is
certified. A method only makes the path.

>>> import torch
>>> from modeconnect import Energy, Objective, connect
>>> x = torch.linspace(-1, 1, 32).unsqueeze(1)
>>> y = 2 * x + 1
>>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
>>> with torch.no_grad():
...     _ = a.weight.fill_(2.1), a.bias.fill_(0.95), b.weight.fill_(1.9), b.bias.fill_(1.05)
>>> result = connect(a, b, Energy(a, x, y, "mse"), threshold=0.05, objective=Objective(x, y, "mse"))
>>> result.connected, result.method, result.path.n_beads, result.path.normalized_length
(True, 'greedy_dss', 0, 1.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .batchnorm import is_buffer_key
from .certify import Certificate, CertifyConfig, certify
from .energy import Energy
from .errors import ConfigError, ThresholdError
from .methods import DEFAULT_METHOD, get_method
from .methods.base import Checkpoint, Outcome, Progress
from .params import Point, check_compatible, point_from_module
from .path import Path
from .progress import open_task
from .settings import apply_overrides, to_dict
from .train import Objective

__all__ = ["Connection", "connect", "connect_path", "check_endpoints", "summarize", "time_split",
           "method_config", "align_endpoint",
           "run_proof", "proof_fields"]


@dataclass
class Connection:
    """A path found between two models, how the method ended, and the path's certificate."""

    path: Path
    outcome: Outcome
    certificate: Certificate | None
    method: str
    config: Any
    """The method's config."""
    threshold: float
    endpoint_energies: list[float] = field(default_factory=list)
    certification_time_s: float = 0.0
    alignment: dict[str, Any] | None = None
    """The permutation-alignment pre-step's summary (None: B was used as given)."""
    proof: Any = None
    """A :class:`~modeconnect.proof.Proof` when one was asked for (``prove=True``)."""
    proof_time_s: float = 0.0
    method_energy_evaluations: int = 0
    """Points at which the method evaluated the energy in this session (certification not included)."""
    trains: bool = True
    """Whether the method trains the points it puts on the path (False: it constructs them)."""

    @property
    def trained_points(self) -> int:
        """Points the method trained: intermediate beads plus curve control points (0 for constructions)."""
        if not self.trains:
            return 0
        return self.path.n_beads + sum(len(getattr(p, "controls", ())) for p in self.path.pieces)

    @property
    def trained_parameters(self) -> int:
        """Scalars the method trained: trained points times the parameters of one point (buffers excluded)."""
        per_point = sum(v.numel() for k, v in self.path.beads[0].items() if not is_buffer_key(k))
        return self.trained_points * per_point

    @property
    def connected(self) -> bool:
        return self.outcome.connected

    @property
    def wall_time_s(self) -> float:
        """Time spent by the method (summed over resumed sessions) and certifying."""
        return self.outcome.elapsed_s + self.certification_time_s

    def summary(self) -> dict[str, Any]:
        return summarize(self)


def summarize(connection: Connection) -> dict[str, Any]:
    """The flat result record written to ``result.json`` and printed by the CLI."""
    path, outcome, cert, cfg = connection.path, connection.outcome, connection.certificate, connection.config
    tolerance = getattr(cfg, "tolerance", 1.0)
    out = {
        "method": connection.method,
        "method_config": to_dict(cfg),
        "connected": outcome.connected,
        "reason": outcome.reason,
        "message": outcome.message,
        "threshold": connection.threshold,
        "tolerance": tolerance,
        "normalized_length": path.normalized_length,
        "path_length": path.length,
        "distance": path.chord,
        "n_beads": path.n_beads,
        "n_pieces": path.n_pieces,
        "piece_kinds": sorted({p.kind for p in path.pieces}),
        "worst_barrier": outcome.worst_barrier,
        "worst_segment": outcome.worst_segment,
        "endpoint_energies": list(connection.endpoint_energies),
        "method_time_s": outcome.elapsed_s,
        "method_energy_evaluations": connection.method_energy_evaluations,
        "trained_points": connection.trained_points,
        "trained_parameters": connection.trained_parameters,
        "certification_time_s": connection.certification_time_s,
        "wall_time_s": connection.wall_time_s,
        "alignment": connection.alignment,
        **outcome.extras,
        **proof_fields(connection.proof, connection.proof_time_s),
        "certificate": None,
        "certified": None,
        "certified_max_energy": None,
        "certification_kind": None,
        "certification_resolution": None,
        "certification_param_resolution": None,
        "certified_max_location": None,
    }
    if cert is not None:
        out.update({
            "certificate": cert.to_dict(),
            "certified": cert.certified,
            "certified_max_energy": cert.max_energy,
            "certification_kind": cert.kind,
            "certification_resolution": cert.resolution,
            "certification_param_resolution": cert.param_resolution,
            "certified_max_location": {"segment": cert.segment, "t": cert.t},
        })
    return out


def time_split(result: Mapping[str, Any]) -> str:
    """Where a connect run's time went, one line: endpoints (this session), the method's bead training and
    segment evaluation (methods that report them), the rest of the method, certification, and the total."""
    parts = [("endpoints", result.get("endpoint_time_s"))]
    method = result.get("method_time_s") or 0.0
    known = [(k, result.get(f"{k.replace(' ', '_')}_time_s")) for k in ("bead training", "segment evaluation")]
    known = [(k, v) for k, v in known if v is not None]
    parts += known + [("other method work" if known else "method", method - sum(v for _, v in known)),
                      ("certification", result.get("certification_time_s"))]
    if result.get("proof_time_s"):
        parts.append(("proof", result["proof_time_s"]))
    shown = [(k, v) for k, v in parts if v is not None]
    total = sum(v for _, v in shown)
    return ", ".join(f"{k} {v:.1f} s" for k, v in shown) + f"; total {total:.1f} s"


def proof_fields(proof: Any, seconds: float = 0.0) -> dict[str, Any]:
    """The result fields of a proof (all None when no proof was asked for)."""
    if proof is None:
        return {"proof": None, "proved": None, "proof_upper_bound": None, "proof_time_s": None}
    record = proof.to_dict()
    record.pop("certificate", None)  # the sampled certificate is already in the result
    return {"proof": record, "proved": proof.proved, "proof_upper_bound": proof.upper_bound,
            "proof_time_s": seconds}


def run_proof(path: Path, energy: Energy, *, threshold: float, tolerance: float, certificate: Certificate,
              config: Any = None, progress: Progress | None = None) -> tuple[Any, float]:
    """Bound the energy over every continuous piece of ``path`` (:func:`modeconnect.proof.prove`); timed."""
    from .proof import ProofConfig, prove

    def report(step: dict[str, Any]) -> None:
        bar.update(step["segment"])
        bar.say(f"proving piece {step['segment']}: round {step['round']}, {step['n_subintervals']} "
                f"sub-interval(s), bound {step['upper_bound']:.4g}, {step['failing']} above the level")

    start = time.perf_counter()
    with open_task(progress, "proving", total=path.n_pieces) as bar:
        proof = prove(path, energy, config or ProofConfig(), threshold=threshold, tolerance=tolerance,
                      sampled=certificate, progress=report)
    return proof, time.perf_counter() - start


def _as_point(model: nn.Module | Mapping[str, Tensor], name: str, energy: Energy) -> Point:
    if isinstance(model, nn.Module):
        # parameters, plus the buffers the energy's policy carries in points
        return point_from_module(model, energy.batchnorm)
    if isinstance(model, Mapping):
        return {k: v.detach().clone() for k, v in model.items()}
    raise ConfigError(f"{name} must be an nn.Module or a dict of parameter tensors, got {type(model).__name__}")


def check_endpoints(path: Path, energy: Energy, threshold: float) -> list[float]:
    """Energies of both endpoints; raise if either does not fit the model, is non-finite or is above the threshold."""
    out = []
    for name, bead in (("endpoint A", path.beads[0]), ("endpoint B", path.beads[-1])):
        energy.check_point(bead, name)
        value = energy.require_finite(energy(bead), name)
        if value > threshold:
            raise ThresholdError(
                f"{name} has energy {value:.6g}, above the threshold {threshold:.6g}: a path inside the level set "
                "cannot start there; train the endpoint further or raise the threshold"
            )
        out.append(value)
    return out


def method_config(method: str, config: Any = None, **settings: Any) -> Any:
    """The config of ``method``: ``config`` (or the method's defaults) with keyword ``settings`` applied."""
    cls = get_method(method)
    if config is None:
        config = cls.Config()
    elif not isinstance(config, cls.Config):
        raise ConfigError(f"config for method {method!r} must be a {cls.Config.__name__}, got {type(config).__name__}")
    return apply_overrides(config, settings) if settings else config


def align_endpoint(a: Point, b: Point, energy: Energy, method: str, *, inputs: Tensor | None = None,
                   seed: int = 0) -> tuple[Point, dict[str, Any] | None]:
    """The pre-step that composes with every path method: B with its hidden units permuted into A's order.

    The permuted B computes the same function as B (see :mod:`modeconnect.align`). Returns B itself and
    None for method ``"none"``; otherwise the aligned point and the alignment's JSON-safe summary.
    """
    from .align import AlignMethod, align, as_align_method

    kind = as_align_method(method)
    if kind is AlignMethod.NONE:
        return b, None
    if inputs is None:
        inputs = energy.inputs[:256]
    result = align(a, b, energy.model, kind, inputs=inputs, seed=seed)
    return result.point, result.to_dict()


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"threshold must be a positive finite number, got {threshold!r}")
    return float(threshold)


def connect(
    model_a: nn.Module | Mapping[str, Tensor],
    model_b: nn.Module | Mapping[str, Tensor],
    energy: Energy,
    *,
    threshold: float,
    method: str = DEFAULT_METHOD,
    config: Any = None,
    objective: Objective | None = None,
    certify_path: bool = True,
    certification: CertifyConfig | None = None,
    prove: Any = False,
    align: str = "none",
    progress: Progress | None = None,
    **settings: Any,
) -> Connection:
    """Connect two models of one architecture inside the level set ``energy <= threshold``.

    Args:
        model_a, model_b: the endpoints (modules or parameter dicts); never modified.
        energy: what the threshold applies to (see :class:`~modeconnect.energy.Energy`).
        threshold: L0. Both endpoints must already be at or below it.
        method: a name in :data:`modeconnect.methods.METHODS` (default ``greedy_dss``).
        config: the method's full ``Config``; or give its fields as keyword ``settings``
            (``alpha=0.5, tstar="midpoint", max_beads=20, ...`` for greedy DSS).
        objective: the training loss used by methods that train points (usually on training data).
        certify_path: re-check the final path by refined sampling (see :func:`~modeconnect.certify.certify`).
        certification: the certification settings (default :class:`CertifyConfig`).
        prove: also bound the energy over every continuous piece (True, or a
            :class:`~modeconnect.proof.ProofConfig`): ``result.proof`` says whether the path is *proved* to
            stay within tolerance * threshold. Needs ``certify_path``.
        align: a pre-step before any method: ``"weight"`` or ``"activation"`` permutes B's hidden units into
            A's order (same function; see :mod:`modeconnect.align`; activation matching uses the objective's
            first 256 inputs, else the energy's), ``"none"`` (default) uses B as given.
        progress: called with a line of text at every step of the method.
    """
    threshold = _check_threshold(threshold)
    config = method_config(method, config, **settings)
    a, b = _as_point(model_a, "model_a", energy), _as_point(model_b, "model_b", energy)
    check_compatible(a, b, "model_a", "model_b")
    energy.check_point(a, "model_a")
    b, alignment = align_endpoint(a, b, energy, align,
                                  inputs=None if objective is None else objective.inputs[:256])
    connection = connect_path(Path([a, b]), energy, threshold=threshold, method=method, config=config,
                              objective=objective, certify_path=certify_path, certification=certification,
                              prove=prove, progress=progress)
    connection.alignment = alignment
    return connection


def connect_path(
    path: Path,
    energy: Energy,
    *,
    threshold: float,
    method: str = DEFAULT_METHOD,
    config: Any = None,
    objective: Objective | None = None,
    state: Any = None,
    checkpoint: Checkpoint | None = None,
    certify_path: bool = True,
    certification: CertifyConfig | None = None,
    prove: Any = False,
    progress: Progress | None = None,
) -> Connection:
    """Check the endpoints of ``path``, run ``method`` on it (from ``state`` to resume), then certify.

    ``checkpoint(path, state)`` is handed to the method, which calls it whenever its state is worth saving.
    """
    threshold = _check_threshold(threshold)
    if prove not in (False, None) and not certify_path:
        raise ConfigError("prove=... compares the bound with the sampled certificate: keep certify_path=True")
    cls = get_method(method)
    config = method_config(method, config)
    endpoint_energies = check_endpoints(path, energy, threshold)
    if cls.trains and objective is None:
        raise ConfigError(f"method {method!r} trains points: pass objective=Objective(inputs, targets, loss)")
    evaluations = getattr(energy, "n_evaluations", 0)
    path, outcome = cls().run(path, energy, threshold=threshold, config=config, objective=objective, state=state,
                              checkpoint=checkpoint, progress=progress)
    connection = Connection(path, outcome, None, method, config, threshold, endpoint_energies,
                            method_energy_evaluations=getattr(energy, "n_evaluations", 0) - evaluations,
                            trains=cls.trains)
    if not certify_path:
        return connection
    certification = certification or CertifyConfig()
    if progress is not None:
        progress(f"certifying {path.n_pieces} piece(s) by refined sampling at resolution "
                 f"{certification.resolution:g}")
    start = time.perf_counter()
    tolerance = getattr(config, "tolerance", 1.0)
    with open_task(progress, "certifying", total=path.n_pieces) as bar:
        connection.certificate = certify(
            path, energy, certification, threshold=threshold, tolerance=tolerance,
            on_evaluated=lambda piece, n: bar.update(piece, info=f"piece {piece + 1}, {n} evaluations"))
    connection.certification_time_s = time.perf_counter() - start
    if prove is not False and prove is not None:
        if progress is not None:
            progress(f"proving the energy stays <= {tolerance:g} x {threshold:g} on every piece")
        connection.proof, connection.proof_time_s = run_proof(
            path, energy, threshold=threshold, tolerance=tolerance, certificate=connection.certificate,
            config=None if prove is True else prove, progress=progress)
    return connection

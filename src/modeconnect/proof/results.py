"""The proof's settings (:class:`ProofConfig`) and its results (:class:`SegmentProof`, :class:`Proof`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any

from ..certify import Certificate
from ..errors import ConfigError

__all__ = ["ProofConfig", "SegmentProof", "Proof"]

DTYPES = ("float64", "float32")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _json(value: Any) -> Any:
    """Non-finite floats as strings (``"inf"``), so that the result is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True)
class ProofConfig:
    """How a path's energy bound is computed (every setting is recorded with the result)."""

    initial_pieces: int = 4
    """Equal sub-intervals each piece starts from, before any bisection."""
    max_bounds: int = 2048
    """Budget: most sub-interval bounds computed per piece (the first ``initial_pieces`` included). A
    bisection step costs two."""
    min_width: float = 1e-6
    """Sub-intervals narrower than this (in t) are not split further."""
    batch: int = 8
    """Sub-intervals bounded together in one propagation (memory grows with it)."""
    memory_mb: float = 512.0
    """Rough cap on the activations' bounds held at once; evaluation samples are processed in chunks to fit."""
    dtype: str = "float64"
    """Format the bound is computed in: ``float64`` (default) or ``float32`` (faster; the rounding
    allowance grows to match)."""
    slack: float = 2.0
    """Multiplier of the a priori rounding allowance added at every layer (see :mod:`.layers`); 0 bounds
    the network in exact real arithmetic only, ignoring the rounding of the evaluated energy."""
    max_seconds: float | None = None
    """Optional time budget for the whole path (then results depend on the machine's speed)."""

    def __post_init__(self) -> None:
        if not (_is_int(self.initial_pieces) and self.initial_pieces >= 1):
            raise ConfigError(f"proof initial_pieces must be an int >= 1, got {self.initial_pieces!r}")
        if not (_is_int(self.max_bounds) and self.max_bounds >= self.initial_pieces):
            raise ConfigError(f"proof max_bounds must be an int >= initial_pieces ({self.initial_pieces}), "
                              f"got {self.max_bounds!r}")
        if not (_is_real(self.min_width) and 0 < self.min_width < 1):
            raise ConfigError(f"proof min_width must be in (0, 1), got {self.min_width!r}")
        if not (_is_int(self.batch) and self.batch >= 1):
            raise ConfigError(f"proof batch must be an int >= 1, got {self.batch!r}")
        if not (_is_real(self.memory_mb) and self.memory_mb > 0):
            raise ConfigError(f"proof memory_mb must be positive, got {self.memory_mb!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"proof dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (_is_real(self.slack) and self.slack >= 0):
            raise ConfigError(f"proof slack must be a finite number >= 0, got {self.slack!r}")
        if not (self.max_seconds is None or _is_real(self.max_seconds) and self.max_seconds > 0):
            raise ConfigError(f"proof max_seconds must be None or positive, got {self.max_seconds!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STOPS = {
    "proved": "every sub-interval's bound is within the level",
    "budget": "the budget of bounds ran out",
    "time": "the time budget ran out",
    "min_width": "the failing sub-intervals reached the minimum width",
    "sampled_above": "the sampled certificate already exceeds the level on this piece (no proof is possible; "
                     "the first partition's bounds are reported)",
    "certain_above": "on a failing sub-interval every label is settled: the error is certainly above the level there",
}
"""Why the bisection of a piece stopped."""


@dataclass(frozen=True)
class SegmentProof:
    """The bound on one piece."""

    upper_bound: float
    """Largest sub-interval bound: the energy is at most this at every t of the piece."""
    sampled_max: float
    """Largest energy found on the piece by the sampled certificate (a lower estimate of the true maximum)."""
    n_subintervals: int
    """Sub-intervals of the final partition."""
    n_bounds: int
    """Sub-interval bounds computed (the budget spent)."""
    proved: bool
    """``upper_bound <= tolerance * threshold``."""
    stop: str
    """Why the bisection stopped: a key of :data:`STOPS`."""
    failed_intervals: list[list[float]] = field(default_factory=list)
    """``[t0, t1, bound]`` for every run of adjacent sub-intervals whose bound is above the level (bound:
    the largest in the run)."""


@dataclass(frozen=True)
class Proof:
    """The result of :func:`~modeconnect.proof.prove`: a sound upper bound of the energy along the whole path
    (``kind == "proof"``), or, for a network the bound cannot handle, the sampled certificate labelled as
    such (``kind == "sampled"``, ``unsupported`` naming the layer, ``upper_bound`` None)."""

    kind: str
    threshold: float
    tolerance: float
    upper_bound: float | None
    """Largest energy the bound allows anywhere on the path (None when falling back to sampling)."""
    sampled_max: float
    """Largest energy found by the sampled certificate (``certificate.max_energy``)."""
    segments: list[SegmentProof]
    certificate: Certificate
    """The sampled certificate the proof was compared with (or fell back to)."""
    config: ProofConfig
    unsupported: str | None = None
    """Why the bound could not be computed: ``"<layer name> (<type>)"``; None for a proof."""
    model_dtype: str = "float32"
    """Format the energy evaluates the network in (the rounding allowance covers it)."""

    @property
    def level(self) -> float:
        return self.tolerance * self.threshold

    @property
    def proved(self) -> bool:
        """True when the energy is proved to be at most ``tolerance * threshold`` on the whole path."""
        return self.kind == "proof" and self.upper_bound is not None and self.upper_bound <= self.level

    @property
    def n_bounds(self) -> int:
        return sum(s.n_bounds for s in self.segments)

    @property
    def n_subintervals(self) -> int:
        return sum(s.n_subintervals for s in self.segments)

    @property
    def failed_intervals(self) -> list[list[float]]:
        """``[piece, t0, t1, bound]`` for every run of sub-intervals where the proof failed, over the path."""
        return [[i, *run] for i, s in enumerate(self.segments) for run in s.failed_intervals]

    @property
    def gap(self) -> float | None:
        """``(upper_bound - sampled_max) / threshold``: how far the proof's bound is above what sampling found."""
        if self.upper_bound is None or self.threshold == 0:
            return None
        return (self.upper_bound - self.sampled_max) / self.threshold

    @property
    def statement(self) -> str:
        """One sentence saying what this result establishes."""
        level = f"{self.tolerance:g} x {self.threshold:g}"
        if self.kind != "proof":
            return (f"not a proof: {self.unsupported} is not supported by the bound propagation, so this is the "
                    f"sampled certificate only: {self.certificate.statement}")
        how = (f"sound bound propagation in t over {self.n_subintervals} sub-intervals of {len(self.segments)} "
               f"piece(s), {self.config.dtype} arithmetic with an a priori allowance for the rounding of the "
               f"{self.model_dtype} evaluation (slack {self.config.slack:g})")
        if self.proved:
            return (f"proved: the energy is at most {self.upper_bound:.6g} <= {level} at every point of the path "
                    f"({how}); the sampled maximum is {self.sampled_max:.6g}")
        failed = [i for i, s in enumerate(self.segments) if not s.proved]
        stops = sorted({self.segments[i].stop for i in failed})
        above = " -- the sampled maximum itself exceeds the level" if self.sampled_max > self.level else ""
        return (f"not proved: the upper bound is {self.upper_bound:.6g} > {level} on piece(s) {failed} (stopped: "
                f"{', '.join(stops)}; {how}); the sampled maximum is {self.sampled_max:.6g}{above}")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind, "proved": self.proved, "upper_bound": self.upper_bound,
            "sampled_max": self.sampled_max, "gap": self.gap, "threshold": self.threshold,
            "tolerance": self.tolerance, "unsupported": self.unsupported, "n_bounds": self.n_bounds,
            "n_subintervals": self.n_subintervals, "failed_intervals": self.failed_intervals,
            "model_dtype": self.model_dtype,
            "segments": [asdict(s) for s in self.segments], "statement": self.statement,
            "config": self.config.to_dict(), "certificate": self.certificate.to_dict(),
        }
        return _json(out)

"""Path: an ordered string of beads (parameter points) with per-segment energy records.

The geometry (length, chord, normalized length) and the certificate are
properties of the Path, whatever method produced it. ``beads[0]`` and
``beads[-1]`` are the endpoints; ``n_beads`` counts the intermediate ones.

>>> import torch
>>> a = {"w": torch.zeros(2)}
>>> b = {"w": torch.tensor([3.0, 4.0])}
>>> bend = {"w": torch.tensor([3.0, 0.0])}
>>> p = Path([a, bend, b])
>>> p.n_beads, p.length, p.chord, round(p.normalized_length, 4)
(1, 7.0, 5.0, 1.4)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import Tensor, nn

from ._io import read_json, read_tensors, write_json, write_tensors
from .errors import ArchitectureMismatch, StoreError
from .params import Point, check_compatible, distance, point_from_module

__all__ = ["Segment", "Path", "PATH_JSON"]

PATH_JSON = "path.json"
_FORMAT = "modeconnect.path"
_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """The straight segment between two neighbouring beads.

    ``max_energy`` and ``argmax_t`` are ``None`` until the segment has been
    evaluated on a grid of ``grid_size`` points; ``depth`` counts how many
    bead insertions separate it from the original endpoint-to-endpoint segment.
    """

    depth: int = 0
    max_energy: float | None = None
    argmax_t: float | None = None
    grid_size: int | None = None

    @property
    def evaluated(self) -> bool:
        return self.max_energy is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        """Inverse of :meth:`to_dict` after a JSON round trip, where non-finite floats are stored as strings."""
        fields = dict(data)
        for key in ("max_energy", "argmax_t"):
            if fields.get(key) is not None:
                fields[key] = float(fields[key])
        return cls(**fields)


class Path:
    """Beads in order plus one :class:`Segment` record per neighbouring pair."""

    def __init__(self, beads: Sequence[Mapping[str, Tensor]], segments: Sequence[Segment] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if len(beads) < 2:
            raise ValueError(f"a path needs at least its two endpoints, got {len(beads)} bead(s)")
        for i, bead in enumerate(beads[1:], start=1):
            check_compatible(beads[0], bead, "bead 0", f"bead {i}")
        self.beads: list[Point] = [dict(b) for b in beads]
        if segments is None:
            segments = [Segment() for _ in range(len(beads) - 1)]
        if len(segments) != len(beads) - 1:
            raise ValueError(f"{len(beads)} beads need {len(beads) - 1} segments, got {len(segments)}")
        self.segments: list[Segment] = list(segments)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- editing -----------------------------------------------------------------------------
    def insert_bead(self, segment_index: int, bead: Mapping[str, Tensor]) -> None:
        """Split segment ``segment_index`` with ``bead``; both halves are unevaluated, one level deeper."""
        check_compatible(self.beads[0], bead, "the path's beads", "the new bead")
        depth = self.segments[segment_index].depth + 1
        self.beads.insert(segment_index + 1, dict(bead))
        self.segments[segment_index : segment_index + 1] = [Segment(depth=depth), Segment(depth=depth)]

    def set_segment(self, index: int, **fields: Any) -> None:
        self.segments[index] = replace(self.segments[index], **fields)

    def copy(self) -> Path:
        beads = [{k: v.clone() for k, v in b.items()} for b in self.beads]
        return Path(beads, list(self.segments), dict(self.metadata))

    # -- geometry ----------------------------------------------------------------------------
    @property
    def n_beads(self) -> int:
        """Intermediate beads (endpoints excluded)."""
        return len(self.beads) - 2

    @property
    def segment_lengths(self) -> list[float]:
        return [distance(a, b) for a, b in zip(self.beads[:-1], self.beads[1:])]

    @property
    def length(self) -> float:
        """Sum of the segment norms over all parameters."""
        return float(sum(self.segment_lengths))

    @property
    def chord(self) -> float:
        """Euclidean distance between the endpoints."""
        return distance(self.beads[0], self.beads[-1])

    @property
    def normalized_length(self) -> float:
        """``length / chord`` (>= 1); 1.0 by convention for a path between identical points."""
        chord, length = self.chord, self.length
        if chord == 0.0:
            return 1.0 if length == 0.0 else float("inf")
        ratio = length / chord
        # length >= chord by the triangle inequality; only rounding can put the ratio a hair below 1.
        return 1.0 if 1.0 - 1e-9 < ratio < 1.0 else ratio

    @property
    def depth(self) -> int:
        return max(s.depth for s in self.segments)

    @property
    def max_interpolated_energy(self) -> float | None:
        """Largest grid maximum over all evaluated segments (``None`` if none is evaluated)."""
        values = [s.max_energy for s in self.segments if s.evaluated]
        return max(values) if values else None

    def evaluate_segment(self, index: int, energy, grid_size: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
        """Record segment ``index``'s maximum on a uniform ``grid_size``-point grid; returns ``(ts, energies)``.

        NaN energies count as +inf (the worst possible barrier).
        """
        ts = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
        values = energy.along_segment(self.beads[index], self.beads[index + 1], ts)
        values = torch.nan_to_num(values, nan=float("inf"))
        k = int(torch.argmax(values))
        self.set_segment(index, max_energy=float(values[k]), argmax_t=float(ts[k]), grid_size=grid_size)
        return ts, values

    def evaluate_segments(self, energy, grid_size: int = 33) -> Path:
        """Fill every segment's record from a uniform grid of ``grid_size`` points (endpoints included)."""
        for i in range(len(self.segments)):
            self.evaluate_segment(i, energy, grid_size)
        return self

    # -- storage -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write the beads (``beads-<id>.safetensors``) and ``path.json`` (segments, shapes, metadata).

        The tensor file gets a fresh name and ``path.json`` (written atomically, last) names it, so an
        interruption at any moment leaves the previous or the new state complete, never a mix.
        Tensor files no longer named by ``path.json`` are removed afterwards.
        """
        directory = FsPath(directory)
        tensor_file = f"beads-{uuid.uuid4().hex[:12]}.safetensors"
        tensors = {f"{i:05d}/{name}": value for i, bead in enumerate(self.beads) for name, value in bead.items()}
        write_tensors(directory / tensor_file, tensors)
        write_json(directory / PATH_JSON, {
            "format": _FORMAT,
            "version": _VERSION,
            "tensors": tensor_file,
            "n_points": len(self.beads),
            "parameter_order": list(self.beads[0]),
            "parameters": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                           for k, v in self.beads[0].items()},
            "segments": [s.to_dict() for s in self.segments],
            "metadata": self.metadata,
        })
        for stale in directory.glob("beads-*.safetensors"):
            if stale.name != tensor_file:
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, like: Mapping[str, Tensor] | nn.Module | None = None) -> Path:
        """Read a path saved by :meth:`save`; ``like`` (a point or a model) is checked against its parameters."""
        directory = FsPath(directory)
        meta = read_json(directory / PATH_JSON)
        if meta.get("format") != _FORMAT:
            raise StoreError(f"{directory / PATH_JSON} is not a modeconnect path file")
        if meta.get("version") != _VERSION:
            raise StoreError(f"{directory / PATH_JSON} has format version {meta.get('version')}, "
                             f"this modeconnect reads version {_VERSION}")
        tensor_path = directory / meta["tensors"]
        tensors = read_tensors(tensor_path)
        params = meta["parameters"]
        beads = []
        for i in range(meta["n_points"]):
            bead = {}
            for name in meta.get("parameter_order", list(params)):
                spec = params[name]
                key = f"{i:05d}/{name}"
                if key not in tensors:
                    raise StoreError(f"{tensor_path} lacks parameter {name!r} of bead {i}; "
                                     "the file does not match path.json")
                value = tensors[key]
                if list(value.shape) != spec["shape"]:
                    raise StoreError(f"bead {i} parameter {name!r} has shape {list(value.shape)} in the tensor "
                                     f"file but {spec['shape']} in path.json")
                bead[name] = value
            beads.append(bead)
        if like is not None:
            reference = point_from_module(like) if isinstance(like, nn.Module) else like
            try:
                check_compatible(reference, beads[0], "the expected model", "the saved path")
            except ArchitectureMismatch as exc:
                raise ArchitectureMismatch(f"{directory}: {exc}") from None
        segments = [Segment.from_dict(s) for s in meta["segments"]]
        return cls(beads, segments, meta.get("metadata", {}))

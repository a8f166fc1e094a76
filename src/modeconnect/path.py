"""Path: an ordered string of beads (parameter points) joined by pieces.

A piece joins two neighbouring beads: a :class:`Straight` segment ``(1 - t) a + t b``, or a
:class:`Bezier` curve through trained control points (Garipov et al.'s curves). Whatever method made
a path, everything downstream asks the path: :meth:`Path.points` turns ``(piece, ts)`` into parameter
points, :meth:`Path.energies` evaluates them, and the geometry (length, chord, normalized length) is
computed here, by quadrature for curves. ``beads[0]`` and ``beads[-1]`` are the endpoints;
``n_beads`` counts the intermediate ones. Per-piece records of a method (DSS's depth and grid maxima)
live in that method's state, not here.

>>> import torch
>>> a = {"w": torch.zeros(2)}
>>> b = {"w": torch.tensor([3.0, 4.0])}
>>> bend = {"w": torch.tensor([3.0, 0.0])}
>>> p = Path([a, bend, b])
>>> p.n_beads, p.length, p.chord, round(p.normalized_length, 4)
(1, 7.0, 5.0, 1.4)
>>> curve = Path([a, b], [Bezier([bend])])            # a quadratic Bezier bent towards ``bend``
>>> round(curve.length, 4) > curve.chord, curve.points(0, [0.0, 1.0])["w"].tolist()
(True, [[0.0, 0.0], [3.0, 4.0]])
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._io import read_json, read_tensors, write_json, write_tensors
from .batchnorm import is_buffer_key
from .errors import ArchitectureMismatch, StoreError
from .params import Point, check_compatible, distance, interpolate_many, point_from_module

__all__ = ["Piece", "Straight", "Bezier", "Path", "PATH_JSON", "QUADRATURE_NODES"]

PATH_JSON = "path.json"
_FORMAT = "modeconnect.path"
_VERSION = 2
_TENSOR_FILE = re.compile(r"beads-[0-9a-f]{12}\.safetensors")

QUADRATURE_NODES = 64
"""Gauss-Legendre nodes for the length of a curved piece (exact for Bezier curves of degree <= 64 in
each coordinate's speed polynomial; the speed's square root makes it an approximation, accurate to
~1e-10 relative for the curves we make, checked against a fine polyline in the tests)."""


class Piece:
    """What joins two neighbouring beads. Subclasses: :class:`Straight`, :class:`Bezier`."""

    kind: str = ""
    controls: tuple[Point, ...] = ()

    def points(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Tensor) -> Point:
        raise NotImplementedError

    def velocity(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Tensor) -> Point:
        """d(point)/dt at each t (leading dimension ``len(ts)``), parameters only."""
        raise NotImplementedError


@dataclass(frozen=True)
class Straight(Piece):
    """The straight segment ``(1 - t) a + t b``."""

    kind: str = field(default="straight", init=False)

    def points(self, a, b, ts):
        return interpolate_many(a, b, ts)

    def velocity(self, a, b, ts):
        return {k: (b[k].double() - a[k].double()).unsqueeze(0).expand(len(ts), *a[k].shape) for k in a}


@dataclass(frozen=True, eq=False)
class Bezier(Piece):
    """A Bezier curve from ``a`` to ``b`` through control points ``controls`` (degree = len(controls) + 1).

    One control point gives Garipov et al.'s quadratic curve
    ``(1-t)^2 a + 2t(1-t) c + t^2 b``; the curve passes through ``a`` at t = 0 and ``b`` at t = 1 exactly.
    """

    controls: tuple[Point, ...] = ()
    kind: str = field(default="bezier", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "controls", tuple(dict(c) for c in self.controls))
        if not self.controls:
            raise ValueError("a Bezier piece needs at least one control point (use Straight for none)")

    def _nodes(self, a, b) -> list[Mapping[str, Tensor]]:
        return [a, *self.controls, b]

    def points(self, a, b, ts):
        nodes = self._nodes(a, b)
        first = next(iter(a.values()))
        ts = torch.as_tensor(ts, dtype=torch.float64, device=first.device).reshape(-1)
        weights = _bernstein(len(nodes) - 1, ts)  # [T, n+1], float64
        out = {}
        for k in a:
            stacked = torch.stack([n[k] for n in nodes]).double()  # [n+1, ...]
            value = torch.tensordot(weights, stacked, dims=1)
            if not (a[k].is_floating_point() or a[k].is_complex()):  # integer buffers: rounded, as when straight
                value = value.round()
            value = value.to(a[k].dtype)
            # the ends are exact: t = 0 gives a and t = 1 gives b bit for bit
            value[ts == 0] = a[k]
            value[ts == 1] = b[k]
            out[k] = value
        return out

    def velocity(self, a, b, ts):
        nodes = self._nodes(a, b)
        n = len(nodes) - 1
        ts = torch.as_tensor(ts, dtype=torch.float64, device=next(iter(a.values())).device).reshape(-1)
        weights = _bernstein(n - 1, ts)  # derivative: n * sum_k (P_{k+1} - P_k) B_{k, n-1}(t)
        out = {}
        for k in a:
            diffs = torch.stack([nodes[j + 1][k].double() - nodes[j][k].double() for j in range(n)])
            out[k] = n * torch.tensordot(weights, diffs, dims=1)
        return out


def _bernstein(n: int, ts: Tensor) -> Tensor:
    """The Bernstein basis ``B_{k,n}(t)`` for k = 0..n, as a ``[len(ts), n + 1]`` float64 matrix."""
    k = torch.arange(n + 1, dtype=torch.float64, device=ts.device)
    binom = torch.tensor([math.comb(n, j) for j in range(n + 1)], dtype=torch.float64, device=ts.device)
    t = ts.reshape(-1, 1)
    return binom * t**k * (1 - t) ** (n - k)


def _piece_length(piece: Piece, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    if isinstance(piece, Straight):
        return distance(a, b)
    nodes, weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
    ts = torch.from_numpy((nodes + 1) / 2)
    velocity = piece.velocity(a, b, ts)
    speed2 = sum(v.reshape(len(ts), -1).pow(2).sum(1) for k, v in velocity.items() if not is_buffer_key(k))
    return float((torch.from_numpy(weights / 2).to(speed2.device) * torch.sqrt(speed2)).sum())


class Path:
    """Beads in order plus one :class:`Piece` per neighbouring pair (straight segments by default)."""

    def __init__(self, beads: Sequence[Mapping[str, Tensor]], pieces: Sequence[Piece] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        if len(beads) < 2:
            raise ValueError(f"a path needs at least its two endpoints, got {len(beads)} bead(s)")
        for i, bead in enumerate(beads[1:], start=1):
            check_compatible(beads[0], bead, "bead 0", f"bead {i}")
        self.beads: list[Point] = [dict(b) for b in beads]
        if pieces is None:
            pieces = [Straight() for _ in range(len(beads) - 1)]
        if len(pieces) != len(beads) - 1:
            raise ValueError(f"{len(beads)} beads need {len(beads) - 1} pieces, got {len(pieces)}")
        for i, piece in enumerate(pieces):
            if not isinstance(piece, Piece):
                raise TypeError(f"piece {i} is a {type(piece).__name__}, not a Straight or Bezier piece")
            for j, control in enumerate(piece.controls):
                check_compatible(beads[0], control, "bead 0", f"control point {j} of piece {i}")
        self.pieces: list[Piece] = list(pieces)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- editing -----------------------------------------------------------------------------
    def insert_bead(self, index: int, bead: Mapping[str, Tensor]) -> None:
        """Split straight piece ``index`` at ``bead`` into two straight pieces."""
        if not isinstance(self.pieces[index], Straight):
            raise ValueError(f"piece {index} is a {self.pieces[index].kind} curve; only straight pieces are split")
        check_compatible(self.beads[0], bead, "the path's beads", "the new bead")
        self.beads.insert(index + 1, dict(bead))
        self.pieces[index : index + 1] = [Straight(), Straight()]

    def copy(self) -> Path:
        def clone(p: Mapping[str, Tensor]) -> Point:
            return {k: v.clone() for k, v in p.items()}

        pieces = [p if isinstance(p, Straight) else Bezier([clone(c) for c in p.controls]) for p in self.pieces]
        return Path([clone(b) for b in self.beads], pieces, dict(self.metadata))

    def to(self, device: torch.device | str) -> Path:
        """This path with every bead and control point on ``device`` (itself when they already are)."""
        device = torch.device(device)
        if all(v.device == device for b in self.beads for v in b.values()):
            return self

        def move(p: Mapping[str, Tensor]) -> Point:
            return {k: v.to(device) for k, v in p.items()}

        pieces = [p if isinstance(p, Straight) else Bezier([move(c) for c in p.controls]) for p in self.pieces]
        return Path([move(b) for b in self.beads], pieces, dict(self.metadata))

    # -- points and energies -----------------------------------------------------------------
    @property
    def n_pieces(self) -> int:
        return len(self.pieces)

    def points(self, index: int, ts: Sequence[float] | Tensor) -> Point:
        """The parameter points of piece ``index`` at each ``t`` in ``ts`` (leading dimension ``len(ts)``).

        ``t = 0`` is bead ``index`` and ``t = 1`` bead ``index + 1``, exactly.
        """
        first = next(iter(self.beads[0].values()))
        ts = torch.as_tensor(ts, dtype=torch.float64, device=first.device).reshape(-1)
        return self.pieces[index].points(self.beads[index], self.beads[index + 1], ts)

    def energies(self, index: int, ts: Sequence[float] | Tensor, energy) -> Tensor:
        """Energies (float64, ``[len(ts)]``) along piece ``index``; NaN counts as +inf (the worst barrier)."""
        ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
        piece = self.pieces[index]
        if isinstance(piece, Straight):  # the energy fuses interpolation into its batched evaluation
            values = energy.along_segment(self.beads[index], self.beads[index + 1], ts)
        else:
            chunk = max(1, int(getattr(energy, "points_per_chunk", 64)))
            values = torch.cat([energy.evaluate(self.points(index, ts[lo : lo + chunk]))
                                for lo in range(0, len(ts), chunk)]) if len(ts) else torch.zeros(0)
        return torch.nan_to_num(values.to(torch.float64), nan=float("inf"))

    # -- geometry ----------------------------------------------------------------------------
    @property
    def n_beads(self) -> int:
        """Intermediate beads (endpoints excluded); control points of curves are not beads."""
        return len(self.beads) - 2

    @property
    def segment_lengths(self) -> list[float]:
        """Length of every piece (Euclidean for straight pieces, Gauss-Legendre quadrature for curves)."""
        return [_piece_length(p, a, b) for p, a, b in zip(self.pieces, self.beads[:-1], self.beads[1:])]

    @property
    def length(self) -> float:
        """Sum of the piece lengths over all parameters."""
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

    # -- storage -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write the beads and control points (``beads-<id>.safetensors``) and ``path.json``.

        ``path.json`` names the tensor file and records its SHA-256, checked on load. The tensor file gets
        a fresh name and ``path.json`` (written atomically, last) names it, so an interruption at any
        moment leaves the previous or the new state complete, never a mix. Tensor files no longer named by
        ``path.json`` are removed afterwards.
        """
        directory = FsPath(directory)
        tensor_file = f"beads-{uuid.uuid4().hex[:12]}.safetensors"
        tensors = {f"{i:05d}/{name}": value for i, bead in enumerate(self.beads) for name, value in bead.items()}
        for i, piece in enumerate(self.pieces):
            for j, control in enumerate(piece.controls):
                tensors.update({f"piece{i:05d}/control{j:02d}/{name}": v for name, v in control.items()})
        digest = write_tensors(directory / tensor_file, tensors)
        write_json(directory / PATH_JSON, {
            "format": _FORMAT,
            "version": _VERSION,
            "tensors": tensor_file,
            "tensors_sha256": digest,
            "n_points": len(self.beads),
            "parameter_order": list(self.beads[0]),
            "parameters": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                           for k, v in self.beads[0].items()},
            "pieces": [{"kind": p.kind, "n_controls": len(p.controls)} for p in self.pieces],
            "metadata": self.metadata,
        })
        for stale in directory.glob("beads-*.safetensors"):
            if stale.name != tensor_file:
                stale.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, like: Mapping[str, Tensor] | nn.Module | None = None) -> Path:
        """Read a path saved by :meth:`save`; ``like`` (a point or a model) is checked against its parameters.

        Everything in ``path.json`` is validated before use: the tensor file must be a plain file name in
        ``directory`` (never a path elsewhere) whose SHA-256 matches the recorded one.
        """
        directory = FsPath(directory)
        where = directory / PATH_JSON
        meta = read_json(where)
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise StoreError(f"{where} is not a modeconnect path file")
        if meta.get("version") != _VERSION:
            raise StoreError(f"{where} has format version {meta.get('version')}, "
                             f"this modeconnect reads version {_VERSION}")
        spec = _validated(meta, where)
        tensor_path = directory / spec["tensors"]
        tensors = read_tensors(tensor_path, sha256=spec["tensors_sha256"])

        def read_point(prefix: str, what: str) -> Point:
            point = {}
            for name in spec["parameter_order"]:
                key = f"{prefix}/{name}"
                if key not in tensors:
                    raise StoreError(f"{tensor_path} lacks parameter {name!r} of {what}; "
                                     "the file does not match path.json")
                value = tensors[key]
                if list(value.shape) != spec["parameters"][name]["shape"]:
                    raise StoreError(f"{what} parameter {name!r} has shape {list(value.shape)} in the tensor "
                                     f"file but {spec['parameters'][name]['shape']} in path.json")
                point[name] = value
            return point

        beads = [read_point(f"{i:05d}", f"bead {i}") for i in range(spec["n_points"])]
        pieces: list[Piece] = []
        for i, p in enumerate(spec["pieces"]):
            controls = [read_point(f"piece{i:05d}/control{j:02d}", f"control point {j} of piece {i}")
                        for j in range(p["n_controls"])]
            pieces.append(Straight() if p["kind"] == "straight" else Bezier(controls))
        described = len(spec["parameter_order"]) * (spec["n_points"] + sum(p["n_controls"] for p in spec["pieces"]))
        if len(tensors) != described:  # e.g. n_points lowered, or a curve's record edited to "straight"
            raise StoreError(f"{tensor_path} holds {len(tensors)} tensors but path.json describes {described} "
                             "(fields 'n_points' and 'pieces'); the file does not match path.json")
        if like is not None:
            reference = point_from_module(like) if isinstance(like, nn.Module) else like
            try:
                check_compatible(reference, beads[0], "the expected model", "the saved path")
            except ArchitectureMismatch as exc:
                raise ArchitectureMismatch(f"{directory}: {exc}") from None
        metadata = meta.get("metadata", {})
        return cls(beads, pieces, metadata if isinstance(metadata, dict) else {})


def _validated(meta: dict[str, Any], where: FsPath) -> dict[str, Any]:
    """The fields of a ``path.json`` with their types and ranges checked, or a StoreError naming the field."""
    def bad(field_name: str, why: str) -> StoreError:
        return StoreError(f"{where}: field {field_name!r} {why}; the file is corrupt or was edited by hand, "
                          "delete the run's path/ directory to restart the search")

    name = meta.get("tensors")
    if not isinstance(name, str) or not _TENSOR_FILE.fullmatch(name):
        raise bad("tensors", f"must name a beads-<12 hex digits>.safetensors file in the same directory, got {name!r}")
    digest = meta.get("tensors_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise bad("tensors_sha256", f"must be a SHA-256 hex digest, got {digest!r}")
    n_points = meta.get("n_points")
    if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 2:
        raise bad("n_points", f"must be an integer >= 2 (both endpoints), got {n_points!r}")
    params = meta.get("parameters")
    if not isinstance(params, dict) or not params or not all(
            isinstance(v, dict) and isinstance(v.get("shape"), list) for v in params.values()):
        raise bad("parameters", "must map every parameter name to its shape")
    order = meta.get("parameter_order", list(params))
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order) or sorted(order) != sorted(params):
        raise bad("parameter_order", "must list exactly the parameters")
    pieces = meta.get("pieces")
    if not isinstance(pieces, list) or len(pieces) != n_points - 1:
        raise bad("pieces", f"must be a list of {n_points - 1 if isinstance(n_points, int) else '?'} piece records")
    for i, p in enumerate(pieces):
        ok = isinstance(p, dict) and (
            (p.get("kind") == "straight" and p.get("n_controls") == 0)
            or (p.get("kind") == "bezier" and isinstance(p.get("n_controls"), int) and p["n_controls"] >= 1))
        if not ok:
            raise bad("pieces", f"entry {i} must be a straight piece or a bezier with >= 1 control point, got {p!r}")
    return {"tensors": name, "tensors_sha256": digest, "n_points": n_points, "parameters": params,
            "parameter_order": order, "pieces": pieces}

"""Dropout stability (Kuditipudi et al. 2019, Definition 1 and Remark 1).

For a drop fraction ``p`` a *mask* keeps exactly ``floor(h * (1 - p))`` units of every hidden layer of width
``h`` (channels for convolutions) and drops the rest. Applying it *from layer i on* (the paper's ``theta_i``,
``i = 1 .. d-1``) multiplies the outgoing weights of the kept units of layers ``i .. d-1`` by ``r`` (default
``1 / (1 - p)``) and sets the outgoing weights of the dropped ones to zero, which is the same as rescaling the
units' outputs by ``r`` or zeroing them (for any activation: the outgoing weights are applied after it). Their
incoming weights and biases are zeroed too (``zero_incoming``), so dropped units are idle slots: the Lemma 2
construction writes into them.

:func:`dropout_stability` samples ``K`` masks, evaluates every ``theta_i`` of every mask in batches of
points (the energy's batched evaluation) and returns a :class:`DropoutReport`; :func:`save_dropout` /
:func:`load_dropout` store masks (safetensors) and numbers (JSON).

>>> import torch
>>> from torch import nn
>>> from modeconnect.kuditipudi.units import hidden_units
>>> spec = hidden_units(nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 1)))
>>> masks = sample_masks(spec, p=0.3, n_masks=2, seed=0)
>>> [int(m["0"].sum()) for m in masks]          # floor(10 * 0.7) kept units
[7, 7]
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import Tensor

from .._io import read_json, read_tensors, write_json, write_tensors
from ..errors import ConfigError, StoreError
from ..progress import open_task
from .units import UnitSpec, scale_outgoing, zero_outgoing, zero_units

__all__ = ["Mask", "DropoutConfig", "DropoutReport", "keep_count", "sample_masks", "apply_dropout",
           "dropout_perturbation", "dropout_stability", "save_dropout", "load_dropout", "MASKS_FILE", "REPORT_FILE"]

Mask = dict[str, Tensor]
"""Layer name -> bool tensor ``[h]``, True for kept units."""

MASKS_FILE = "masks.safetensors"
REPORT_FILE = "dropout.json"


def keep_count(h: int, p: float) -> int:
    """``floor(h * (1 - p))``, robust to rounding (``floor(10 * 0.7)`` is 7, not 6)."""
    return int(math.floor(h * (1.0 - p) + 1e-9))


@dataclass(frozen=True)
class DropoutConfig:
    """How dropout stability is measured."""

    p: float = 0.5
    """Drop fraction: every hidden layer keeps exactly floor(h * (1 - p)) units (Definition 1 has p = 1/2)."""
    masks: int = 20
    """Random masks sampled (the paper's experiments: 20); the best one is reported."""
    rescale: float | None = None
    """Factor r on the kept units' outputs (None: 1 / (1 - p), the usual dropout rescaling)."""
    mask_seed: int = 0
    """Seed of the mask sample."""
    chunk: int = 64
    """Most dropped-out networks evaluated in one batched call."""

    def __post_init__(self) -> None:
        if not (isinstance(self.p, (int, float)) and 0 <= self.p < 1):
            raise ConfigError(f"p must be in [0, 1) (the fraction of units dropped), got {self.p!r}")
        if not (isinstance(self.masks, int) and self.masks >= 1):
            raise ConfigError(f"masks must be a positive integer, got {self.masks!r}")
        if self.rescale is not None and not (math.isfinite(self.rescale) and self.rescale > 0):
            raise ConfigError(f"rescale must be a positive number or None (1 / (1 - p)), got {self.rescale!r}")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise ConfigError(f"chunk must be a positive integer, got {self.chunk!r}")

    @property
    def r(self) -> float:
        return 1.0 / (1.0 - self.p) if self.rescale is None else float(self.rescale)


def _check_keep(spec: UnitSpec, p: float) -> list[int]:
    keep = [keep_count(layer.size, p) for layer in spec.layers]
    for layer, k in zip(spec.layers, keep):
        if k < 1:
            raise ConfigError(f"p={p:g} keeps floor({layer.size} * {1 - p:g}) = 0 units of layer {layer.name!r}; "
                              "lower p")
    return keep


def sample_masks(spec: UnitSpec, p: float, n_masks: int, seed: int = 0) -> list[Mask]:
    """``n_masks`` masks keeping exactly ``floor(h (1 - p))`` units of every hidden layer, drawn from ``seed``."""
    keep = _check_keep(spec, p)
    g = torch.Generator().manual_seed(int(seed))
    masks = []
    for _ in range(n_masks):
        mask = {}
        for layer, k in zip(spec.layers, keep):
            m = torch.zeros(layer.size, dtype=torch.bool)
            m[torch.randperm(layer.size, generator=g)[:k]] = True
            mask[layer.name] = m
        masks.append(mask)
    return masks


def apply_dropout(point: Mapping[str, Tensor], spec: UnitSpec, mask: Mask, r: float, *, from_layer: int = 1,
                  zero_incoming: bool = True) -> dict[str, Tensor]:
    """The paper's ``theta_i`` for ``i = from_layer`` (1-based): ``mask`` applied to hidden layers i .. d-1.

    Kept units' outgoing weights are multiplied by ``r``, dropped units' outgoing weights (and, with
    ``zero_incoming``, their incoming weights and biases) are set to zero.
    """
    if not 1 <= from_layer <= len(spec.layers):
        raise ConfigError(f"from_layer must be in 1..{len(spec.layers)}, got {from_layer}")
    out = dict(point)
    for layer in spec.layers[from_layer - 1:]:
        kept = mask[layer.name].to(point[layer.weight].device)
        out = scale_outgoing(out, layer, kept, r)
        out = zero_outgoing(out, layer, ~kept)
        if zero_incoming:
            out = zero_units(out, layer, ~kept)
    return out


def dropout_perturbation(spec: UnitSpec, p: float, seed: int, *, rescale: float | None = None
                         ) -> Callable[[dict[str, Tensor], int], dict[str, Tensor]]:
    """``perturb(params, step)`` for :func:`~modeconnect.train.train_to_target`: the network with a fresh mask
    for each step (exactly floor(h (1 - p)) kept units per hidden layer, outgoing weights of kept units scaled
    by ``rescale``, default 1 / (1 - p)), drawn from ``(seed, step)`` so a run is reproducible. Differentiable:
    gradients reach the kept units' weights only.

    >>> from torch import nn
    >>> from modeconnect.kuditipudi.units import hidden_units
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> params = dict(net.named_parameters())
    >>> dropped = dropout_perturbation(hidden_units(net), 0.5, seed=0)(params, 7)
    >>> int((dropped["2.weight"] != 0).sum())  # 2 of the 4 hidden units reach the output
    2
    """
    _check_keep(spec, p)
    r = 1.0 / (1.0 - p) if rescale is None else float(rescale)

    def perturb(params: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        mask = sample_masks(spec, p, 1, seed=(int(seed) * 1_000_003 + int(step)) % (2**63 - 1))[0]
        return apply_dropout(params, spec, mask, r)

    return perturb


def _summary(values: Sequence[float]) -> dict[str, Any]:
    best = min(range(len(values)), key=lambda k: values[k])
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "best_mask": best,
            "values": list(values)}


@dataclass
class DropoutReport:
    """Dropout stability of one network: energies of ``theta_i`` for every mask and every ``i``."""

    p: float
    r: float
    n_masks: int
    layers: list[str]
    sizes: list[int]
    kept: list[int]
    energy: float
    """Energy of the network itself."""
    energies: list[list[float]]
    """``energies[m][i - 1]``: energy of theta_i under mask m (dropout from hidden layer i on)."""
    mask_seed: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> dict[str, Any]:
        """theta_1 (every hidden layer dropped out): min / median / max over masks, the best mask, all values."""
        return _summary([row[0] for row in self.energies])

    @property
    def layerwise(self) -> list[dict[str, Any]]:
        """For each i = 1 .. d-1: the same summary for theta_i (dropout from layer i on)."""
        return [{"i": i + 1, "from_layer": self.layers[i], **_summary([row[i] for row in self.energies])}
                for i in range(len(self.layers))]

    @property
    def best_mask(self) -> int:
        """The mask whose worst theta_i is lowest: one mask serves every theta_i on the Lemma 1 path."""
        return min(range(self.n_masks), key=lambda m: (max(self.energies[m]), self.energies[m][0]))

    @property
    def best_energy(self) -> float:
        """Energy of theta_1 under the best mask (by :attr:`full`)."""
        return self.full["min"]

    def stable(self, threshold: float) -> bool:
        """Whether one mask keeps every theta_i at or below ``threshold``."""
        return max(self.energies[self.best_mask]) <= threshold

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(full=self.full, layerwise=self.layerwise, best_mask=self.best_mask,
                   best_mask_energies=self.energies[self.best_mask])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DropoutReport:
        names = set(cls.__dataclass_fields__)
        fields_ = {k: v for k, v in data.items() if k in names}
        fields_["energy"] = float(fields_["energy"])  # JSON stores non-finite floats as strings
        fields_["energies"] = [[float(v) for v in row] for row in fields_["energies"]]
        return cls(**fields_)


def dropout_stability(point: Mapping[str, Tensor], energy, spec: UnitSpec, config: DropoutConfig, *,
                      masks: Sequence[Mask] | None = None,
                      progress: Callable[[str], None] | None = None) -> tuple[list[Mask], DropoutReport]:
    """Sample ``config.masks`` masks (or use ``masks``) and evaluate theta_1 .. theta_{d-1} for each, batched."""
    say = progress or (lambda message: None)
    clock = time.perf_counter()
    keep = _check_keep(spec, config.p)
    if masks is None:
        masks = sample_masks(spec, config.p, config.masks, config.mask_seed)
    n_layers = len(spec.layers)
    jobs = [(m, i) for m in range(len(masks)) for i in range(1, n_layers + 1)]
    values = torch.empty(len(jobs), dtype=torch.float64)
    bar = open_task(say, f"dropout p={config.p:g}: networks", total=len(jobs))
    for lo in range(0, len(jobs), config.chunk):
        batch = jobs[lo : lo + config.chunk]
        points = [apply_dropout(point, spec, masks[m], config.r, from_layer=i) for m, i in batch]
        stacked = {k: torch.stack([p[k] for p in points]) for k in point}
        values[lo : lo + len(batch)] = energy.evaluate(stacked).to(torch.float64)
        bar.update(min(lo + len(batch), len(jobs)))
        bar.say(f"dropout p={config.p:g}: evaluated {min(lo + len(batch), len(jobs))} of {len(jobs)} dropped-out "
            f"networks ({len(masks)} masks x {n_layers} layers), best theta_1 so far "
            f"{float(values[:lo + len(batch)].reshape(-1)[::n_layers].min()):.4g}")
    bar.close()
    values = torch.nan_to_num(values, nan=float("inf")).reshape(len(masks), n_layers)
    report = DropoutReport(p=float(config.p), r=config.r, n_masks=len(masks), layers=spec.names(), sizes=spec.sizes,
                           kept=keep, energy=float(energy(dict(point))), energies=values.tolist(),
                           mask_seed=config.mask_seed, elapsed_s=time.perf_counter() - clock)
    return list(masks), report


def save_dropout(directory: str | os.PathLike, masks: Sequence[Mask], report: DropoutReport,
                 extra: Mapping[str, Any] | None = None) -> None:
    """Write ``masks.safetensors`` (``mask0003/conv2`` -> uint8 ``[h]``) and ``dropout.json`` to ``directory``."""
    directory = FsPath(directory)
    tensors = {f"mask{m:04d}/{name}": t.to(torch.uint8).contiguous() for m, mask in enumerate(masks)
               for name, t in mask.items()}
    digest = write_tensors(directory / MASKS_FILE, tensors)
    write_json(directory / REPORT_FILE, {"format": "modeconnect.kuditipudi.dropout", "version": 1,
                                         "masks_file": MASKS_FILE, "masks_sha256": digest,
                                         **report.to_dict(), **dict(extra or {})})


def load_dropout(directory: str | os.PathLike) -> tuple[list[Mask], DropoutReport, dict[str, Any]]:
    """Read what :func:`save_dropout` wrote: the masks, the report and the whole JSON record."""
    directory = FsPath(directory)
    record = read_json(directory / REPORT_FILE)
    if not isinstance(record, dict) or record.get("format") != "modeconnect.kuditipudi.dropout":
        raise StoreError(f"{directory / REPORT_FILE} is not a modeconnect dropout record")
    tensors = read_tensors(directory / MASKS_FILE, sha256=record.get("masks_sha256"))
    report = DropoutReport.from_dict(record)
    masks: list[Mask] = []
    for m in range(report.n_masks):
        try:
            masks.append({name: tensors[f"mask{m:04d}/{name}"].to(torch.bool) for name in report.layers})
        except KeyError as exc:
            raise StoreError(f"{directory / MASKS_FILE} lacks {exc.args[0]}: it does not match {REPORT_FILE}") from None
    return masks, report, record

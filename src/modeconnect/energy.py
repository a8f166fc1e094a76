"""Energy: the scalar a threshold applies to, evaluated at many parameter points at once.

An :class:`Energy` owns a private copy of the model (used only through
``torch.func.functional_call``), its evaluation data, its metric and its
batching strategy. :meth:`Energy.evaluate` takes a batch of points (each value
with a leading point dimension) and returns one float64 energy per point;
:meth:`Energy.along_segment` evaluates a grid on the straight segment between
two points without materialising more than ``chunk_size`` points at a time.

The value of a batch of points is ``metric.finalize(sum / count)``: the metric is summed over the
evaluation data in sample batches, divided by its unit count (samples, or labels/tokens for
classification and language models) and then transformed (``exp`` for perplexity). Models with
BatchNorm running statistics need a :class:`~modeconnect.batchnorm.BatchNormPolicy` (``batchnorm=``),
recorded by :meth:`Energy.describe`. Every other buffer is read from the point (``buffer:`` keys), never
from the energy's own copy of the model, which only supplies the architecture.

>>> import torch
>>> net = torch.nn.Linear(1, 1)
>>> x = torch.linspace(0, 1, 8).unsqueeze(1)
>>> energy = Energy(net, x, 2 * x, metric="mse", strategy="vmap")
>>> a = {"weight": torch.tensor([[2.0]]), "bias": torch.tensor([0.0])}
>>> b = {"weight": torch.tensor([[0.0]]), "bias": torch.tensor([0.0])}
>>> [round(e, 4) for e in energy.along_segment(a, b, [0.0, 1.0]).tolist()]
[0.0, 1.4286]
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .batchnorm import (
    BatchNormPolicy,
    BatchNormSetup,
    as_policy,
    batch_statistics_mode,
    batchnorm_layers,
    fresh_statistics,
    plain_buffer_names,
    split_point,
    statistic_names,
)
from .energy_memo import SegmentMemo
from .energy_probe import measure, thread_setting
from .errors import ConfigError, NonFiniteEnergyError, UnsupportedModelError
from .fast_eval import MATMUL_CACHE_BYTES, MatmulPlan, fast_copy, lerp_points
from .metrics import Metric, as_metric, metric_count, metric_sum
from .params import check_compatible, check_supported_module, interpolate, interpolate_many, point_from_module

__all__ = ["Energy", "Strategy", "data_like"]


def data_like(inputs: Tensor, targets: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Move data to ``ref``'s device and give its floating tensors ``ref``'s dtype (class labels stay integer)."""
    out = []
    for t in (inputs, targets):
        t = t.to(ref.device)
        out.append(t.to(ref.dtype) if t.is_floating_point() else t)
    return out[0], out[1]


class Strategy(str, Enum):
    """How many parameter points are pushed through the model."""

    AUTO = "auto"
    """Time LOOP, VMAP and (for a plain MLP) MATMUL on the first batch of points and keep the fastest (the
    choice is recorded; the probe's values are returned, not recomputed)."""
    VMAP = "vmap"
    """``torch.func.vmap`` over ``functional_call``: one batched forward per chunk of points."""
    LOOP = "loop"
    """One ``functional_call`` per point: the plain reference."""
    MATMUL = "matmul"
    """One batched matmul per layer over a chunk of points: an ``nn.Sequential`` of Linear layers and
    elementwise activations only (:class:`~modeconnect.fast_eval.MatmulPlan`)."""


def _as_strategy(value: str | Strategy) -> Strategy:
    try:
        return Strategy(value)
    except ValueError:
        raise ConfigError(f"unknown strategy {value!r}; choose one of: auto, vmap, loop, matmul") from None


class Energy:
    """A metric of a model on fixed evaluation data, as a function of the parameters.

    Args:
        model: the architecture; copied, never modified. Its current parameter
            values are irrelevant (points supply them).
        inputs, targets: the evaluation data (the whole split or a fixed subset).
        metric: a :class:`~modeconnect.metrics.Metric` name.
        strategy: a :class:`Strategy` name.
        chunk_size: most points per batched (VMAP) call; ``None`` derives it from ``memory_budget_mb``.
        memory_budget_mb: parameter memory one batched call may materialise (when ``chunk_size`` is None).
        sample_batch_size: most samples per forward pass (``None``: all at once).
        split: a label for where the data came from, recorded in results.
        selection: how the evaluation samples were chosen from ``split`` (e.g. ``"first 1000 of 10000"``),
            recorded in results.
        batchnorm: a :class:`~modeconnect.batchnorm.BatchNormPolicy` name; required when the model has
            BatchNorm layers with running statistics, ignored otherwise.
        bn_batches: RECOMPUTE only: the training-input batches (a sequence of tensors) the statistics are
            recomputed from at every point.
        bn_statistics: FREEZE only: the fixed statistics, keyed by buffer name (``"1.running_mean"``);
            default: the model's own buffers.
        bn_source: FREEZE only: a label for where ``bn_statistics`` came from (recorded).
        threads: torch threads for evaluating (and, through :meth:`thread_scope`, training): ``None`` keeps
            the process's setting; an int fixes it; ``"auto"`` times the first evaluation with 1, 2, 4, ...
            up to the process's setting and keeps the fastest (recorded as ``chosen_threads``; results can
            differ in their last bits between thread counts), unless the environment variable
            ``MODECONNECT_THREADS`` pins it to a count (then recorded as ``threads``).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        metric: str | Metric,
        *,
        strategy: str | Strategy = Strategy.AUTO,
        chunk_size: int | None = None,
        memory_budget_mb: float = 256.0,
        sample_batch_size: int | None = None,
        split: str = "test",
        selection: str | None = None,
        batchnorm: str | BatchNormPolicy | None = None,
        bn_batches: Sequence[Tensor] | None = None,
        bn_statistics: Mapping[str, Tensor] | None = None,
        bn_source: str | None = None,
        threads: int | str | None = None,
    ) -> None:
        check_supported_module(model, batchnorm)
        self.metric = as_metric(metric)
        self.strategy = _as_strategy(strategy)
        self.threads = thread_setting(threads)
        self.chosen_threads: int | None = self.threads if isinstance(self.threads, int) else None
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if not memory_budget_mb > 0:
            raise ConfigError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        if sample_batch_size is not None and sample_batch_size < 1:
            raise ConfigError(f"sample_batch_size must be >= 1 or None, got {sample_batch_size}")
        if len(inputs) != len(targets):
            raise ConfigError(f"inputs have {len(inputs)} samples but targets have {len(targets)}")
        if len(inputs) == 0:
            raise ConfigError("the evaluation data is empty")
        try:
            self.model = copy.deepcopy(model).eval()
        except RuntimeError as exc:  # e.g. a module attribute holding a tensor computed with gradients
            raise UnsupportedModelError(f"the model cannot be copied ({exc}); the energy needs its own copy of "
                                        "the architecture") from exc
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._fast_model = fast_copy(self.model)  # evaluation only (no autograd): the same values, faster
        self.has_batchnorm = bool(batchnorm_layers(self.model))
        self._statistic_names = set(statistic_names(self.model))
        self.batchnorm = as_policy(batchnorm) if self.has_batchnorm else None
        self._bn = BatchNormSetup.configure(self.model, self.batchnorm, bn_batches, bn_statistics, bn_source)
        self.inputs, self.targets = inputs, targets
        self.selection = selection
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        self.sample_batch_size = sample_batch_size
        self.split = split
        self.chosen_strategy: Strategy | None = None if self.strategy is Strategy.AUTO else self.strategy
        self.template = point_from_module(self.model, self.batchnorm)
        self.n_evaluations = 0
        self._plan = MatmulPlan.of(self.model)
        if self.strategy is Strategy.MATMUL and self._plan is None:
            raise ConfigError("strategy 'matmul' needs an nn.Sequential of Linear layers and elementwise activations "
                              f"without buffers, not this {type(model).__name__}; use 'loop', 'vmap' or 'auto'")
        self._batches: dict[tuple, tuple[list[tuple[Tensor, Tensor]], int]] = {}
        self._sizes: dict[tuple, int] = {}
        self.memo = SegmentMemo()
        """Energies already computed along recent segments (LOOP only; see :mod:`modeconnect.energy_memo`)."""

    @property
    def bn_batches(self) -> list[Tensor]:
        """RECOMPUTE: the training-input batches the statistics are recomputed from (empty otherwise)."""
        return self._bn.batches

    @property
    def bn_statistics(self) -> dict[str, Tensor]:
        """FREEZE: the fixed statistics by buffer name (empty otherwise)."""
        return self._bn.statistics

    @property
    def bn_source(self) -> str | None:
        """FREEZE: where :attr:`bn_statistics` came from."""
        return self._bn.source

    # -- description -------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return len(self.inputs)

    def describe(self) -> dict[str, Any]:
        """The settings that define this energy, for results files."""
        return {
            "metric": self.metric.value,
            "split": self.split,
            "selection": self.selection,
            "n_samples": self.n_samples,
            "unit": self.metric.unit,
            "n_units": metric_count(self.metric, self.targets),
            "batchnorm": self.describe_batchnorm(),
            **({"buffers": names} if (names := plain_buffer_names(self.model)) else {}),
            "strategy": self.strategy.value,
            "chosen_strategy": None if self.chosen_strategy is None else self.chosen_strategy.value,
            "chunk_size": self.chunk_size,
            "points_per_chunk": self.points_per_chunk,
            "memory_budget_mb": self.memory_budget_mb,
            "sample_batch_size": self.sample_batch_size,
            **({"threads": self.threads, "chosen_threads": self.chosen_threads} if self.threads is not None else {}),
        }

    def describe_batchnorm(self) -> dict[str, Any] | None:
        """The BatchNorm policy and its settings (``None`` for a model without running statistics)."""
        return self._bn.describe(self.model)

    def point_of(self, module: nn.Module) -> dict[str, Tensor]:
        """A module's point as this energy expects it (its buffers, with BatchNorm statistics only under the
        INTERPOLATE policy)."""
        point = point_from_module(module, self.batchnorm)
        self.check_point(point, f"the point of {type(module).__name__}")
        return point

    def statistics_at(self, point: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The BatchNorm statistics used at ``point`` under this energy's policy, keyed by buffer name."""
        return self._bn.statistics_at(self.model, point, self._statistic_names)

    def train_forward(self, point: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        """Model outputs for training: BatchNorm layers (if any) normalise with batch statistics.

        Under INTERPOLATE the point's own statistics (``buffer:`` keys) are updated in place with the layers'
        running average, as ordinary training would; otherwise scratch buffers are used and discarded. The
        point's other buffers are used as they are. For a model without BatchNorm statistics this is the
        eval-mode ``functional_call`` of the point.
        """
        params, buffers = split_point(point)
        if not self.has_batchnorm:
            return functional_call(self.model, {**params, **buffers}, (inputs,))
        scratch = fresh_statistics(self.model, next(iter(params.values())))
        with batch_statistics_mode(self.model):
            return functional_call(self.model, {**params, **scratch, **buffers}, (inputs,))

    # -- evaluation --------------------------------------------------------------------------
    def __call__(self, point: Mapping[str, Tensor]) -> float:
        """Energy of one point."""
        return float(self.evaluate({k: v.unsqueeze(0) for k, v in point.items()})[0])

    def check_point(self, point: Mapping[str, Tensor], name: str = "point") -> None:
        """Raise :class:`~modeconnect.errors.ArchitectureMismatch` unless ``point`` fits the model."""
        check_compatible(self.template, point, "the energy's model", name)

    def evaluate(self, points: Mapping[str, Tensor]) -> Tensor:
        """Energies (float64, shape ``[P]``) of a batch of ``P`` points."""
        n_points = next(iter(points.values())).shape[0]
        return self._evaluate(n_points, lambda lo, hi: {k: v[lo:hi] for k, v in points.items()},
                              lambda i: {k: v[i] for k, v in points.items()})

    def along_segment(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Sequence[float] | Tensor) -> Tensor:
        """Energies at ``(1 - t) a + t b`` for each ``t`` in ``ts`` (float64, shape ``[len(ts)]``).

        Interpolated points are built lazily: one at a time for LOOP, ``chunk_size`` at a time for VMAP.
        """
        ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
        if self.chosen_strategy is Strategy.MATMUL:  # plain float parameters: the lean interpolation, same bits
            return self._evaluate(len(ts), lambda lo, hi: lerp_points(a, b, ts[lo:hi]),
                                  lambda i: interpolate(a, b, float(ts[i])))
        if self.chosen_strategy is not Strategy.LOOP:  # batched values may depend on the chunk: never memoised
            return self._evaluate(len(ts), lambda lo, hi: interpolate_many(a, b, ts[lo:hi]),
                                  lambda i: interpolate(a, b, float(ts[i])))
        known, values = self.memo.lookup(a, b, ts)  # LOOP: each point on its own, so remembered values are exact
        todo = ts[~known]
        if len(todo):
            values[~known] = self._evaluate(len(todo), lambda lo, hi: interpolate_many(a, b, todo[lo:hi]),
                                            lambda i: interpolate(a, b, float(todo[i])))
            self.memo.store(a, b, todo, values[~known])
        return values

    def require_finite(self, value: float, what: str) -> float:
        """Return ``value`` or raise :class:`NonFiniteEnergyError` naming ``what``."""
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteEnergyError(
                f"the energy of {what} is {value}: the model produces non-finite outputs there; "
                "check the data and the parameters (e.g. a diverged training run)"
            )
        return value

    # -- internals ---------------------------------------------------------------------------
    @property
    def points_per_chunk(self) -> int:
        """Points per batched (VMAP) call: ``chunk_size``, or as many as fit ``memory_budget_mb`` of parameters."""
        if self.chunk_size is not None:
            return self.chunk_size
        per_point = sum(v.numel() * v.element_size() for v in self.template.values())
        return max(1, min(256, int(self.memory_budget_mb * 2**20) // max(per_point, 1)))

    def _point_sum(self, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return metric_sum(self.metric, functional_call(self._fast_model, dict(params), (x,)), y)

    def _sample_batches(self, ref: Tensor):
        """The evaluation data in sample batches on ``ref``'s device and dtype, and its unit count (built once)."""
        key = (ref.device, ref.dtype)
        if key not in self._batches:
            x, y = data_like(self.inputs, self.targets, ref)
            step = self.sample_batch_size or len(x)
            self._batches[key] = ([(x[s : s + step], y[s : s + step]) for s in range(0, len(x), step)],
                                  metric_count(self.metric, y))
        return self._batches[key]

    def _call_params(self, point: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Parameters, the point's buffers and BatchNorm statistics (by name) for ``functional_call`` at one
        point. Every buffer comes from the point or the policy, none from the template model."""
        params, buffers = split_point(point)
        return {**params, **buffers, **self.statistics_at(point)}

    def _call_params_batched(self, chunk: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`_call_params` for a chunk of points (leading point dimension), for ``vmap``."""
        params, buffers = split_point(chunk)
        return {**params, **buffers, **self._bn.statistics_batched(self.model, chunk, self._statistic_names)}

    def _one(self, point: Mapping[str, Tensor]) -> Tensor:
        batches, n = self._sample_batches(next(iter(point.values())))
        params = self._call_params(point)
        total = sum(self._point_sum(params, x, y).double() for x, y in batches)
        return self.metric.finalize(total / n)

    def _chunk(self, chunk: Mapping[str, Tensor], strategy: Strategy = Strategy.VMAP) -> Tensor:
        batches, n = self._sample_batches(next(iter(chunk.values())))
        if strategy is Strategy.MATMUL:
            total = sum(self._plan.sums(self.metric, chunk, x, y).double() for x, y in batches)
        else:
            params = self._call_params_batched(chunk)
            batched = vmap(self._point_sum, in_dims=(0, None, None))
            total = sum(batched(params, x, y).double() for x, y in batches)
        return self.metric.finalize(total / n)

    def _chunk_points(self, strategy: Strategy) -> int:
        """Points per batched call: :attr:`points_per_chunk`, and for MATMUL at most as many as keep one layer's
        activations within ``memory_budget_mb`` and :data:`~modeconnect.fast_eval.MATMUL_CACHE_BYTES` (computed
        once per setting)."""
        key = (strategy, self.chunk_size, self.memory_budget_mb, self.sample_batch_size)
        if key not in self._sizes:
            size = self.points_per_chunk
            if strategy is Strategy.MATMUL:
                samples = min(self.sample_batch_size or self.n_samples, self.n_samples)
                per_point = self._plan.widest * samples * self.template[next(iter(self.template))].element_size()
                size = max(1, min(size, int(self.memory_budget_mb * 2**20) // max(per_point, 1),
                                  MATMUL_CACHE_BYTES // max(per_point, 1)))
            self._sizes[key] = size
        return self._sizes[key]

    def _run(self, strategy: Strategy, lo: int, hi: int, get_chunk, get_one) -> Tensor:
        """Energies of points ``lo..hi-1`` with ``strategy`` (float64, shape ``[hi - lo]``)."""
        if hi <= lo:
            return torch.zeros(0, dtype=torch.float64)
        if strategy is Strategy.LOOP:
            return torch.stack([self._one(get_one(i)) for i in range(lo, hi)]).reshape(hi - lo)
        size = self._chunk_points(strategy)
        parts = [self._chunk(get_chunk(s, min(s + size, hi)), strategy) for s in range(lo, hi, size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @contextlib.contextmanager
    def thread_scope(self):
        """Run the block with this energy's torch threads (``threads``/``chosen_threads``), then restore them."""
        previous = torch.get_num_threads()
        wanted = self.chosen_threads or previous
        if not isinstance(self.threads, int):  # a measured count never exceeds the process's current limit
            wanted = min(wanted, previous)
        if wanted != previous:
            torch.set_num_threads(wanted)
        try:
            yield
        finally:
            if wanted != previous:
                torch.set_num_threads(previous)

    def _evaluate(self, n_points: int, get_chunk, get_one) -> Tensor:
        with torch.no_grad():
            head = measure(self, n_points, get_chunk, get_one)  # values of the points it probed, if it did
            self.n_evaluations += n_points
            with self.thread_scope():
                rest = self._run(self.chosen_strategy or Strategy.LOOP, len(head), n_points, get_chunk, get_one)
            return torch.cat([head, rest]) if len(head) else rest

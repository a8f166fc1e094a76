"""Nudged elastic band with AutoNEB pivot insertion (Draxler et al. 2018; Henkelman & Jonsson 2000).

A band of images ``x_0 = a, x_1, ..., x_n, x_{n+1} = b`` is laid on the straight segment between the two
endpoints (optionally with a seeded perturbation) and relaxed together. The endpoints never move. At every
NEB step each inner image ``i`` feels

* the true force ``-grad L(x_i)`` with its component along the band's tangent ``tau_i`` removed, and
* a spring force along the tangent, ``k (|x_{i+1} - x_i| - |x_i - x_{i-1}|) tau_i``, which only spaces
  the images out and never pulls the band off the minimum energy path;

and, with ``climbing`` on (after ``climb_after`` steps), the highest image instead gets
``-grad L + 2 (grad L . tau) tau`` and no spring: it climbs along the band to the saddle point. ``L`` is the
training objective on a minibatch (as in Draxler et al.); the tangent (``tangent``) is the improved tangent
of Henkelman & Jonsson (2000), which points to the energy-higher neighbour (with a weighted mix at extrema),
or the simple normalised ``x_{i+1} - x_{i-1}``. The image energies the tangent and the climbing image use
are the same minibatch losses, the endpoints' included. The force is applied as the negative gradient of
an optimizer (SGD with momentum by default), so every image moves by ``lr`` times its force.

AutoNEB cycles: NEB runs ``steps_per_cycle`` steps, then the energy is evaluated on a grid of ``grid_size``
points on every segment between neighbouring images. Each segment whose grid maximum exceeds
``tolerance * L0`` gets a new image (a *pivot*) at its grid maximum (within ``tstar_margin`` of the ends:
an image that is itself too high is relaxed by NEB, not duplicated), the highest segments first, at most
``max_insert_per_cycle`` per cycle and ``max_images`` in all. The run stops connected when no segment
exceeds (checked before the first cycle too), or for lack of cycles, images or time.

All inner images' gradients come from one ``torch.func.vmap`` of ``functional_call`` over the stacked
band where the model allows it (no buffers or BatchNorm), with the loop as the fallback (``batching``).
The optimizer restarts every cycle and cycle ``c`` draws its minibatches from a seed derived from
``(seed, c)``, so a run resumed from the checkpoint after any cycle gives the same path bit for bit.
Registered as the path method ``neb``; docs/neb.md has the details and a measured example.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from ..batchnorm import is_buffer_key
from ..energy import Energy
from ..errors import ConfigError
from ..metrics import metric_count, metric_sum
from ..params import Point, interpolate
from ..path import Path, Straight
from ..progress import open_task
from ..seeding import derive_seed
from ..train import Minibatches, Objective, Optimizer, TrainConfig, make_optimizer
from .base import Checkpoint, Outcome, Progress, check_state_fields
from .constrained_dss import as_enum
from .greedy_dss import MAX_GRID_SIZE, TStar, choose_tstar
from .string_training import Batching, prefers_loop

__all__ = ["Tangent", "NEBReason", "NEBConfig", "NEBState", "NEB", "Band", "neb_force", "tangents",
           "band_gradients", "choose_pivots"]

BAR_EVERY = 10
"""A cycle's bar (progress displays) moves every this many NEB steps, with the highest image loss."""


class Tangent(str, Enum):
    """How the band's tangent at an inner image is estimated."""

    IMPROVED = "improved"
    """Henkelman & Jonsson (2000): towards the energy-higher neighbour; at a local extremum of the energy along
    the band, both neighbour directions weighted by the energy differences (no kinks, no corner cutting)."""
    SIMPLE = "simple"
    """The normalised (x_{i+1} - x_{i-1}): the bisector of the two segments (kinks the band where forces are
    large compared with the springs)."""


class NEBReason(str, Enum):
    """Why NEB stopped."""

    CONNECTED = "connected"
    """Every segment's grid maximum is <= tolerance * threshold."""
    CYCLES_EXHAUSTED = "cycles_exhausted"
    """max_cycles AutoNEB cycles were run and a segment still exceeds."""
    IMAGE_BUDGET_EXHAUSTED = "image_budget_exhausted"
    """A segment exceeds but the band already has max_images inner images."""
    TIME_EXHAUSTED = "time_exhausted"
    """The wall-time budget max_time_s ran out (checked after every cycle)."""
    DIVERGED = "diverged"
    """An image's training loss became NaN or infinite (lower lr)."""


@dataclass(frozen=True)
class NEBConfig:
    """Every setting of NEB/AutoNEB; all are recorded in results. The level L0 is passed to ``run``."""

    n_images: int = 3
    """Inner images laid on the straight segment at the start (0: AutoNEB inserts them all). A start path that
    already holds inner beads is used as the initial band as it is."""
    init_noise: float = 0.0
    """Each initial inner image is moved by seeded Gaussian noise of this norm, relative to the initial spacing
    |b - a| / (n_images + 1) (0: exactly on the straight segment)."""
    spring: float = 0.1
    """Spring constant k (loss units per squared parameter distance). It only acts along the tangent, so it
    sets how fast the images spread out evenly, not where the band goes. Cubic pairs at L0=0.05 (seeds 1-3)
    connected with 0.1; with 1.0 the bands of seeds 0 and 2 tangled and blew up (docs/neb.md)."""
    tangent: Tangent = Tangent.IMPROVED
    """The tangent estimate (see Tangent)."""
    climbing: bool = False
    """Climbing image: the highest inner image gets -grad L + 2 (grad L . tau) tau and no spring, so it climbs
    to the saddle point of the band."""
    climb_after: int = 0
    """The climbing image is switched on once this many NEB steps (over all cycles) were taken."""
    optimizer: Optimizer = Optimizer.SGD
    """How the NEB force moves the images: sgd (with momentum, as Draxler et al.), adam or rmsprop."""
    lr: float = 0.05
    """Step size: SGD moves an image by lr times its force (plus momentum)."""
    momentum: float = 0.9
    """SGD momentum (ignored by adam and rmsprop)."""
    batch_size: int | None = 256
    """Training samples per NEB step (the objective's minibatch); None: the whole training set. 256 is the
    whole set of the polynomial tasks and keeps a step on MNIST (10,000 training images) cheap."""
    steps_per_cycle: int = 500
    """NEB steps between AutoNEB evaluations."""
    max_cycles: int = 10
    """Most AutoNEB cycles (NEB steps, evaluation, pivot insertion)."""
    grid_size: int = 33
    """Points per segment on the evaluation grid, endpoints included."""
    tolerance: float = 1.0
    """A segment passes when its grid maximum is <= tolerance * L0 (>= 1)."""
    max_insert_per_cycle: int = 4
    """Most pivots inserted after one cycle (the highest segments first)."""
    max_images: int = 32
    """Most inner images on the band."""
    tstar: TStar = TStar.ARGMAX
    """Where a pivot goes on a segment that exceeds: its grid maximum (argmax) or its midpoint."""
    tstar_margin: float = 0.05
    """ARGMAX keeps a pivot within [margin, 1 - margin] of its segment."""
    flat_tolerance: float = 1e-3
    """ARGMAX falls back to 0.5 when the segment's profile range is <= flat_tolerance * L0."""
    max_time_s: float | None = None
    """Wall-time budget in seconds, summed over resumed sessions (None: unlimited)."""
    batching: Batching = Batching.AUTO
    """How the images' gradients are computed: one vmapped call (vmap), one forward per image (loop), or vmap
    where the model allows it (auto)."""
    seed: int = field(default=0, metadata={"flag": False})
    """Base seed: cycle c draws minibatches from a seed derived from (seed, c). A run sets it."""

    def __post_init__(self) -> None:
        for name, cls in (("tangent", Tangent), ("optimizer", Optimizer), ("tstar", TStar), ("batching", Batching)):
            object.__setattr__(self, name, as_enum(cls, getattr(self, name), name))

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return value

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")

        if not isinstance(self.climbing, bool):
            raise ConfigError(f"climbing must be true or false, got {self.climbing!r}")
        for name, low in (("n_images", 0), ("climb_after", 0), ("steps_per_cycle", 1), ("max_cycles", 1),
                          ("max_insert_per_cycle", 1), ("max_images", 0)):
            integer(name, low)
        if number("init_noise") < 0:
            raise ConfigError(f"init_noise must be >= 0 (a fraction of the initial spacing), got {self.init_noise}")
        if number("spring") < 0:
            raise ConfigError(f"spring must be >= 0 (0: no springs, the images may bunch up), got {self.spring}")
        if not number("lr") > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if number("momentum") < 0 or self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer is Optimizer.SGD and 4 * self.lr * self.spring >= 2 * (1 + self.momentum):
            # heavy ball is stable on the springs' stiffest mode (curvature up to 4k) only for lr*4k < 2(1+momentum)
            raise ConfigError(f"lr * spring = {self.lr * self.spring:g} makes SGD unstable on the springs alone "
                              f"(it needs 4 * lr * spring < 2 * (1 + momentum) = {2 * (1 + self.momentum):g}): "
                              "lower lr or spring")
        if self.batch_size is not None:
            integer("batch_size", 1)
        if self.n_images > self.max_images:
            raise ConfigError(f"n_images ({self.n_images}) must be <= max_images ({self.max_images})")
        if not 3 <= self.grid_size <= MAX_GRID_SIZE:
            raise ConfigError(f"grid_size must be between 3 (both images and one point between) and "
                              f"{MAX_GRID_SIZE:,}, got {self.grid_size}")
        if not (number("tolerance") >= 1):
            raise ConfigError(f"tolerance must be >= 1 (a segment passes when max <= tolerance * L0), "
                              f"got {self.tolerance}")
        if not 0 <= number("tstar_margin") < 0.5:
            raise ConfigError(f"tstar_margin must be in [0, 0.5), got {self.tstar_margin}")
        if number("flat_tolerance") < 0:
            raise ConfigError(f"flat_tolerance must be >= 0, got {self.flat_tolerance}")
        if self.max_time_s is not None and not number("max_time_s") > 0:
            raise ConfigError(f"max_time_s must be positive or None, got {self.max_time_s}")

    def train_config(self) -> TrainConfig:
        """The optimizer settings as the project's TrainConfig (for its optimizer factory)."""
        return TrainConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, batch_size=self.batch_size)


@dataclass
class NEBState:
    """Bookkeeping that, together with the Path (whose beads are the images), lets a run resume exactly."""

    cycle: int = 0
    """AutoNEB cycles completed."""
    steps: int = 0
    """NEB steps taken, summed over cycles (the climbing image's clock)."""
    image_steps: int = 0
    """Image gradients computed: NEB steps times the inner images moved at each."""
    energy_evaluations: int = 0
    """Points at which the energy was evaluated (segment grids), summed over sessions."""
    initialized: bool = False
    """Whether the initial band has been laid out (and checked)."""
    image_births: list[int] | None = None
    """Aligned with ``path.beads``: 0 for the endpoints and initial images, c for a pivot inserted after the c-th
    cycle (the pivot log's ``cycle`` is that cycle's 0-based index, c - 1)."""
    pivot_log: list[dict[str, Any]] = field(default_factory=list)
    cycle_log: list[dict[str, Any]] = field(default_factory=list)
    segment_max_energy: list[float] = field(default_factory=list)
    """The grid maxima of the latest evaluation, one per segment."""
    batchings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    bead_training_s: float = 0.0
    """Wall time of the NEB steps, summed over sessions."""
    segment_evaluation_s: float = 0.0
    finished: bool = False
    outcome: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NEBState:
        check_state_fields(cls, data, "NEB")
        data = dict(data)
        data["segment_max_energy"] = [float(v) for v in data.get("segment_max_energy", [])]
        return cls(**data)


# -- the band as one matrix ------------------------------------------------------------------------------
class Band:
    """Points as rows of one flat parameter matrix (``buffer:`` keys are not coordinates and stay aside)."""

    def __init__(self, like: Mapping[str, Tensor]) -> None:
        self.keys = [k for k in like if not is_buffer_key(k)]
        if not self.keys:
            raise ConfigError("neb needs a model with parameters")
        self.shapes = {k: like[k].shape for k in self.keys}
        self.dtypes = {k: like[k].dtype for k in self.keys}
        self.sizes = [like[k].numel() for k in self.keys]
        if any(not like[k].is_floating_point() for k in self.keys):
            raise ConfigError("neb moves floating-point parameters only")

    def flat(self, points: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """``[len(points), D]``: one row per point."""
        return torch.stack([torch.cat([p[k].detach().reshape(-1) for k in self.keys]) for p in points])

    def unflat(self, rows: Tensor) -> dict[str, Tensor]:
        """The parameters of stacked rows ``[m, D]`` as a batched point (views, keeping autograd)."""
        parts = torch.split(rows, self.sizes, dim=1)
        return {k: v.reshape(rows.shape[0], *self.shapes[k]) for k, v in zip(self.keys, parts)}

    def point(self, row: Tensor, like: Mapping[str, Tensor]) -> Point:
        """One row back as a point of ``like``'s keys, dtypes and buffers."""
        parts = dict(zip(self.keys, torch.split(row.detach(), self.sizes)))
        return {k: (like[k] if is_buffer_key(k) else parts[k].reshape(self.shapes[k]).to(self.dtypes[k]).clone())
                for k in like}


def band_gradients(rows: Tensor, inner: Tensor, *, band: Band, energy: Energy, objective: Objective,
                   inputs: Tensor, targets: Tensor, batching: Batching,
                   buffers: Sequence[Mapping[str, Tensor]] | None = None) -> tuple[Tensor, Tensor, Batching]:
    """Minibatch losses of the whole band and the gradients of its inner images.

    ``rows`` is the band ``[n + 2, D]`` (its inner rows are ignored); ``inner`` the inner images ``[n, D]``.
    Returns ``(losses [n + 2], gradients [n, D], batching used)``. VMAP: one vmapped ``functional_call`` over all
    ``n + 2`` images; LOOP: one forward per image (``energy.train_forward``, with the images' ``buffers``).
    AUTO and VMAP fall back to LOOP where the model carries buffers or BatchNorm; AUTO also where vmap fails
    or the energy pins the loop strategy (the real tasks, where vmap is slower).
    """
    model, kind = energy.model, objective.loss
    full = torch.cat([rows[:1].detach(), inner, rows[-1:].detach()])
    use = batching
    if buffers and any(buffers) or energy.has_batchnorm:
        use = Batching.LOOP
    elif use is Batching.AUTO:
        use = Batching.LOOP if prefers_loop(energy) else Batching.VMAP

    def one_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return metric_sum(kind, functional_call(model, p, (x,)), y) / metric_count(kind, y)

    losses = None
    if use is Batching.VMAP:
        try:
            losses = vmap(one_loss, in_dims=(0, None, None))(band.unflat(full), inputs, targets)
        except RuntimeError:  # an op without a batching rule
            if batching is Batching.VMAP:
                raise
            use = Batching.LOOP
    if losses is None:
        stacked = band.unflat(full)
        extra = buffers or [{}] * len(full)
        losses = torch.stack([
            metric_sum(kind, energy.train_forward({k: v[i] for k, v in stacked.items()} | dict(extra[i]), inputs),
                       targets) / metric_count(kind, targets) for i in range(len(full))])
    (grads,) = torch.autograd.grad(losses.sum(), inner) if inner.shape[0] else (torch.zeros_like(inner),)
    return losses.detach(), grads, use


def tangents(rows: Tensor, values: Tensor, kind: Tangent = Tangent.IMPROVED) -> Tensor:
    """Unit tangents ``[n, D]`` at the inner images of a band ``rows [n + 2, D]`` with energies ``values [n + 2]``.

    IMPROVED (Henkelman & Jonsson 2000): ``tau+ = x_{i+1} - x_i`` where ``V_{i+1} > V_i > V_{i-1}``,
    ``tau- = x_i - x_{i-1}`` where ``V_{i+1} < V_i < V_{i-1}``, else ``tau+ dVmax + tau- dVmin`` (when
    ``V_{i+1} > V_{i-1}``) or ``tau+ dVmin + tau- dVmax``, with ``dVmax/min`` the larger/smaller of
    ``|V_{i+1} - V_i|`` and ``|V_{i-1} - V_i|``. SIMPLE: ``x_{i+1} - x_{i-1}``. A zero tangent stays zero.

    >>> rows = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    >>> tangents(rows, torch.tensor([0.0, 1.0, 2.0])).tolist()      # uphill to the right: towards x_2
    [[0.7071067690849304, -0.7071067690849304]]
    >>> tangents(rows, torch.tensor([0.0, 1.0, 2.0]), Tangent.SIMPLE).tolist()
    [[1.0, 0.0]]
    """
    plus, minus = rows[2:] - rows[1:-1], rows[1:-1] - rows[:-2]
    if as_enum(Tangent, kind, "tangent") is Tangent.SIMPLE:
        tau = plus + minus
    else:
        v_next, v, v_prev = values[2:], values[1:-1], values[:-2]
        up, down = (v_next > v) & (v > v_prev), (v_next < v) & (v < v_prev)
        d_next, d_prev = (v_next - v).abs(), (v_prev - v).abs()
        big, small = torch.maximum(d_next, d_prev), torch.minimum(d_next, d_prev)
        w_plus = torch.where(v_next > v_prev, big, small).unsqueeze(1).to(rows.dtype)
        w_minus = torch.where(v_next > v_prev, small, big).unsqueeze(1).to(rows.dtype)
        mixed = plus * w_plus + minus * w_minus
        mixed = torch.where((w_plus + w_minus) > 0, mixed, plus + minus)  # equal energies: the bisector
        tau = torch.where(up.unsqueeze(1), plus, torch.where(down.unsqueeze(1), minus, mixed))
    norm = torch.linalg.vector_norm(tau, dim=1, keepdim=True)
    return torch.where(norm > 0, tau / norm.clamp_min(torch.finfo(tau.dtype).tiny), torch.zeros_like(tau))


def neb_force(rows: Tensor, values: Tensor, grads: Tensor, *, spring: float, tangent: Tangent = Tangent.IMPROVED,
              climbing: bool = False) -> tuple[Tensor, Tensor, int | None]:
    """The NEB force ``[n, D]`` on the inner images of ``rows [n + 2, D]`` (energies ``values``, gradients ``grads``).

    ``F_i = -(g_i - (g_i . tau_i) tau_i) + k (|x_{i+1} - x_i| - |x_i - x_{i-1}|) tau_i``; with ``climbing`` the
    highest inner image gets ``-g + 2 (g . tau) tau`` instead. Returns ``(force, tangents, climbing index or None)``.

    >>> rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    >>> force, _, _ = neb_force(rows, torch.zeros(3), torch.tensor([[5.0, 2.0]]), spring=1.0)
    >>> force.tolist()          # the gradient along the band is dropped; the spring pulls towards the middle
    [[1.0, -2.0]]
    """
    tau = tangents(rows, values, tangent)
    along = (grads * tau).sum(1, keepdim=True)
    d_next = torch.linalg.vector_norm(rows[2:] - rows[1:-1], dim=1, keepdim=True)
    d_prev = torch.linalg.vector_norm(rows[1:-1] - rows[:-2], dim=1, keepdim=True)
    force = -(grads - along * tau) + spring * (d_next - d_prev) * tau
    top = None
    if climbing and len(grads):
        top = int(torch.argmax(values[1:-1]))
        force[top] = -grads[top] + 2 * along[top] * tau[top]
    return force, tau, top


def choose_pivots(maxima: Sequence[float], level: float, limit: int) -> list[int]:
    """Segments that get a pivot: those with grid maximum above ``level``, highest first, at most ``limit``.

    >>> choose_pivots([0.1, 0.9, 0.5, 0.7], 0.4, 2)
    [1, 3]
    """
    failing = [i for i, m in enumerate(maxima) if not m <= level]
    return sorted(failing, key=lambda i: (-maxima[i], i))[:limit]


# -- the method ---------------------------------------------------------------------------------------------
class NEB:
    """Nudged elastic band with AutoNEB pivot insertion as a registered path method (see the module docstring)."""

    name: ClassVar[str] = "neb"
    summary: ClassVar[str] = "nudged elastic band with AutoNEB pivot insertion (Draxler et al. 2018)"
    trains: ClassVar[bool] = True
    Config: ClassVar[type] = NEBConfig
    State: ClassVar[type] = NEBState

    def run(self, start: Path, energy: Energy, *, threshold: float, config: NEBConfig,
            objective: Objective | None, state: NEBState | None = None, checkpoint: Checkpoint | None = None,
            progress: Progress | None = None) -> tuple[Path, Outcome]:
        if objective is None:
            raise ConfigError("neb trains its images and needs an objective (the training loss)")
        return _AutoNEB(start, energy, threshold, config, objective, state, checkpoint, progress).run()


class _AutoNEB:
    """One run: the band (the path's beads), its state and the cycle loop."""

    def __init__(self, path: Path, energy: Energy, threshold: float, config: NEBConfig, objective: Objective,
                 state: NEBState | None, checkpoint: Checkpoint | None, progress: Progress | None) -> None:
        if any(not isinstance(p, Straight) for p in path.pieces):
            raise ConfigError("neb works on bands of straight segments; the start path has curves")
        self.path, self.energy, self.threshold, self.config = path, energy, float(threshold), config
        self.objective, self.checkpoint = objective, checkpoint
        self.progress = progress
        self.say: Callable[[str], None] = progress or (lambda line: None)
        self.band = Band(path.beads[0])
        self.state = state = state if state is not None else NEBState()
        if not state.initialized:
            self.lay_out()
        if state.image_births is None:
            state.image_births = [0] * len(self.path.beads)
        if len(state.image_births) != len(self.path.beads):
            raise ConfigError("the NEB state does not match the path: resume with the state saved with this path")
        self.clock, self.elapsed0 = time.perf_counter(), state.elapsed_s
        self.evaluations0 = energy.n_evaluations

    # -- bookkeeping --------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.clock

    def sync(self) -> None:
        """Fold this session's clock and energy evaluations into the state."""
        self.state.elapsed_s = self.elapsed()
        self.state.energy_evaluations += self.energy.n_evaluations - self.evaluations0
        self.evaluations0 = self.energy.n_evaluations

    def lay_out(self) -> None:
        """The initial band: ``n_images`` evenly spaced on the straight segment (plus seeded noise), unless the
        start path already holds inner beads."""
        path, config = self.path, self.config
        if path.n_beads == 0 and config.n_images > 0:
            a, b = path.beads
            n = config.n_images
            generator = torch.Generator().manual_seed(derive_seed(config.seed, "init"))
            spacing = math.sqrt(sum(float(torch.sum((b[k].double() - a[k].double()) ** 2)) for k in self.band.keys))
            spacing /= n + 1
            images = []
            for j in range(1, n + 1):
                image = interpolate(a, b, j / (n + 1))
                if config.init_noise > 0:
                    noise = torch.randn(sum(self.band.sizes), generator=generator, dtype=torch.float64)
                    noise *= config.init_noise * spacing / float(torch.linalg.vector_norm(noise))
                    row = self.band.flat([image])[0].double() + noise
                    image = self.band.point(row, image)
                images.append(image)
            self.path = Path([a, *images, b], metadata=path.metadata)
        self.state.initialized = True

    # -- the pieces of a cycle ----------------------------------------------------------------------------
    def evaluate(self) -> list[tuple[Tensor, Tensor]]:
        """Grid profiles of every segment; records their maxima in the state."""
        tick = time.perf_counter()
        ts = torch.linspace(0.0, 1.0, self.config.grid_size, dtype=torch.float64)
        profiles = [(ts, self.path.energies(i, ts, self.energy)) for i in range(self.path.n_pieces)]
        self.state.segment_max_energy = [float(v.max()) for _, v in profiles]
        self.state.segment_evaluation_s += time.perf_counter() - tick
        return profiles

    def relax(self) -> dict[str, Any]:
        """``steps_per_cycle`` NEB steps on every inner image together; writes the images back to the path."""
        path, config, state, band = self.path, self.config, self.state, self.band
        n = path.n_beads
        if n == 0:
            return {"steps": 0, "images": 0, "diverged": False}
        tick = time.perf_counter()
        rows = band.flat(path.beads)
        inner = rows[1:-1].clone().requires_grad_(True)
        buffers = [{k: v.clone() for k, v in b.items() if is_buffer_key(k)} for b in path.beads]
        if not any(buffers):
            buffers = None
        optimizer = make_optimizer([inner], config.train_config())
        batches = Minibatches(self.objective, inner, config.batch_size, derive_seed(config.seed, "cycle", state.cycle))
        used: set[str] = set()
        climbed: list[int] = []
        values = torch.full((n + 2,), float("nan"), dtype=torch.float64)
        last_force = torch.zeros(())
        diverged, taken = False, 0
        bar = open_task(self.progress, f"cycle {state.cycle}: NEB steps on {n} image(s)", total=config.steps_per_cycle)
        for _ in range(config.steps_per_cycle):
            x, y = batches.next()
            values, grads, use = band_gradients(rows, inner, band=band, energy=self.energy, objective=self.objective,
                                                inputs=x, targets=y, batching=config.batching, buffers=buffers)
            used.add(use.value)
            if not bool(torch.isfinite(values).all() and torch.isfinite(grads).all()):
                diverged = True
                break
            climbing = config.climbing and state.steps >= config.climb_after
            with torch.no_grad():
                current = torch.cat([rows[:1], inner.detach(), rows[-1:]])
                force, _, top = neb_force(current, values, grads, spring=config.spring, tangent=config.tangent,
                                          climbing=climbing)
            if top is not None and (not climbed or climbed[-1] != top + 1):
                climbed.append(top + 1)
            inner.grad = -force
            optimizer.step()
            state.steps += 1
            state.image_steps += n
            taken += 1
            last_force = force
            if taken % BAR_EVERY == 0 or taken == config.steps_per_cycle:
                bar.update(taken, info=f"highest image loss {float(values[1:-1].max()):.4g} (minibatch)")
        bar.close()
        with torch.no_grad():
            for i in range(1, n + 1):  # BatchNorm statistics a point carries were updated by the training forwards
                like = path.beads[i] if buffers is None else path.beads[i] | buffers[i]
                path.beads[i] = band.point(inner[i - 1], like)
        state.bead_training_s += time.perf_counter() - tick
        for kind in sorted(used):
            if kind not in state.batchings:
                state.batchings = sorted([*state.batchings, kind])
        force_norms = torch.linalg.vector_norm(last_force.double(), dim=-1) if last_force.ndim else last_force
        return {"steps": taken, "images": n, "batching": sorted(used),
                "max_force": float(force_norms.max()) if force_norms.numel() else 0.0,
                "max_image_loss": float(values[1:-1].max()), "climbing_images": climbed, "diverged": diverged}

    def insert(self, profiles: list[tuple[Tensor, Tensor]], level: float) -> int:
        """Pivots on the segments above ``level`` (highest first, within the budgets); returns how many."""
        path, config, state = self.path, self.config, self.state
        room = min(config.max_insert_per_cycle, config.max_images - path.n_beads)
        chosen = choose_pivots(state.segment_max_energy, level, room)
        for i in sorted(chosen, reverse=True):  # right to left: indices to the left stay valid
            ts, values = profiles[i]
            t_star = choose_tstar(ts, values, config, self.threshold)
            pivot = interpolate(path.beads[i], path.beads[i + 1], t_star)
            path.insert_bead(i, pivot)
            state.image_births.insert(i + 1, state.cycle)
            state.pivot_log.append({"cycle": state.cycle - 1, "segment": i, "t": t_star,
                                    "barrier": state.segment_max_energy[i]})
            state.segment_max_energy[i : i + 1] = [float("nan"), float("nan")]
        return len(chosen)

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> tuple[Path, Outcome]:
        state, config = self.state, self.config
        if state.finished and state.outcome is not None:
            return self.path, Outcome.from_dict(state.outcome)
        level = config.tolerance * self.threshold
        reason: NEBReason | None = None
        profiles = None
        if state.cycle == 0:  # the initial band may already pass: no NEB step needed
            profiles = self.evaluate()
            if not any(not m <= level for m in state.segment_max_energy):
                reason = NEBReason.CONNECTED
        bar = open_task(self.progress, "neb: AutoNEB cycles", total=config.max_cycles)
        bar.update(state.cycle)
        while reason is None:
            entry: dict[str, Any] = {"cycle": state.cycle, **self.relax()}
            if entry["steps"] or profiles is None:  # a band without inner images did not move
                profiles = self.evaluate()
            maxima = state.segment_max_energy
            worst = max(range(len(maxima)), key=lambda j: (maxima[j], -j))
            failing = [i for i, m in enumerate(maxima) if not m <= level]
            entry.update({"max_barrier": maxima[worst], "worst_segment": worst, "failing": failing, "inserted": 0})
            state.cycle += 1
            if entry["diverged"]:
                reason = NEBReason.DIVERGED
            elif not failing:
                reason = NEBReason.CONNECTED
            elif state.cycle >= config.max_cycles:
                reason = NEBReason.CYCLES_EXHAUSTED
            elif config.max_time_s is not None and self.elapsed() >= config.max_time_s:
                reason = NEBReason.TIME_EXHAUSTED
            elif self.path.n_beads >= config.max_images:
                reason = NEBReason.IMAGE_BUDGET_EXHAUSTED
            else:
                entry["inserted"] = self.insert(profiles, level)
                profiles = None
            state.cycle_log.append(entry)
            bar.update(state.cycle, info=f"max barrier {entry['max_barrier']:.4g} (target {level:.4g})")
            self.say(f"cycle {entry['cycle']}: {entry['steps']} NEB steps on {entry['images']} image(s); max barrier "
                     f"{entry['max_barrier']:.4g} on segment {worst} (tolerance x L0 = {level:.4g}); "
                     f"{len(failing)} segment(s) above; {entry['inserted']} pivot(s) inserted")
            if reason is None:
                self.sync()
                if self.checkpoint is not None:
                    self.checkpoint(self.path, state)
        bar.close()
        return self.finish(reason, level)

    def finish(self, reason: NEBReason, level: float) -> tuple[Path, Outcome]:
        state, config, path = self.state, self.config, self.path
        maxima = state.segment_max_energy
        worst = max(range(len(maxima)), key=lambda j: (maxima[j], -j))
        barrier = maxima[worst]
        where = (f"segment {worst} has grid maximum {barrier:.4g} > tolerance x L0 = {level:.4g} "
                 f"(L0 {self.threshold:.4g}, tolerance {config.tolerance:g})")
        message = {
            NEBReason.CONNECTED: f"every segment's grid maximum is <= tolerance x L0 = {level:.4g} "
                                 f"(worst {barrier:.4g} on segment {worst}) after {state.cycle} cycle(s)",
            NEBReason.CYCLES_EXHAUSTED: f"{where} after {state.cycle} cycles (max_cycles={config.max_cycles})",
            NEBReason.IMAGE_BUDGET_EXHAUSTED: f"{where}; the band already has {path.n_beads} inner images "
                                              f"(max_images={config.max_images})",
            NEBReason.TIME_EXHAUSTED: f"{where}; the time budget max_time_s={config.max_time_s:g} is spent"
                                      if config.max_time_s is not None else where,
            NEBReason.DIVERGED: f"{where}; an image's training loss became non-finite in cycle {state.cycle - 1}: "
                                f"lower lr (now {config.lr:g}) or spring (now {config.spring:g})",
        }[reason]
        self.sync()
        per_point = sum(self.band.sizes)
        outcome = Outcome(
            connected=reason is NEBReason.CONNECTED, reason=reason.value, message=message, worst_barrier=barrier,
            worst_segment=worst, elapsed_s=state.elapsed_s,
            extras={"images": path.n_beads, "trained_parameters": path.n_beads * per_point,
                    "parameters_per_image": per_point, "neb_steps": state.steps, "image_steps": state.image_steps,
                    "energy_evaluations": state.energy_evaluations, "cycles": state.cycle,
                    "cycle_max_barrier": [e["max_barrier"] for e in state.cycle_log],
                    "pivots_inserted": len(state.pivot_log), "pivot_log": state.pivot_log,
                    "cycle_log": state.cycle_log, "image_births": state.image_births, "grid_size": config.grid_size,
                    "segment_max_energy": maxima, "max_interpolated_energy": barrier, "batching": state.batchings,
                    "bead_training_time_s": state.bead_training_s,
                    "segment_evaluation_time_s": state.segment_evaluation_s})
        state.finished, state.outcome = True, outcome.to_dict()
        if self.checkpoint is not None:
            self.checkpoint(path, state)
        return path, outcome

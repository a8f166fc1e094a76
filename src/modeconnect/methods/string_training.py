"""Training many points of a string at once: one optimizer on their stacked parameters, batched losses.

Used by string evolution (every bead of a round) and NEB (every image of the band). Each point follows the
trajectory it would follow alone under ``train_to_target`` (the optimizers' updates are elementwise and all
points see the same minibatches); ``batching`` chooses one vmapped forward for all points or one per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from enum import Enum

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from ..batchnorm import is_buffer_key
from ..energy import Energy, Strategy
from ..metrics import metric_count, metric_sum
from ..params import Point, stack_points
from ..train import (
    STALL_PROGRESS,
    Minibatches,
    Objective,
    StopReason,
    TrainConfig,
    TrainStatus,
    check_steps,
    make_optimizer,
)

__all__ = ["Batching", "VMAP_MIN_BEADS", "can_vmap", "prefers_loop", "train_string"]

VMAP_MIN_BEADS = 3
"""AUTO batching uses vmap from this many beads on. Measured on the cubic task's 1-4-4-1 MLP (256 samples, one
thread, ms per training step, vmap vs loop): 1 bead 1.9 vs 1.4, 2 beads 2.0 vs 1.9, 3 beads 2.0 vs 2.4,
4 beads 2.1 vs 3.3, 8 beads 2.8 vs 5.7, 16 beads 2.4 vs 8.7 (benchmarks/methods.py has the method-level numbers)."""



class Batching(str, Enum):
    """How the beads of a round are pushed through the model."""

    AUTO = "auto"
    """VMAP when the model allows it (no buffers or BatchNorm, and vmap runs), at least VMAP_MIN_BEADS beads train
    and the energy does not pin the loop strategy (the real tasks do), else LOOP."""
    VMAP = "vmap"
    """One torch.func.vmap'ed functional_call over the stacked parameters of all beads per step (LOOP where the
    model carries buffers or BatchNorm: the result records the batching used)."""
    LOOP = "loop"
    """One forward per bead per step (same optimizer step on the stacked parameters)."""



def can_vmap(energy: Energy, beads: Sequence[Mapping[str, Tensor]]) -> bool:
    """Whether the beads' losses may be vmapped: no BatchNorm and no buffers carried by the points."""
    return not energy.has_batchnorm and not any(is_buffer_key(k) for k in beads[0])


def prefers_loop(energy: Energy) -> bool:
    """Whether the energy pins the loop strategy: the real tasks do, where vmap measured slower (0.34x on the
    MNIST convnet, benchmarks/real_models.py), and AUTO batching follows that choice."""
    return getattr(energy, "strategy", None) is Strategy.LOOP


def train_string(beads: Sequence[Mapping[str, Tensor]], *, energy: Energy, objective: Objective, target: float,
                 config: TrainConfig, seed: int, batching: Batching = Batching.AUTO,
                 on_check: Callable[[int, float], None] | None = None,
                 ) -> tuple[list[Point], list[TrainStatus], Batching]:
    """Train every bead towards ``energy <= target`` at once; returns the beads, their statuses and the batching used.

    One optimizer acts on the stacked parameters; all its updates are elementwise, so each bead follows exactly
    the trajectory it would follow alone (same minibatches, drawn from ``seed``). A bead stops as
    ``train_to_target`` would stop it (reached, diverged, zero gradient, stalled, step cap) and is then held
    fixed while the others go on. VMAP computes all losses in one vmapped forward; LOOP one forward per bead.
    ``on_check(step, energy)`` is called at every check with the highest bead energy (progress displays; it
    only reads the numbers).
    """
    use = batching
    if not can_vmap(energy, beads) or (use is Batching.AUTO and (len(beads) < VMAP_MIN_BEADS
                                                                 or prefers_loop(energy))):
        use = Batching.LOOP
    elif use is Batching.AUTO:
        use = Batching.VMAP
    n = len(beads)
    keys = [k for k in beads[0] if not is_buffer_key(k)]
    params = {k: torch.stack([b[k].detach() for b in beads]).clone().requires_grad_(True) for k in keys}
    buffers = [{k: b[k].detach().clone() for k in b if is_buffer_key(k)} for b in beads]
    origin = {k: v.detach().clone() for k, v in params.items()}
    optimizer = make_optimizer(list(params.values()), config)
    batches = Minibatches(objective, params[keys[0]], config.batch_size, seed)
    model, loss_kind = energy.model, objective.loss

    def one_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return metric_sum(loss_kind, functional_call(model, p, (x,)), y) / metric_count(loss_kind, y)

    def losses(x: Tensor, y: Tensor) -> Tensor:
        nonlocal use
        if use is Batching.VMAP:
            try:
                return vmap(one_loss, in_dims=(0, None, None))(params, x, y)
            except RuntimeError:  # an op without a batching rule: fall back for the rest of the round
                if batching is Batching.VMAP:
                    raise
                use = Batching.LOOP
        return torch.stack([metric_sum(loss_kind, energy.train_forward({k: v[i] for k, v in params.items()}
                                                                        | buffers[i], x), y)
                            / metric_count(loss_kind, y) for i in range(n)])

    def check() -> list[float]:
        with torch.no_grad():
            stacked = {k: v.detach() for k, v in params.items()}
            if buffers[0]:
                stacked |= stack_points(buffers)
            return [float(e) for e in energy.evaluate(stacked)]

    values = check()
    if on_check is not None:
        on_check(0, max(values))
    done: list[StopReason | None] = [None] * n
    steps, zero_run = [0] * n, torch.zeros(n, dtype=torch.long)
    best, best_step = list(values), [0] * n
    frozen = torch.zeros(n, dtype=torch.bool)
    held = {k: v.detach().clone() for k, v in params.items()}  # rows of frozen beads: where they stopped

    def freeze(i: int, reason: StopReason) -> None:
        done[i], steps[i], frozen[i] = reason, step, True
        for k, v in params.items():
            held[k][i] = v.detach()[i]

    schedule, step = iter(check_steps(config)), 0
    while True:
        for i in range(n):
            if done[i] is None and (why := _stop(values[i], target, best, best_step, i, step, config)) is not None:
                freeze(i, why)
        if bool(frozen.all()):
            break
        until, any_frozen = next(schedule), bool(frozen.any())
        while step < until:
            x, y = batches.next()
            optimizer.zero_grad(set_to_none=True)
            loss = losses(x, y).sum()
            if config.proximal:
                loss = loss + 0.5 * config.proximal * sum(((p - origin[k]) ** 2).sum() for k, p in params.items())
            loss.backward()
            moving = torch.stack([p.grad.reshape(n, -1).ne(0).any(1) for p in params.values()]).any(0)
            zero_run = torch.where(moving, 0, zero_run + 1)
            optimizer.step()
            step += 1
            if any_frozen:
                with torch.no_grad():
                    for k, p in params.items():
                        p[frozen] = held[k][frozen]
            stopped = (zero_run >= batches.per_epoch) & ~frozen
            if bool(stopped.any()):  # as train_to_target: a whole epoch of zero gradients stops a bead at once
                for i in stopped.nonzero().flatten().tolist():
                    freeze(i, StopReason.ZERO_GRADIENT)
                any_frozen = True
                if bool(frozen.all()):
                    break
        values = check()
        if on_check is not None:
            on_check(step, max(values))
    out = [{k: (buffers[i][k] if is_buffer_key(k) else params[k][i].detach().clone()) for k in beads[0]}
           for i in range(n)]
    statuses = [TrainStatus(reached=d is StopReason.REACHED, steps=s, final_energy=v, target=target, reason=d.value)
                for d, s, v in zip(done, steps, values)]
    return out, statuses, use


def _stop(value: float, target: float, best: list[float], best_step: list[int], i: int, step: int,
          config: TrainConfig) -> StopReason | None:
    """train_to_target's stopping rules at a check, for bead ``i`` (updates its best energy)."""
    if value <= target:
        return StopReason.REACHED
    if not math.isfinite(value):
        return StopReason.DIVERGED
    if value < best[i] - STALL_PROGRESS * (best[i] - target):
        best[i], best_step[i] = value, step
    elif config.stall_steps and step - best_step[i] >= config.stall_steps:
        return StopReason.STALLED
    if step >= config.max_steps:
        return StopReason.STEP_CAP
    return None

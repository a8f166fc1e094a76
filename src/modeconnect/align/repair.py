"""REPAIR (Jordan et al. 2023): renormalise an interpolated network so its units keep the endpoints' statistics.

Averaging two aligned networks shrinks the spread of hidden activations ("variance collapse"): the
midpoint's units are averages of units that are only partly correlated, so their standard deviation
falls, layer after layer, and the loss barrier on the segment is as much this collapse as a real barrier.
REPAIR undoes it. For every *site* (a hidden layer's last per-unit affine map: the ``Linear``/``Conv``
itself, or the affine BatchNorm/LayerNorm right after it) and each of its units ``c``:

* measure on a data batch the mean and standard deviation of the unit's output at A (``mu_a, sd_a``), at
  B (``mu_b, sd_b``) and at the interpolated point (``mu, sd``; after the earlier sites were repaired);
* rescale the output to ``(y - mu) * sd_t / sd + mu_t`` with the targets ``mu_t = (1 - t) mu_a + t mu_b``
  and ``sd_t = (1 - t) sd_a + t sd_b``.

The rescaling is affine per unit, so it is folded into the site's weight (times ``sd_t / sd``) and bias
(``(b - mu) sd_t / sd + mu_t``): the result is an ordinary point with the same keys, which any
:class:`~modeconnect.energy.Energy` evaluates as it is. A site without a bias can only be rescaled (its
mean follows the scale); a unit constant on the batch (``sd == 0``) is only shifted.

REPAIR *changes the model* at interpolated points: it is an option for evaluating them (a REPAIR-ed
segment is a different path from the straight one), and only meaningful when B was first aligned to A so
that unit ``c`` means the same thing in both. Models with BatchNorm must carry their statistics in the
points (``batchnorm='interpolate'``); under ``recompute`` the statistics reset is itself the BatchNorm
form of REPAIR and this function is not needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..params import check_compatible, interpolate
from ._forward import channel_rows, forward_watching, private_copy
from .infer import default_repair_sites

__all__ = ["Repair", "repair"]


class Repair:
    """REPAIR for the segment between ``point_a`` and ``point_b`` of ``model``, statistics from ``inputs``.

    The endpoints' statistics are measured once here; each call then costs one forward pass. ``sites``
    defaults to :func:`~modeconnect.align.infer.default_repair_sites` (``nn.Sequential`` chains); other
    models must name them (module names whose outputs carry units on axis 1 and that own ``weight`` and
    optionally ``bias`` of shape ``[n, ...]``).

    ``repair(t)`` gives the repaired point at ``(1 - t) a + t b``; at ``t = 0`` and ``t = 1`` exactly the
    endpoints (nothing to repair there, and paths keep their ends bit for bit).
    """

    def __init__(self, model: nn.Module, point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor],
                 inputs: Tensor, *, sites: Sequence[str] | None = None, eps: float = 1e-12) -> None:
        check_compatible(point_a, point_b, "point A", "point B")
        self.sites = list(default_repair_sites(model) if sites is None else sites)
        if not self.sites:
            raise ConfigError("REPAIR found no hidden layer to rescale (sites=[])")
        self.model = private_copy(model)
        modules = dict(self.model.named_modules())
        for s in self.sites:
            weight = getattr(modules.get(s), "weight", None)
            if not isinstance(weight, Tensor) or f"{s}.weight" not in point_a:
                raise ConfigError(f"REPAIR site {s!r} must be a module of the model with a weight in the point "
                                  "(a Linear/Conv, or an affine BatchNorm/LayerNorm)")
        self.point_a, self.point_b = dict(point_a), dict(point_b)
        self.inputs, self.eps = inputs, eps
        self.stats_a = self._statistics(self.point_a)
        self.stats_b = self._statistics(self.point_b)

    def _size(self, site: str) -> int:
        return self.point_a[f"{site}.weight"].shape[0]

    def _statistics(self, point: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}

        def watch(name: str, y: Tensor) -> None:
            rows = channel_rows(y, self._size(name), name).double()
            out[name] = (rows.mean(1), rows.std(1, unbiased=False))

        forward_watching(self.model, point, self.inputs, self.sites, watch, allow_batch_statistics=False,
                         purpose="REPAIR")
        return out

    def __call__(self, t: float) -> dict[str, Tensor]:
        """The repaired point at ``(1 - t) a + t b``."""
        t = float(t)
        if t == 0.0 or t == 1.0:
            return {k: v.clone() for k, v in (self.point_a if t == 0.0 else self.point_b).items()}
        return self.repair(interpolate(self.point_a, self.point_b, t), t)

    def repair(self, point: Mapping[str, Tensor], t: float) -> dict[str, Tensor]:
        """``point`` (meant to lie at ``t`` on the segment) with every site's units renormalised to the targets."""
        check_compatible(self.point_a, point, "point A", "the point to repair")
        folds: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

        def watch(name: str, y: Tensor) -> Tensor:
            n = self._size(name)
            rows = channel_rows(y, n, name).double()
            mean, sd = rows.mean(1), rows.std(1, unbiased=False)
            (mean_a, sd_a), (mean_b, sd_b) = self.stats_a[name], self.stats_b[name]
            target_mean, target_sd = torch.lerp(mean_a, mean_b, t), torch.lerp(sd_a, sd_b, t)
            scale = torch.where(sd > self.eps, target_sd / sd.clamp_min(self.eps), torch.ones_like(sd))
            has_bias = f"{name}.bias" in point
            shift = (target_mean - mean * scale) if has_bias else torch.zeros_like(mean)
            folds[name] = (scale, mean, target_mean)
            shape = (1, n) + (1,) * (y.ndim - 2)
            return y * scale.to(y.dtype).view(shape) + shift.to(y.dtype).view(shape)

        forward_watching(self.model, point, self.inputs, self.sites, watch, allow_batch_statistics=False,
                         purpose="REPAIR")
        out = {k: v.clone() for k, v in point.items()}
        for name, (scale, mean, target_mean) in folds.items():
            w = out[f"{name}.weight"]
            out[f"{name}.weight"] = (w.double() * scale.view((-1,) + (1,) * (w.ndim - 1))).to(w.dtype)
            if f"{name}.bias" in out:
                b = out[f"{name}.bias"]
                out[f"{name}.bias"] = ((b.double() - mean) * scale + target_mean).to(b.dtype)
        return out


def repair(point_a: Mapping[str, Tensor], point_b: Mapping[str, Tensor], t: float, model: nn.Module,
           inputs: Tensor, *, sites: Sequence[str] | None = None) -> dict[str, Tensor]:
    """One-shot :class:`Repair`: the REPAIR-ed point at ``(1 - t) a + t b`` (use the class for many ``t``)."""
    return Repair(model, point_a, point_b, inputs, sites=sites)(t)

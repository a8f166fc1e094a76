"""Unit tests for modeconnect.certify on 1-D problems with an analytic energy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect.certify import Certificate, certify, certify_segment
from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.path import Path

# A sharp peak of height 1 at w = C, half-width S: narrower than the initial grid spacing (1/64 in t)
# and exactly half way between two grid points of the 65-point grid on the segment w: 0 -> 1.
C = 10.5 / 64
S = 0.01
LIPSCHITZ_W = 3 * math.sqrt(3) / (8 * S)  # max |f'(w)| of f(w) = 1 / (1 + ((w - C) / S)^2)


def _peak(w: float) -> float:
    return 1.0 / (1.0 + ((w - C) / S) ** 2)


class Peak(nn.Module):
    """One scalar parameter ``w``; output ``x * f(w)``, so the MAE against 0 on x = 1 is ``f(w)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1.0 + ((self.w - C) / S) ** 2)


def _energy(strategy: str = "vmap") -> Energy:
    x = torch.ones(1, 1, dtype=torch.float64)
    return Energy(Peak(), x, torch.zeros(1, 1, dtype=torch.float64), "mae", strategy=strategy)


def _w(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(value, dtype=torch.float64)}


def test_energy_is_the_analytic_function():
    energy = _energy()
    for w in (0.0, C, C + 0.003, 0.9):
        assert energy(_w(w)) == pytest.approx(_peak(w), rel=1e-14)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_certified_max_is_within_resolution_bound_of_true_max(strategy):
    energy = _energy(strategy)
    a, b = _w(0.0), _w(1.0)
    coarse = float(energy.along_segment(a, b, torch.linspace(0, 1, 65, dtype=torch.float64)).max())
    true_max = 1.0
    assert true_max - coarse > 0.3  # the initial grid alone misses the peak badly

    cert = certify(Path([a, b]), energy, resolution=1e-3)
    assert isinstance(cert, Certificate)
    assert cert.resolution <= 1e-3
    assert cert.max_energy >= coarse
    assert cert.max_energy <= true_max + 1e-12  # samples of f never exceed its maximum
    # Lipschitz bound: the true peak lies within the reported spacing of the best sample
    assert true_max - cert.max_energy <= LIPSCHITZ_W * cert.resolution
    assert abs(cert.t - C) <= cert.resolution
    assert cert.segment == 0
    assert cert.segment_max == [cert.max_energy]
    assert cert.param_resolution == pytest.approx(cert.resolution, rel=1e-12)  # segment length is 1
    assert 65 < cert.n_evaluations <= 4000


def test_finer_resolution_gets_closer():
    energy = _energy()
    path = Path([_w(0.0), _w(1.0)])
    rough = certify(path, energy, resolution=1e-2)
    fine = certify(path, energy, resolution=1e-6)
    assert fine.resolution <= 1e-6 < rough.resolution <= 1e-2
    assert 1.0 - fine.max_energy <= LIPSCHITZ_W * fine.resolution
    assert fine.max_energy >= rough.max_energy
    assert 1.0 - fine.max_energy < 1e-8


def test_param_resolution_scales_with_segment_length():
    energy = _energy()
    # w from -0.5 to 1.5: parameter length 2, the peak at t = (C + 0.5) / 2
    cert = certify(Path([_w(-0.5), _w(1.5)]), energy, resolution=1e-3)
    assert cert.resolution <= 1e-3
    assert cert.param_resolution == pytest.approx(2 * cert.resolution, rel=1e-12)
    assert 1.0 - cert.max_energy <= LIPSCHITZ_W * cert.param_resolution
    assert abs(cert.t - (C + 0.5) / 2) <= cert.resolution


def test_multi_segment_path_reports_the_right_segment():
    energy = _energy()
    # segment 0: w from -1 to 0 (increasing towards the peak, max at its right end)
    # segment 1: w from 0 to 1 (contains the peak)
    cert = certify(Path([_w(-1.0), _w(0.0), _w(1.0)]), energy, resolution=1e-3)
    assert cert.segment == 1
    assert len(cert.segment_max) == 2
    assert cert.segment_max[0] == pytest.approx(_peak(0.0), rel=1e-14)
    assert cert.segment_max[1] == cert.max_energy
    assert 1.0 - cert.max_energy <= LIPSCHITZ_W * cert.resolution
    assert abs(cert.t - C) <= cert.resolution


def test_max_evaluations_cap_reports_honest_resolution():
    energy = _energy()
    a, b = _w(0.0), _w(1.0)
    full = certify(Path([a, b]), energy, resolution=1e-3)
    capped = certify(Path([a, b]), energy, resolution=1e-3, max_evaluations=70)
    assert capped.n_evaluations <= 70  # a cap, not a hint
    assert capped.resolution > 1e-3  # the target was not reached, and the certificate says so
    assert capped.resolution > full.resolution
    assert capped.max_energy <= full.max_energy
    # the stated bound still holds with the (larger) reported resolution
    assert 1.0 - capped.max_energy <= LIPSCHITZ_W * capped.resolution
    # every capped budget up to a full refinement respects the cap and the bound
    for cap in (65, 66, 73, 80, 90, 120):
        m, t, achieved, n = certify_segment(a, b, energy, resolution=1e-3, max_evaluations=cap)
        assert n <= cap
        assert 1.0 - m <= LIPSCHITZ_W * achieved


def test_no_refinement_budget_gives_the_grid():
    energy = _energy()
    a, b = _w(0.0), _w(1.0)
    m, t, achieved, n = certify_segment(a, b, energy, resolution=1e-3, initial_grid=65, max_evaluations=65)
    ts = np.linspace(0, 1, 65)
    grid = [_peak(x) for x in ts]
    assert n == 65
    assert achieved == pytest.approx(1 / 64, rel=1e-12)
    assert m == pytest.approx(max(grid), rel=1e-14)


def test_monotone_segment_max_at_endpoint():
    net = nn.Linear(1, 1, bias=False).double()
    x = torch.ones(4, 1, dtype=torch.float64)
    energy = Energy(net, x, torch.zeros(4, 1, dtype=torch.float64), "mae", strategy="loop")
    path = Path([{"weight": torch.tensor([[-1.0]], dtype=torch.float64)},
                 {"weight": torch.tensor([[3.0]], dtype=torch.float64)}])
    cert = certify(path, energy, resolution=1e-3)
    assert cert.max_energy == 3.0
    assert cert.t == 1.0
    assert cert.resolution <= 1e-3
    assert cert.param_resolution == pytest.approx(4 * cert.resolution, rel=1e-12)


def test_to_dict_has_all_fields():
    cert = certify(Path([_w(0.0), _w(1.0)]), _energy(), resolution=1e-2)
    d = cert.to_dict()
    assert d["max_energy"] == cert.max_energy
    assert set(d) == {"max_energy", "segment", "t", "resolution", "param_resolution", "segment_max", "n_evaluations"}


@pytest.mark.parametrize("resolution", [0.0, 1.0, -1e-3, 1.5, math.nan])
def test_invalid_resolution_raises(resolution):
    with pytest.raises(ConfigError, match="resolution must be in"):
        certify(Path([_w(0.0), _w(1.0)]), _energy(), resolution=resolution)


@pytest.mark.parametrize("kwargs", [{"initial_grid": 2}, {"refine_points": 0}, {"max_evaluations": 10}])
def test_invalid_budget_settings_raise(kwargs):
    with pytest.raises(ConfigError, match="initial_grid >= 3"):
        certify(Path([_w(0.0), _w(1.0)]), _energy(), **kwargs)

"""Unit tests for modeconnect.certify: synthetic profiles checked against slow obvious references, and 1-D
problems with an analytic energy through the Path/Energy interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect.certify import Certificate, CertifyConfig, certify, certify_segment
from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.path import Path

# --------------------------------------------------------------------------------------------------
# Synthetic profiles: ``evaluate`` callables that record every position asked for.


class Probe:
    """``evaluate`` for a vectorised profile ``f``; keeps every call so tests can inspect the samples."""

    def __init__(self, f) -> None:
        self.f, self.calls = f, []

    def __call__(self, ts: np.ndarray) -> np.ndarray:
        assert ts.dtype == np.float64 and ts.ndim == 1 and np.all(np.diff(ts) > 0), "sorted float64 positions"
        self.calls.append(ts.copy())
        return np.asarray(self.f(ts), dtype=np.float64)

    @property
    def ts(self) -> np.ndarray:
        return np.sort(np.concatenate(self.calls))


def run(f, **settings):
    probe = Probe(f)
    m, t, achieved, n = certify_segment(probe, CertifyConfig(**settings))
    ts = probe.ts
    assert n == len(ts) and len(np.unique(ts)) == n, "n counts every evaluation, and none is repeated"
    return m, t, achieved, n, probe


def lorentzians(peaks):
    """Sum of bumps ``a / (1 + ((t - c) / s)^2)`` and its Lipschitz constant (3 sqrt 3 / 8 * a / s per bump)."""

    def f(t):
        return sum(a / (1.0 + ((t - c) / s) ** 2) for a, c, s in peaks)

    return f, sum(3 * math.sqrt(3) / 8 * a / s for a, c, s in peaks)


# A staircase like test error on a few hundred images: flat steps, two of them local maxima (levels 5 and
# 4); the steps at levels 1, 3 and 2 are shoulders (lower on one side, higher on the other).
EDGES = [0.1, 0.25, 0.4037, 0.6219, 0.8, 0.9]
LEVELS = [0.0, 1.0, 3.0, 5.0, 2.0, 4.0, 0.0]


def staircase(t):
    return np.asarray(LEVELS)[np.searchsorted(EDGES, t, side="right")]


def gaps_in(ts, lo, hi):
    """Spacing of the samples within ``[lo, hi]``, plus the gaps that cross either end."""
    i, j = np.searchsorted(ts, lo) - 1, np.searchsorted(ts, hi)
    return np.diff(ts[max(i, 0): j + 1])


# --------------------------------------------------------------------------------------------------
# Plateaus


@pytest.mark.parametrize("resolution", [1e-2, 1e-3, 1e-4])
def test_staircase_max_found_exactly_and_plateau_maxima_resolved(resolution):
    m, t, achieved, n, probe = run(staircase, resolution=resolution, max_evaluations=10_000)
    ts = probe.ts
    assert m == 5.0
    assert EDGES[2] <= t <= EDGES[2] + resolution  # the left end of the top step, located to the resolution
    assert resolution / 2 < achieved <= resolution
    # both plateau maxima, interiors and edges included, are sampled at the resolution ...
    for lo, hi in ((EDGES[2], EDGES[3]), (EDGES[4], EDGES[5])):
        assert gaps_in(ts, lo, hi).max() <= resolution * (1 + 1e-9)
    # ... but shoulders are not maxima: inside them only the first grid's points are evaluated
    for lo, hi in ((EDGES[0], EDGES[1]), (EDGES[1], EDGES[2]), (EDGES[3], EDGES[4])):
        inside = ts[(ts > lo + 1 / 64) & (ts < hi - 1 / 64)]  # edge refinement stays within 1/64 of an edge
        assert np.allclose(inside * 64, np.round(inside * 64), atol=1e-9)
    # evaluations: the first grid, the two plateau maxima at spacing > resolution / 2, and log2 bisections
    # per edge (the old >= rule refined every sample of every step: 529 evaluations at 1e-2, its 4,000 cap at 1e-3)
    plateau_width = (EDGES[3] - EDGES[2]) + (EDGES[5] - EDGES[4])
    bisections = 4 * math.ceil(math.log2(max(1 / 64 / resolution, 1)))
    assert n <= 65 + plateau_width / (resolution / 2) + bisections + 4


def test_flat_profile_is_one_maximum_sampled_whole():
    m, t, achieved, n, probe = run(lambda t: np.full_like(t, 2.0), resolution=1e-2)
    assert (m, t) == (2.0, 0.0)
    assert n == 129  # every 1/64 gap halved once: the spacing asked, and no more
    assert achieved == pytest.approx(1 / 128)


def test_narrow_spike_inside_a_plateau_is_found():
    # a plateau of level 1 on [0.2, 0.8] hides a spike of height 1, half-width 1.2e-3, between two grid points
    centre, width = 0.5 + 1 / 128, 1.2e-3

    def f(t):
        return np.where((t > 0.2) & (t < 0.8), 1.0, 0.0) + np.clip(1 - np.abs(t - centre) / width, 0, None)

    coarse = f(np.linspace(0, 1, 65)).max()
    assert coarse == 1.0  # the first grid sees only the plateau
    m, t, achieved, n, _ = run(f, resolution=1e-3)
    assert achieved <= 1e-3
    assert m >= 2.0 - achieved / 2 / width  # found, and refined: slope 1 / width, within half a spacing
    assert abs(t - centre) <= achieved


def test_spike_on_a_slope_can_be_missed_and_the_certificate_says_so():
    # The honest limit: away from sampled maxima only the first grid looks; a barrier narrower than its
    # spacing there goes unseen. The certificate is a lower estimate and reports that spacing.
    def f(t):
        return t + 10 * np.clip(1 - np.abs(t - (0.3 + 1 / 128)) / 1e-3, 0, None)

    m, t, achieved, n, _ = run(f, resolution=1e-3)
    assert (m, t) == (1.0, 1.0)  # the spike (height 10) is missed
    assert n == 65 + 4  # the maximum at t = 1 is refined by bisecting its one gap: 1/64 -> 1/1024
    energy = _energy()
    cert = certify(Path([_w(0.0), _w(1.0)]), energy, resolution=1e-3)
    assert cert.grid_spacing == pytest.approx(1 / 64) and "not a proof" in cert.statement


def test_nan_counts_as_infinite_and_ends_refinement():
    m, t, achieved, n, _ = run(lambda t: np.where(t > 0.5, np.nan, t), resolution=1e-3)
    assert m == math.inf and t > 0.5
    assert n == 65  # nothing can be higher than +inf: no evaluation is spent refining it


# --------------------------------------------------------------------------------------------------
# Against a dense uniform grid, and the resolution asked


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("resolution", [3e-2, 1e-2, 1e-3])
def test_no_dense_sample_beats_the_certificate_by_more_than_the_lipschitz_bound(seed, resolution):
    rng = np.random.default_rng(seed)
    # bumps wide enough (s >= 0.01) that the first grid sees each as a local maximum, plus a narrower one
    peaks = [(rng.uniform(0.2, 1.0), rng.uniform(0, 1), rng.uniform(0.01, 0.1)) for _ in range(4)]
    peaks.append((1.2, rng.uniform(0.1, 0.9), 0.006))
    f, lipschitz = lorentzians(peaks)
    m, t, achieved, n, probe = run(f, resolution=resolution)
    dense_ts = np.linspace(0, 1, int(4 / resolution) + 1)  # spacing resolution / 4
    dense = f(dense_ts).max()
    assert achieved <= resolution
    assert m == f(np.array([t]))[0] and m == f(probe.ts).max()
    assert dense <= m + lipschitz * achieved / 2  # the stated guarantee, checked by brute force
    assert m <= dense + lipschitz * resolution / 8  # samples never exceed the function's maximum
    # cheaper than a uniform grid at the resolution, or that grid itself when the resolution is coarse
    assert n < 1 / resolution or n == CertifyConfig(resolution=resolution).grid_points


@pytest.mark.parametrize("resolution", [0.3, 0.05, 1 / 64, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6])
def test_stops_at_the_resolution_asked(resolution):
    f, _ = lorentzians([(1.0, 0.3141, 0.05)])
    m, t, achieved, n, probe = run(f, resolution=resolution)
    grid = CertifyConfig(resolution=resolution).grid_points
    assert grid == min(65, math.ceil(1 / resolution - 1e-9) + 1)
    assert resolution / 2 < achieved <= resolution  # reached, without overshooting (1e-2 used to end at 3.5e-3)
    # bisection: two new points per round, as many rounds as halvings from the grid spacing to the resolution
    rounds = max(0, math.ceil(math.log2((1 / (grid - 1)) / resolution) - 1e-9))
    assert n <= grid + 2 * rounds
    assert len(probe.calls) == 1 + rounds
    assert abs(t - 0.3141) <= achieved


def test_more_refine_points_means_fewer_rounds():
    f, _ = lorentzians([(1.0, 0.3141, 0.05)])
    _, _, bisect, _, one = run(f, resolution=1e-4)
    _, _, quarter, _, three = run(f, resolution=1e-4, refine_points=3)
    assert len(three.calls) < len(one.calls)
    assert 5e-5 < quarter <= 1e-4 and 5e-5 < bisect <= 1e-4


# --------------------------------------------------------------------------------------------------
# Budget


def test_budget_cap_is_respected_and_the_resolution_reported_honestly():
    f, lipschitz = lorentzians([(1.0, 0.3141, 0.01)])
    full = run(f, resolution=1e-4)
    assert full[2] <= 1e-4
    for cap in range(65, full[3] + 3):
        m, t, achieved, n, probe = run(f, resolution=1e-4, max_evaluations=cap)
        assert n <= cap
        ts = probe.ts
        k = int(np.searchsorted(ts, t))
        assert achieved >= max(np.diff(ts[max(k - 1, 0): k + 2]))  # at least the spacing next to the maximum
        assert (achieved > 1e-4) == (n < full[3])  # short of the target exactly when the budget ran short
        assert 1.0 - m <= lipschitz * achieved / 2


def test_budget_goes_to_the_highest_maximum_first():
    # two plateau maxima, levels 2 and 1; the first round would need ~ 2 x 14 points, the budget allows 10
    def f(t):
        return np.where((t > 0.2) & (t < 0.4), 2.0, 0.0) + np.where((t > 0.6) & (t < 0.8), 1.0, 0.0)

    m, t, achieved, n, probe = run(f, resolution=1e-3, max_evaluations=65 + 10)
    new = probe.calls[1]
    assert n == 75 and len(new) == 10
    assert np.all((new > 0.2 - 1 / 64) & (new < 0.4 + 1 / 64))  # all spent on the higher plateau
    assert achieved > 1e-3 and (m, 0.2 < t <= 0.2 + 1 / 64) == (2.0, True)


# --------------------------------------------------------------------------------------------------
# Settings


def test_default_grid_follows_the_resolution():
    assert CertifyConfig(resolution=1e-3).grid_points == 65
    assert CertifyConfig(resolution=0.05).grid_points == 21
    assert CertifyConfig(resolution=0.02).grid_points == 51
    assert CertifyConfig(resolution=0.05, initial_grid=9).grid_points == 9
    assert CertifyConfig(**CertifyConfig(resolution=0.05).to_dict()) == CertifyConfig(resolution=0.05)


@pytest.mark.parametrize("resolution", [0.0, 1.0, -1e-3, 1.5, math.nan, "0.1", True])
def test_invalid_resolution_raises(resolution):
    with pytest.raises(ConfigError, match="resolution must be in"):
        CertifyConfig(resolution=resolution)


@pytest.mark.parametrize("kwargs, message", [
    ({"initial_grid": 2}, "initial_grid"), ({"initial_grid": 9.5}, "initial_grid"),
    ({"refine_points": 0}, "refine_points"), ({"max_evaluations": 10}, "max_evaluations"),
    ({"resolution": 0.05, "initial_grid": None, "max_evaluations": 20}, "21 points"),
])
def test_invalid_budget_settings_raise(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CertifyConfig(**kwargs)


def test_unknown_setting_raises_config_error():
    with pytest.raises(ConfigError, match="unknown certification setting"):
        certify(Path([_w(0.0), _w(1.0)]), _energy(), resolution=1e-2, bogus=1)
    with pytest.raises(ConfigError, match="unknown certification setting"):
        certify(Path([_w(0.0), _w(1.0)]), _energy(), CertifyConfig(), bogus=1)


# --------------------------------------------------------------------------------------------------
# Through Path and Energy: a sharp peak of height 1 at w = C, half-width S, narrower than the first grid's
# spacing (1/64 in t) and exactly half way between two of its points on the segment w: 0 -> 1.
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
    assert 1.0 - coarse > 0.3  # the first grid alone misses the peak badly

    cert = certify(Path([a, b]), energy, resolution=1e-3)
    assert isinstance(cert, Certificate)
    assert 5e-4 < cert.resolution <= 1e-3
    assert coarse < cert.max_energy <= 1.0 + 1e-12  # samples of f never exceed its maximum
    assert 1.0 - cert.max_energy <= LIPSCHITZ_W * cert.resolution / 2
    assert abs(cert.t - C) <= cert.resolution
    assert cert.segment == 0 and cert.segment_max == [cert.max_energy]
    assert cert.param_resolution == pytest.approx(cert.resolution, rel=1e-12)  # segment length is 1
    # the two grid points around C have equal values (a two-sample plateau): its three gaps are bisected,
    # then the two next to the new maximum in C, three more times, 1/64 -> 1/1024
    assert cert.n_evaluations == 65 + 3 + 2 * 3


def test_finer_resolution_gets_closer():
    energy = _energy()
    path = Path([_w(0.0), _w(1.0)])
    rough = certify(path, energy, resolution=1e-2)
    fine = certify(path, energy, resolution=1e-6)
    assert fine.resolution <= 1e-6 < 5e-3 < rough.resolution <= 1e-2
    assert 1.0 - fine.max_energy <= LIPSCHITZ_W * fine.resolution / 2
    assert fine.max_energy >= rough.max_energy
    assert 1.0 - fine.max_energy < 1e-8


def test_param_resolution_scales_with_segment_length():
    energy = _energy()
    # w from -0.5 to 1.5: parameter length 2, the peak at t = (C + 0.5) / 2
    cert = certify(Path([_w(-0.5), _w(1.5)]), energy, resolution=1e-3)
    assert cert.resolution <= 1e-3
    assert cert.param_resolution == pytest.approx(2 * cert.resolution, rel=1e-12)
    assert 1.0 - cert.max_energy <= LIPSCHITZ_W * cert.param_resolution / 2
    assert abs(cert.t - (C + 0.5) / 2) <= cert.resolution


def test_multi_segment_path_reports_the_right_segment():
    energy = _energy()
    # segment 0: w from -1 to 0 (increasing towards the peak, max at its right end)
    # segment 1: w from 0 to 1 (contains the peak)
    cert = certify(Path([_w(-1.0), _w(0.0), _w(1.0)]), energy, resolution=1e-3)
    assert cert.segment == 1
    assert cert.segment_max[0] == pytest.approx(_peak(0.0), rel=1e-14)
    assert cert.segment_max[1] == cert.max_energy
    assert 1.0 - cert.max_energy <= LIPSCHITZ_W * cert.resolution / 2
    assert abs(cert.t - C) <= cert.resolution


def test_config_and_settings_combine():
    path, energy = Path([_w(0.0), _w(1.0)]), _energy()
    base = certify(path, energy, CertifyConfig(resolution=1e-2))
    assert certify(path, energy, resolution=1e-2) == base
    capped = certify(path, energy, CertifyConfig(resolution=1e-2), max_evaluations=65)
    assert capped.n_evaluations == 65 and capped.resolution == pytest.approx(1 / 64)


def test_monotone_segment_max_at_endpoint():
    net = nn.Linear(1, 1, bias=False).double()
    x = torch.ones(4, 1, dtype=torch.float64)
    energy = Energy(net, x, torch.zeros(4, 1, dtype=torch.float64), "mae", strategy="loop")
    path = Path([{"weight": torch.tensor([[-1.0]], dtype=torch.float64)},
                 {"weight": torch.tensor([[3.0]], dtype=torch.float64)}])
    cert = certify(path, energy, resolution=1e-3)
    assert cert.max_energy == 3.0 and cert.t == 1.0
    assert 5e-4 < cert.resolution <= 1e-3
    assert cert.n_evaluations == 65 + 2 * 4  # |w| has two maxima, t = 0 and 1: one gap each, four bisections
    assert cert.param_resolution == pytest.approx(4 * cert.resolution, rel=1e-12)


def test_to_dict_and_verdict():
    cert = certify(Path([_w(0.0), _w(1.0)]), _energy(), resolution=1e-2, threshold=0.5)
    d = cert.to_dict()
    assert d["max_energy"] == cert.max_energy and d["kind"] == "sampled"
    assert d["certified"] is False and cert.certified is False  # the peak (~1) is above 0.5
    assert set(d) == {"max_energy", "segment", "t", "resolution", "param_resolution", "segment_max",
                      "n_evaluations", "threshold", "tolerance", "kind", "grid_spacing", "certified", "statement"}
    assert certify(Path([_w(0.0), _w(1.0)]), _energy(), resolution=1e-2).certified is None

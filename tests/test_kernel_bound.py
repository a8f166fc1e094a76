"""Proposition 2.3 (modeconnect.theory.kernel_bound): the closed form against float64 Monte Carlo, the bounds of
(7) on random and data-driven pairs, the proof's decomposition sample by sample, and the kernel's invariants."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modeconnect.cli import main
from modeconnect.errors import ConfigError
from modeconnect.theory.kernel_bound import (
    bisector,
    gaussian_kernel_bound,
    gaussian_relu_kernel,
    gaussian_samples,
    kernel_bound,
    monte_carlo_gaussian_kernel,
    pair_at_angle,
    relu_kernel,
    second_moment_norm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALPHAS = [0.0, 0.05, 0.3, 1.0, 1.7, 2.5, 3.0]


def _cov(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def _non_gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    """Skewed, non-centred, correlated: exponential coordinates mixed by a random matrix, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    e = -torch.log(torch.rand(n, dim, generator=g, dtype=torch.float64))
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    return e @ mix + 0.5


def _top_plane(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, vecs = torch.linalg.eigh(x.T @ x / len(x))
    return tuple(v if float((x @ v).mean()) >= 0 else -v for v in (vecs[:, -1], vecs[:, -2]))


@pytest.mark.parametrize("cov_seed", [None, 3])
def test_closed_form_equals_float64_monte_carlo_within_its_standard_error(cov_seed):
    dim = 6
    cov = None if cov_seed is None else _cov(dim, cov_seed)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for i, alpha in enumerate(ALPHAS):
        w1, w2 = pair_at_angle(alpha, dim, generator=g)
        exact = gaussian_relu_kernel(w1, w2, cov)
        est = monte_carlo_gaussian_kernel(w1, w2, 100_000, cov=cov, seed=10 + i)
        assert est.n == 100_000 and est.se > 0
        worst = max(worst, abs(est.mean - exact) / est.se)
    assert worst < 4.5  # 14 estimates: a |z| above 4.5 has probability ~1e-4 under the closed form
    # and the estimate is not trivially close: a wrong kernel (the linear one, <w1, C w2> / 2) is rejected
    w1, w2 = pair_at_angle(1.7, dim, generator=g)
    est = monte_carlo_gaussian_kernel(w1, w2, 100_000, cov=cov, seed=99)
    linear = float(w1 @ (torch.eye(dim, dtype=torch.float64) if cov is None else cov) @ w2) / 2
    assert abs(est.mean - linear) / est.se > 10


def test_monte_carlo_is_reproducible_and_seeded():
    w1, w2 = pair_at_angle(0.7, 4, generator=torch.Generator().manual_seed(0))
    a = monte_carlo_gaussian_kernel(w1, w2, 70_000, seed=5)  # crosses a chunk boundary
    assert a == monte_carlo_gaussian_kernel(w1, w2, 70_000, seed=5)
    assert a.mean != monte_carlo_gaussian_kernel(w1, w2, 70_000, seed=6).mean


def test_closed_form_special_values():
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2]
    assert gaussian_relu_kernel(e1, e1) == pytest.approx(0.5)  # E max(0, g)^2
    assert gaussian_relu_kernel(e1, -e1) == pytest.approx(0.0, abs=1e-15)  # never both positive
    assert gaussian_relu_kernel(e1, e2) == pytest.approx(1 / (2 * math.pi))  # independent: (E max(0, g))^2
    cov = torch.diag(torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64))
    assert gaussian_relu_kernel(e1, e1, cov) == pytest.approx(2.0)  # <w, X> ~ N(0, 4)


def test_decomposition_of_the_proof_holds_sample_by_sample():
    """(16)-(17): z(w1) z(w2) = r^2 max(0, <x, wm>)^2 - r^2 1_B <x, wm>^2 - 1_A <x, d>^2 for every x, with
    r = cos(alpha / 2) (the paper writes r = (1 + cos alpha) / 2, which is r^2), d = (w2 - w1) / 2."""
    x = _non_gaussian(5000, 5, 0)
    for alpha in ALPHAS[1:]:
        w1, w2 = pair_at_angle(alpha, 5, generator=torch.Generator().manual_seed(2))
        wm, r, d = bisector(w1, w2), math.cos(alpha / 2), (w2 - w1) / 2
        assert torch.allclose(r * wm - d, w1) and torch.allclose(r * wm + d, w2)
        p1, p2, pm, pd = x @ w1, x @ w2, x @ wm, x @ d
        in_a = (p1 >= 0) & (p2 >= 0)
        in_b = (pm >= 0) & ~in_a
        assert not bool(in_a.all()) and bool(in_b.any())  # both error terms are exercised
        in_a, in_b = in_a.double(), in_b.double()  # (a python float times a bool tensor would be float32)
        lhs = p1.clamp_min(0) * p2.clamp_min(0)
        rhs = r**2 * pm.clamp_min(0) ** 2 - r**2 * in_b * pm**2 - in_a * pd**2
        assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "data"])
def test_bounds_hold_on_the_empirical_measure_of_a_non_gaussian_sample(kind):
    dim = 8
    x = _non_gaussian(4000, dim, 1)
    sigma = second_moment_norm(x)
    assert sigma == pytest.approx(float(torch.linalg.eigvalsh(x.T @ x / len(x))[-1]))
    g = torch.Generator().manual_seed(3)
    checked = 0
    for alpha in ALPHAS:
        planes = [_top_plane(x)] if kind == "data" else [tuple(torch.randn(2, dim, generator=g, dtype=torch.float64))
                                                         for _ in range(4)]
        for plane in planes:
            w1, w2 = pair_at_angle(alpha, dim, plane=plane)
            b = kernel_bound(w1, w2, x, sigma_norm=sigma)
            slack = 1e-12 * sigma
            assert b.lower_paper <= b.lower_sharp + slack, (alpha, b)
            assert b.lower_sharp <= b.kernel + slack, (alpha, b)
            assert b.kernel <= b.upper + slack, (alpha, b)
            assert b.holds(slack)
            assert b.kernel == pytest.approx(relu_kernel(w1, w2, x).mean, rel=1e-12)
            checked += 1
    assert checked == len(ALPHAS) * (1 if kind == "data" else 4)


def test_bounds_hold_in_closed_form_for_gaussians_and_are_not_loose_at_small_angles():
    for cov in (None, _cov(7, 4), torch.diag(1.0 / torch.arange(1, 8, dtype=torch.float64))):
        for alpha in ALPHAS:
            for seed in range(3):
                w1, w2 = pair_at_angle(alpha, 7, generator=torch.Generator().manual_seed(seed))
                b = gaussian_kernel_bound(w1, w2, cov)
                assert b.holds(1e-12), (alpha, b)
        w1, w2 = pair_at_angle(0.01, 7, generator=torch.Generator().manual_seed(0))
        b = gaussian_kernel_bound(w1, w2, cov)
        assert (b.upper - b.lower_sharp) / b.kernel < 1e-4  # sin^2(a/2) ~ 2.5e-5
        assert b.upper - b.lower_paper == pytest.approx(2 * b.sigma_norm * ((1 - math.cos(0.01)) / 2
                                                                            + math.sin(0.01) ** 2))


def test_sample_bounds_agree_with_the_closed_form_on_a_large_gaussian_sample():
    dim, cov = 5, _cov(5, 6)
    x = gaussian_samples(200_000, dim, cov=cov, generator=torch.Generator().manual_seed(0))
    w1, w2 = pair_at_angle(0.8, dim, generator=torch.Generator().manual_seed(1))
    sample, exact = kernel_bound(w1, w2, x), gaussian_kernel_bound(w1, w2, cov)
    assert abs(sample.kernel - exact.kernel) < 4 * sample.kernel_se
    for key in ("upper", "lower_sharp", "wm_norm_z2", "sigma_norm"):
        assert getattr(sample, key) == pytest.approx(getattr(exact, key), rel=0.03), key


def test_invariants_symmetry_zero_angle_and_scaling():
    x = _non_gaussian(3000, 6, 2)
    w1, w2 = pair_at_angle(0.9, 6, generator=torch.Generator().manual_seed(4))
    assert relu_kernel(w1, w2, x).mean == pytest.approx(relu_kernel(w2, w1, x).mean, rel=1e-14)
    assert gaussian_relu_kernel(w1, w2) == pytest.approx(gaussian_relu_kernel(w2, w1), rel=1e-14)
    # alpha = 0: the kernel is E z(w)^2 = ||w||_Z^2 and both bounds collapse onto it
    b = kernel_bound(w1, w1, x)
    direct = float((x @ w1).clamp_min(0).pow(2).mean())
    assert b.alpha == 0 and b.kernel == pytest.approx(direct, rel=1e-12)
    assert b.upper == pytest.approx(direct, rel=1e-12) and b.lower_paper == pytest.approx(direct, rel=1e-12)
    assert b.lower_sharp == pytest.approx(direct, rel=1e-12)
    # positive homogeneity of max(0, .): [a w1, c w2] = a c [w1, w2] for a, c > 0
    for a, c in ((2.0, 0.5), (3.0, 7.0)):
        assert relu_kernel(a * w1, c * w2, x).mean == pytest.approx(a * c * relu_kernel(w1, w2, x).mean, rel=1e-12)
        assert gaussian_relu_kernel(a * w1, c * w2) == pytest.approx(a * c * gaussian_relu_kernel(w1, w2), rel=1e-12)
    # but not odd: flipping one vector does not flip the sign
    assert relu_kernel(-w1, w2, x).mean >= 0


def test_pair_at_angle_and_bisector():
    w1, w2 = pair_at_angle(1.2, 5, generator=torch.Generator().manual_seed(0))
    assert float(w1.norm()) == pytest.approx(1) and float(w2.norm()) == pytest.approx(1)
    assert math.acos(float(w1 @ w2)) == pytest.approx(1.2)
    wm = bisector(w1, w2)
    assert float(wm @ w1) == pytest.approx(float(wm @ w2)) == pytest.approx(math.cos(0.6))
    u, v = torch.eye(5, dtype=torch.float64)[:2]
    a, b = pair_at_angle(0.5, 5, plane=(2 * u, u + v))
    assert torch.allclose(a, u) and torch.allclose(b, math.cos(0.5) * u + math.sin(0.5) * v)


@pytest.mark.parametrize("call, message", [
    (lambda: kernel_bound(torch.ones(3), torch.ones(3), torch.randn(10, 3)), "unit vectors"),
    (lambda: relu_kernel(torch.ones(3), torch.ones(4), torch.randn(10, 3)), "one length"),
    (lambda: relu_kernel(torch.ones(3), torch.ones(3), torch.randn(10, 4)), "dimension 3"),
    (lambda: relu_kernel(torch.zeros(3), torch.ones(3), torch.randn(10, 3)), "zero vector"),
    (lambda: pair_at_angle(4.0, 3), "angle in"),
    (lambda: pair_at_angle(0.5, 1), "dim must be"),
    (lambda: pair_at_angle(0.5, 3, plane=(torch.ones(3), 2 * torch.ones(3))), "parallel"),
    (lambda: bisector(torch.eye(3)[0], -torch.eye(3)[0]), "opposite"),
    (lambda: monte_carlo_gaussian_kernel(torch.ones(2), torch.ones(2), 1), "n must be"),
    (lambda: gaussian_relu_kernel(torch.ones(2), torch.ones(2), -torch.eye(2)), "positive semi-definite"),
])
def test_bad_input_is_a_one_line_config_error(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_reproduction_quick_without_data_uses_the_synthetic_law(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MODECONNECT_DATA", raising=False)
    out = tmp_path / "kb"
    assert main(["reproduce", "freeman-bruna-kernel-bound", "--quick", "--quiet", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["kind"] == "mixture"
    kinds = {r["distribution"] for r in results["rows"]}
    assert kinds == {"gaussian", "gaussian-aniso", "mixture"}
    for r in results["rows"]:
        assert r["lower_paper"] <= r["kernel"] + 1e-12 * r["sigma_norm"] <= r["upper"] + 2e-12 * r["sigma_norm"]
    record = json.loads((out / "reproduction.json").read_text())
    assert all(c["holds"] for c in record["claims"]), record["claims"]
    assert (out / "figures" / "kernel_bound.png").exists() and (out / "table.csv").exists()
    assert "[holds ]" in capsys.readouterr().out

"""Proposition 2.2 (Freeman & Bruna): deep linear tasks and the linear_construction method."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modeconnect import Energy, connect
from modeconnect.errors import ConfigError
from modeconnect.methods.linear_construction import LinearConstruction, LinearConstructionConfig, chain_sizes
from modeconnect.path import Path
from modeconnect.tasks import make_task
from modeconnect.tasks.linear import RidgeEnergy, linear_chain, risk_floor
from modeconnect.theory.linear_paths import DeepLinearPath, RidgePath, balanced_factors, chain_product
from modeconnect.train import Objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(d_in: int, d_out: int, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    teacher = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return x, x @ teacher.T + 0.1 * torch.randn(n, d_out, generator=g, dtype=torch.float64)


def _random_weights(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(sizes[j + 1], sizes[j], generator=g, dtype=torch.float64) / sizes[j] ** 0.5
            for j in range(len(sizes) - 1)]


def _point(ws):
    return {f"{i}.weight": w for i, w in enumerate(ws)}


def _energy(sizes, ridge=0.0, dtype=torch.float64):
    x, y = _data(sizes[0], sizes[-1])
    model = linear_chain(sizes).to(dtype)
    if ridge:
        return RidgeEnergy(model, x.to(dtype), y.to(dtype), ridge=ridge, strategy="vmap", split="train")
    return Energy(model, x.to(dtype), y.to(dtype), "mse", strategy="vmap", split="train")


def _mse(ws, x, y, ridge=0.0):
    m = chain_product(ws)
    return float(((x @ m.T - y) ** 2).mean()) + ridge * sum(float((w**2).sum()) for w in ws)


SIZES = {2: (5, 4, 3), 3: (5, 4, 6, 3), 4: (3, 4, 5, 4, 6)}  # K = 4 has output > input: the input side


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_along_the_construction_stays_below_lambda(k, seed):
    sizes = SIZES[k]
    x, y = _data(sizes[0], sizes[-1])
    a, b = _random_weights(sizes, 10 * seed), _random_weights(sizes, 10 * seed + 1)
    side = "output" if sizes[-1] <= sizes[0] else "input"
    curve = DeepLinearPath(a, b, side=side, bump_scale=1.0, generator=torch.Generator().manual_seed(seed))
    lam = max(_mse(a, x, y), _mse(b, x, y))
    values = [_mse(curve.weights(float(t)), x, y) for t in torch.linspace(0, 1, 201, dtype=torch.float64)]
    assert max(values) <= lam * (1 + 1e-10)
    assert max(values[1:-1]) < lam  # strictly below inside: the loss is strictly convex in the product here


@pytest.mark.parametrize("sizes,side", [((5, 4, 6, 3), "output"), ((3, 4, 5, 4, 6), "input"), ((4, 4, 4), "output")])
def test_product_follows_the_straight_line_and_pivot_is_the_papers_bumped_line(sizes, side):
    a, b = _random_weights(sizes, 3), _random_weights(sizes, 4)
    curve = DeepLinearPath(a, b, side=side, bump_scale=0.5, generator=torch.Generator().manual_seed(0))
    ma, mb = chain_product(a), chain_product(b)
    for t in (0.1, 0.37, 0.5, 0.9):
        ws = curve.weights(t)
        assert torch.allclose(chain_product(ws), (1 - t) * ma + t * mb, atol=1e-10, rtol=0)
        top = ws[-1] if side == "output" else ws[0].T  # the layer the recursion interpolates with the bump
        ends = (a[-1], b[-1]) if side == "output" else (a[0].T, b[0].T)
        assert torch.allclose(top, (1 - t) * ends[0] + t * ends[1] + t * (1 - t) * curve.bumps[-1], atol=1e-12)
        if side == "output":  # each lower layer is its straight line plus a correction in the pivot's row space
            piv = curve.pivots(t)
            for j in range(len(a) - 1):
                correction = ws[j] - ((1 - t) * a[j] + t * b[j])
                null = torch.eye(piv[j + 1].shape[1], dtype=torch.float64) - torch.linalg.pinv(piv[j + 1]) @ piv[j + 1]
                assert torch.allclose(null @ correction, torch.zeros_like(correction), atol=1e-10)


def test_square_invertible_layers_reduce_to_the_papers_formula():
    sizes = (3, 3, 3)
    a, b = _random_weights(sizes, 5), _random_weights(sizes, 6)
    if torch.linalg.det(a[1]) * torch.linalg.det(b[1]) < 0:
        b[1] = b[1] @ torch.diag(torch.tensor([-1.0, 1, 1], dtype=torch.float64))
        b[0] = torch.diag(torch.tensor([-1.0, 1, 1], dtype=torch.float64)) @ b[0]
    curve = DeepLinearPath(a, b, side="output", bump_scale=1.0, generator=torch.Generator().manual_seed(1))
    t = 0.3
    ws = curve.weights(t)
    merged = (1 - t) * chain_product(a) + t * chain_product(b)
    assert torch.allclose(ws[0], torch.linalg.solve(ws[1], merged), atol=1e-10)  # W_1(t) = W_2(t)^-1 W~(t)


def _run(a, b, energy, threshold=None, **settings):
    cfg = LinearConstructionConfig(**{"dense_points": 129, "n_points": 9, **settings})
    start = Path([_point(a), _point(b)])
    lam = max(energy(start.beads[0]), energy(start.beads[1]))
    return LinearConstruction().run(start, energy, threshold=threshold or 2 * lam, config=cfg)


def test_method_endpoints_are_exact_and_extras_respect_lambda():
    sizes = (5, 4, 6, 3)
    energy = _energy(sizes, dtype=torch.float32)
    a = [w.float() for w in _random_weights(sizes, 7)]
    b = [w.float() for w in _random_weights(sizes, 8)]
    path, out = _run(a, b, energy)
    assert torch.equal(path.beads[0]["0.weight"], a[0]) and torch.equal(path.beads[-1]["2.weight"], b[2])
    assert all(torch.equal(path.beads[0][k], v) for k, v in _point(a).items())
    assert all(torch.equal(path.beads[-1][k], v) for k, v in _point(b).items())
    ex = out.extras
    assert out.connected and ex["within_bound"] and ex["construction"] == "pseudoinverse"
    assert ex["construction_max_energy_f64"] <= ex["lambda_f64"] * (1 + 1e-9)
    assert ex["construction_max_energy"] <= ex["lambda"] * (1 + 1e-5)
    assert ex["product_error_max"] < 1e-10
    assert path.n_pieces >= 8 and ex["n_path_points"] == len(path.beads)


@pytest.mark.parametrize("sizes", [(5, 4, 3), (3, 5, 6)])
def test_ridge_construction_stays_below_lambda_and_keeps_products(sizes):
    kappa = 0.05
    x, y = _data(sizes[0], sizes[-1])
    for seed in range(3):
        a, b = _random_weights(sizes, 20 + seed), _random_weights(sizes, 30 + seed)
        curve = RidgePath(a, b, tol=1e-9, end_fraction=0.25)
        lam = max(_mse(a, x, y, kappa), _mse(b, x, y, kappa))
        ts = torch.linspace(0, 1, 401, dtype=torch.float64)
        values = [_mse(curve.weights(float(t)), x, y, kappa) for t in ts]
        assert max(values) <= lam * (1 + 1e-10)
        norms = [sum(float((w**2).sum()) for w in curve.weights(float(t))) for t in ts[ts <= 0.25]]
        assert all(n1 <= n0 + 1e-9 for n0, n1 in zip(norms, norms[1:]))  # the A end: norm non-increasing ...
        for t in (0.05, 0.12, 0.2, 0.6, 0.8, 0.95):  # ... with the product fixed, then the straight line
            assert torch.allclose(chain_product(curve.weights(t)), curve.product(t), atol=1e-9)
        assert all(torch.equal(u, v) for u, v in zip(curve.weights(0.0), a))


def test_balanced_factors_have_nuclear_norm_and_are_continuous_through_rank_drop():
    m = torch.tensor([[2.0, 0, 0], [0, 1e-9, 0]], dtype=torch.float64)
    w1, w2 = balanced_factors(m, 4)
    nuc = float(torch.linalg.matrix_norm(m, "nuc"))
    assert torch.allclose(w2 @ w1, m, atol=1e-12)
    assert abs(float((w1**2).sum()) - nuc) < 1e-12 and abs(float((w2**2).sum()) - nuc) < 1e-12
    z1, _ = balanced_factors(torch.tensor([[2.0, 0, 0], [0, 0, 0]], dtype=torch.float64), 4)
    assert float((w1 - z1).norm()) < 1e-4  # sqrt(1e-9): continuous where the rank drops


def test_ridge_method_and_energy_definition():
    sizes, kappa = (5, 4, 3), 0.05
    energy = _energy(sizes, ridge=kappa)
    a, b = _random_weights(sizes, 40), _random_weights(sizes, 41)
    x, y = energy.inputs, energy.targets
    assert abs(energy(_point(a)) - _mse(a, x, y, kappa)) < 1e-12
    path, out = _run(a, b, energy)
    assert out.connected and out.extras["construction"] == "ridge" and out.extras["within_bound"]
    assert out.extras["construction_max_energy_f64"] <= out.extras["lambda_f64"] * (1 + 1e-9)


def test_risk_floor_is_the_least_squares_minimum_and_lower_bounds_the_ridge_energy():
    x, y = _data(4, 2)
    m = torch.linalg.lstsq(x, y).solution.T
    assert abs(risk_floor(x, y) - float(((x @ m.T - y) ** 2).mean())) < 1e-12
    floor = risk_floor(x, y, 0.05)
    w1, w2 = balanced_factors(m, 3)  # any factorisation of any product is at least the floor
    assert floor <= _mse([w1, w2], x, y, 0.05) + 1e-12


def test_sign_flipped_copy_needs_the_bump():
    """B = A with the last two layers negated: same function, and the straight pivot line passes through 0."""
    sizes = (5, 4, 4, 3)
    energy = _energy(sizes)
    a = _random_weights(sizes, 50)
    b = [a[0], -a[1], -a[2]]
    path, out = _run(a, b, energy, bump_scale=0.0)
    assert out.reason == "not_applicable" and out.extras["not_applicable"] == "singular_pivot"
    assert path.n_pieces == 1  # the straight segment, never a silent wrong path
    path, out = _run(a, b, energy)
    assert out.connected and out.extras["within_bound"]


def test_rank_deficient_endpoint_and_orientation_are_not_applicable():
    energy = _energy((4, 4, 2))
    a, b = _random_weights((4, 4, 2), 60), _random_weights((4, 4, 2), 61)
    a[1] = torch.zeros_like(a[1])
    a[1][0, 0] = 1.0  # W_2 of rank 1 < output size 2
    _, out = _run(a, b, energy)
    assert out.reason == "not_applicable" and out.extras["not_applicable"] == "rank_deficient_endpoint"
    # the 1-1-1 network: (1, 1) and (-1, -1) compute y = x, but every path between them passes w1 w2 = 0
    x = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(-1, 1)
    e111 = Energy(linear_chain((1, 1, 1)).double(), x, x, "mse", strategy="loop")
    one = torch.ones(1, 1, dtype=torch.float64)
    _, out = _run([one, one], [-one, -one], e111, threshold=0.1)
    assert out.reason == "not_applicable" and out.extras["not_applicable"] == "orientation"
    assert "disconnected" in out.message


def test_models_that_are_not_bias_free_linear_chains_are_refused():
    for model, why in ((nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False)), "bias"),
                       (nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)), "ReLU"),
                       (nn.Linear(3, 2, bias=False), "not an nn.Sequential")):
        with pytest.raises(ConfigError, match=why):
            chain_sizes(model)
    with pytest.raises(ConfigError, match="5-2-3.*d_1=2"):
        chain_sizes(nn.Sequential(nn.Linear(5, 2, bias=False), nn.Linear(2, 3, bias=False)))
    with pytest.raises(ConfigError, match="side 'input' needs every hidden width >= 5"):
        _run(_random_weights((5, 4, 3), 0), _random_weights((5, 4, 3), 1), _energy((5, 4, 3)), side="input")
    with pytest.raises(ConfigError, match="two layers"):
        _run(_random_weights((5, 4, 4, 3), 0), _random_weights((5, 4, 4, 3), 1), _energy((5, 4, 4, 3), ridge=0.1))
    with pytest.raises(ConfigError, match="max_points"):
        LinearConstructionConfig(n_points=65, max_points=33)


def test_tasks_refuse_bad_sizes_and_record_the_ridge():
    with pytest.raises(ConfigError, match=r"5-2-2-3: hidden size\(s\) d_1=2, d_2=2 below min\(input, output\) = 3"):
        make_task("linear", width=2)
    with pytest.raises(ConfigError, match="depth 2 only"):
        make_task("linear-ridge", depth=3)
    task = make_task("linear-ridge")
    assert task.objective.l2 == task.energy.ridge == 0.01 and task.objective.describe()["l2"] == 0.01
    assert "l2" not in make_task("linear").objective.describe()  # identities of ridge-free tasks unchanged
    assert task.default_threshold * 0.9 > task.options["risk_floor"]
    with pytest.raises(ConfigError, match="l2"):
        Objective(task.objective.inputs, task.objective.targets, "mse", l2=-1.0)


def test_connect_api_certifies_the_beaded_path():
    sizes = (5, 4, 4, 3)
    energy = _energy(sizes, dtype=torch.float32)
    a = _point([w.float() for w in _random_weights(sizes, 90)])
    b = _point([w.float() for w in _random_weights(sizes, 91)])
    lam = max(energy(a), energy(b))
    result = connect(a, b, energy, threshold=1.05 * lam, method="linear_construction",
                     config=LinearConstructionConfig(dense_points=257))
    assert result.connected and result.certificate.certified and not result.trains
    assert result.certificate.max_energy <= 1.05 * lam and result.trained_points == 0


def test_cli_connect_writes_a_connected_certified_run(tmp_path):
    from modeconnect.cli import main

    out = tmp_path / "run"
    assert main(["connect", "--task", "linear", "--method", "linear_construction", "--depth", "3",
                 "--dense-points", "257", "--out", str(out), "--quiet", "--json"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "linear_construction" and result["connected"] and result["certified"]
    assert result["within_bound"] and result["sizes"] == [5, 4, 4, 3]
    assert result["certified_max_energy"] <= result["threshold"] < result["straight_line_max_energy"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["method_config"]["dense_points"] == 257


@pytest.mark.slow
def test_cli_compare_with_greedy_dss(tmp_path):
    from modeconnect.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--task", "linear", "--methods", "linear_construction,greedy_dss", "--pairs", "1",
                 "--depth", "2", "--out", str(out), "--no-figures"]) == 0
    rows = {r["method"]: r for r in json.loads((out / "table.json").read_text())["rows"]}
    assert set(rows) == {"linear_construction", "greedy_dss"}


@pytest.mark.parametrize("sizes,side", [((5, 4, 6, 3), "output"), ((3, 4, 5, 4, 6), "input")])
def test_batched_weights_equal_the_one_t_at_a_time_reference(sizes, side):
    a, b = _random_weights(sizes, 70), _random_weights(sizes, 71)
    curve = DeepLinearPath(a, b, side=side, bump_scale=1.0, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([0.0, 0.013, 0.5, 0.77, 1.0], dtype=torch.float64)
    batch = curve.weights_batch(ts)
    for i, t in enumerate(ts):
        for j, w in enumerate(curve.weights(float(t))):
            assert torch.allclose(batch[j][i], w, atol=1e-12, rtol=0)
    assert all(torch.equal(batch[j][0], a[j]) and torch.equal(batch[j][-1], b[j]) for j in range(len(a)))
    assert curve.min_pivot_ratio(ts) == pytest.approx(min(min(curve.pivot_ratios(float(t))) for t in ts))


def test_one_layer_is_the_straight_line():
    energy = _energy((4, 2))
    a, b = _random_weights((4, 2), 80), _random_weights((4, 2), 81)
    path, out = _run(a, b, energy)
    assert out.connected and out.extras["pivot_ratio_endpoints"] == 1.0
    mid = path.beads[len(path.beads) // 2]["0.weight"]
    assert torch.allclose(mid, 0.5 * (a[0] + b[0]), atol=1e-12)


def test_cli_refuses_a_non_linear_task_before_training(tmp_path, capsys):
    from modeconnect.cli import main

    out = tmp_path / "run"
    assert main(["connect", "--task", "quadratic", "--method", "linear_construction", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bias-free nn.Linear" in err and "use --task linear" in err
    assert not (out / "endpoint_a.safetensors").exists()  # refused when the config resolved, nothing trained


@pytest.mark.parametrize("sizes,side", [((5, 4, 6, 3), "output"), ((3, 4, 5, 4, 6), "input")])
def test_path_to_a_global_minimum_is_strictly_decreasing(sizes, side):
    """The proposition's last sentence: from any theta, the construction towards a global minimiser descends."""
    from modeconnect.theory.linear_paths import factor_through

    x, y = _data(sizes[0], sizes[-1])
    best = factor_through(torch.linalg.lstsq(x, y).solution.T, sizes)
    assert abs(_mse(best, x, y) - risk_floor(x, y)) < 1e-12
    a = _random_weights(sizes, 100)
    curve = DeepLinearPath(a, best, side=side, bump_scale=1.0, generator=torch.Generator().manual_seed(0))
    curve.check(torch.linspace(0, 1, 129, dtype=torch.float64), 1e-6)  # the minimiser's pivots are full rank
    values = [_mse(curve.weights(float(t)), x, y) for t in torch.linspace(0, 1, 101, dtype=torch.float64)]
    assert all(v1 < v0 for v0, v1 in zip(values, values[1:]))

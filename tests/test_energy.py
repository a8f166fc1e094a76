"""Unit tests for modeconnect.energy: batched evaluation against a one-point-at-a-time reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from modeconnect.energy import Energy, Strategy
from modeconnect.errors import ArchitectureMismatch, ConfigError, NonFiniteEnergyError, UnsupportedModelError
from modeconnect.params import interpolate, point_from_module, stack_points

STRATEGIES = ["vmap", "loop", "auto"]
TOL = 1e-12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    return net


def _regression_setup():
    net = _randomize(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double(), 0)
    g = _gen(1)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 2, generator=g, dtype=torch.float64)
    return net, x, y


def _classifier_setup():
    net = _randomize(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double(), 2)
    g = _gen(3)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    return net, x, y


def _points(net: nn.Module, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    base = point_from_module(net)
    g = _gen(seed)
    return [{k: v + torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in base.items()} for _ in range(n)]


def _reference(metric: str, net: nn.Module, point, x, y) -> float:
    """Independent per-point reference using torch.nn.functional losses."""
    out = functional_call(net, point, (x,))
    if metric == "mse":
        return float(F.mse_loss(out, y))
    if metric == "mae":
        return float(F.l1_loss(out, y))
    if metric == "cross_entropy":
        return float(F.cross_entropy(out, y))
    if metric == "error_rate":
        return 100.0 * float((out.argmax(dim=1) != y).double().mean())
    raise AssertionError(metric)


CASES = [
    ("regression", "mse"),
    ("regression", "mae"),
    ("classifier", "cross_entropy"),
    ("classifier", "error_rate"),
]


def _setup(kind: str):
    return _regression_setup() if kind == "regression" else _classifier_setup()


# -- batched evaluation equals the one-at-a-time loop ----------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind,metric", CASES)
def test_evaluate_matches_reference_loop_float64(kind, metric, strategy):
    net, x, y = _setup(kind)
    points = _points(net, 7, seed=10)
    energy = Energy(net, x, y, metric, strategy=strategy)
    got = energy.evaluate(stack_points(points))
    assert got.dtype == torch.float64
    assert got.shape == (7,)
    expected = torch.tensor([_reference(metric, net, p, x, y) for p in points], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    # the points really differ, so the comparison is not vacuous
    if metric != "error_rate":
        assert float(expected.max() - expected.min()) > 1e-3
    # single-point call agrees too
    assert energy(points[3]) == pytest.approx(float(expected[3]), rel=0, abs=TOL)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind,metric", CASES)
def test_chunked_and_sample_batched_evaluation_gives_same_values(kind, metric, strategy):
    net, x, y = _setup(kind)
    points = stack_points(_points(net, 7, seed=11))
    whole = Energy(net, x, y, metric, strategy=strategy).evaluate(points)
    chunked = Energy(net, x, y, metric, strategy=strategy, chunk_size=3, sample_batch_size=7)
    assert chunked.chunk_size < 7 and chunked.sample_batch_size < len(x)
    torch.testing.assert_close(chunked.evaluate(points), whole, rtol=0, atol=TOL)
    tiny = Energy(net, x, y, metric, strategy=strategy, chunk_size=1, sample_batch_size=1)
    torch.testing.assert_close(tiny.evaluate(points), whole, rtol=0, atol=TOL)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_along_segment_equals_interpolate_one_at_a_time(strategy):
    net, x, y = _classifier_setup()
    a, b = _points(net, 2, seed=12)
    ts = [0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0]
    energy = Energy(net, x, y, "cross_entropy", strategy=strategy, chunk_size=3)
    got = energy.along_segment(a, b, ts)
    assert got.shape == (len(ts),)
    expected = torch.tensor([_reference("cross_entropy", net, interpolate(a, b, t), x, y) for t in ts],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    # the endpoints are the endpoints' energies
    assert float(got[0]) == pytest.approx(energy(a), abs=TOL)
    assert float(got[-1]) == pytest.approx(energy(b), abs=TOL)
    # a float64 tensor of ts gives the same
    torch.testing.assert_close(energy.along_segment(a, b, torch.tensor(ts, dtype=torch.float64)), got, rtol=0, atol=0)


def test_float32_model_evaluates_close_to_float64_reference():
    net, x, y = _regression_setup()
    net32 = copy.deepcopy(net).float()
    points = [{k: v.float() for k, v in p.items()} for p in _points(net, 4, seed=13)]
    energy = Energy(net32, x.float(), y.float(), "mse", strategy="vmap")
    got = energy.evaluate(stack_points(points))
    assert got.dtype == torch.float64
    expected = [_reference("mse", net, {k: v.double() for k, v in p.items()}, x, y) for p in points]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


# -- the caller's model is never touched -----------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_energy_never_mutates_callers_module(strategy):
    net, x, y = _regression_setup()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.train()
    energy = Energy(net, x, y, "mse", strategy=strategy, chunk_size=2)
    energy.evaluate(stack_points(_points(net, 5, seed=14)))
    energy.along_segment(*_points(net, 2, seed=15), [0.0, 0.5, 1.0])
    after = net.state_dict()
    assert set(after) == set(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert all(p.requires_grad for p in net.parameters())
    assert net.training  # Energy puts its own copy in eval mode, not the caller's model
    assert energy.model is not net


def test_energy_does_not_mutate_points():
    net, x, y = _regression_setup()
    points = _points(net, 3, seed=16)
    copies = [{k: v.clone() for k, v in p.items()} for p in points]
    Energy(net, x, y, "mse", strategy="vmap").evaluate(stack_points(points))
    for p, c in zip(points, copies):
        for k in p:
            assert torch.equal(p[k], c[k])


# -- description and strategy choice ---------------------------------------------------------


def test_describe_records_settings():
    net, x, y = _classifier_setup()
    energy = Energy(net, x, y, "error_rate", strategy="loop", chunk_size=5, sample_batch_size=10, split="validation")
    d = energy.describe()
    assert d["metric"] == "error_rate"
    assert d["split"] == "validation"
    assert d["n_samples"] == 30 == energy.n_samples
    assert d["strategy"] == "loop"
    assert d["chosen_strategy"] == "loop"
    assert d["chunk_size"] == 5
    assert d["sample_batch_size"] == 10


def test_auto_strategy_records_its_choice():
    net, x, y = _regression_setup()
    energy = Energy(net, x, y, "mse")  # auto is the default
    assert energy.strategy is Strategy.AUTO
    assert energy.describe()["chosen_strategy"] is None
    energy.evaluate(stack_points(_points(net, 4, seed=17)))
    assert energy.chosen_strategy in (Strategy.VMAP, Strategy.LOOP, Strategy.MATMUL)
    d = energy.describe()
    assert d["strategy"] == "auto"
    assert d["chosen_strategy"] in ("vmap", "loop", "matmul")


def test_auto_single_point_evaluation_still_correct():
    net, x, y = _regression_setup()
    (p,) = _points(net, 1, seed=18)
    energy = Energy(net, x, y, "mse", strategy="auto")
    assert energy(p) == pytest.approx(_reference("mse", net, p, x, y), abs=TOL)


# -- validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_config_error():
    net, x, y = _regression_setup()
    with pytest.raises(ConfigError, match="inputs have 20 samples but targets have 19"):
        Energy(net, x, y[:19], "mse")
    with pytest.raises(ConfigError, match="empty"):
        Energy(net, x[:0], y[:0], "mse")
    with pytest.raises(ConfigError, match="chunk_size must be >= 1 or None, got 0"):
        Energy(net, x, y, "mse", chunk_size=0)
    with pytest.raises(ConfigError, match="sample_batch_size must be >= 1"):
        Energy(net, x, y, "mse", sample_batch_size=0)
    with pytest.raises(ConfigError, match="unknown strategy 'fast'"):
        Energy(net, x, y, "mse", strategy="fast")
    with pytest.raises(ConfigError, match="unknown metric 'l2'"):
        Energy(net, x, y, "l2")


def test_energy_refuses_batchnorm_model():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(UnsupportedModelError, match="'1'"):
        Energy(net, torch.zeros(5, 3), torch.zeros(5, 1), "mse")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_require_finite_raises_on_non_finite(value):
    net, x, y = _regression_setup()
    energy = Energy(net, x, y, "mse", strategy="loop")
    with pytest.raises(NonFiniteEnergyError, match="the energy of bead 3 is"):
        energy.require_finite(value, "bead 3")
    assert energy.require_finite(1.5, "bead 3") == 1.5


def test_non_finite_parameters_give_non_finite_energy():
    net, x, y = _regression_setup()
    (p,) = _points(net, 1, seed=19)
    p["0.weight"][0, 0] = math.nan
    energy = Energy(net, x, y, "mse", strategy="loop")
    value = energy(p)
    assert math.isnan(value)
    with pytest.raises(NonFiniteEnergyError):
        energy.require_finite(value, "the point")


def test_check_point_rejects_other_architecture():
    net, x, y = _regression_setup()
    energy = Energy(net, x, y, "mse", strategy="loop")
    energy.check_point(point_from_module(net))  # same architecture: fine
    other = point_from_module(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double())
    expected = r"0\.weight: shape \(8, 3\) in the energy's model vs \(5, 3\) in bead"
    with pytest.raises(ArchitectureMismatch, match=expected):
        energy.check_point(other, "bead")

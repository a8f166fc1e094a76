"""Unit tests for modeconnect.params (parameter points)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconnect.errors import ArchitectureMismatch, UnsupportedModelError
from modeconnect.params import (
    check_compatible,
    distance,
    flatten,
    interpolate,
    interpolate_many,
    load_point_into,
    permute_hidden_units,
    point_from_module,
    stack_points,
    unflatten,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_point(seed: int, dtype=torch.float32, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {
        "0.weight": torch.randn(5, 3, generator=g, dtype=dtype) * scale,
        "0.bias": torch.randn(5, generator=g, dtype=dtype) * scale,
        "2.weight": torch.randn(2, 5, generator=g, dtype=dtype) * scale,
        "2.bias": torch.randn(2, generator=g, dtype=dtype) * scale,
    }


def _mlp(bias: bool, seed: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 6, bias=bias), nn.ReLU(), nn.Linear(6, 2, bias=bias)).double()
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


# -- flatten / unflatten ---------------------------------------------------------------------


def test_flatten_unflatten_round_trip():
    point = _random_point(0)
    vec = flatten(point)
    assert vec.shape == (5 * 3 + 5 + 2 * 5 + 2,)
    # key order is preserved: the first entries are the first parameter
    assert torch.equal(vec[:15], point["0.weight"].reshape(-1))
    back = unflatten(vec, point)
    assert list(back) == list(point)
    for k in point:
        assert back[k].shape == point[k].shape
        assert torch.equal(back[k], point[k])


def test_unflatten_returns_independent_tensors():
    point = _random_point(1)
    vec = flatten(point)
    back = unflatten(vec, point)
    back["0.bias"].add_(1.0)
    assert torch.equal(vec, flatten(point))


def test_unflatten_wrong_size_raises():
    point = _random_point(2)
    with pytest.raises(ArchitectureMismatch, match="cannot fill 32 parameters"):
        unflatten(torch.zeros(31), point)
    with pytest.raises(ArchitectureMismatch):
        unflatten(torch.zeros(2, 16), point)


# -- interpolation ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolate_endpoints_are_exact(dtype):
    a, b = _random_point(3, dtype), _random_point(4, dtype, scale=10.0)
    at0, at1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for k in a:
        assert torch.equal(at0[k], a[k])
        assert torch.equal(at1[k], b[k])


def test_interpolate_midpoint():
    a, b = _random_point(5, torch.float64), _random_point(6, torch.float64)
    mid = interpolate(a, b, 0.5)
    for k in a:
        torch.testing.assert_close(mid[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-15)
    # the midpoint is half way in distance too
    assert distance(a, mid) == pytest.approx(distance(a, b) / 2, rel=1e-12)
    assert distance(mid, b) == pytest.approx(distance(a, b) / 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolate_many_equals_loop_of_interpolate(dtype):
    a, b = _random_point(7, dtype), _random_point(8, dtype, scale=10.0)
    ts = [0.0, 0.1, 1 / 3, 0.49, 0.5, 0.7, 0.9, 1.0]
    batch = interpolate_many(a, b, ts)
    for k in a:
        assert batch[k].shape == (len(ts),) + a[k].shape
        assert batch[k].dtype == dtype
    for i, t in enumerate(ts):
        single = interpolate(a, b, t)
        for k in a:
            assert torch.equal(batch[k][i], single[k]), (k, t)
    # in particular the endpoints of the batch are exactly a and b
    for k in a:
        assert torch.equal(batch[k][0], a[k])
        assert torch.equal(batch[k][-1], b[k])


def test_interpolate_many_accepts_float64_tensor_ts_for_float32_points():
    a, b = _random_point(9), _random_point(10)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    batch = interpolate_many(a, b, ts)
    for k in a:
        assert batch[k].dtype == torch.float32
        assert torch.equal(batch[k][2], interpolate(a, b, 0.5)[k])


# -- distance --------------------------------------------------------------------------------


def test_distance_equals_norm_of_flattened_difference():
    a, b = _random_point(11), _random_point(12)
    ref = torch.linalg.vector_norm(flatten(a).double() - flatten(b).double()).item()
    assert distance(a, b) == pytest.approx(ref, rel=1e-14)
    assert distance(b, a) == pytest.approx(ref, rel=1e-14)
    assert distance(a, a) == 0.0


def test_distance_hand_computed():
    a = {"w": torch.zeros(2), "b": torch.zeros(1)}
    b = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}
    assert distance(a, b) == 13.0


def test_distance_accumulates_in_float64():
    # float32 accumulation of 1e6 squares of 1e-3 would lose precision; float64 gives sqrt(1) = 1
    a = {"w": torch.zeros(1_000_000)}
    b = {"w": torch.full((1_000_000,), 1e-3)}
    ref = math.sqrt(1_000_000 * float(torch.tensor(1e-3, dtype=torch.float32).double()) ** 2)
    assert distance(a, b) == pytest.approx(ref, rel=1e-12)


# -- stack_points ----------------------------------------------------------------------------


def test_stack_points():
    points = [_random_point(s) for s in (13, 14, 15)]
    stacked = stack_points(points)
    for k in points[0]:
        assert stacked[k].shape == (3,) + points[0][k].shape
        for i, p in enumerate(points):
            assert torch.equal(stacked[k][i], p[k])
    with pytest.raises(ValueError, match="empty"):
        stack_points([])


# -- permutation symmetry --------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_permute_hidden_units_mlp_function_unchanged(bias):
    net = _mlp(bias, seed=20)
    point = point_from_module(net)
    original = {k: v.clone() for k, v in point.items()}
    perm = [3, 0, 5, 1, 4, 2]
    permuted = permute_hidden_units(point, "0", "2", perm)

    # the parameters really moved ...
    assert not torch.equal(permuted["0.weight"], point["0.weight"])
    assert not torch.equal(permuted["2.weight"], point["2.weight"])
    assert distance(point, permuted) > 0.1
    for i, j in enumerate(perm):
        assert torch.equal(permuted["0.weight"][i], point["0.weight"][j])
        assert torch.equal(permuted["2.weight"][:, i], point["2.weight"][:, j])
        if bias:
            assert permuted["0.bias"][i] == point["0.bias"][j]
    if bias:
        assert torch.equal(permuted["2.bias"], point["2.bias"])  # the next layer's bias is untouched
    # ... the input point is untouched ...
    for k in point:
        assert torch.equal(point[k], original[k])
    # ... and the function is the same
    x = torch.randn(17, 3, generator=_gen(21), dtype=torch.float64)
    expected = net(x)
    got = functional_call(net, permuted, (x,))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # sanity: a non-symmetric change (permuting only one layer) does change the function
    broken = dict(point)
    broken["0.weight"] = permuted["0.weight"]
    assert not torch.allclose(functional_call(net, broken, (x,)), expected, atol=1e-6)


def test_permute_hidden_units_conv_channels_function_unchanged():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3)).double()
    g = _gen(30)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    point = point_from_module(net)
    perm = torch.tensor([2, 3, 1, 0])
    permuted = permute_hidden_units(point, "0", "2", perm)
    assert not torch.equal(permuted["0.weight"], point["0.weight"])
    assert not torch.equal(permuted["0.bias"], point["0.bias"])
    assert not torch.equal(permuted["2.weight"], point["2.weight"])
    assert torch.equal(permuted["0.weight"][0], point["0.weight"][2])
    assert torch.equal(permuted["2.weight"][:, 0], point["2.weight"][:, 2])
    x = torch.randn(3, 2, 6, 6, generator=_gen(31), dtype=torch.float64)
    torch.testing.assert_close(functional_call(net, permuted, (x,)), net(x), rtol=0, atol=1e-12)


def test_permute_identity_is_a_copy():
    point = point_from_module(_mlp(True, seed=32))
    same = permute_hidden_units(point, "0", "2", list(range(6)))
    for k in point:
        assert torch.equal(same[k], point[k])
        assert same[k].data_ptr() != point[k].data_ptr()


@pytest.mark.parametrize("perm", [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 6], [-1, 0, 1, 2, 3, 4]])
def test_permute_invalid_permutation_raises(perm):
    point = point_from_module(_mlp(True, seed=33))
    with pytest.raises(ValueError, match=r"is not a permutation of the 6 units of layer '0'"):
        permute_hidden_units(point, "0", "2", perm)


def test_permute_missing_layer_raises_with_available_names():
    point = point_from_module(_mlp(True, seed=34))
    with pytest.raises(ArchitectureMismatch, match=r"no parameter named '1\.weight'.*available: 0\.weight"):
        permute_hidden_units(point, "1", "2", list(range(6)))
    with pytest.raises(ArchitectureMismatch, match=r"no parameter named 'fc\.weight'"):
        permute_hidden_units(point, "0", "fc", list(range(6)))


def test_permute_next_layer_of_wrong_width_raises():
    point = point_from_module(_mlp(True, seed=35))
    # "0.weight" has 3 input columns, not the 6 units of layer "0"
    with pytest.raises(ArchitectureMismatch, match=r"0\.weight has shape \(6, 3\)"):
        permute_hidden_units(point, "0", "0", list(range(6)))


# -- point_from_module / load_point_into -----------------------------------------------------


def test_point_from_module_refuses_batchnorm_with_running_stats():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(BatchNorm1d\).*track_running_stats=False"):
        point_from_module(net)


def test_point_from_module_refuses_nested_batchnorm_naming_full_path():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    with pytest.raises(UnsupportedModelError, match=r"layer '0\.1' \(BatchNorm2d\)"):
        point_from_module(net)


def test_point_from_module_accepts_batchnorm_without_running_stats():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.ReLU())
    point = point_from_module(net)
    assert set(point) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert point["1.weight"].shape == (3,)


def test_point_from_module_without_parameters_raises():
    with pytest.raises(ArchitectureMismatch, match="ReLU has no parameters"):
        point_from_module(nn.ReLU())


def test_point_from_module_returns_detached_clones():
    net = _mlp(True, seed=40)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    point = point_from_module(net)
    assert list(point) == [k for k, _ in net.named_parameters()]
    for k, v in point.items():
        assert not v.requires_grad
        assert torch.equal(v, before[k])
        v.add_(1.0)
    for k, p in net.named_parameters():
        assert torch.equal(p.detach(), before[k]), k
        assert p.requires_grad


def test_load_point_into_writes_parameters_and_checks_architecture():
    net = _mlp(True, seed=41)
    other = point_from_module(_mlp(True, seed=42))
    returned = load_point_into(net, other)
    assert returned is net
    for k, p in net.named_parameters():
        assert torch.equal(p.detach(), other[k])
    bad = dict(other)
    bad["2.weight"] = torch.zeros(3, 6, dtype=torch.float64)
    with pytest.raises(ArchitectureMismatch, match=r"2\.weight: shape \(2, 6\) in module vs \(3, 6\) in point"):
        load_point_into(net, bad)


# -- check_compatible ------------------------------------------------------------------------


def test_check_compatible_accepts_same_architecture():
    check_compatible(_random_point(50), _random_point(51))  # no exception


def test_check_compatible_names_shape_difference():
    a = _random_point(52)
    b = dict(a)
    b["2.weight"] = torch.zeros(4, 5)
    with pytest.raises(ArchitectureMismatch, match=r"2\.weight: shape \(2, 5\) in left vs \(4, 5\) in right"):
        check_compatible(a, b, "left", "right")


def test_check_compatible_names_missing_and_extra_parameters():
    a = _random_point(53)
    b = {k: v for k, v in a.items() if k != "0.bias"}
    b["extra.weight"] = torch.zeros(1)
    with pytest.raises(ArchitectureMismatch) as info:
        check_compatible(a, b, "first", "second")
    message = str(info.value)
    assert "only in first: 0.bias" in message
    assert "only in second: extra.weight" in message


def test_check_compatible_names_dtype_difference():
    a = _random_point(54)
    b = dict(a)
    b["0.bias"] = a["0.bias"].double()
    with pytest.raises(ArchitectureMismatch, match=r"0\.bias: dtype torch\.float32 in a vs torch\.float64 in b"):
        check_compatible(a, b)

"""Fast evaluation paths against their slow references: pooling bit for bit, batched matmuls in float64,
the auto probe's reuse of its values, and the measured thread count."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from modeconnect.energy import Energy, Strategy
from modeconnect.errors import ConfigError
from modeconnect.fast_eval import MatmulPlan, fast_copy
from modeconnect.models import mnist_convnet
from modeconnect.models.pooling import MaxPool2x2, max_pool_2x2
from modeconnect.params import interpolate, point_from_module, stack_points


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


# -- pooling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 3, 7, 9), (1, 1, 2, 3), (4, 5, 28, 28)])
def test_max_pool_2x2_is_bit_identical_to_max_pool2d(shape):
    g = _gen(0)
    x = torch.randn(shape, generator=g)
    x = torch.where(torch.rand(shape, generator=g) < 0.3, torch.zeros(()), x).round(decimals=1)  # many ties
    x.view(-1)[::17] = float("-inf")
    x.view(-1)[5] = float("nan")
    ref = nn.MaxPool2d(2)(x)
    fast = MaxPool2x2()(x)
    assert fast.shape == ref.shape
    assert torch.equal(torch.isnan(fast), torch.isnan(ref))
    assert torch.equal(torch.nan_to_num(fast), torch.nan_to_num(ref))
    # under vmap (as in batched energies) and in float64
    xs = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    assert torch.equal(vmap(max_pool_2x2)(xs), torch.stack([nn.MaxPool2d(2)(v) for v in xs]))


@pytest.mark.parametrize("case", ["ties", "nan-inf", "odd", "small"])
def test_max_pool_2x2_trains_exactly_like_max_pool2d(case):
    """In training the layer uses max_pool2d's indices and backward: gradients with tied maxima, NaN and -inf
    route to the same elements (large inputs take the channels_last index path, small ones max_pool2d)."""
    shape = {"ties": (8, 8, 28, 28), "nan-inf": (4, 8, 24, 24), "odd": (4, 8, 27, 29), "small": (2, 3, 6, 6)}[case]
    g = _gen(1)
    x = torch.relu(torch.randn(shape, generator=g)).round(decimals=1)
    x[:, :, : shape[2] // 2] = 1.0  # every window of the top half is a tie
    if case == "nan-inf":
        x.view(-1)[::97] = float("nan")
        x.view(-1)[5::89] = float("-inf")
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)
    outs = []
    for layer in (nn.MaxPool2d(2), MaxPool2x2()):
        leaf = x.clone().requires_grad_(True)
        y = layer(leaf)
        y.backward(grad)
        outs.append((y.detach(), leaf.grad))
    assert torch.equal(torch.nan_to_num(outs[0][0]), torch.nan_to_num(outs[1][0])) and outs[1][0].is_contiguous()
    assert torch.equal(outs[0][1], outs[1][1])
    assert isinstance(MaxPool2x2(), nn.MaxPool2d) and MaxPool2x2().extra_repr() == nn.MaxPool2d(2).extra_repr()


def test_mnist_convnet_training_step_is_bit_identical_to_max_pool2d():
    fast = _randomize(mnist_convnet(4, 8, 16), 20)
    slow = nn.Sequential(OrderedDict((n, nn.MaxPool2d(2) if isinstance(m, nn.MaxPool2d) else m)
                                     for n, m in copy.deepcopy(fast).named_children()))
    x = torch.full((32, 1, 28, 28), -0.4242)  # MNIST's constant background: tied activations everywhere
    x[:, :, 10:18, 10:18] = torch.randn(32, 1, 8, 8, generator=_gen(21))
    y = torch.randint(0, 10, (32,), generator=_gen(22))
    grads = []
    for net in (slow, fast):
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        grads.append([p.grad for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_max_pool_2x2_under_function_transforms_is_max_pool2d():
    """jvp / vjp (e.g. the noise-stability code) see max_pool2d's derivative at ties, not torch.maximum's."""
    from torch.func import jvp, vjp

    x = torch.ones(2, 3, 6, 6)
    v = torch.randn(2, 3, 6, 6, generator=_gen(23))
    for layer_fn in (jvp,):
        ref = layer_fn(nn.MaxPool2d(2), (x,), (v,))[1]
        with torch.no_grad():
            got = layer_fn(MaxPool2x2(), (x,), (v,))[1]
        assert torch.equal(ref, got)
    u = torch.randn(2, 3, 3, 3, generator=_gen(24))
    assert torch.equal(vjp(nn.MaxPool2d(2), x)[1](u)[0], vjp(MaxPool2x2(), x)[1](u)[0])


def test_fast_copy_swaps_only_plain_2x2_pools_and_keeps_the_function():
    def convnet(pool):
        return nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 3, 3, padding=1)), ("relu", nn.ReLU()),
                                          ("pool", pool()), ("other", nn.MaxPool2d(3, stride=1)),
                                          ("flat", nn.Flatten()), ("out", nn.Linear(3 * 5 * 5, 4))]))
    slow = _randomize(convnet(lambda: nn.MaxPool2d(2)), 2)
    fast = fast_copy(slow)
    assert type(fast.pool) is MaxPool2x2 and type(fast.other) is nn.MaxPool2d and type(slow.pool) is nn.MaxPool2d
    assert list(point_from_module(fast)) == list(point_from_module(slow))
    x = torch.randn(6, 1, 14, 14, generator=_gen(3))
    with torch.no_grad():
        assert torch.equal(fast(x), slow(x))
    # ReLU -> pool runs as pool -> ReLU (in place: its input is the pool's fresh output)
    assert [n for n, _ in fast.named_children()][:3] == ["conv", "pool", "relu"] and fast.relu.inplace
    first = fast_copy(nn.Sequential(nn.ReLU(), nn.Linear(2, 2), nn.ReLU()))
    assert not first[0].inplace and first[2].inplace  # never in place on the caller's inputs
    x = -torch.ones(3, 2)
    first(x)
    assert torch.equal(x, -torch.ones(3, 2))


def test_mnist_energy_is_bit_identical_with_either_pool():
    """The papers' convnet (MaxPool2x2) and the same net built with nn.MaxPool2d give the same energies."""
    fast = mnist_convnet(4, 8, 16)
    slow = nn.Sequential(OrderedDict((n, nn.MaxPool2d(2) if isinstance(m, nn.MaxPool2d) else m)
                                     for n, m in fast.named_children()))
    a, b = point_from_module(_randomize(fast, 4)), point_from_module(_randomize(mnist_convnet(4, 8, 16), 5))
    x, y = torch.randn(20, 1, 28, 28, generator=_gen(6)), torch.randint(0, 10, (20,), generator=_gen(7))
    ts = torch.linspace(0, 1, 5)
    ref = []
    with torch.no_grad():
        for t in ts.tolist():
            out = functional_call(slow, interpolate(a, b, t), (x,))
            ref.append(float(nn.functional.cross_entropy(out, y, reduction="sum").double() / len(y)))
    for strategy in ("loop", "vmap"):
        got = Energy(fast, x, y, "cross_entropy", strategy=strategy).along_segment(a, b, ts)
        if strategy == "loop":
            assert got.tolist() == ref  # bit for bit
        else:
            assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-5)


# -- batched matmuls -----------------------------------------------------------------------------------
def _mlps():
    return {
        "1441-sigmoid": nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 1)),
        "flatten-relu-nobias": nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.ReLU(inplace=True),
                                             nn.Linear(5, 3), nn.GELU(), nn.Linear(3, 3)),
        "tanh-softplus": nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 7), nn.Softplus(), nn.Linear(7, 2)),
    }


def _data(name: str, metric: str):
    g = _gen(8)
    x = torch.randn(24, 2, 3, dtype=torch.float64, generator=g) if name == "flatten-relu-nobias" else \
        torch.randn(24, 1 if name == "1441-sigmoid" else 3, dtype=torch.float64, generator=g)
    outs = {"1441-sigmoid": 1, "flatten-relu-nobias": 3, "tanh-softplus": 2}[name]
    if metric in ("mse", "mae"):
        return x, torch.randn(24, outs, dtype=torch.float64, generator=g)
    return x, torch.randint(0, outs, (24,), generator=g)


def test_matmul_plan_recognises_plain_mlps_only():
    assert all(MatmulPlan.of(net) is not None for net in _mlps().values())
    assert MatmulPlan.of(mnist_convnet(2, 2, 4)) is None
    assert MatmulPlan.of(nn.Sequential(nn.ReLU(), nn.Linear(2, 2))) is None  # activation before any Linear
    assert MatmulPlan.of(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1))) is None  # not elementwise
    assert MatmulPlan.of(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))) is None
    assert MatmulPlan.of(nn.Linear(2, 2)) is None
    with pytest.raises(ConfigError, match="matmul"):
        Energy(mnist_convnet(2, 2, 4), torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), "error_rate",
               strategy="matmul")


@pytest.mark.parametrize("name", list(_mlps()))
@pytest.mark.parametrize("metric", ["mse", "mae", "cross_entropy", "error_rate"])
def test_matmul_strategy_matches_the_loop_in_float64(name, metric):
    net = _randomize(_mlps()[name].double(), 9)
    if metric in ("cross_entropy", "error_rate") and name == "1441-sigmoid":
        pytest.skip("one output: not a classifier")
    x, y = _data(name, metric)
    a, b = point_from_module(net), point_from_module(_randomize(_mlps()[name].double(), 10))
    ts = torch.linspace(0, 1, 13, dtype=torch.float64)
    loop = Energy(net, x, y, metric, strategy="loop")
    fast = Energy(net, x, y, metric, strategy="matmul", sample_batch_size=10, chunk_size=4)
    ref, got = loop.along_segment(a, b, ts), fast.along_segment(a, b, ts)
    if metric == "error_rate":
        assert torch.equal(got, ref)
    else:
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert got[0] == loop(a) and got[-1] == loop(b) if metric == "error_rate" else True
    points = stack_points([interpolate(a, b, 0.3), interpolate(a, b, 0.9), b])
    assert torch.allclose(fast.evaluate(points), loop.evaluate(points), rtol=1e-12, atol=1e-14)


def test_lerp_points_is_interpolate_many_bit_for_bit():
    from modeconnect.fast_eval import lerp_points
    from modeconnect.params import interpolate_many

    g = _gen(30)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g),
         "d": torch.randn(2, 2, dtype=torch.float64, generator=g)}
    b = {k: torch.randn(v.shape, dtype=v.dtype, generator=g) for k, v in a.items()}
    ts = torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), torch.rand(7, dtype=torch.float64, generator=g)])
    fast, ref = lerp_points(a, b, ts), interpolate_many(a, b, ts)
    assert all(torch.equal(fast[k], ref[k]) and fast[k].dtype == ref[k].dtype for k in a)
    assert torch.equal(fast["w"][0], a["w"]) and torch.equal(fast["w"][1], b["w"])


def test_matmul_chunks_fit_the_memory_budget_and_give_the_same_values():
    net = _randomize(_mlps()["tanh-softplus"].double(), 11)
    x, y = _data("tanh-softplus", "mse")
    a, b = point_from_module(net), point_from_module(_randomize(_mlps()["tanh-softplus"].double(), 12))
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)
    big = Energy(net, x, y, "mse", strategy="matmul")
    tiny = Energy(net, x, y, "mse", strategy="matmul", memory_budget_mb=7 * 24 * 8 * 2 / 2**20)  # 2 points
    assert big._chunk_points(Strategy.MATMUL) >= 9 and tiny._chunk_points(Strategy.MATMUL) == 2
    assert torch.allclose(tiny.along_segment(a, b, ts), big.along_segment(a, b, ts), rtol=1e-13)


def test_matmul_refuses_mismatched_targets_like_the_loop():
    net = _mlps()["1441-sigmoid"]
    energy = Energy(net, torch.rand(5, 1), torch.rand(5), "mse", strategy="matmul")
    with pytest.raises(ConfigError, match="shape"):
        energy(point_from_module(net))


# -- the auto probe and threads ------------------------------------------------------------------------
def test_auto_probe_reuses_its_values_and_matches_the_chosen_strategy():
    net = _randomize(_mlps()["tanh-softplus"].double(), 13)
    x, y = _data("tanh-softplus", "mse")
    a, b = point_from_module(net), point_from_module(_randomize(_mlps()["tanh-softplus"].double(), 14))
    ts = torch.linspace(0, 1, 20, dtype=torch.float64)
    auto = Energy(net, x, y, "mse", strategy="auto", chunk_size=8)
    counted = []
    run = auto._run
    auto._run = lambda strategy, lo, hi, *rest: counted.append((strategy, hi - lo)) or run(strategy, lo, hi, *rest)
    values = auto.along_segment(a, b, ts)
    chosen = auto.chosen_strategy
    assert chosen in (Strategy.LOOP, Strategy.VMAP, Strategy.MATMUL)
    probes = counted[:-1]  # loop, vmap, matmul on the first 8 points: twice each, once if hopeless
    assert all(n == 8 for _, n in probes) and [s for s, _ in probes][:2] == [Strategy.LOOP] * 2
    assert [s for s, _ in probes if s is not Strategy.LOOP][0] is Strategy.VMAP
    for strategy in (Strategy.VMAP, Strategy.MATMUL):
        assert 1 <= sum(s is strategy for s, _ in probes) <= 2
    assert counted[-1] == (chosen, 12)  # then only the 12 points not probed
    pinned = Energy(net, x, y, "mse", strategy=chosen.value, chunk_size=8)
    assert torch.allclose(values, pinned.along_segment(a, b, ts), rtol=1e-13)
    assert auto.n_evaluations == 20


def test_threads_auto_is_measured_recorded_and_scoped():
    net, previous = _mlps()["1441-sigmoid"], torch.get_num_threads()
    x = torch.rand(16, 1)
    energy = Energy(net, x, x, "mae", strategy="loop", threads="auto")
    assert energy.describe()["threads"] == "auto" and energy.describe()["chosen_threads"] is None
    energy(point_from_module(net))
    assert 1 <= energy.chosen_threads <= previous
    assert energy.describe()["chosen_threads"] == energy.chosen_threads
    assert torch.get_num_threads() == previous
    with energy.thread_scope():
        assert torch.get_num_threads() == energy.chosen_threads
    assert torch.get_num_threads() == previous
    assert "threads" not in Energy(net, x, x, "mae").describe()  # unset: not recorded (run identities unchanged)
    assert Energy(net, x, x, "mae", threads=1).describe()["chosen_threads"] == 1
    for bad in (0, "many", 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            Energy(net, x, x, "mae", threads=bad)


def test_modeconnect_threads_pins_auto_and_only_auto(monkeypatch):
    """MODECONNECT_THREADS turns threads='auto' into that count (recorded, nothing measured); a fixed or unset
    setting ignores it; a bad value is refused with the variable's name; the summary says how to pin."""
    from modeconnect.cli import format_summary

    net, previous = _mlps()["1441-sigmoid"], torch.get_num_threads()
    x = torch.rand(16, 1)
    monkeypatch.setenv("MODECONNECT_THREADS", "3")
    pinned = Energy(net, x, x, "mae", strategy="loop", threads="auto")
    assert pinned.threads == 3 and pinned.chosen_threads == 3 and pinned.describe()["threads"] == 3
    with pinned.thread_scope():
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == previous
    assert Energy(net, x, x, "mae", threads=1).threads == 1 and Energy(net, x, x, "mae").threads is None
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("MODECONNECT_THREADS", bad)
        with pytest.raises(ConfigError, match="MODECONNECT_THREADS"):
            Energy(net, x, x, "mae", threads="auto")
    monkeypatch.delenv("MODECONNECT_THREADS")
    measured = Energy(net, x, x, "mae", strategy="auto", threads="auto")
    measured.along_segment(point_from_module(net), point_from_module(net), torch.linspace(0, 1, 4))
    result = {"connected": True, "reason": "connected", "message": "ok", "n_beads": 0, "normalized_length": 1.0,
              "path_length": 1.0, "distance": 1.0, "threshold": 0.1, "tolerance": 1.0, "endpoint_energies": [0.0, 0.0],
              "wall_time_s": 1.0, "energy": measured.describe()}
    line = [ln for ln in format_summary(result).splitlines() if ln.startswith("evaluation")]
    n = measured.chosen_threads
    assert line == [f"evaluation         strategy {measured.chosen_strategy.value} (measured), {n} torch "
                    f"thread{'s' if n != 1 else ''} (measured; MODECONNECT_THREADS={n} pins it to repeat this run "
                    "bit for bit)"]
    assert not any(ln.startswith("evaluation") for ln in format_summary({**result, "energy": pinned.describe()})
                   .splitlines())


def test_sample_batches_are_built_once_per_device_and_dtype():
    net = _mlps()["1441-sigmoid"]
    x = torch.rand(10, 1)
    energy = Energy(net, x, x, "mae", sample_batch_size=4)
    first = energy._sample_batches(torch.zeros(1))
    assert energy._sample_batches(torch.zeros(1)) is first and len(first[0]) == 3
    assert energy._sample_batches(torch.zeros(1, dtype=torch.float64))[0][0][0].dtype == torch.float64


# -- the segment memo ----------------------------------------------------------------------------------
def test_loop_energy_remembers_segment_values_bit_for_bit():
    net = _randomize(_mlps()["tanh-softplus"].double(), 15)
    x, y = _data("tanh-softplus", "mae")
    a, b = point_from_module(net), point_from_module(_randomize(_mlps()["tanh-softplus"].double(), 16))
    energy, fresh = Energy(net, x, y, "mae", strategy="loop"), Energy(net, x, y, "mae", strategy="loop")
    coarse, fine = torch.linspace(0, 1, 33, dtype=torch.float64), torch.linspace(0, 1, 65, dtype=torch.float64)
    assert torch.equal(fine[::2], coarse)  # the certification grid holds DSS's grid exactly
    energy.along_segment(a, b, coarse)
    before = energy.n_evaluations
    got = energy.along_segment(a, b, fine)
    assert energy.n_evaluations - before == 32 and energy.memo.hits == 33  # only the new points are evaluated
    assert torch.equal(got, fresh.along_segment(a, b, fine))
    with torch.no_grad():
        b["0.weight"].add_(1.0)  # an end point changed in place: its version moves on, nothing is reused
    hits = energy.memo.hits
    assert torch.equal(energy.along_segment(a, b, coarse), fresh.along_segment(a, b, coarse))
    assert energy.memo.hits == hits
    vmap_energy = Energy(net, x, y, "mae", strategy="vmap")
    vmap_energy.along_segment(a, b, coarse)
    vmap_energy.along_segment(a, b, coarse)
    assert vmap_energy.memo.hits == 0  # batched values may depend on the chunk: never remembered


def test_segment_memo_keeps_only_recent_segments():
    from modeconnect.energy_memo import SegmentMemo

    memo = SegmentMemo(capacity=2)
    points = [{"w": torch.full((2,), float(i))} for i in range(4)]
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    for i in range(3):
        memo.store(points[i], points[i + 1], ts, torch.tensor([i, i + 0.5], dtype=torch.float64))
    assert not memo.lookup(points[0], points[1], ts)[0].any()  # evicted
    known, values = memo.lookup(points[2], points[3], ts)
    assert known.all() and values.tolist() == [2.0, 2.5]
    assert not memo.lookup(points[3], points[2], ts)[0].any()  # direction matters

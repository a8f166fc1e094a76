"""Buffers that are not BatchNorm statistics travel in the point; models a point cannot describe are refused."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from modeconnect import Energy, Objective, connect
from modeconnect.batchnorm import plain_buffer_names
from modeconnect.errors import ArchitectureMismatch, UnsupportedModelError
from modeconnect.params import (
    check_compatible,
    distance,
    interpolate,
    interpolate_many,
    load_point_into,
    point_from_module,
)
from modeconnect.train import TrainConfig, train_to_target

G = torch.Generator().manual_seed(0)
X = torch.randn(40, 4, generator=G, dtype=torch.float64)
Y = torch.sin(X.sum(1, keepdim=True))


class Scaled(nn.Module):
    """A linear layer whose output is multiplied by a registered (non-trainable) buffer."""

    def __init__(self, scale: float, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, 1).double()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


class Counted(Scaled):
    """:class:`Scaled` with an integer counter buffer and a fixed index buffer."""

    def __init__(self, scale: float, count: int, seed: int = 0) -> None:
        super().__init__(scale, seed)
        self.register_buffer("count", torch.tensor(count))
        self.register_buffer("order", torch.arange(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, self.order])


def own_loss(model: nn.Module) -> float:
    """The model's own eval-mode loss, the reference the energy must reproduce."""
    with torch.no_grad():
        return float(F.mse_loss(model.eval()(X), Y))


def sn_net(seed: int, steps: int) -> nn.Module:
    """A spectral-norm MLP trained for ``steps`` steps (train mode updates its ``_u``/``_v`` buffers)."""
    torch.manual_seed(seed)
    net = nn.Sequential(parametrizations.spectral_norm(nn.Linear(4, 8)), nn.Tanh(),
                        parametrizations.spectral_norm(nn.Linear(8, 1))).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(net.train()(X), Y).backward()
        opt.step()
    return net.eval()


# -- plain buffers are carried in the point ---------------------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_spectral_norm_energy_equals_each_models_own_forward(strategy):
    a, b, template = sn_net(1, 30), sn_net(2, 50), sn_net(3, 0)
    assert "0.parametrizations.weight.0._u" in plain_buffer_names(a)
    for energy in (Energy(a, X, Y, "mse", strategy=strategy), Energy(template, X, Y, "mse", strategy=strategy)):
        pa, pb = energy.point_of(a), energy.point_of(b)
        assert energy(pa) == pytest.approx(own_loss(a), rel=1e-6)
        assert energy(pb) == pytest.approx(own_loss(b), rel=1e-6)
        ends = energy.along_segment(pa, pb, [0.0, 1.0]).tolist()
        assert ends == pytest.approx([own_loss(a), own_loss(b)], rel=1e-6)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_plain_buffer_is_read_from_the_point_not_the_template(strategy):
    a, b = Scaled(1.0, seed=1), Scaled(3.0, seed=2)
    energy = Energy(a, X, Y, "mse", strategy=strategy)
    pa, pb = point_from_module(a), point_from_module(b)
    assert list(pb) == ["lin.weight", "lin.bias", "buffer:scale"]
    assert energy(pb) == pytest.approx(own_loss(b), rel=1e-12)
    # halfway, the scale is halfway too; path geometry ignores it
    mid = interpolate(pa, pb, 0.5)
    assert float(mid["buffer:scale"]) == 2.0
    assert distance(pa, pb) == pytest.approx(distance({k: v for k, v in pa.items() if k != "buffer:scale"},
                                                      {k: v for k, v in pb.items() if k != "buffer:scale"}))
    assert energy.describe()["buffers"] == ["scale"]


def test_equal_buffer_interpolates_to_itself_exactly():
    a, b = Scaled(0.3, seed=1), Scaled(0.3, seed=2)
    pa, pb = point_from_module(a), point_from_module(b)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert torch.equal(interpolate(pa, pb, t)["buffer:scale"], pa["buffer:scale"])
    many = interpolate_many(pa, pb, [0.0, 0.37, 1.0])["buffer:scale"]
    assert torch.equal(many, pa["buffer:scale"].expand(3))


def test_integer_buffers_interpolate_without_breaking():
    a, b = Counted(1.0, count=3, seed=1), Counted(2.0, count=10, seed=2)
    pa, pb = point_from_module(a), point_from_module(b)
    ts = [0.0, 0.25, 0.5, 1.0]
    many = interpolate_many(pa, pb, ts)
    for i, t in enumerate(ts):
        one = interpolate(pa, pb, t)
        for k in ("buffer:count", "buffer:order"):
            assert one[k].dtype == torch.long and torch.equal(one[k], many[k][i])
        assert torch.equal(one["buffer:order"], torch.arange(4))  # equal in both: unchanged
    assert [int(c) for c in many["buffer:count"]] == [3, 5, 6, 10]  # rounded; exact at the ends
    energy = Energy(a, X, Y, "mse", strategy="vmap")
    assert energy.along_segment(pa, pb, [0.0, 1.0]).tolist() == pytest.approx([own_loss(a), own_loss(b)], rel=1e-12)


@pytest.mark.parametrize("policy", ["recompute", "interpolate", "freeze"])
def test_batchnorm_counters_stay_out_and_plain_buffers_stay_in(policy):
    net = nn.Sequential(Scaled(2.0), nn.BatchNorm1d(1).double())
    batches = [X[:20], X[20:]]
    extra = {"bn_batches": batches} if policy == "recompute" else {}
    energy = Energy(net, X, Y, "mse", strategy="loop", batchnorm=policy, **extra)
    other = nn.Sequential(Scaled(5.0), nn.BatchNorm1d(1).double())
    point = energy.point_of(other)
    assert "buffer:0.scale" in point and not any("num_batches_tracked" in k for k in point)
    assert ("buffer:1.running_mean" in point) == (policy == "interpolate")
    stats = energy.statistics_at(point)
    assert set(stats) == {"1.running_mean", "1.running_var"}
    if policy == "recompute":  # the statistics are those of the point's own scale, not the template's
        with torch.no_grad():
            expected = torch.stack([other[0](x).mean(0) for x in batches]).mean(0)
        torch.testing.assert_close(stats["1.running_mean"], expected)


def test_training_keeps_buffers_and_load_point_into_writes_them():
    a, b = Scaled(1.0, seed=1), Scaled(3.0, seed=2)
    energy = Energy(a, X, Y, "mse", strategy="loop")
    start = point_from_module(b)
    out = energy.train_forward(start, X)
    torch.testing.assert_close(out, b(X))
    point, status = train_to_target(start, energy=energy, objective=Objective(X, Y, "mse"), target=0.0,
                                    config=TrainConfig(lr=1e-2, check_every=5, max_steps=5), seed=0)
    assert status.steps == 5 and point.keys() == start.keys()
    assert torch.equal(point["buffer:scale"], start["buffer:scale"])
    target = Scaled(7.0)
    load_point_into(target, point)
    assert float(target.scale) == 3.0 and energy(point) == pytest.approx(own_loss(target), rel=1e-12)


def test_points_without_their_buffers_are_refused_with_a_pointer():
    a = Scaled(1.0)
    params_only = dict(a.named_parameters())
    with pytest.raises(ArchitectureMismatch, match=r"only in left: buffer:scale.*point_from_module"):
        check_compatible(point_from_module(a), params_only, "left", "right")


def test_connect_uses_endpoint_b_own_buffers():
    a, b = Scaled(1.0, seed=1), Scaled(1.0, seed=1)
    with torch.no_grad():  # b computes the same function as a with its weights halved and its scale doubled
        b.lin.weight.mul_(0.5)
        b.lin.bias.mul_(0.5)
        b.scale.fill_(2.0)
    energy = Energy(a, X, Y, "mse", strategy="loop")
    result = connect(a, b, energy, threshold=own_loss(a) * 1.5, objective=Objective(X, Y, "mse"), certify_path=False)
    assert result.summary()["endpoint_energies"] == pytest.approx([own_loss(a), own_loss(b)], rel=1e-12)


# -- models a point cannot describe ------------------------------------------------------------


def test_meta_device_model_is_refused_with_what_to_do():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to("meta")
    with pytest.raises(UnsupportedModelError, match=r"no data.*'meta' device.*to_empty"):
        point_from_module(net)
    with pytest.raises(UnsupportedModelError, match="meta"):
        Energy(net, X, Y, "mse")


@pytest.mark.parametrize("kind", ["spectral_norm", "weight_norm"])
def test_hook_based_reparametrizations_are_refused_naming_the_layer(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook-based weight_norm
        layer = getattr(nn.utils, kind)(nn.Linear(4, 8).double())
    net = nn.Sequential(nn.Linear(4, 4).double(), nn.Sequential(layer, nn.Tanh()))
    net(X)  # a forward with gradients leaves a computed weight behind, which made copying the model fail
    message = rf"layer '1\.0' \(Linear\).*hook-based.*{kind}.*parametrizations\.{kind}.*remove_{kind}"
    with pytest.raises(UnsupportedModelError, match=message):
        point_from_module(net)
    with pytest.raises(UnsupportedModelError, match=message):
        Energy(net, X, Y, "mse")

"""BatchNorm policies: recompute, interpolate, freeze; models without BatchNorm are unaffected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modeconnect.batchnorm import BatchNormPolicy, recompute_statistics, statistic_names
from modeconnect.energy import Energy
from modeconnect.errors import ConfigError, UnsupportedModelError
from modeconnect.models import cifar_convnet
from modeconnect.params import distance, interpolate, load_point_into, point_from_module
from modeconnect.path import Path
from modeconnect.tasks._init import build_without_global_rng, seeded
from modeconnect.train import Objective, TrainConfig, train_to_target

G = torch.Generator().manual_seed(0)


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def trained_like(seed: int) -> nn.Module:
    """A BN net with non-trivial running statistics (a few train-mode forwards)."""
    net = seeded(bn_net, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            net.train()(torch.randn(16, 3, generator=g) * (1 + seed) + seed)
    return net.eval()


X = torch.randn(20, 3, generator=G)
Y = torch.randint(0, 2, (20,), generator=G)
BATCHES = [torch.randn(8, 3, generator=G) for _ in range(3)]


def test_no_policy_is_refused_with_a_pointer_to_the_policies():
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(BatchNorm1d\).*batchnorm='recompute'"):
        point_from_module(bn_net())
    with pytest.raises(UnsupportedModelError, match="interpolate"):
        Energy(bn_net(), X, Y, "cross_entropy")


def test_recompute_matches_a_manual_pass():
    net = trained_like(1)
    params = dict(net.named_parameters())
    stats = recompute_statistics(net, params, BATCHES)
    with torch.no_grad():
        h = [net[0](b) for b in BATCHES]
    torch.testing.assert_close(stats["1.running_mean"], torch.stack([z.mean(0) for z in h]).mean(0))
    torch.testing.assert_close(stats["1.running_var"], torch.stack([z.var(0, unbiased=True) for z in h]).mean(0))
    # the module's own buffers, mode and momentum are untouched
    assert not net.training and net[1].momentum == 0.1 and int(net[1].num_batches_tracked) == 3
    # and the energy evaluates with exactly those statistics, in eval mode
    energy = Energy(net, X, Y, "cross_entropy", strategy="loop", batchnorm="recompute", bn_batches=BATCHES)
    ref = build_without_global_rng(bn_net).eval()
    load_point_into(ref, point_from_module(net, "recompute"))
    ref[1].running_mean.copy_(stats["1.running_mean"])
    ref[1].running_var.copy_(stats["1.running_var"])
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(ref(X), Y))
    assert energy(point_from_module(net, "recompute")) == pytest.approx(expected, rel=1e-6)
    assert energy.describe()["batchnorm"]["policy"] == "recompute"
    assert energy.describe()["batchnorm"]["n_batches"] == 3


def test_interpolate_reproduces_each_endpoint_exactly_and_keeps_geometry_on_parameters():
    a_net, b_net = trained_like(1), trained_like(2)
    a, b = point_from_module(a_net, "interpolate"), point_from_module(b_net, "interpolate")
    assert "buffer:1.running_mean" in a and "buffer:1.num_batches_tracked" not in a
    energy = Energy(a_net, X, Y, "cross_entropy", strategy="vmap", batchnorm="interpolate")
    with torch.no_grad():
        expected = [float(nn.functional.cross_entropy(m(X), Y)) for m in (a_net, b_net)]
    values = energy.along_segment(a, b, [0.0, 1.0]).tolist()
    assert values == pytest.approx(expected, rel=1e-6, abs=0)
    mid = interpolate(a, b, 0.5)
    torch.testing.assert_close(mid["buffer:1.running_var"], (a["buffer:1.running_var"] + b["buffer:1.running_var"]) / 2)
    params_only = {k: v for k, v in a.items() if not k.startswith("buffer:")}
    assert distance(a, b) == pytest.approx(distance(params_only, {k: b[k] for k in params_only}))
    assert Path([a, b]).length == pytest.approx(distance(params_only, {k: b[k] for k in params_only}))
    loop = Energy(a_net, X, Y, "cross_entropy", strategy="loop", batchnorm="interpolate")
    torch.testing.assert_close(energy.along_segment(a, b, torch.linspace(0, 1, 5)),
                               loop.along_segment(a, b, torch.linspace(0, 1, 5)), rtol=1e-6, atol=1e-7)


def test_freeze_uses_the_same_statistics_everywhere():
    a_net, b_net = trained_like(1), trained_like(2)
    frozen = {n: t for n, t in a_net.named_buffers() if n in statistic_names(a_net)}
    energy = Energy(a_net, X, Y, "cross_entropy", strategy="vmap", batchnorm="freeze", bn_statistics=frozen,
                    bn_source="endpoint A")
    a, b = point_from_module(a_net, "freeze"), point_from_module(b_net, "freeze")
    assert not any(k.startswith("buffer:") for k in a)
    for t in (0.0, 0.3, 1.0):
        p = interpolate(a, b, t)
        stats = energy.statistics_at(p)
        assert all(torch.equal(stats[k], frozen[k]) for k in frozen)
    b_with_a_stats = build_without_global_rng(bn_net).eval()
    b_with_a_stats.load_state_dict(b_net.state_dict())
    b_with_a_stats[1].running_mean.copy_(frozen["1.running_mean"])
    b_with_a_stats[1].running_var.copy_(frozen["1.running_var"])
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(b_with_a_stats(X), Y))
    assert energy(b) == pytest.approx(expected, rel=1e-6)
    loop = Energy(a_net, X, Y, "cross_entropy", strategy="loop", batchnorm="freeze", bn_statistics=frozen)
    torch.testing.assert_close(energy.along_segment(a, b, [0.0, 0.5, 1.0]),
                               loop.along_segment(a, b, [0.0, 0.5, 1.0]))
    assert energy.describe()["batchnorm"] == {"policy": "freeze", "layers": ["1"], "source": "endpoint A"}


def test_policy_settings_are_checked():
    with pytest.raises(ConfigError, match="bn_batches"):
        Energy(bn_net(), X, Y, "cross_entropy", batchnorm="recompute")
    with pytest.raises(ConfigError, match="unknown BatchNorm policy"):
        Energy(bn_net(), X, Y, "cross_entropy", batchnorm="average")
    with pytest.raises(ConfigError, match="bn_batches"):
        Energy(nn.Linear(3, 2), X, Y, "cross_entropy", bn_batches=BATCHES)


def test_models_without_batchnorm_are_unaffected():
    net = seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 0)
    plain = Energy(net, X, Y, "cross_entropy", strategy="loop")
    with_policy = Energy(net, X, Y, "cross_entropy", strategy="loop", batchnorm="recompute")
    p = point_from_module(net)
    assert point_from_module(net, "interpolate").keys() == p.keys()
    assert plain(p) == with_policy(p)
    assert plain.describe()["batchnorm"] is None and with_policy.describe()["batchnorm"] is None


@pytest.mark.parametrize("policy", list(BatchNormPolicy))
def test_training_a_bn_model_under_each_policy(policy):
    x = torch.randn(8, 3, 32, 32, generator=G)
    y = torch.randint(0, 10, (8,), generator=G)
    build = lambda: cifar_convnet(3, 4, 8, 6, batchnorm=True)  # noqa: E731
    model = seeded(build, 0)
    extra = {"bn_batches": [x[:4], x[4:]]} if policy is BatchNormPolicy.RECOMPUTE else {}
    energy = Energy(model, x, y, "cross_entropy", strategy="loop", batchnorm=policy, **extra)
    start = energy.point_of(model)
    before = energy(start)
    point, status = train_to_target(start, energy=energy, objective=Objective(x, y, "cross_entropy"), target=0.0,
                                    config=TrainConfig(lr=1e-2, check_every=10, max_steps=20), seed=0)
    assert status.steps == 20 and energy(point) < before
    assert point.keys() == start.keys()
    if policy is BatchNormPolicy.INTERPOLATE:  # the statistics moved with training (running average)
        assert not torch.equal(point["buffer:bn1.running_mean"], start["buffer:bn1.running_mean"])
    assert int(energy.model.bn1.num_batches_tracked) == 0  # the energy's own model is never updated

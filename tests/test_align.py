"""Permutation alignment (weight / activation matching), permutation specs and REPAIR."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconnect.align import (
    AlignMethod,
    PermutationSpec,
    Repair,
    SpecBuilder,
    align,
    apply_permutations,
    default_repair_sites,
    infer_spec,
    random_permutations,
    weight_matching,
)
from modeconnect.batchnorm import split_point
from modeconnect.errors import ArchitectureMismatch, ConfigError, UnsupportedModelError
from modeconnect.models import cifar_convnet, kuditipudi_convnet, mnist_convnet
from modeconnect.params import distance, interpolate, point_from_module
from modeconnect.tasks._init import seeded

pytestmark = pytest.mark.usefixtures("one_torch_thread")


G = torch.Generator().manual_seed(0)
X_VEC = torch.randn(32, 3, generator=G, dtype=torch.float64)
X_IMG = torch.randn(16, 3, 8, 8, generator=G, dtype=torch.float64)
X_MNIST = torch.randn(8, 1, 28, 28, generator=G, dtype=torch.float64)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2))


def small_cifar(batchnorm: bool) -> nn.Module:
    """The CIFAR convnet builder on 8x8 inputs: after two pools the first Linear reads 6 blocks of 2 * 2."""
    net = cifar_convnet(conv1=4, conv2=6, fc1=16, fc2=8, batchnorm=batchnorm)
    net.fc1 = nn.Linear(6 * 2 * 2, 16)
    return net


class ResMLP(nn.Module):
    """x -> h = inp(x); h = h + fc2(relu(fc1(h))); out(tanh(h)): fc2 must write in the order of inp."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.fc1, self.act, self.fc2, self.out = (nn.Linear(3, 6), nn.Linear(6, 5), nn.ReLU(),
                                                           nn.Linear(5, 6), nn.Linear(6, 2))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.fc2(self.act(self.fc1(h)))
        return self.out(torch.tanh(h))


class ResConv(nn.Module):
    """A BatchNorm residual block on 8x8 images: conv2/bn2 write into the stream of conv_in/bn_in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in, self.bn_in = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn_in(self.conv_in(x)))
        h = torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))
        return self.fc(self.pool(h).flatten(1))


def res_mlp_spec(net: ResMLP) -> PermutationSpec:
    return (SpecBuilder(net).layer("inp", None, "res").layer("fc1", "res", "hid").layer("fc2", "hid", "res")
            .layer("out", "res", None).probe("hid", "act").probe("res", "inp", "fc2").build())


def res_conv_spec(net: ResConv) -> PermutationSpec:
    return (SpecBuilder(net).conv("conv_in", None, "res").norm("bn_in", "res").conv("conv1", "res", "mid")
            .norm("bn1", "mid").conv("conv2", "mid", "res").norm("bn2", "res")
            .linear("fc", "res", None, in_block=16).probe("res", "bn_in", "bn2").probe("mid", "bn1").build())


def build(factory, seed: int, x: torch.Tensor | None = None) -> nn.Module:
    """A float64 eval-mode model; BatchNorm statistics made non-trivial by a few train-mode forwards on ``x``."""
    net = seeded(factory, seed).double()
    if any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules()):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(3):
                net.train()(x * (1 + seed) + torch.randn(x.shape, generator=g, dtype=x.dtype))
    return net.eval()


def outputs(net: nn.Module, point, x) -> torch.Tensor:
    params, buffers = split_point(point)
    with torch.no_grad():
        return functional_call(net.eval(), {**params, **buffers}, (x,))


CASES = {  # name: (factory, inputs, spec factory or None)
    "mlp": (mlp, X_VEC, None),
    "mnist-convnet": (lambda: mnist_convnet(conv1=3, conv2=4, fc=6), X_MNIST, None),
    "kuditipudi-convnet": (lambda: kuditipudi_convnet(width=3, n_layers=2), X_MNIST, None),
    "cifar-convnet": (lambda: small_cifar(False), X_IMG, None),
    "cifar-convnet-bn": (lambda: small_cifar(True), X_IMG, None),
    "residual-mlp": (ResMLP, X_VEC, res_mlp_spec),
    "residual-convnet-bn": (ResConv, X_IMG, res_conv_spec),
}


def endpoints(name: str):
    factory, x, make_spec = CASES[name]
    net_a, net_b = build(factory, 0, x), build(factory, 1, x)
    a, b = point_from_module(net_a, "interpolate"), point_from_module(net_b, "interpolate")
    return net_a, a, b, x, (make_spec(net_a) if make_spec else None)


@pytest.mark.parametrize("method", ["weight", "activation"])
@pytest.mark.parametrize("name", list(CASES))
def test_aligned_point_computes_exactly_the_same_function(name, method):
    net, a, b, x, spec = endpoints(name)
    result = align(a, b, net, method, inputs=x, spec=spec)
    assert set(result.point) == set(b)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in result.permutations.values())
    torch.testing.assert_close(outputs(net, result.point, x), outputs(net, b, x), rtol=0, atol=1e-12)
    assert result.distance_before == pytest.approx(distance(a, b))
    if method == "weight":
        assert result.distance_after < result.distance_before
        assert result.converged


@pytest.mark.parametrize("name", list(CASES))
def test_weight_matching_recovers_a_random_permutation_exactly(name):
    net, a, _, x, spec = endpoints(name)
    spec = spec or infer_spec(net)
    shuffle = random_permutations(spec, seed=3)
    b = apply_permutations(a, spec, shuffle)
    torch.testing.assert_close(outputs(net, b, x), outputs(net, a, x), rtol=0, atol=1e-12)
    result = align(a, b, net, "weight", spec=spec)
    assert result.distance_before > 0 and result.distance_after == 0.0
    assert all(torch.equal(result.permutations[g], torch.argsort(shuffle[g])) for g in spec.groups)
    assert all(torch.equal(result.point[k], a[k]) for k in a)  # buffer: statistics too


@pytest.mark.parametrize("name", ["mlp", "cifar-convnet-bn", "residual-convnet-bn"])
def test_activation_matching_recovers_a_random_permutation(name):
    net, a, _, x, spec = endpoints(name)
    spec = spec or infer_spec(net)
    b = apply_permutations(a, spec, random_permutations(spec, seed=4))
    assert align(a, b, net, "activation", inputs=x, spec=spec).distance_after == 0.0


def test_the_skip_connection_forces_a_shared_group():
    net, a, b, x, _ = endpoints("residual-mlp")
    wrong = (SpecBuilder(net).layer("inp", None, "res").layer("fc1", "res", "hid").layer("fc2", "hid", "res2")
             .layer("out", "res", None).build())
    perms = random_permutations(wrong, seed=0)
    broken = apply_permutations(b, wrong, perms)
    assert (outputs(net, broken, x) - outputs(net, b, x)).abs().max() > 1e-3
    spec = res_mlp_spec(net)
    assert spec.sizes == {"res": 6, "hid": 5}
    assert {tuple(ax[:2]) for ax in spec.groups["res"]} >= {("inp.weight", 0), ("fc2.weight", 0), ("fc2.bias", 0),
                                                           ("fc1.weight", 1), ("out.weight", 1)}


def test_inferred_spec_of_a_batchnorm_convnet():
    spec = infer_spec(small_cifar(True))
    assert spec.sizes == {"conv1": 4, "conv2": 6, "fc1": 16, "fc2": 8}
    assert set(spec.groups["conv1"]) == {("conv1.weight", 0, 1), ("conv1.bias", 0, 1), ("bn1.weight", 0, 1),
                                         ("bn1.bias", 0, 1), ("buffer:bn1.running_mean", 0, 1),
                                         ("buffer:bn1.running_var", 0, 1), ("conv2.weight", 1, 1)}
    assert ("fc1.weight", 1, 4) in spec.groups["conv2"]  # Flatten: 6 channel-major blocks of 2 * 2
    assert spec.probes["conv2"] == ("bn2", "pool2")
    assert default_repair_sites(small_cifar(True)) == ["bn1", "bn2", "fc1", "fc2"]
    assert PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_points_without_statistics_are_aligned_too():
    net, _, _, x, _ = endpoints("cifar-convnet-bn")
    a = point_from_module(build(lambda: small_cifar(True), 0, x), "recompute")
    b = point_from_module(build(lambda: small_cifar(True), 1, x), "recompute")
    for method in ("weight", "activation"):  # activation: batch statistics, since the points carry none
        result = align(a, b, net, method, inputs=x)
        assert set(result.point) == set(b) and result.distance_after < result.distance_before


@pytest.mark.parametrize("model, layer", [
    (ResMLP(), "ResMLP"),
    (nn.Sequential(nn.Linear(3, 4), ResMLP()), "'1'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), "'1'"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1)), "'0'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(10, 2)), "'2'"),
])
def test_uninferable_models_are_refused_naming_the_layer(model, layer):
    with pytest.raises(UnsupportedModelError, match=layer) as info:
        infer_spec(model)
    assert "SpecBuilder" in str(info.value)


def test_settings_are_checked_and_the_summary_is_json_safe():
    net, a, b, x, _ = endpoints("mlp")
    with pytest.raises(ConfigError, match="unknown alignment method"):
        align(a, b, net, "bogus")
    with pytest.raises(ConfigError, match="inputs"):
        align(a, b, net, "activation")
    with pytest.raises(ArchitectureMismatch):
        align(a, {k: v for k, v in b.items() if k != "0.bias"}, net)
    with pytest.raises(ArchitectureMismatch, match="spec does not fit"):
        align(a, b, net, spec=infer_spec(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))))
    none = align(a, b, net, AlignMethod.NONE)
    assert none.distance_after == none.distance_before and all(torch.equal(none.point[k], b[k]) for k in b)
    summary = json.loads(json.dumps(align(a, b, net, "weight", seed=5).to_dict()))
    assert summary["method"] == "weight" and summary["groups"] == {"0": 7, "2": 5}
    assert summary["permutations"] == align(a, b, net, "weight", seed=5).to_dict()["permutations"]  # seeded
    assert {m.value for m in AlignMethod} == {"none", "weight", "activation"}


def test_weight_matching_never_increases_the_distance_from_any_start():
    net, a, b, _, _ = endpoints("mnist-convnet")
    spec = infer_spec(net)
    for seed in range(3):
        start = random_permutations(spec, seed)
        result = weight_matching(a, b, spec, seed=seed, init=start)
        assert distance(a, apply_permutations(b, spec, result.permutations)) <= \
            distance(a, apply_permutations(b, spec, start)) + 1e-12


@pytest.mark.parametrize("name", ["mlp", "cifar-convnet-bn", "residual-convnet-bn"])
def test_repair_resets_unit_statistics_to_the_interpolated_targets(name):
    net, a, b, x, spec = endpoints(name)
    b = align(a, b, net, "weight", spec=spec).point
    sites = ["bn_in", "bn1", "bn2"] if name == "residual-convnet-bn" else None
    rep = Repair(net, a, b, x, sites=sites)
    assert all(torch.equal(rep(0.0)[k], a[k]) and torch.equal(rep(1.0)[k], b[k]) for k in a)
    t = 0.3
    fixed = rep(t)
    assert set(fixed) == set(a)
    stats = rep._statistics(fixed)
    for site, (mean, sd) in stats.items():
        (mean_a, sd_a), (mean_b, sd_b) = rep.stats_a[site], rep.stats_b[site]
        torch.testing.assert_close(sd, (1 - t) * sd_a + t * sd_b, rtol=1e-9, atol=1e-12)
        if f"{site}.bias" in fixed:
            torch.testing.assert_close(mean, (1 - t) * mean_a + t * mean_b, rtol=1e-9, atol=1e-12)
    plain = interpolate(a, b, t)
    assert not torch.allclose(outputs(net, fixed, x), outputs(net, plain, x))


def test_repair_needs_carried_batchnorm_statistics():
    net, _, _, x, _ = endpoints("cifar-convnet-bn")
    a = point_from_module(net, "recompute")
    with pytest.raises(ConfigError, match="interpolate"):
        Repair(net, a, a, x)

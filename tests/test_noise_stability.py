"""Noise stability (Kuditipudi et al. 2019, Definitions 2-4, Algorithm 1): tiny CPU nets, float64."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from modeconnect._io import read_json, write_json
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.noise import (
    LayerStack,
    NoiseStabilityConfig,
    NoiseStabilityReport,
    algorithm1_dropout,
    dense_spectral_norm,
    noise_stability,
    operator_frobenius_norm,
    power_spectral_norm,
)

EXACT = {"power_iterations": 4000, "power_tolerance": 1e-10}


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build().double()


def mlp(bias=True, act=nn.ReLU):
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7, bias=bias), act(), nn.Linear(7, 5, bias=bias), act(),
                         nn.Linear(5, 3, bias=bias))


def convnet(bias=True, pool=nn.MaxPool2d):
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(), pool(2), nn.Conv2d(3, 4, 3, bias=bias),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16, 3, bias=bias))


MLP_INPUT, CONV_INPUT = (2, 3), (2, 8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("build,shape", [(lambda: mlp(), MLP_INPUT), (lambda: convnet(), CONV_INPUT),
                                         (lambda: convnet(pool=nn.AvgPool2d), CONV_INPUT)],
                         ids=["linear", "conv-maxpool", "conv-avgpool"])
def test_power_iteration_matches_the_dense_spectral_norm(build, shape):
    net = _seeded(build)
    stack = LayerStack(net)
    xs = stack.forward_all(stack.prepare(torch.randn(4, *shape, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(1))))
    g = torch.Generator().manual_seed(2)
    for i in range(1, stack.d + 1):
        for j in range(i + 1, stack.d + 1):
            f = (lambda i_, j_: lambda z: stack.M(i_, j_, z))(i, j)
            sigma, _, converged = power_spectral_norm(f, xs[i], iterations=4000, tolerance=1e-10, generator=g)
            dense = dense_spectral_norm(f, xs[i])
            assert torch.all(dense > 0)
            assert float(((sigma - dense).abs() / dense).max()) < 1e-6, (i, j)


def test_report_spectral_norms_match_dense():
    net = _seeded(lambda: convnet(bias=False))
    x = torch.randn(3, *CONV_INPUT, dtype=torch.float64)
    report = noise_stability(net, x, NoiseStabilityConfig(dropout_draws=1, **EXACT))
    stack = LayerStack(net)
    xs = stack.forward_all(x)
    for (i, j), values in report.spectral_norm.items():
        dense = dense_spectral_norm(lambda z, i=i, j=j: stack.M(i, j, z), xs[i])
        assert torch.allclose(torch.tensor(values, dtype=torch.float64), dense, rtol=1e-6)
        jx = torch.stack([torch.autograd.functional.jacobian(lambda z, i=i, j=j: stack.M(i, j, z[None])[0], s)
                          .reshape(xs[j][0].numel(), -1) @ s.flatten() for s in xs[i]])
        expected = jx.norm(dim=1) / (dense * xs[i].flatten(1).norm(dim=1))
        assert torch.allclose(torch.tensor(report.interlayer_cushion[(i, j)], dtype=torch.float64), expected,
                              rtol=1e-6)


def _hand_net():
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))
    return net


def test_cushions_of_a_two_layer_net_by_hand():
    # x0 = (1, 2): x1 = (1, 2, -1), phi(x1) = (1, 2, 0), x2 = 5, J^{1,2} = [1, 2, 0]
    # x0 = (-1, 1): x1 = (-1, 1, -2), phi(x1) = (0, 1, 0), x2 = 2, J^{1,2} = [0, 2, 0]
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    report = noise_stability(_hand_net(), x, NoiseStabilityConfig(dropout_draws=2, **EXACT))
    s5, s6 = math.sqrt(5), math.sqrt(6)
    expected = {
        "mu1": [s6 / (2 * s5), s6 / (2 * math.sqrt(2))],  # ||A1 x0|| / (||A1||_F ||x0||), ||A1||_F = 2
        "mu2": [5 / (3 * s5), 2 / 3],  # ||A2 phi|| / (||A2||_F ||phi||), ||A2||_F = 3
        "mu12": [5 / (s5 * s6), 2 / (2 * s6)],  # ||J x1|| / (||J||_2 ||x1||)
        "c": [s6 / s5, s6],
    }
    got = {"mu1": report.layer_cushion[1], "mu2": report.layer_cushion[2], "mu12": report.interlayer_cushion[(1, 2)],
           "c": report.activation_contraction[1]}
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-12), key
    assert report.spectral_norm[(1, 2)] == pytest.approx([s5, 2.0], rel=1e-12)
    assert report.minimal_interlayer_cushion() == {1: pytest.approx(expected["mu12"]), 2: [1.0, 1.0]}
    overall = report.overall()
    # d = 2: only i = j = 2 in Definition 3, where M^{2,2} is the identity: no constraint on rho
    assert overall["rho"] == math.inf and overall["h_min"] == 3 and overall["argmin_layer"] == 2
    epsilon = math.sqrt(2) * (s6) * 2 ** 1.5 * 5 / (math.sqrt(3) * (2 / 3) * 1.0)
    assert overall["epsilon"] == pytest.approx(epsilon, rel=1e-12)


def test_smoothness_equals_a_brute_force_with_explicitly_dropped_weights():
    net = _seeded(lambda: mlp(bias=False), seed=3)
    x = torch.randn(5, *MLP_INPUT, dtype=torch.float64)
    config = NoiseStabilityConfig(dropout_draws=1, t_points=1, dropout_p=0.4, seed=7)  # t = 0: theta^i itself
    report = noise_stability(net, x, config)
    g = torch.Generator().manual_seed(7)  # Algorithm 1 is drawn first, layers 2 .. d in order
    a1, a2, a3 = net[1].weight, net[3].weight, net[5].weight
    hat2, _ = algorithm1_dropout(a2, 0.4, generator=g)
    hat3, _ = algorithm1_dropout(a3, 0.4, generator=g)
    x0 = x.flatten(1)
    x1 = x0 @ a1.T
    x2, x3 = torch.relu(x1) @ a2.T, torch.relu(torch.relu(x1) @ a2.T) @ a3.T

    def bound(x_hat, xi, xj, a):  # ||x_hat - x^i|| ||x^j|| / (||x^i|| ||M(x_hat) - J x_hat||), J = A diag(x^i > 0)
        err = (torch.relu(x_hat) @ a.T - ((xi > 0) * x_hat) @ a.T).norm(dim=1)
        return (x_hat - xi).norm(dim=1) * xj.norm(dim=1) / (xi.norm(dim=1) * err)

    x2_hat = torch.relu(x1) @ hat2.T  # x_hat^2_2(0); x_hat^2_1(0) = x^2 gives no constraint
    rho2 = bound(x2_hat, x2, x3, a3).detach()  # err = 0: x / 0 = inf
    assert 0 < rho2.isfinite().sum() < 5  # some samples flip a unit of layer 2, some do not (rho = inf)
    assert report.smoothness_draws[0][2] == pytest.approx(rho2.tolist(), rel=1e-9)
    assert report.smoothness_draws[0][3] == [math.inf] * 5  # j = i = d only
    assert report.overall()["rho"] == pytest.approx(min(rho2.tolist()), rel=1e-9)
    x3_dropped = torch.relu(x2_hat) @ hat3.T
    assert torch.isfinite(x3_dropped).all()


@pytest.mark.parametrize("build,shape", [(lambda: mlp(bias=False), MLP_INPUT), (lambda: convnet(bias=False),
                                                                                 CONV_INPUT),
                                         (lambda: mlp(bias=True), MLP_INPUT)], ids=["mlp", "convnet", "mlp-bias"])
def test_invariants(build, shape):
    report = noise_stability(_seeded(build), torch.randn(6, *shape, dtype=torch.float64),
                             NoiseStabilityConfig(dropout_draws=3, **EXACT))
    for values in report.layer_cushion.values():
        assert all(0 <= v <= 1 + 1e-12 for v in values)  # ||A u|| <= ||A||_2 ||u|| <= ||A||_F ||u||
    for values in report.interlayer_cushion.values():
        assert all(0 <= v <= 1 + 1e-9 for v in values)  # ||J x|| <= ||J||_2 ||x||
    for values in report.activation_contraction.values():
        assert all(v >= 1 - 1e-12 for v in values)  # ReLU and pooling never increase the norm
    for draw in report.smoothness_draws:
        assert all(v >= 0 for values in draw.values() for v in values)
    assert report.overall()["epsilon"] > 0


@pytest.mark.parametrize("build,shape", [
    (lambda: mlp(bias=False, act=nn.Identity), MLP_INPUT),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Identity(), nn.Conv2d(3, 2, 3, bias=False),
                           nn.Flatten(), nn.Linear(72, 3, bias=False)), CONV_INPUT)], ids=["mlp", "convnet"])
def test_a_linear_network_has_contraction_one_and_no_smoothness_constraint(build, shape):
    report = noise_stability(_seeded(build), torch.randn(4, *shape, dtype=torch.float64),
                             NoiseStabilityConfig(dropout_draws=2, **EXACT))
    assert all(v == 1.0 for values in report.activation_contraction.values() for v in values)
    # M^{i,j} is linear: M(x_hat) = J x_hat up to rounding, which is below the floor: no constraint at all
    assert report.overall()["rho"] == math.inf


def test_positive_rescaling_of_a_layer_leaves_cushions_contraction_and_smoothness_invariant():
    def measure(net):
        return noise_stability(net, torch.randn(5, *CONV_INPUT, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(4)),
                               NoiseStabilityConfig(dropout_draws=2, seed=3, **EXACT))

    net = _seeded(lambda: convnet(bias=False))
    base = measure(net)
    with torch.no_grad():
        net[3].weight.mul_(7.5)  # the second of three weight layers
    scaled = measure(net)
    for name in ("layer_cushion", "activation_contraction"):
        for i, values in getattr(base, name).items():
            assert getattr(scaled, name)[i] == pytest.approx(values, rel=1e-9), (name, i)
    for key, values in base.interlayer_cushion.items():
        assert scaled.interlayer_cushion[key] == pytest.approx(values, rel=1e-8), key
    for d0, d1 in zip(base.smoothness_draws, scaled.smoothness_draws):
        for i in d0:
            assert d1[i] == pytest.approx(d0[i], rel=1e-6), i
    # ||f(x)|| scales with the layer, so epsilon does too
    assert scaled.overall()["epsilon"] == pytest.approx(7.5 * base.overall()["epsilon"], rel=1e-8)


@pytest.mark.parametrize("module,name", [(nn.Tanh(), "act"), (nn.BatchNorm1d(4), "act"), (nn.Dropout(0.5), "act")])
def test_unsupported_layer_is_refused_by_name(module, name):
    net = nn.Sequential(OrderedDict([("fc1", nn.Linear(3, 4)), (name, module), ("out", nn.Linear(4, 2))]))
    with pytest.raises(ConfigError, match=f"'{name}' \\({type(module).__name__}\\)"):
        noise_stability(net, torch.randn(2, 3))


def test_other_models_are_refused():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match="nn.Sequential"):
        LayerStack(Custom())
    with pytest.raises(ConfigError, match="at least two weight layers"):
        LayerStack(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ConfigError, match="'0' \\(ReLU\\).*before the first"):
        LayerStack(nn.Sequential(nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="'3' \\(ReLU\\) after the last"):
        LayerStack(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ConfigError, match="groups"):
        LayerStack(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Conv2d(2, 2, 1)))


def test_operator_frobenius_norm_of_a_convolution_is_that_of_its_matrix():
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    x = torch.zeros(2, 5, 5, dtype=torch.float64)
    matrix = torch.autograd.functional.jacobian(lambda z: conv._conv_forward(z[None], conv.weight, None)[0], x)
    assert operator_frobenius_norm(conv, (2, 5, 5)) == pytest.approx(float(matrix.norm()), rel=1e-12)


def test_algorithm1_scales_whole_columns_by_zero_or_one_over_one_minus_p():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 12, dtype=torch.float64)
    hat, delta = algorithm1_dropout(w, 0.25, generator=g, group=3)  # 4 units of 3 columns each
    assert delta.shape == (4,) and set(delta.tolist()) <= {0.0, 1 / 0.75}
    assert torch.equal(hat, w * delta.repeat_interleave(3))
    conv = torch.randn(5, 6, 3, 3)
    hat, delta = algorithm1_dropout(conv, 0.5, generator=g)  # channel-wise: input channels
    assert torch.equal(hat, conv * delta.view(1, 6, 1, 1))
    means = torch.stack([algorithm1_dropout(w, 0.25, generator=g)[1] for _ in range(2000)]).mean()
    assert float(means) == pytest.approx(1.0, abs=0.02)  # E[delta] = 1
    with pytest.raises(ConfigError):
        algorithm1_dropout(w, 1.0)


def test_config_is_validated_and_report_round_trips_through_json(tmp_path):
    with pytest.raises(ConfigError, match="dropout_p"):
        NoiseStabilityConfig(dropout_p=1.0)
    with pytest.raises(ConfigError, match="samples"):
        NoiseStabilityConfig(samples=0)
    report = noise_stability(_hand_net(), torch.tensor([[1.0, 2.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64),
                             NoiseStabilityConfig(dropout_draws=2))
    # x0 = (-1, -1): every unit dead, 0 / 0 cushions are NaN (ignored by the summaries), rho is inf
    assert math.isnan(report.layer_cushion[2][2])
    write_json(tmp_path / "r.json", report.to_dict())
    loaded = NoiseStabilityReport.from_dict(read_json(tmp_path / "r.json"))
    assert json.dumps(loaded.to_dict(), sort_keys=True) == json.dumps(report.to_dict(), sort_keys=True)
    assert report.overall()["c"] == math.inf  # ||x^1|| / ||phi(x^1)|| with every unit dead
    assert loaded.to_dict()["layer_cushion"][1]["n_undefined"] == 1


def test_cli_writes_the_json_and_it_reloads(tmp_path, capsys):
    from modeconnect.cli import main
    from modeconnect.experiments.noise_run import load_noise_stability

    out = tmp_path / "ns"
    args = ["noise-stability", "--task", "quadratic", "--activation", "relu", "--threshold", "0.3", "--samples", "8",
            "--dropout-draws", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer cushion" in printed and "epsilon" in printed
    report, record = load_noise_stability(out)
    assert record["run"]["task"] == "quadratic" and len(report.output_norm) == 8 and report.d == 3
    assert len(record["sample_indices"]) == 8 and (out / "endpoint.safetensors").exists()
    first = (out / "noise_stability.json").read_text()
    assert main(args) == 0  # the same command again reuses the saved endpoint and measures the same numbers
    again = json.loads((out / "noise_stability.json").read_text())
    assert again["layer_cushion"] == json.loads(first)["layer_cushion"]
    assert main(["noise-stability", "--task", "quadratic", "--activation", "tanh", "--out", str(tmp_path / "t"),
                 "--quiet", "--threshold", "0.3"]) == 2  # tanh is not a supported phi: refused with a message
    assert "Tanh" in capsys.readouterr().err

"""Models: output shapes, the explicit LSTM against nn.LSTM, vmap == loop energies, perplexity by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.metrics import Metric, metric_count, metric_sum
from modeconnect.models import LSTM, LSTMLanguageModel, cifar_convnet, init_uniform_, kuditipudi_convnet, mnist_convnet
from modeconnect.params import point_from_module
from modeconnect.tasks._init import build_without_global_rng, seeded

G = torch.Generator().manual_seed(0)


def test_convnet_shapes_and_names():
    assert mnist_convnet(4, 8, 16)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert mnist_convnet(4, 8, 0)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert cifar_convnet(4, 8, 16, 8)(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    assert cifar_convnet(4, 8, 16, 8, batchnorm=True)(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    net = kuditipudi_convnet(5)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert all("bias" not in k for k in point_from_module(net))  # bias-free throughout
    assert [k for k in point_from_module(net) if k.startswith("conv")] == ["conv1.weight", "conv2.weight",
                                                                         "conv3.weight"]
    assert net.conv1.weight.shape == (5, 1, 3, 3)
    # the paper's sizes
    assert mnist_convnet().conv2.weight.shape == (64, 32, 5, 5) and mnist_convnet().fc1.out_features == 1024


def test_bad_widths_are_refused():
    with pytest.raises(ConfigError, match="positive"):
        mnist_convnet(0, 8, 16)
    with pytest.raises(ConfigError, match="at most 4"):
        kuditipudi_convnet(4, n_layers=5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_explicit_lstm_equals_nn_lstm(num_layers):
    ref = build_without_global_rng(lambda: nn.LSTM(6, 7, num_layers=num_layers, batch_first=True)).double()
    mine = LSTM(6, 7, num_layers).double()
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 6, generator=G, dtype=torch.float64)
    torch.testing.assert_close(mine(x), ref(x)[0], rtol=1e-12, atol=1e-12)


def test_language_model_shapes_and_uniform_init():
    model = init_uniform_(LSTMLanguageModel(50, 8, 9), 0.1, torch.Generator().manual_seed(1))
    assert model(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 4, 50)
    assert all(p.abs().max() <= 0.1 for p in model.parameters())
    again = init_uniform_(LSTMLanguageModel(50, 8, 9), 0.1, torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_perplexity_is_exp_of_mean_token_cross_entropy():
    logits = torch.randn(3, 4, 11, generator=G, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 4), generator=G)
    by_hand = math.exp(sum(-F.log_softmax(logits[b, t], -1)[targets[b, t]].item()
                           for b in range(3) for t in range(4)) / 12)
    n = metric_count("perplexity", targets)
    assert n == 12
    assert Metric.PERPLEXITY.finalize(float(metric_sum("perplexity", logits, targets)) / n) == pytest.approx(
        by_hand, rel=1e-12)
    # the Energy divides by the token count and applies exp at the end, also over sample batches
    model = LSTMLanguageModel(11, 4, 5).double()
    tokens = torch.randint(0, 11, (5, 4), generator=G)
    energy = Energy(model, tokens, tokens.roll(-1, 1), "perplexity", strategy="loop", sample_batch_size=2)
    with torch.no_grad():
        out = model(tokens)
    expected = math.exp(F.cross_entropy(out.reshape(-1, 11), tokens.roll(-1, 1).reshape(-1)).item())
    assert energy(point_from_module(model)) == pytest.approx(expected, rel=1e-10)
    assert energy.describe()["unit"] == "label" and energy.describe()["n_units"] == 20


def test_sequence_shape_mismatch_is_explained():
    with pytest.raises(ConfigError, match=r"targets.shape \+ \(classes,\)"):
        metric_sum("cross_entropy", torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


CASES = {
    "mnist": (lambda: mnist_convnet(3, 4, 8), lambda: torch.randn(6, 1, 28, 28, generator=G), 10),
    "cifar": (lambda: cifar_convnet(3, 4, 8, 6), lambda: torch.randn(6, 3, 32, 32, generator=G), 10),
    "kuditipudi": (lambda: kuditipudi_convnet(4), lambda: torch.randn(6, 1, 28, 28, generator=G), 10),
    "lstm": (lambda: LSTMLanguageModel(30, 6, 7), lambda: torch.randint(0, 30, (4, 5), generator=G), 30),
}


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_equals_loop_in_float64(name):
    build, data, classes = CASES[name]
    a = {k: v.double() for k, v in point_from_module(seeded(build, 1)).items()}
    b = {k: v.double() for k, v in point_from_module(seeded(build, 2)).items()}
    x = data()
    y = x.roll(-1, 1) if name == "lstm" else torch.randint(0, classes, (len(x),), generator=G)
    metric = "perplexity" if name == "lstm" else "cross_entropy"
    ts = torch.linspace(0, 1, 5)
    values = {s: Energy(build(), x, y, metric, strategy=s).along_segment(a, b, ts) for s in ("loop", "vmap")}
    torch.testing.assert_close(values["vmap"], values["loop"], rtol=1e-10, atol=0)


def test_image_mlp_has_the_alignment_literatures_shape_and_refuses_bad_sizes():
    from modeconnect.models import image_mlp

    model = image_mlp()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 512), (512, 512), (512, 10)]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ConfigError, match="width=0"):
        image_mlp(width=0)


def test_vgg_small_shapes_units_and_bad_widths():
    import torch

    from modeconnect.errors import ConfigError
    from modeconnect.kuditipudi.units import hidden_units
    from modeconnect.models import vgg_small

    net = vgg_small((2, 3, 4, 4, 5))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert all(m.bias is None for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert hidden_units(net).sizes == [2, 3, 4, 4, 5]  # every conv channel is a hidden unit
    with pytest.raises(ConfigError, match="5 positive channel counts"):
        vgg_small((2, 3))

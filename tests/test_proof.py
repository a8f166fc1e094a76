"""Tests of modeconnect.proof: soundness against dense sampling, convergence under bisection, the task paths
proved, a spike that sampling misses and the proof catches, per-label error counting, and the fallback.

Everything is tiny, float64 unless said otherwise, seeded through ``torch.Generator`` (never the global
state). Dense references use ``Energy.along_segment`` (straight pieces) or ``Energy.evaluate`` of
``Path.points`` (curves) in chunks: 10^5 points for the MLPs, 2 x 10^4 for curves and convnets (their
forward passes are costlier; 2 x 10^4 still samples every sub-interval of the bound ~2,500 times).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect.certify import certify
from modeconnect.energy import Energy
from modeconnect.errors import ConfigError
from modeconnect.params import point_from_module
from modeconnect.path import Bezier, Path, Straight
from modeconnect.proof import Proof, ProofConfig, Unsupported, prove, segment_bounds
from modeconnect.proof import taylor as tm
from modeconnect.proof.chain import plan
from modeconnect.proof.layers import _max_pool
from modeconnect.proof.weights import PieceWeights

CHUNK = 8192


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_point(net: nn.Module, g: torch.Generator, scale: float = 1.0, batchnorm=None) -> dict:
    point = {}
    for k, v in point_from_module(net, batchnorm).items():
        if k.endswith("running_var"):
            point[k] = torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.05
        else:
            point[k] = scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
    return point


def dense(path: Path, energy: Energy, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Energies of piece 0 at ``n`` evenly spaced t (ends included)."""
    ts = torch.linspace(0, 1, n, dtype=torch.float64)
    values = torch.cat([path.energies(0, ts[lo: lo + CHUNK], energy) for lo in range(0, n, CHUNK)])
    return ts.numpy(), values.numpy()


def assert_sound(path: Path, energy: Energy, n: int, pieces: int = 8, config: ProofConfig | None = None) -> None:
    """Every sub-interval's bound is at least every dense sample inside it (a tiny float64 margin allowed)."""
    edges = np.linspace(0, 1, pieces + 1)
    bounds = segment_bounds(path, 0, energy, edges, config)
    ts, values = dense(path, energy, n)
    for k in range(pieces):
        inside = values[(ts >= edges[k]) & (ts <= edges[k + 1])]
        assert bounds[k] >= inside.max() - 1e-12 * max(1.0, abs(inside.max())), (k, bounds[k], inside.max())


def classification_data(g, n=32, d=2, classes=3):
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def mixed_mlp(out: int) -> nn.Module:
    """Every supported activation in one small network."""
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 6), nn.Tanh(),
                         nn.Linear(6, 6), nn.LeakyReLU(0.2), nn.Linear(6, out)).double()


def mlp_energy(metric: str, g) -> tuple[nn.Module, Energy]:
    out = 1 if metric in ("mse", "mae") else 3
    net = mixed_mlp(out)
    x, labels = classification_data(g)
    y = torch.randn(len(x), 1, generator=g, dtype=torch.float64) if out == 1 else labels
    return net, Energy(net, x, y, metric, strategy="vmap", chunk_size=CHUNK)


# -- soundness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["mse", "mae", "cross_entropy", "error_rate"])
def test_mlp_bound_is_never_below_1e5_dense_samples(metric):
    g = gen(1)
    net, energy = mlp_energy(metric, g)
    path = Path([random_point(net, g), random_point(net, g)])
    assert_sound(path, energy, 100_001)


@pytest.mark.parametrize("metric", ["mae", "cross_entropy", "error_rate"])
def test_curve_bound_is_sound(metric):
    """Quadratic and cubic Bezier pieces: weights polynomial in t, bounded by their Bernstein coefficients."""
    g = gen(2)
    net, energy = mlp_energy(metric, g)
    for controls in (1, 2):
        path = Path([random_point(net, g), random_point(net, g)],
                    [Bezier([random_point(net, g) for _ in range(controls)])])
        assert_sound(path, energy, 20_001)


def small_convnet(batchnorm: bool = False, bias: bool = True) -> nn.Module:
    layers = [nn.Conv2d(1, 3, 3, padding=1, bias=bias)]
    layers += [nn.BatchNorm2d(3)] if batchnorm else []
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
               nn.Linear(4, 5)]
    layers += [nn.BatchNorm1d(5)] if batchnorm else []
    layers += [nn.Sigmoid(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("metric", ["cross_entropy", "error_rate"])
def test_convnet_bound_is_sound(metric):
    g = gen(3)
    net = small_convnet(bias=metric == "cross_entropy")  # a bias-free first layer, as Kuditipudi's convnet
    x = torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float64)
    energy = Energy(net, x, torch.randint(0, 3, (16,), generator=g), metric, strategy="vmap", chunk_size=1024)
    path = Path([random_point(net, g, 0.7), random_point(net, g, 0.7)])
    assert_sound(path, energy, 20_001)


@pytest.mark.parametrize("policy", ["freeze", "interpolate"])
def test_batchnorm_bound_is_sound(policy):
    """Eval-mode BatchNorm: frozen statistics, or running statistics interpolated with the weights (the
    variance under a square root in the denominator)."""
    g = gen(4)
    net = small_convnet(batchnorm=True)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.running_mean.copy_(torch.randn(layer.num_features, generator=g))
                layer.running_var.copy_(torch.rand(layer.num_features, generator=g) + 0.1)
    x = torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float64)
    energy = Energy(net, x, torch.randint(0, 3, (16,), generator=g), "cross_entropy", strategy="vmap",
                    chunk_size=1024, batchnorm=policy)
    ends = [random_point(net, g, 0.7, batchnorm=policy) for _ in range(3)]
    assert_sound(Path(ends[:2]), energy, 20_001)
    assert_sound(Path(ends[:2], [Bezier([ends[2]])]), energy, 20_001)


def test_float32_model_bound_covers_its_rounding():
    """A float32 network, evaluated in float32 by the energy: the allowance covers that evaluation's rounding."""
    g = gen(5)
    net = mixed_mlp(3).float()
    x, y = classification_data(g)
    energy = Energy(net, x.float(), y, "cross_entropy", strategy="vmap", chunk_size=CHUNK)
    path = Path([{k: v.float() for k, v in random_point(net.double(), g).items()} for _ in range(2)])
    assert_sound(path, energy, 20_001)


def test_traced_module_is_supported():
    """A module whose forward calls its layers in order (and torch.flatten) is read with torch.fx."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    g = gen(6)
    net = Net().double()
    assert [type(s.layer).__name__ for s in plan(net)] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    x = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64)
    energy = Energy(net, x, torch.randint(0, 3, (8,), generator=g), "cross_entropy", strategy="vmap",
                    chunk_size=1024)
    assert_sound(Path([random_point(net, g), random_point(net, g)]), energy, 20_001)


# -- building blocks ------------------------------------------------------------------------------


def encloses(z: tm.Taylor, truth, s: torch.Tensor) -> bool:
    """``truth(s)`` (``[len(s), *shape]``) lies within ``c + g s +- r`` at every ``s``."""
    centre = z.c + (0 if z.g is None else z.g * s.view(-1, *[1] * z.c.ndim))
    radius = 0 if z.r is None else z.r
    return bool(((truth(s) - centre).abs() <= radius + 1e-12).all())


def test_taylor_operations_enclose_their_functions():
    g = gen(7)
    s = torch.linspace(-1, 1, 401, dtype=torch.float64)
    shape = (500,)
    a = tm.Taylor(torch.randn(shape, generator=g, dtype=torch.float64) * 2, torch.randn(shape, generator=g,
                  dtype=torch.float64), None)
    b = tm.Taylor(torch.rand(shape, generator=g, dtype=torch.float64) + 0.5,
                  0.2 * torch.randn(shape, generator=g, dtype=torch.float64), None)

    def at(z):
        return lambda s: z.c + z.g * s.view(-1, 1)

    for op, f in [(tm.relu, torch.relu), (tm.sigmoid, torch.sigmoid), (tm.tanh, torch.tanh),
                  (lambda z: tm.leaky_relu(z, 0.1), lambda v: nn.functional.leaky_relu(v, 0.1)),
                  (lambda z: tm.leaky_relu(z, 1.5), lambda v: nn.functional.leaky_relu(v, 1.5))]:
        assert encloses(op(a), lambda s, f=f: f(at(a)(s)), s)
    assert encloses(tm.mul(a, b), lambda s: at(a)(s) * at(b)(s), s)
    assert encloses(tm.inv_sqrt(b, 1e-5, torch.zeros(shape, dtype=torch.float64)),
                    lambda s: (at(b)(s) + 1e-5).rsqrt(), s)


def test_curve_weights_enclose_the_curve():
    """The Taylor model of a cubic piece over [t0, t1] contains ``Path.points`` there, centred at the middle."""
    g = gen(8)
    nodes = [{"w": torch.randn(5, 3, generator=g, dtype=torch.float64)} for _ in range(4)]
    path = Path([nodes[0], nodes[3]], [Bezier(nodes[1:3])])
    weights = PieceWeights.of(nodes, ["w"], torch.float64)
    t0, t1 = torch.tensor([0.1, 0.6], dtype=torch.float64), torch.tensor([0.35, 0.62], dtype=torch.float64)
    model = weights.restrict(t0, t1)["w"]
    for b in range(2):
        ts = torch.linspace(float(t0[b]), float(t1[b]), 101, dtype=torch.float64)
        s = (2 * ts - t0[b] - t1[b]) / (t1[b] - t0[b])
        one = tm.Taylor(model.c[b], model.g[b], model.r[b])
        assert encloses(one, lambda _, ts=ts: path.points(0, ts)["w"], s)
        mid = path.points(0, [(float(t0[b]) + float(t1[b])) / 2])["w"][0]
        assert torch.allclose(model.c[b] - mid, torch.zeros_like(mid), atol=float(model.r[b].max()) + 1e-12)


def test_max_pool_matches_torch_on_exact_inputs():
    g = gen(9)
    for kernel, stride, padding, dilation in [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), ((2, 3), (1, 2), (1, 1), 1)]:
        layer = nn.MaxPool2d(kernel, stride, padding, dilation)
        x = torch.randn(2, 3, 4, 9, 10, generator=g, dtype=torch.float64)
        out = _max_pool(tm.Taylor(x), layer)
        assert torch.equal(out.c, layer(x.flatten(0, 1)).unflatten(0, (2, 3))) and float(out.r.max()) == 0.0


# -- convergence ----------------------------------------------------------------------------------


def test_bound_tightens_with_depth_and_converges_to_the_sampled_max():
    g = gen(10)
    net, energy = mlp_energy("mae", g)
    path = Path([random_point(net, g), random_point(net, g)])
    _, values = dense(path, energy, 100_001)
    top = values.max()
    gaps = [segment_bounds(path, 0, energy, np.linspace(0, 1, 2**d + 1)).max() - top for d in range(1, 11)]
    assert all(later <= earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] >= -1e-12 and gaps[-1] < 1e-4 * top  # converged onto the true maximum
    assert gaps[-1] < gaps[-3] / 8  # second order: halving the width quarters the gap
    # bisection in prove(): the bound after every round is no higher than before
    seen = []
    proof = prove(path, energy, ProofConfig(initial_pieces=2, max_bounds=64), threshold=top * 1.0005,
                  progress=lambda d: seen.append(d["upper_bound"]))
    assert len(seen) > 3 and seen == sorted(seen, reverse=True) and proof.upper_bound <= seen[0]


# -- the task paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["quadratic", "cubic"])
def test_task_paths_are_proved(task, tmp_path):
    from modeconnect.experiments import ConnectRunConfig, run_connect

    config = ConnectRunConfig(task=task, threshold=0.05, seed=1)
    run_connect(config, str(tmp_path / "run"))
    path = Path.load(tmp_path / "run" / "path")
    energy = config.resolve().task.energy
    proof = prove(path, energy, threshold=0.05)
    assert proof.kind == "proof" and proof.proved, proof.statement
    assert proof.sampled_max <= proof.upper_bound <= 0.05 * proof.tolerance
    assert all(s.stop == "proved" and not s.failed_intervals for s in proof.segments)
    json.dumps(proof.to_dict(), allow_nan=False)


# -- a barrier between the samples -----------------------------------------------------------------


def spike_path(t_start: float, width: float) -> tuple[Path, Energy]:
    """Energy ``0.5 + hat(t)``: a triangle of height 1 on ``[t_start, t_start + width]``, 0.5 elsewhere.

    Three ReLU units with pre-activations ``k (t - t_start) - j`` (j = 0, 1, 2; ``k = 2 / width``) and output
    weights (1, -2, 1); only the first layer's weight moves with t (from 0 to k), as in ``(1 - t) a + t b``.
    """
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    k = 2.0 / width
    common = {"0.bias": torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64) - k * t_start,
              "2.weight": torch.tensor([[1.0, -2.0, 1.0]], dtype=torch.float64),
              "2.bias": torch.zeros(1, dtype=torch.float64)}
    a = {"0.weight": torch.zeros(3, 1, dtype=torch.float64), **common}
    b = {"0.weight": torch.full((3, 1), k, dtype=torch.float64), **common}
    x = torch.ones(1, 1, dtype=torch.float64)
    energy = Energy(net, x, torch.full((1, 1), -0.5, dtype=torch.float64), "mae", strategy="loop")
    return Path([a, b]), energy


def test_a_spike_narrower_than_the_sampling_is_caught():
    start, width = 400.3 / 1024, 2e-5  # samples sit at multiples of 1/1024: the spike falls between two
    path, energy = spike_path(start, width)
    peak = start + width / 2
    assert abs(float(path.energies(0, [peak], energy)[0]) - 1.5) < 1e-9  # the barrier is real
    sampled = certify(path, energy, threshold=1.0)
    assert sampled.certified and sampled.max_energy == pytest.approx(0.5)  # sampling misses it
    proof = prove(path, energy, threshold=1.0, sampled=sampled)
    assert proof.kind == "proof" and not proof.proved and proof.upper_bound >= 1.5 - 1e-9
    failed = proof.segments[0].failed_intervals
    assert any(t0 <= peak <= t1 for t0, t1, _ in failed)
    assert proof.failed_intervals == [[0, *run] for run in failed]
    assert sum(t1 - t0 for t0, t1, _ in failed) < 1e-3  # the failure is located, not smeared
    assert "not proved" in proof.statement


# -- error rate bookkeeping -----------------------------------------------------------------------


def test_error_rate_bound_counts_the_labels_not_certainly_correct():
    """Logits ``(1 - 2t) x (1, -1)``: label 0 is right while ``(1 - 2t) x > 0``; every margin crosses zero at
    t = 1/2, and ``x = 0`` is a tie all along (argmax would pick 0, but a tie is never certain)."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False)).double()
    x = torch.tensor([[1.0], [2.0], [-1.0], [0.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1])
    energy = Energy(net, x, y, "error_rate", strategy="loop")
    path = Path([{"0.weight": torch.tensor([[1.0], [-1.0]], dtype=torch.float64)},
                 {"0.weight": torch.tensor([[-1.0], [1.0]], dtype=torch.float64)}])
    bounds = segment_bounds(path, 0, energy, [0.0, 0.25, 0.45, 0.55, 1.0])
    # [0, 0.45]: x = 1, 2 right; x = -1 and the 3 labelled 1 wrong; the tie uncertain -> 3 of 5
    # [0.45, 0.55]: every margin crosses 0 -> all 5; [0.55, 1]: x = -1 and x = 3 right -> 3 of 5
    assert bounds.tolist() == [60.0, 60.0, 100.0, 60.0]
    proof = prove(path, energy, ProofConfig(initial_pieces=4), threshold=90.0)
    assert not proof.proved and proof.segments[0].stop == "min_width"
    (t0, t1, worst), = proof.segments[0].failed_intervals
    assert t0 < 0.5 < t1 and t1 - t0 < 1e-5 and worst == 100.0


# -- fallback and settings ------------------------------------------------------------------------


def test_unsupported_layer_falls_back_to_the_sampled_certificate():
    g = gen(11)
    net = nn.Sequential(nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 1)).double()
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    energy = Energy(net, x, torch.zeros(8, 1, dtype=torch.float64), "mse", strategy="loop")
    path = Path([random_point(net, g), random_point(net, g)])
    proof = prove(path, energy, threshold=10.0)
    assert isinstance(proof, Proof) and proof.kind == "sampled" and proof.unsupported == "1 (GELU)"
    assert proof.upper_bound is None and not proof.proved and proof.sampled_max == proof.certificate.max_energy
    record = proof.to_dict()
    assert record["kind"] == "sampled" and record["unsupported"] == "1 (GELU)" and "not a proof" in record["statement"]
    json.dumps(record, allow_nan=False)


def test_language_model_is_unsupported():
    from modeconnect.models import LSTMLanguageModel

    with pytest.raises(Unsupported, match=r"embedding \(Embedding\)"):
        plan(LSTMLanguageModel(vocab_size=5, embedding_dim=3, hidden_size=3, num_layers=1))


def test_unsupported_forms_are_named():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(Unsupported, match="not a chain step|is not the end"):
        plan(Residual())
    with pytest.raises(Unsupported, match="ceil_mode"):
        plan(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)))
    with pytest.raises(Unsupported, match="recompute"):
        plan(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "recompute")


@pytest.mark.parametrize("bad", [dict(initial_pieces=0), dict(max_bounds=2), dict(min_width=0.0),
                                 dict(batch=0), dict(memory_mb=-1.0), dict(dtype="float16"), dict(slack=-1.0),
                                 dict(max_seconds=0.0), dict(initial_pieces=True)])
def test_config_is_validated(bad):
    with pytest.raises(ConfigError):
        ProofConfig(**bad)


def test_level_is_validated():
    net = nn.Sequential(nn.Linear(1, 1)).double()
    energy = Energy(net, torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64), "mse")
    path = Path([point_from_module(net), point_from_module(net)])
    for threshold, tolerance in [(math.nan, 1.0), (1.0, 0.0), (None, 1.0)]:
        with pytest.raises(ConfigError):
            prove(path, energy, threshold=threshold, tolerance=tolerance)


def test_result_records_everything():
    g = gen(12)
    net, energy = mlp_energy("cross_entropy", g)
    path = Path([random_point(net, g, 0.3), random_point(net, g, 0.3), random_point(net, g, 0.3)],
                [Straight(), Straight()])
    proof = prove(path, energy, ProofConfig(max_bounds=16), threshold=5.0)
    record = proof.to_dict()
    assert record["kind"] == "proof" and len(record["segments"]) == 2
    assert record["n_bounds"] == sum(s["n_bounds"] for s in record["segments"]) <= 32
    assert record["upper_bound"] == max(s["upper_bound"] for s in record["segments"])
    assert record["config"] == ProofConfig(max_bounds=16).to_dict()
    assert record["certificate"]["kind"] == "sampled"
    json.dumps(record, allow_nan=False)


def test_stops_are_reported():
    """A piece whose sampled maximum is already above the level is not bisected; a time budget stops early."""
    g = gen(13)
    net, energy = mlp_energy("mae", g)
    path = Path([random_point(net, g), random_point(net, g)])
    top = float(dense(path, energy, 2001)[1].max())
    above = prove(path, energy, threshold=top / 2)
    assert above.segments[0].stop == "sampled_above" and above.n_bounds == ProofConfig().initial_pieces
    assert not above.proved and "exceeds the level" in above.statement
    timed = prove(path, energy, ProofConfig(max_seconds=1e-9), threshold=top * 1.0005)
    assert timed.segments[0].stop == "time" and not timed.proved

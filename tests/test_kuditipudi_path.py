"""The Theorem 1 path of Kuditipudi et al. (2019): Figure 1's blocks, step invariants, bounds, the method and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from modeconnect import Energy, connect
from modeconnect.certify import CertifyConfig
from modeconnect.errors import ConfigError
from modeconnect.kuditipudi.dropout import apply_dropout, sample_masks
from modeconnect.kuditipudi.units import hidden_units
from modeconnect.methods.kuditipudi_dropout import KuditipudiConfig, lemma1_path, segment_bound, theorem1_path
from modeconnect.metrics import Metric
from modeconnect.params import point_from_module
from modeconnect.path import Path

TS = torch.linspace(0, 1, 5, dtype=torch.float64)


def mlp3(seed: int, bias: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4, bias=bias), nn.ReLU(), nn.Linear(4, 4, bias=bias), nn.ReLU(),
                         nn.Linear(4, 3, bias=bias))


def mlp4(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, 3))


def convnet(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 3, bias=False))


def data_for(model: nn.Sequential, n: int = 16):
    g = torch.Generator().manual_seed(1)
    if isinstance(model[0], nn.Conv2d):
        x = torch.randn(n, 1, 8, 8, generator=g)
    else:
        x = torch.randn(n, model[0].in_features, generator=g)
    return x, torch.randint(0, 3, (n,), generator=g)


def test_lemma1_follows_figure_1_block_by_block():
    model = mlp3(0)
    spec, theta = hidden_units(model), point_from_module(model)
    first_half = torch.tensor([True, True, False, False])
    mask = {"0": first_half, "2": first_half}
    r = 2.0
    beads, steps = lemma1_path(theta, spec, mask, r)
    assert len(steps) == 6 and [s.kind for s in steps] == ["a", "b", "a", "b", "a", "b"]
    A3, A2, A1 = theta["4.weight"], theta["2.weight"], theta["0.weight"]
    L3, L2, C2, D2, R2, L1 = A3[:, :2], A2[:2, :2], A2[:2, 2:], A2[2:, :2], A2[2:, 2:], A1[:2]
    z3, z2 = torch.zeros_like(L3), torch.zeros_like(L2)
    expected = [  # Figure 1, rows (1) .. (7): A_3 = [left | right], A_2 = [[tl, tr], [bl, br]], A_1 = [top; bottom]
        ([L3, A3[:, 2:]], [L2, C2, D2, R2], [L1, A1[2:]]),
        ([r * L3, z3], [L2, C2, D2, R2], [L1, A1[2:]]),
        ([r * L3, z3], [L2, C2, r * L2, z2], [L1, A1[2:]]),
        ([z3, r * L3], [L2, C2, r * L2, z2], [L1, A1[2:]]),
        ([z3, r * L3], [r * L2, z2, r * L2, z2], [L1, A1[2:]]),
        ([r * L3, z3], [r * L2, z2, r * L2, z2], [L1, A1[2:]]),
        ([r * L3, z3], [r * L2, z2, z2, z2], [L1, torch.zeros_like(L1)]),
    ]
    for k, (bead, (a3, a2, a1)) in enumerate(zip(beads, expected)):
        w3, w2, w1 = bead["4.weight"], bead["2.weight"], bead["0.weight"]
        got = ([w3[:, :2], w3[:, 2:]], [w2[:2, :2], w2[:2, 2:], w2[2:, :2], w2[2:, 2:]], [w1[:2], w1[2:]])
        for g, e in zip(sum(got, []), a3 + a2 + a1):
            assert torch.allclose(g, e), f"Figure 1 row ({k + 1})"
    assert all(torch.equal(beads[-1][k], apply_dropout(theta, spec, mask, r)[k]) for k in theta)  # theta_1


def _outputs_along(model, path, i, x):
    pts = path.points(i, TS)
    return torch.stack([functional_call(model, {k: v[j].to(torch.float32) for k, v in pts.items()}, (x,))
                        for j in range(len(TS))])


@pytest.mark.parametrize("build", [mlp3, mlp4, convnet])
def test_theorem1_path_step_invariants_and_bound(build):
    ma, mb = build(0), build(1)
    x, y = data_for(ma)
    energy = Energy(ma, x, y, "cross_entropy", strategy="vmap")
    spec = hidden_units(ma)
    a, b = point_from_module(ma), point_from_module(mb)
    mask_a, mask_b = sample_masks(spec, 0.5, 1, 0)[0], sample_masks(spec, 0.5, 1, 1)[0]
    beads, steps = theorem1_path(a, b, spec, mask_a, mask_b, 2.0)
    assert beads[0] is a and beads[-1] is b  # endpoints exactly as given
    n = len(spec.layers)
    assert sum(s.lemma == "1A" for s in steps) == 1 + 5 * (n - 1)
    path = Path(beads)
    assert all(torch.equal(path.points(0, [0.0])[k][0], a[k]) for k in a)
    assert all(torch.equal(path.points(path.n_pieces - 1, [1.0])[k][0], b[k]) for k in b)
    top = set(spec.top)
    worst = 0.0
    for i, step in enumerate(steps):
        values = path.energies(i, TS, energy)
        e0, e1 = float(values[0]), float(values[-1])
        worst = max(worst, float(values.max()))
        if step.kind == "b":  # function unchanged along the segment: constant loss
            outs = _outputs_along(ma, path, i, x)
            assert float((outs - outs[0]).abs().max()) < 1e-5, (i, step)
            assert float(values.max() - values.min()) < 1e-6
        else:  # only the top layer moves, and the loss is convex in it
            changed = {k for k in a if not torch.equal(beads[i][k], beads[i + 1][k])}
            assert changed <= top, (i, step, changed)
            # float32 evaluation: a segment whose two ends compute the same function (the top layer switches
            # between identical copies) has a flat profile up to rounding of a few ulps of the loss
            bound = segment_bound("a", Metric.CROSS_ENTROPY, e0, e1)
            assert float(values.max()) <= bound + 1e-6 * max(1.0, abs(bound))
    dropped = [energy(apply_dropout(p, spec, m, 2.0, from_layer=j)) for p, m in ((a, mask_a), (b, mask_b))
               for j in range(1, n + 1)]
    assert worst <= max(energy(a), energy(b), *dropped) + 1e-6  # Theorem 1 with convex steps


def test_lemma2_moves_are_segments_never_jumps():
    ma, mb = mlp4(0), mlp4(1)
    spec = hidden_units(ma)
    a, b = point_from_module(ma), point_from_module(mb)
    # B_1 keeps the same units as A_1: every kept unit of A_1 has to move
    mask = sample_masks(spec, 0.5, 1, 0)[0]
    beads, steps = theorem1_path(a, b, spec, mask, mask, 2.0)
    x, _ = data_for(ma)
    path = Path(beads)
    lemma2 = [i for i, s in enumerate(steps) if s.lemma == "2"]
    # one (b)-(a)-(b) move per layer at most (here one: moving layer 1 carries every layer above into free slots)
    assert len(lemma2) % 3 == 0 and 6 <= len(lemma2) <= 3 * len(spec.layers) + 3
    for i in lemma2:
        if steps[i].kind == "b":
            outs = _outputs_along(ma, path, i, x)
            assert float((outs - outs[0]).abs().max()) < 1e-5, (i, steps[i])
        else:
            changed = {k for k in a if not torch.equal(beads[i][k], beads[i + 1][k])}
            assert changed <= set(spec.top)
    # before the exchange, A_1's active units sit away from B_1's in every layer
    before = beads[lemma2[-3]]
    for layer in spec.layers:
        active = before[layer.weight].reshape(layer.size, -1).abs().sum(1) > 0
        assert not bool((active & mask[layer.name]).any())


def test_method_connects_and_reports_segments():
    ma, mb = mlp4(0), mlp4(1)
    x, y = data_for(ma)
    energy = Energy(ma, x, y, "cross_entropy", strategy="vmap")
    threshold = 10.0
    result = connect(ma, mb, energy, threshold=threshold, method="kuditipudi_dropout", masks=4, grid_size=5,
                     certification=CertifyConfig(resolution=0.1))
    extras = result.outcome.extras
    assert result.connected and result.outcome.reason == "connected"
    assert extras["n_segments"] == result.path.n_pieces == len(extras["segments"])
    assert extras["every_segment_within_bound"]
    assert result.outcome.worst_barrier <= extras["theorem_bound"] + 1e-9
    assert set(extras["dropout_a"]["kept_units"]) == {"0", "2", "4"}
    assert result.certificate.max_energy <= threshold
    # the measured slack is the best masks' worst theta_i over the worse endpoint; cross-entropy is convex in
    # the top layer, so the constructed path stays within it
    ends = max(float(energy(point_from_module(m))) for m in (ma, mb))
    waypoints = max(max(extras[f"dropout_{w}"]["best_mask_energies"]) for w in "ab")
    assert extras["measured_slack"] == pytest.approx(max(0.0, waypoints - ends))
    assert extras["within_slack"] and result.outcome.worst_barrier <= ends + extras["measured_slack"] + 1e-6
    assert all(torch.equal(result.path.beads[0][k], v.detach()) for k, v in ma.state_dict().items())


def test_not_dropout_stable_is_reported_with_numbers():
    ma, mb = mlp4(0), mlp4(1)
    x, y = data_for(ma)
    energy = Energy(ma, x, y, "cross_entropy", strategy="vmap")
    threshold = max(energy(point_from_module(ma)), energy(point_from_module(mb))) + 1e-4
    result = connect(ma, mb, energy, threshold=threshold, method="kuditipudi_dropout", masks=2, grid_size=5,
                     certify_path=False)
    assert not result.connected and result.outcome.reason == "not_dropout_stable"
    assert "best of 2 masks" in result.outcome.message and f"{threshold:.4g}" in result.outcome.message
    assert result.path.n_beads == 0


def test_p_below_one_half_is_refused():
    with pytest.raises(ConfigError, match="p must be in \\[0.5, 1\\)"):
        KuditipudiConfig(p=0.2)


def test_cli_connect_with_kuditipudi_dropout(tmp_path):
    from modeconnect.cli import main

    out = tmp_path / "run"
    assert main(["connect", "--task", "quadratic", "--method", "kuditipudi_dropout", "--threshold", "0.3",
                 "--masks", "4", "--out", str(out), "--quiet", "--json"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "kuditipudi_dropout"
    assert result["reason"] in ("connected", "not_dropout_stable", "barrier_above_threshold")
    if result["reason"] != "not_dropout_stable":
        assert result["n_segments"] == result["n_pieces"] and result["every_segment_within_bound"]


def test_a_model_the_construction_cannot_handle_is_refused_before_anything_runs(tmp_path):
    """The Section 5 task's student (a capped ReLU and a fixed sum as output) has no top layer to interpolate:
    the run is refused naming the layer, before endpoints are trained or a directory is written."""
    from modeconnect.experiments import ConnectRunConfig, run_connect

    with pytest.raises(ConfigError, match="Hardtanh|SumOutput"):
        run_connect(ConnectRunConfig(task="kuditipudi-disconnected", method="kuditipudi_dropout"), tmp_path / "run")
    assert not (tmp_path / "run").exists()

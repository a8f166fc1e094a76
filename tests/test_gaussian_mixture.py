"""Freeman & Bruna 2.3.1: the two-unit ReLU net on a Gaussian mixture (task gaussian-mixture, theory/rank_one)."""

from __future__ import annotations

import math

import pytest
import torch

from modeconnect import cli
from modeconnect.experiments import ConnectRunConfig, run_connect
from modeconnect.path import Path
from modeconnect.tasks import make_task
from modeconnect.tasks.gaussian_mixture import (
    DEFAULT_THRESHOLD,
    MAX_SIGMA,
    PROVEN_BARRIER,
    endpoint_risk,
    mixture_data,
    mixture_net,
)
from modeconnect.theory.rank_one import block_det, rank_one_floor, rank_one_risk, wall_crossings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"sigma": 0.25, "n_train": 128}


def pair(**options):
    task = make_task("gaussian-mixture", **options)
    a = task.energy.point_of(task.make_model(0))
    return task, a, task.derive_endpoint_b(a)


def forward(point, x):
    return torch.func.functional_call(mixture_net(x.shape[1]).double(), {k: v.double() for k, v in point.items()},
                                      (x.double(),))


def test_the_sample_has_the_stated_moments_and_target():
    sigma = 0.3
    x, y, z = mixture_data(sigma=sigma, n_train=200, input_dim=3, data_seed=4, dtype=torch.float64)
    assert x.shape == (200, 3) and y.shape == (200, 1) and int((z == 1).sum()) == 100
    for label, axis in ((1.0, 0), (-1.0, 1)):
        rows = z == label
        mean = torch.tensor([label, -label, 0.0], dtype=torch.float64)
        eps = (x[rows] - mean) / sigma
        assert torch.allclose(eps.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(eps.T @ eps / len(eps), torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(y[rows, 0], eps[:, axis], atol=1e-12)  # Y = <X - mu_Z, e_j(Z)> / sigma


def test_endpoints_compute_the_target_exactly_where_no_sample_crosses_a_hyperplane():
    task, a, b = pair(sigma=0.1, n_train=256)
    x, y = task.energy.inputs.double(), task.energy.targets.double()
    assert torch.equal(b["0.weight"], a["0.weight"].flip(0)) and torch.equal(b["2.weight"], a["2.weight"].flip(1))
    assert torch.allclose(forward(a, x), y, atol=1e-5) and torch.allclose(forward(b, x), y, atol=1e-5)
    assert task.energy(a) < 1e-10 and task.energy(a) == task.energy(b)  # MSE >= 0: global minima
    assert float(block_det(a)) == pytest.approx(1 / 0.1) and float(block_det(b)) == pytest.approx(-1 / 0.1)


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.5, MAX_SIGMA])
def test_both_endpoints_are_inside_the_default_level_set(sigma):
    task, a, b = pair(sigma=sigma)
    target = task.endpoint_fraction * task.default_threshold
    assert task.energy(a) <= target and task.energy(b) <= target
    assert task.default_threshold < PROVEN_BARRIER
    if sigma <= 0.5:
        assert task.default_threshold == DEFAULT_THRESHOLD


def test_endpoint_risk_closed_form_against_a_large_sample():
    task, a, _ = pair(sigma=0.5, n_train=200_000)
    assert task.energy(a) == pytest.approx(endpoint_risk(0.5), rel=0.05)
    assert endpoint_risk(0.1) < 1e-20 < endpoint_risk(0.2) < endpoint_risk(0.5) < endpoint_risk(1.0) < PROVEN_BARRIER


def test_the_straight_line_crosses_the_wall_at_its_midpoint_with_the_derived_energy():
    sigma = 0.5
    task, a, b = pair(sigma=sigma, n_train=100_000)
    crossings = wall_crossings(Path([a, b]), task.energy)
    assert [c["t"] for c in crossings] == [0.5] and crossings[0]["det"] == 0.0
    k = 1 / sigma
    assert crossings[0]["energy"] == pytest.approx(k * k - 2 * k / math.sqrt(math.pi) + 1, rel=0.01)


def test_rank_one_risk_equals_a_brute_force_least_squares_fit():
    task, _, _ = pair(**SMALL)
    x, y = task.energy.inputs.double(), task.energy.targets.double()
    angles = torch.tensor([0.0, 0.3, math.pi / 4, 2.0, 3.0], dtype=torch.float64)
    fast = rank_one_risk(x, y, angles)
    for angle, value in zip(angles, fast):
        s = x @ torch.stack([torch.cos(angle), torch.sin(angle)])
        features = torch.stack([torch.relu(s), torch.relu(-s), torch.ones_like(s)], dim=1)
        coef = torch.linalg.lstsq(features, y).solution
        assert float(value) == pytest.approx(float(((features @ coef - y) ** 2).mean()), rel=1e-10)


def test_no_network_on_the_wall_goes_below_the_sample_floor():
    """Random wall points (rows a u and b u), then each trained on the wall in float64: none beats the floor,
    and the floor is the population bound 1/2 up to sampling (the whitened sample overfits it slightly)."""
    task, _, _ = pair(sigma=0.3, n_train=128)
    x, y = task.energy.inputs.double(), task.energy.targets.double()
    floor = rank_one_floor(x, y)["floor"]
    assert PROVEN_BARRIER - 0.02 < floor <= PROVEN_BARRIER + 1e-9
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(32, 1, generator=g, dtype=torch.float64) * scale for scale in (3.0, 2.0, 2.0, 3.0, 3.0, 3.0)]
    params = [p.requires_grad_() for p in params]
    optimizer = torch.optim.Adam(params, lr=0.05)

    def risks():
        angle, a, b, c1, c2, bias = params
        s = x[:, 0] * torch.cos(angle) + x[:, 1] * torch.sin(angle)  # [32, n]
        out = c1 * torch.relu(a * s) + c2 * torch.relu(b * s) + bias
        return ((out - y[:, 0]) ** 2).mean(dim=1)

    first = risks().detach()
    for _ in range(100):
        optimizer.zero_grad()
        risks().sum().backward()
        optimizer.step()
    last = risks().detach()
    assert float(last.min()) < float(first.min())  # training made progress
    assert float(torch.cat([first, last]).min()) >= floor - 1e-9


def test_greedy_dss_reports_a_persistent_barrier_and_its_path_crosses_the_wall_only_above_the_floor(tmp_path):
    config = ConnectRunConfig(task="gaussian-mixture", method_settings={"max_depth": 3}, **SMALL)
    result = run_connect(config, str(tmp_path / "run"))
    assert not result["connected"] and result["reason"] == "persistent_barrier"
    assert result["certified_max_energy"] >= PROVEN_BARRIER and result["endpoint_energies"][0] < 1e-10
    task = config.resolve().task
    path = Path.load(tmp_path / "run" / "path", like=task.energy.template)
    crossings = wall_crossings(path, task.energy)
    floor = rank_one_floor(task.energy.inputs, task.energy.targets)["floor"]
    assert path.n_beads == 3 and len(crossings) % 2 == 1  # det goes from +4 to -4: an odd count
    for c in crossings:
        assert abs(c["det"]) < 1e-5 * float(block_det(path.beads[0]))  # on the wall up to float32 rounding
        assert c["energy"] >= floor
    assert result["certified_max_energy"] >= max(c["energy"] for c in crossings) - 1e-6


@pytest.mark.slow
def test_connect_with_every_default_reports_a_persistent_barrier(capsys):
    assert cli.main(["connect", "--task", "gaussian-mixture", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "NO (persistent_barrier)" in out


def test_input_dim_adds_noise_coordinates_with_the_same_endpoints():
    task, a, b = pair(sigma=0.25, input_dim=4, n_train=64)
    assert a["0.weight"].shape == (2, 4) and task.energy(a) < 1e-10
    assert float(block_det(a)) == pytest.approx(4.0) and float(block_det(b)) == pytest.approx(-4.0)
    with pytest.raises(Exception, match="dimension 2"):
        rank_one_floor(task.energy.inputs, task.energy.targets)


@pytest.mark.parametrize("argv, message", [
    (["--sigma", "2"], "sigma must be in (0, 0.75]"),
    (["--sigma", "0"], "sigma must be in"),
    (["--n-train", "7"], "n_train must be an even integer"),
    (["--input-dim", "1"], "input_dim must be an integer between 2"),
    (["--width", "3"], "does not take these options"),
    (["--data-seed", "-1"], "data_seed must be an integer >= 0"),
])
def test_bad_settings_are_one_line_errors(capsys, argv, message):
    code = cli.main(["connect", "--task", "gaussian-mixture", "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("modeconnect: error:") and message in err and "\n" not in err


@pytest.mark.slow
def test_the_quick_reproduction_writes_its_files_and_its_claims_hold(tmp_path):
    from modeconnect.experiments.reproduce import run_reproduction
    from modeconnect.plots.repro_counterexample import counterexample_figures

    record = run_reproduction("freeman-bruna-counterexample", tmp_path, quick=True)
    for name in ("results.json", "reproduction.json", "table.csv"):
        assert (tmp_path / name).is_file()
    assert len(record["claims"]) == 4 and all(c["holds"] for c in record["claims"]), record["claims"]
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert len(rows) == 1 + len(record["results"]["runs"])
    assert set(counterexample_figures(record["results"])) == {"counterexample"}

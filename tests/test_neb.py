"""Nudged elastic band with AutoNEB pivot insertion: the force, the band, the cycles, the registry and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect import METHODS, Energy, Objective, cli, connect
from modeconnect.connect import connect_path
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig
from modeconnect.methods.neb import NEB, Band, NEBConfig, NEBState, band_gradients, neb_force, tangents
from modeconnect.methods.string_evolution import Batching
from modeconnect.params import point_from_module
from modeconnect.path import Path
from modeconnect.seeding import derive_seed
from modeconnect.tasks import make_task
from modeconnect.tasks._init import seeded
from modeconnect.train import TrainConfig, train_to_target

C = 0.5
"""Tilt of the analytic double well (moves its saddle off x = 0)."""


def double_well(w: torch.Tensor) -> torch.Tensor:
    """``(x^2 - 1)^2 + C x + 5 (y - x^2)^2 + 1``: minima and saddle on the parabola y = x^2, at the roots of
    ``4x^3 - 4x + C``; the straight segment between the minima runs high above the curved valley."""
    x, y = w[..., 0], w[..., 1]
    return (x**2 - 1) ** 2 + C * x + 5 * (y - x**2) ** 2 + 1


class Landscape(nn.Module):
    """A "model" with two parameters whose output is an analytic function of them: under MAE against zero
    targets its energy and training loss are exactly that function (it is positive)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.w).reshape(1, 1).expand(x.shape[0], 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def landscape(fn):
    x = torch.zeros(4, 1, dtype=torch.float64)
    return Energy(Landscape(fn), x, x, "mae", strategy="loop"), Objective(x, x, "mae")


def point(*xy: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(xy, dtype=torch.float64)}


def run_neb(start: Path, fn, threshold: float, **settings):
    energy, objective = landscape(fn)
    return NEB().run(start, energy, threshold=threshold, config=NEBConfig(**settings), objective=objective)


def rows_of(path: Path) -> torch.Tensor:
    return torch.stack([b["w"] for b in path.beads])


# -- the force -------------------------------------------------------------------------------------------
def test_the_band_converges_to_the_minimum_energy_path_and_the_climbing_image_to_the_saddle():
    roots = np.sort(np.roots([4, 0, -4, C]).real)
    a, b = point(roots[0], roots[0] ** 2), point(roots[2], roots[2] ** 2)
    saddle = torch.tensor([roots[1], roots[1] ** 2], dtype=torch.float64)
    a0, b0 = {k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in b.items()}
    path, outcome = run_neb(Path([a, b]), double_well, 0.1, n_images=7, climbing=True, climb_after=300,
                            steps_per_cycle=1200, max_cycles=1, lr=0.01, spring=1.0)
    assert outcome.reason == "cycles_exhausted" and path.n_beads == 7  # max_cycles=1: no pivots, just NEB
    assert torch.equal(path.beads[0]["w"], a0["w"]) and torch.equal(path.beads[-1]["w"], b0["w"])
    rows = rows_of(path)
    values = double_well(rows)
    inner = rows[1:-1].clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(double_well(inner).sum(), inner)
    tau = tangents(rows, values)
    perpendicular = grads - (grads * tau).sum(1, keepdim=True) * tau
    assert grads.norm(dim=1).max() > 1.0  # the images sit on a slope along the path...
    assert perpendicular.norm(dim=1).max() < 1e-8  # ...with no gradient across it: on the minimum energy path
    top = int(values[1:-1].argmax()) + 1
    assert torch.allclose(rows[top], saddle, atol=1e-8)  # the climbing image is at the saddle point
    assert float(values[top]) == pytest.approx(float(double_well(saddle)), abs=1e-12)
    assert float(values[top]) < float(double_well((rows[0] + rows[-1]) / 2)) - 4  # far below the straight line
    others = [i for i in range(1, 8) if i != top]  # the non-climbing images are spaced evenly on each side
    gaps = (rows[1:] - rows[:-1]).norm(dim=1)
    left, right = gaps[:top], gaps[top:]
    assert others and torch.allclose(left, left[0].expand_as(left), rtol=1e-6)
    assert torch.allclose(right, right[0].expand_as(right), rtol=1e-6)


def test_the_force_drops_the_gradient_along_the_band_and_the_climbing_image_climbs():
    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([0.0, 1.0, 2.0, 0.0], dtype=torch.float64)
    grads = torch.tensor([[-3.0, 2.0], [4.0, -1.0]], dtype=torch.float64)
    force, tau, top = neb_force(rows, values, grads, spring=0.5)
    assert top is None and torch.equal(tau, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    # perpendicular part of -g, plus k (|x_{i+1} - x_i| - |x_i - x_{i-1}|) along the band
    assert torch.allclose(force, torch.tensor([[0.5 * (2 - 1), -2.0], [0.5 * (1 - 2), 1.0]], dtype=torch.float64))
    force, _, top = neb_force(rows, values, grads, spring=0.5, climbing=True)
    assert top == 1  # the higher inner image: -g with its component along the band reversed, no spring
    assert torch.allclose(force[1], torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert torch.allclose(force[0], torch.tensor([0.5, -2.0], dtype=torch.float64))


def test_the_improved_tangent_points_to_the_higher_neighbour():
    rows = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    up = tangents(rows, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    down = tangents(rows, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    simple = tangents(rows, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), "simple")
    h = 2**-0.5
    assert torch.allclose(up, torch.tensor([[h, -h]], dtype=torch.float64))
    assert torch.allclose(down, torch.tensor([[h, h]], dtype=torch.float64))
    assert torch.allclose(simple, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    # a maximum along the band: both directions, weighted towards the higher neighbour (here the right one)
    peak = tangents(rows, torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64))
    mixed = torch.tensor([1.0, -1.0]) * 3 + torch.tensor([1.0, 1.0]) * 2
    assert torch.allclose(peak[0], (mixed / mixed.norm()).double())


def test_the_springs_space_the_images_evenly_on_a_flat_energy():
    a, b = point(0.0, 0.0), point(4.0, 0.0)
    start = Path([a, point(0.3, 0.5), point(1.0, -0.2), point(3.5, 0.4), b])
    before = rows_of(start)
    path, outcome = run_neb(start, lambda w: 0 * w.sum() + 1, 0.5, steps_per_cycle=1500, max_cycles=1, lr=0.05,
                            spring=1.0)
    assert outcome.reason == "cycles_exhausted" and path.n_beads == 3
    gaps = (rows_of(path)[1:] - rows_of(path)[:-1]).norm(dim=1)
    before_gaps = (before[1:] - before[:-1]).norm(dim=1)
    assert before_gaps.max() / before_gaps.min() > 3
    assert float(gaps.max() / gaps.min()) < 1 + 1e-6
    assert torch.equal(path.beads[0]["w"], before[0]) and torch.equal(path.beads[-1]["w"], before[-1])


# -- AutoNEB pivots ---------------------------------------------------------------------------------------
def bumps(*centres: tuple[float, float, float]):
    """A flat energy 1 with narrow Gaussian bumps ``(x, y, height)``."""
    def fn(w):
        out = 0 * w[..., 0] + 1
        for x, y, h in centres:
            out = out + h * torch.exp(-((w[..., 0] - x) ** 2 + (w[..., 1] - y) ** 2) / 0.01)
        return out
    return fn


def straight_band() -> Path:
    return Path([point(0.0, 0.0), point(1.0, 0.0), point(2.0, 0.0), point(3.0, 0.0)])


def test_a_pivot_goes_exactly_where_a_segment_exceeds_and_nowhere_else():
    lines = []
    energy, objective = landscape(bumps((1.75, 0.0, 5.0)))
    path, outcome = NEB().run(straight_band(), energy, threshold=2.0, objective=objective, progress=lines.append,
                              config=NEBConfig(steps_per_cycle=1, max_cycles=2, lr=1e-9, grid_size=33))
    log = outcome.extras["pivot_log"]
    assert [(p["cycle"], p["segment"], p["t"]) for p in log] == [(0, 1, 0.75)]  # the grid maximum of segment 1
    assert log[0]["barrier"] == pytest.approx(6.0)
    assert path.n_beads == 3 and outcome.extras["image_births"] == [0, 0, 1, 0, 0]
    assert torch.allclose(path.beads[2]["w"], torch.tensor([1.75, 0.0], dtype=torch.float64), atol=1e-6)
    assert outcome.reason == "cycles_exhausted" and not outcome.connected
    assert "segment 1 has grid maximum 6 > tolerance x L0 = 2" in outcome.message  # the pivot sits on the bump
    assert outcome.worst_barrier == pytest.approx(6.0) and outcome.extras["cycles"] == 2
    assert len(lines) == 2 and lines[0].startswith("cycle 0:") and "1 pivot(s) inserted" in lines[0]


def test_no_pivot_where_no_segment_exceeds():
    path, outcome = run_neb(straight_band(), bumps((1.75, 0.0, 5.0)), 10.0, steps_per_cycle=1, lr=1e-9)
    assert outcome.connected and outcome.reason == "connected"
    assert path.n_beads == 2 and outcome.extras["pivots_inserted"] == 0
    assert outcome.extras["cycles"] == 0 and outcome.extras["neb_steps"] == 0  # the initial band already passes
    assert outcome.extras["energy_evaluations"] == 3 * 33


def test_pivots_highest_first_within_the_per_cycle_and_image_budgets():
    fn = bumps((0.5, 0.0, 3.0), (2.5, 0.0, 5.0))
    _, outcome = run_neb(straight_band(), fn, 2.0, steps_per_cycle=1, max_cycles=2, lr=1e-9,
                         max_insert_per_cycle=1)
    assert [(p["segment"], p["t"]) for p in outcome.extras["pivot_log"]] == [(2, 0.5)]  # the higher bump only
    path, outcome = run_neb(straight_band(), fn, 2.0, steps_per_cycle=1, lr=1e-9, n_images=2, max_images=2)
    assert outcome.reason == "image_budget_exhausted" and path.n_beads == 2
    assert "the band already has 2 inner images (max_images=2)" in outcome.message
    assert "segment 2 has grid maximum 6 > tolerance x L0 = 2" in outcome.message


# -- batched gradients -----------------------------------------------------------------------------------
def _mlp(seed: int) -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), seed).double()


def test_batched_gradients_equal_looped_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x)
    energy, objective = Energy(_mlp(0), x, y, "mse", strategy="vmap"), Objective(x, y, "mse")
    points = [point_from_module(_mlp(s)) for s in range(5)]
    band = Band(points[0])
    rows = band.flat(points)
    results = {}
    for mode in (Batching.VMAP, Batching.LOOP):
        inner = rows[1:-1].clone().requires_grad_(True)
        results[mode] = band_gradients(rows, inner, band=band, energy=energy, objective=objective, inputs=x,
                                       targets=y, batching=mode)
        assert results[mode][2] is mode
    (lv, gv, _), (ll, gl, _) = results[Batching.VMAP], results[Batching.LOOP]
    torch.testing.assert_close(lv, ll, rtol=0, atol=1e-12)
    torch.testing.assert_close(gv, gl, rtol=0, atol=1e-12)
    for i in range(1, 4):  # each row is the gradient of that image's own loss
        params = {k: v.clone().requires_grad_(True) for k, v in points[i].items()}
        loss = ((energy.train_forward(params, x) - y) ** 2).mean()
        loss.backward()
        torch.testing.assert_close(gv[i - 1], torch.cat([params[k].grad.reshape(-1) for k in band.keys]),
                                   rtol=0, atol=1e-12)
    # and a whole NEB cycle moves the images the same way either way
    a, b = points[0], points[-1]
    paths = {mode: NEB().run(Path([a, b]), energy, threshold=1e-3, objective=objective,
                             config=NEBConfig(steps_per_cycle=20, max_cycles=1, batching=mode))[0]
             for mode in ("vmap", "loop")}
    for p, q in zip(paths["vmap"].beads, paths["loop"].beads):
        for k in p:
            torch.testing.assert_close(p[k], q[k], rtol=0, atol=1e-10)


# -- the cubic task, resume, the registry and the CLI ------------------------------------------------------
@pytest.fixture(scope="module")
def cubic():
    """The cubic task's endpoints for run seed 1 at L0 = 0.05 (trained as a connect run trains them)."""
    task = make_task("cubic")
    ends = []
    for which in ("a", "b"):
        seed = derive_seed(1, "endpoint", which)
        start = task.energy.point_of(task.make_model(seed))
        end, status = train_to_target(start, energy=task.energy, objective=task.objective, target=0.045,
                                      config=task.endpoint_training, seed=seed)
        assert status.reached
        ends.append(end)
    return task, ends


def test_a_cubic_pair_connects_where_the_straight_line_fails(cubic):
    task, (a, b) = cubic
    straight = Path([a, b]).energies(0, torch.linspace(0, 1, 65, dtype=torch.float64), task.energy)
    assert float(straight.max()) > 0.1  # measured 0.128: twice L0
    result = connect(a, b, task.energy, threshold=0.05, method="neb", objective=task.objective, steps_per_cycle=100)
    assert result.connected and result.certificate.certified and result.certificate.max_energy <= 0.05
    extras = result.outcome.extras
    assert extras["pivots_inserted"] >= 1 and extras["cycles"] >= 2  # AutoNEB had to add images
    assert extras["images"] == result.path.n_beads == 3 + extras["pivots_inserted"]
    assert extras["neb_steps"] == 100 * extras["cycles"] and extras["trained_parameters"] == 33 * extras["images"]
    assert extras["cycle_max_barrier"][-1] <= 0.05 < extras["cycle_max_barrier"][0]
    assert extras["batching"] == ["vmap"] and extras["energy_evaluations"] > 0
    for end, original in ((result.path.beads[0], a), (result.path.beads[-1], b)):
        assert all(torch.equal(end[k], original[k]) for k in original)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(cubic):
    task, (a, b) = cubic
    config = NEBConfig(steps_per_cycle=40, max_cycles=3, batch_size=64, init_noise=0.05, climbing=True,
                       climb_after=60, seed=7)

    def go(path, state=None, checkpoint=None):
        return connect_path(path, task.energy, threshold=0.05, method="neb", config=config, objective=task.objective,
                            state=state, checkpoint=checkpoint, certify_path=False)

    reference = go(Path([a, b]))
    assert reference.outcome.extras["cycles"] == 3
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_cycle_one(path, state):
        if state.cycle == 1:
            saved["path"], saved["state"] = path.copy(), json.loads(json.dumps(state.to_dict()))
            raise Stop

    with pytest.raises(Stop):
        go(Path([a, b]), checkpoint=stop_after_cycle_one)
    resumed = go(saved["path"], state=NEBState.from_dict(saved["state"]))
    assert resumed.path.n_beads == reference.path.n_beads
    for p, q in zip(resumed.path.beads, reference.path.beads):
        assert all(torch.equal(p[k], q[k]) for k in p)
    for key in ("cycle_log", "pivot_log", "neb_steps", "image_births"):
        assert resumed.outcome.extras[key] == reference.outcome.extras[key]


def test_the_cli_writes_a_run_directory_recording_neb(tmp_path, capsys):
    out = tmp_path / "neb"
    code = cli.main(["connect", "--task", "cubic", "--method", "neb", "--threshold", "0.05", "--seed", "1",
                     "--steps-per-cycle", "100", "--spring", "0.2", "--quiet", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and "connected          yes" in stdout
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == "neb"
    assert config["method_config"]["steps_per_cycle"] == 100 and config["method_config"]["spring"] == 0.2
    assert config["method_config"]["tangent"] == "improved" and config["method_config"]["climbing"] is False
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "neb" and result["connected"] and result["certified"] is True
    assert result["certificate"] is not None and result["certified_max_energy"] <= 0.05
    assert result["n_beads"] == result["images"] and result["neb_steps"] > 0
    saved = json.loads((out / "path" / "path.json").read_text())["metadata"]["method_state"]
    assert saved["method"] == "neb" and saved["state"]["finished"] is True
    assert len(saved["state"]["image_births"]) == result["n_beads"] + 2


def test_it_is_registered_and_bad_settings_are_config_errors(capsys):
    assert METHODS["neb"] is NEB and NEB.Config is NEBConfig and NEB.State is NEBState and NEB.trains
    for settings, message in [
        ({"spring": -1.0}, "spring must be >= 0"),
        ({"tangent": "curvy"}, "unknown tangent 'curvy'"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": 1.0, "spring": 1.0}, "makes SGD unstable on the springs alone"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"n_images": 5, "max_images": 4}, "n_images (5) must be <= max_images (4)"),
        ({"steps_per_cycle": 0}, "steps_per_cycle must be an integer >= 1"),
        ({"grid_size": 2}, "grid_size must be between 3"),
        ({"tolerance": 0.5}, "tolerance must be >= 1"),
        ({"max_insert_per_cycle": 0}, "max_insert_per_cycle must be an integer >= 1"),
        ({"batching": "gpu"}, "unknown batching 'gpu'"),
        ({"climbing": "yes"}, "climbing must be true or false"),
        ({"max_time_s": -1.0}, "max_time_s must be positive"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            NEBConfig(**settings)
    with pytest.raises(ConfigError, match="spring must be >= 0"):
        ConnectRunConfig(task="cubic", method="neb", method_settings={"spring": -1.0})
    assert cli.main(["connect", "--task", "cubic", "--method", "neb", "--spring=-1"]) == 2
    err = capsys.readouterr().err
    assert "spring must be >= 0" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="needs an objective"):
        NEB().run(Path([point(0.0, 0.0), point(1.0, 0.0)]), landscape(double_well)[0], threshold=1.0,
                  config=NEBConfig(), objective=None)


def test_train_config_carries_the_optimizer_settings():
    config = NEBConfig(optimizer="adam", lr=0.003, batch_size=16)
    assert config.train_config() == TrainConfig(optimizer="adam", lr=0.003, momentum=0.9, batch_size=16)

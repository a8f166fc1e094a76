"""Garipov et al.'s curves: the ``bezier`` and ``polychain`` path methods."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modeconnect import METHODS, Energy, Objective, cli, connect
from modeconnect.batchnorm import buffer_key, buffer_name, is_buffer_key, recompute_statistics, statistic_names
from modeconnect.connect import connect_path
from modeconnect.errors import ConfigError
from modeconnect.methods.curves import BezierCurve, CurveConfig, CurveState, PolyChain, curve_point
from modeconnect.metrics import metric_count, metric_sum
from modeconnect.params import distance, point_from_module
from modeconnect.path import Bezier, Path, Straight
from modeconnect.settings import apply_overrides
from modeconnect.tasks import make_task
from modeconnect.tasks._init import seeded
from modeconnect.train import TrainConfig, train_to_target

CUBIC_L0 = 0.1
"""At this level the straight segment between the cubic pair below peaks at 0.167 (65-point grid); a Bezier
curve trained for 1000 steps at lr 0.05 stays at the endpoints' energy 0.088 (measured)."""
FAST = TrainConfig(lr=0.05)


def _mlp(seed: int) -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), seed).double()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cubic():
    """Two cubic-task networks trained below 0.9 * CUBIC_L0 (the task's own data, energy and objective)."""
    torch.manual_seed(0)
    task = make_task("cubic")
    ends = [train_to_target(task.energy.point_of(task.make_model(s)), energy=task.energy, objective=task.objective,
                            target=0.9 * CUBIC_L0, config=TrainConfig(lr=0.02, max_steps=20000), seed=s)[0]
            for s in (0, 1)]
    return ends, task.energy, task.objective


@pytest.fixture(scope="module")
def cubic_bezier(cubic):
    (a, b), energy, objective = cubic
    return connect(a, b, energy, threshold=CUBIC_L0, method="bezier", objective=objective, steps=1000,
                   bead_training=FAST, certify_path=False)


@pytest.fixture(scope="module")
def small():
    """A 1-8-1 tanh pair on sin(3x) (float64), untrained: cheap to train curves on for many steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x)
    energy, objective = Energy(_mlp(0), x, y, "mse", strategy="vmap"), Objective(x, y, "mse")
    return [point_from_module(_mlp(s)) for s in (1, 2)], energy, objective


def expected_objective(kind: str, a, c, b, objective: Objective, energy: Energy, n: int = 33) -> float:
    """E_t objective(phi(t)) on the whole training set, by the midpoint rule in t."""
    ts = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    with torch.no_grad():
        values = [metric_sum(objective.loss, energy.train_forward(curve_point(kind, a, c, b, float(t)),
                                                                  objective.inputs), objective.targets)
                  / metric_count(objective.loss, objective.targets) for t in ts]
    return float(torch.stack(values).mean())


# -- registry and settings ---------------------------------------------------------------------------------------
def test_both_are_registered_with_one_config():
    assert METHODS["bezier"] is BezierCurve and METHODS["polychain"] is PolyChain
    assert BezierCurve.Config is CurveConfig is PolyChain.Config and BezierCurve.trains


@pytest.mark.parametrize(("settings", "match"), [
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": -5}, "steps must be >= 1"),
    ({"t_samples": 0}, "t_samples must be >= 1"),
    ({"tolerance": 0.5}, "tolerance must be >= 1"),
    ({"grid_size": 2}, "grid_size must be between 3"),
    ({"init_perturbation": -0.1}, "init_perturbation must be a finite number >= 0"),
    ({"init_perturbation": float("nan")}, "init_perturbation must be a finite number >= 0"),
    ({"chunk_steps": -1}, "chunk_steps must be >= 0"),
    ({"history_every": 0}, "history_every must be >= 1"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"bead_training": {"lr": -1e-3}}, "lr must be a positive number"),
    ({"bead_training": {"optimizer": "lbfgs"}}, "unknown optimizer 'lbfgs'"),
])
def test_bad_settings_raise_a_config_error_that_says_what_to_do(settings, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(CurveConfig(), settings)


def test_bad_starts_raise_config_errors(small):
    (a, b), energy, objective = small
    with pytest.raises(ConfigError, match="needs an objective"):
        BezierCurve().run(Path([a, b]), energy, threshold=0.1, config=CurveConfig(), objective=None)
    bent = Path([a, {k: (v + w) / 2 for (k, v), w in zip(a.items(), b.values())}, b])
    with pytest.raises(ConfigError, match="starts from the straight segment between the two endpoints"):
        BezierCurve().run(bent, energy, threshold=0.1, config=CurveConfig(), objective=objective)
    with pytest.raises(ConfigError, match="state does not match the path"):
        BezierCurve().run(bent, energy, threshold=0.1, config=CurveConfig(), objective=objective,
                          state=CurveState(steps_done=10))


# -- the curves --------------------------------------------------------------------------------------------------
def test_endpoints_are_kept_bit_for_bit_and_the_bezier_midpoint_is_the_control_average(cubic, cubic_bezier):
    (a, b), _, _ = cubic
    path = cubic_bezier.path
    assert path.n_pieces == 1 and path.n_beads == 0 and isinstance(path.pieces[0], Bezier)
    for bead, end in ((path.beads[0], a), (path.beads[-1], b)):
        assert list(bead) == list(end) and all(torch.equal(bead[k], end[k]) for k in end)
    c = path.pieces[0].controls[0]
    assert distance(c, {k: (a[k] + b[k]) / 2 for k in a}) > 0.1  # c was trained away from the midpoint
    mid = path.points(0, [0.5])
    for k in a:
        expected = 0.25 * a[k].double() + 0.5 * c[k].double() + 0.25 * b[k].double()
        torch.testing.assert_close(mid[k][0].double(), expected, rtol=1e-6, atol=1e-7)
    ends = path.points(0, [0.0, 1.0])
    assert all(torch.equal(ends[k][0], a[k]) and torch.equal(ends[k][1], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_the_trained_curve_is_the_curve_on_the_path(small, kind):
    """curve_point (what training differentiates) agrees with the returned Path's points."""
    (a, b), energy, objective = small
    path, _ = METHODS[kind]().run(Path([a, b]), energy, threshold=1.0, objective=objective,
                                  config=CurveConfig(steps=20, init_perturbation=0.2, bead_training=FAST))
    c = path.pieces[0].controls[0] if kind == "bezier" else path.beads[1]
    if kind == "polychain":
        assert path.n_beads == 1 and all(isinstance(p, Straight) for p in path.pieces)
    for t in (0.0, 0.1, 0.5, 0.77, 1.0):
        piece, s = (0, t) if kind == "bezier" else ((0, 2 * t) if t <= 0.5 else (1, 2 * t - 1))
        on_path = path.points(piece, [s])
        phi = curve_point(kind, a, c, b, t)
        for k in a:
            torch.testing.assert_close(phi[k], on_path[k][0], rtol=1e-12, atol=1e-12)


def test_training_lowers_the_expected_objective_and_connects_where_the_straight_line_fails(cubic, cubic_bezier):
    (a, b), energy, objective = cubic
    outcome = cubic_bezier.outcome
    straight = float(Path([a, b]).energies(0, torch.linspace(0, 1, 65, dtype=torch.float64), energy).max())
    assert straight > CUBIC_L0  # measured 0.167: the straight segment has a barrier
    assert outcome.extras["straight_max_energy"] == pytest.approx(straight)
    assert outcome.connected and outcome.reason == "connected" and outcome.worst_barrier <= CUBIC_L0
    c = cubic_bezier.path.pieces[0].controls[0]
    mid = {k: (a[k] + b[k]) / 2 for k in a}  # c's start: the Bezier curve is then the straight segment
    before = expected_objective("bezier", a, mid, b, objective, energy)
    after = expected_objective("bezier", a, c, b, objective, energy)
    assert after < 0.25 * before  # measured: 0.0239 -> 0.0042
    extras = outcome.extras
    assert extras["trained_points"] == 1 and extras["trained_parameters"] == 33 and extras["steps"] == 1000
    assert extras["final_mean_objective"] < before
    assert [s for s, _ in extras["objective_history"]] == list(range(100, 1001, 100))
    assert extras["energy_evaluations"] == 2 * 65  # the straight segment's grid, then the curve's


def test_a_short_run_reports_the_barrier_it_could_not_remove(cubic):
    (a, b), energy, objective = cubic
    path, outcome = PolyChain().run(Path([a, b]), energy, threshold=CUBIC_L0, objective=objective,
                                    config=CurveConfig(steps=5, bead_training=TrainConfig(lr=1e-4)))
    assert not outcome.connected and outcome.reason == "barrier_above_threshold"
    assert f"> tolerance x L0 = {CUBIC_L0:.4g}" in outcome.message and "at t=" in outcome.message
    assert path.n_beads == 1 and outcome.worst_barrier == max(outcome.extras["segment_max_energy"])


def test_the_quadrature_length_matches_a_dense_polyline(cubic_bezier):
    path = cubic_bezier.path
    points = path.points(0, torch.linspace(0, 1, 20001, dtype=torch.float64))
    flat = torch.cat([v.double().reshape(20001, -1) for k, v in points.items() if not is_buffer_key(k)], 1)
    polyline = float((flat[1:] - flat[:-1]).norm(dim=1).sum())
    assert path.length > 1.05 * path.chord  # a real bend
    assert path.length == pytest.approx(polyline, rel=1e-6)


# -- resuming ----------------------------------------------------------------------------------------------------
def _run(kind, small, steps, *, state=None, start=None, saved=None, **settings):
    (a, b), energy, objective = small
    config = CurveConfig(steps=steps, bead_training=FAST, init_perturbation=0.1, **settings)

    def checkpoint(path, s):
        if saved is not None:
            saved.append((path.copy(), json.loads(json.dumps(s.to_dict()))))

    return METHODS[kind]().run(start or Path([a, b]), energy, threshold=0.05, objective=objective, config=config,
                               state=state, checkpoint=checkpoint)


def _control(kind, path):
    return path.pieces[0].controls[0] if kind == "bezier" else path.beads[1]


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_n_steps_then_resumed_to_2n_equals_2n_at_once(small, kind):
    once, _ = _run(kind, small, 120, chunk_steps=60, t_samples=2)
    saved = []
    _run(kind, small, 60, chunk_steps=60, t_samples=2, saved=saved)
    path, state = saved[-1]
    assert state["finished"] and state["steps_done"] == 60
    resumed, outcome = _run(kind, small, 120, chunk_steps=60, t_samples=2, start=path,
                            state=CurveState.from_dict(state))
    assert outcome.extras["steps"] == 120
    c1, c2 = _control(kind, once), _control(kind, resumed)
    assert all(torch.equal(c1[k], c2[k]) for k in c1)


def test_an_interrupted_run_resumes_from_its_last_chunk_bit_for_bit(small):
    saved = []
    full, outcome = _run("bezier", small, 90, chunk_steps=30, history_every=20, saved=saved)
    assert [s["steps_done"] for _, s in saved] == [30, 60, 90] and saved[-1][1]["finished"]
    path, state = saved[0]  # as if killed during the second chunk
    resumed, again = _run("bezier", small, 90, chunk_steps=30, history_every=20, start=path,
                          state=CurveState.from_dict(state))
    c1, c2 = _control("bezier", full), _control("bezier", resumed)
    assert all(torch.equal(c1[k], c2[k]) for k in c1)
    assert again.extras["objective_history"] == outcome.extras["objective_history"]
    assert again.extras["final_mean_objective"] == outcome.extras["final_mean_objective"]
    # a finished run hands back its outcome without training again
    done_path, done = _run("bezier", small, 90, chunk_steps=30, history_every=20, start=saved[-1][0],
                           state=CurveState.from_dict(saved[-1][1]))
    assert done.to_dict() == outcome.to_dict()


def test_extending_inside_a_chunk_restarts_the_optimizer_but_is_deterministic(small):
    """The defined behaviour off a chunk boundary: same result every time, steps counted exactly."""
    results = []
    for _ in range(2):
        saved = []
        _run("bezier", small, 45, chunk_steps=30, saved=saved)
        path, state = saved[-1]
        resumed, outcome = _run("bezier", small, 90, chunk_steps=30, start=path, state=CurveState.from_dict(state))
        assert outcome.extras["steps"] == 90
        results.append(_control("bezier", resumed))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


# -- BatchNorm ---------------------------------------------------------------------------------------------------
def _bn_problem(policy):
    def net(seed):
        return seeded(lambda: nn.Sequential(nn.Linear(2, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 1)), seed)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 2, generator=g)
    y = x[:, :1] * x[:, 1:]
    extra = {"bn_batches": [x[:24], x[24:]]} if policy == "recompute" else {}
    energy = Energy(net(0), x, y, "mse", strategy="loop", batchnorm=policy, **extra)
    ends = []
    for s in (1, 2):
        model = net(s)
        model[1].momentum = None  # one cumulative pass: the statistics of its own on x
        model.train()
        with torch.no_grad():
            model(x)
        ends.append(energy.point_of(model.eval()))
    return ends, energy, Objective(x, y, "mse")


def test_batchnorm_interpolate_fits_the_control_statistics_at_the_middle():
    (a, b), energy, objective = _bn_problem("interpolate")
    path, outcome = BezierCurve().run(Path([a, b]), energy, threshold=10.0, objective=objective,
                                      config=CurveConfig(steps=30, bead_training=FAST))
    c = path.pieces[0].controls[0]
    names = [buffer_key(n) for n in statistic_names(energy.model)]
    assert names and all(k in c for k in names) and "interpolate" in outcome.extras["batchnorm_handling"]
    mid = {k: v[0] for k, v in path.points(0, [0.5]).items()}
    params = {k: v for k, v in mid.items() if not is_buffer_key(k)}
    stats = recompute_statistics(energy.model, params, [objective.inputs])
    for key in names:  # means exactly; variances too, except where (V_a + V_b) / 4 is larger (c's is clipped at 0)
        expected = stats[buffer_name(key)]
        if key.endswith("running_var"):
            floor = 0.25 * (a[key] + b[key])
            assert bool((c[key] >= 0).all()) and bool((expected < floor).any())  # this pair has clipped units
            expected = torch.maximum(expected, floor)
        torch.testing.assert_close(mid[key], expected, rtol=1e-5, atol=1e-6)
    clipped = int((stats["1.running_var"] < 0.25 * (a["buffer:1.running_var"] + b["buffer:1.running_var"])).sum())
    assert f"{clipped} of 6 variances clipped" in outcome.extras["batchnorm_handling"]
    assert all(torch.equal(path.beads[0][k], a[k]) and torch.equal(path.beads[1][k], b[k]) for k in a)


def test_batchnorm_recompute_keeps_parameters_only():
    (a, b), energy, objective = _bn_problem("recompute")
    assert not any(is_buffer_key(k) for k in a)
    connection = connect_path(Path([a, b]), energy, threshold=10.0, method="polychain", objective=objective,
                              config=CurveConfig(steps=30, bead_training=FAST))
    assert not any(is_buffer_key(k) for k in connection.path.beads[1])
    assert "recompute policy" in connection.outcome.extras["batchnorm_handling"]
    assert connection.certificate is not None and connection.outcome.connected


# -- the command line --------------------------------------------------------------------------------------------
def test_the_cli_runs_bezier_into_a_run_directory(capsys, tmp_path):
    out = tmp_path / "bezier"
    argv = ["connect", "--task", "cubic", "--method", "bezier", "--steps", "200", "--bead-lr", "0.05",
            "--threshold", str(CUBIC_L0), "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "method             bezier" in stdout and "1 piece(s) (bezier)" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "bezier" and result["piece_kinds"] == ["bezier"] and result["steps"] == 200
    assert result["certificate"] is not None and result["certified_max_energy"] is not None
    assert result["method_config"]["steps"] == 200 and result["method_config"]["bead_training"]["lr"] == 0.05
    assert json.loads((out / "config.json").read_text())["config"]["method"] == "bezier"
    saved = json.loads((out / "path" / "path.json").read_text())
    assert [p["kind"] for p in saved["pieces"]] == ["bezier"]
    assert cli.main(argv) == 0  # a rerun reads the finished run back
    assert json.loads((out / "result.json").read_text()) == result

"""Theorem 2.4 / Corollary 2.5 measured (modeconnect.theory.width_scaling and .construction) and the
teacher-student task they run on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from modeconnect.certify import CertifyConfig, certify
from modeconnect.cli import main
from modeconnect.errors import ConfigError
from modeconnect.path import Path
from modeconnect.tasks import make_task
from modeconnect.tasks.teacher_student import teacher_data, teacher_point
from modeconnect.theory.construction import PIECES, construction_gap, construction_path, nearest_unit_angles
from modeconnect.theory.width_scaling import LadderConfig, dss_gap, fit_exponent, gap_above, line_gap
from modeconnect.train import TrainConfig, train_to_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OPTIONS = {"width": 12, "input_dim": 2, "n_train": 64}


@pytest.fixture(scope="module")
def trained_pair():
    """Two students of width 12 trained to MSE 0.02 from different initialisations (about a second)."""
    task = make_task("teacher-student", **OPTIONS)
    config = TrainConfig(optimizer="adam", lr=0.01, check_every=10, max_steps=3000)
    points = []
    for seed in (0, 1):
        start = task.energy.point_of(task.make_model(seed))
        point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=0.02,
                                        config=config, seed=seed)
        assert status.final_energy <= 0.02
        points.append(point)
    return task, points[0], points[1]


def _synthetic(exponent: float, rng: np.random.Generator, widths=(8, 16, 32, 64, 128, 256), pairs=8, sd=0.3):
    ms = np.repeat(widths, pairs).astype(float)
    return ms, 0.7 * ms**exponent * np.exp(sd * rng.standard_normal(len(ms)))


def test_fit_exponent_recovers_a_known_exponent_with_a_calibrated_interval():
    rng = np.random.default_rng(0)
    slopes, covered, boot = [], 0, []
    for _ in range(40):
        ms, gaps = _synthetic(-0.5, rng)
        fit = fit_exponent(ms, gaps, bootstrap=60, seed=1)
        low, high = fit.interval()
        covered += low <= -0.5 <= high
        slopes.append(fit.slope)
        boot.append(fit.bootstrap_se)
    assert abs(np.mean(slopes) + 0.5) < 0.02  # unbiased (log of a mean of lognormals: a constant offset only)
    spread = float(np.std(slopes, ddof=1))
    assert 0.5 < np.median(boot) / spread < 2  # the bootstrap error is the size of the real scatter
    assert covered / 40 >= 0.85
    # a different exponent is told apart
    ms, gaps = _synthetic(-1.0, rng)
    fit = fit_exponent(ms, gaps, bootstrap=200)
    assert fit.interval()[1] < -0.5 and fit.dof == 4 and fit.widths == [8, 16, 32, 64, 128, 256]


def test_fit_exponent_counts_zero_gaps_in_the_mean_and_drops_all_zero_widths():
    widths = [4, 4, 8, 8, 16, 16, 32, 32]
    gaps = [1.0, 1.0, 0.5, 0.0, 0.25, 0.0, 0.0, 0.0]
    fit = fit_exponent(widths, gaps)
    assert fit.mean_gaps == [1.0, 0.25, 0.125] and fit.widths == [4, 8, 16]
    assert fit.excluded_widths == [32]
    assert fit.slope == pytest.approx(-1.5)  # least squares through (log 4, 0), (log 8, -2 log 2), (log 16, -3 log 2)
    assert json.dumps(fit.to_dict())  # JSON-safe


@pytest.mark.parametrize("widths, gaps, message", [
    ([4, 8], [1.0], "one length"),
    ([4, 8, 16], [1.0, -0.1, 0.2], ">= 0"),
    ([4, 8, 16], [1.0, float("nan"), 0.2], ">= 0"),
    ([4, 0, 16], [1.0, 0.5, 0.2], "positive"),
    ([4, 4, 8], [1.0, 0.5, 0.2], ">= 3 widths"),
    ([4, 8, 16], [1.0, 0.0, 0.0], ">= 3 widths"),
])
def test_fit_exponent_bad_input(widths, gaps, message):
    with pytest.raises(ConfigError, match=message):
        fit_exponent(widths, gaps)


def test_line_gap_is_the_certified_maximum_minus_the_endpoint_level():
    task = make_task("teacher-student", **OPTIONS)
    a, b = (task.energy.point_of(task.make_model(s)) for s in (3, 4))  # untrained: a large barrier is fine
    record = line_gap(a, b, task.energy, resolution=1e-3)
    ends = [task.energy(a), task.energy(b)]
    assert record["endpoint_energies"] == pytest.approx(ends) and record["level"] == pytest.approx(max(ends))
    cert = certify(Path([a, b]), task.energy, CertifyConfig(resolution=1e-3))
    assert record["line_max"] == cert.max_energy
    assert record["eps_line"] == pytest.approx(max(0.0, cert.max_energy - max(ends)))
    dense = task.energy.along_segment(a, b, torch.linspace(0, 1, 2001))
    assert float(dense.max()) <= record["line_max"] * (1 + 1e-3)  # the certificate did not miss the top
    assert record["eps_line"] >= 0
    same = line_gap(a, a, task.energy)
    assert same["eps_line"] == 0.0  # a constant segment has no barrier (float32 rounding reads as 0)


def test_gap_above_reads_rounding_as_zero_and_is_never_negative():
    assert gap_above(0.01 + 1e-9, 0.01) == 0.0
    assert gap_above(0.009, 0.01) == 0.0
    assert gap_above(0.02, 0.01) == pytest.approx(0.01)


def test_dss_gap_is_at_most_the_line_gap_and_passes_only_certified_levels(trained_pair):
    task, a, b = trained_pair
    line = line_gap(a, b, task.energy)
    assert line["eps_line"] > 0.05  # independent inits: a real barrier on the straight line
    ladder = LadderConfig(max_rungs=3, floor=1e-4, max_beads=6)
    record = dss_gap(a, b, task.energy, task.objective, eps_line=line["eps_line"], config=ladder, seed=0)
    assert 0 <= record["eps_dss"] <= line["eps_line"]
    passed = [r for r in record["rungs"] if r["passed"]]
    assert passed, "DSS passes at half the line's gap"
    for r in passed:
        assert r["certified_max"] <= r["threshold"]
    assert record["eps_dss"] == pytest.approx(min(gap_above(r["certified_max"], record["level"]) for r in passed))
    gaps = [r["gap"] for r in record["rungs"]]
    assert gaps == pytest.approx([line["eps_line"] / 2**j for j in range(1, len(gaps) + 1)])
    assert record["stopped"] in ("failed", "floor", "max_rungs")
    assert record["censored"] == (record["stopped"] != "failed")
    assert all(r["passed"] for r in record["rungs"][:-1])  # the scan stops at the first failure


def test_dss_gap_and_ladder_bad_settings():
    with pytest.raises(ConfigError, match="ratio"):
        LadderConfig(ratio=1.0)
    with pytest.raises(ConfigError, match="bead_fraction"):
        LadderConfig(bead_fraction=1.0)
    with pytest.raises(ConfigError, match="floor"):
        LadderConfig(floor=0)
    task = make_task("teacher-student", **OPTIONS)
    a = task.energy.point_of(task.make_model(0))
    with pytest.raises(ConfigError, match="eps_line"):
        dss_gap(a, a, task.energy, task.objective, eps_line=-1.0)


CONSTANT = (2, 4, 6, 7, 8, 10, 12)
"""Pieces whose function is constant along them (output weights zero on every moving unit, or parallel units)."""
CONVEX = (0, 3, 5, 9, 11, 14)
"""Pieces that move only the output layer: the MSE is convex along them."""


def test_construction_path_ends_exactly_at_the_endpoints_and_its_pieces_behave(trained_pair):
    task, a, b = trained_pair
    oracle = teacher_point(**OPTIONS)
    assert task.energy(oracle) < 1e-10  # the teacher fits its own data
    built = construction_path(a, b, task.energy.inputs, task.energy.targets, oracle, alpha=1.0)
    assert built.path is not None and built.labels == list(PIECES) and built.path.n_pieces == len(PIECES)
    for key in a:
        assert torch.equal(built.path.beads[0][key], a[key]) and torch.equal(built.path.beads[-1][key], b[key])
    ts = torch.linspace(0, 1, 21)
    beads = built.path.beads
    for i in CONSTANT:
        values = task.energy.along_segment(beads[i], beads[i + 1], ts)
        assert float(values.max() - values.min()) <= 1e-5 * max(1e-3, float(values.max())), PIECES[i]
    for i in CONVEX:
        values = task.energy.along_segment(beads[i], beads[i + 1], ts)
        assert float(values.max()) <= max(float(values[0]), float(values[-1])) * (1 + 1e-5) + 1e-9, PIECES[i]
    assert task.energy(beads[7]) < 1e-6  # the middle of the path is the oracle itself
    # an angle too small to free three units gives no path, and says how many it could free
    tight = construction_path(a, b, task.energy.inputs, task.energy.targets, oracle, alpha=0.0)
    if tight.path is None:
        assert min(tight.freed_a, tight.freed_b) < 3


def test_construction_gap_certifies_the_best_angle(trained_pair):
    task, a, b = trained_pair
    record = construction_gap(a, b, task.energy, teacher_point(**OPTIONS), alphas=[0.0, 0.5, 1.0])
    feasible = [t for t in record["tried"] if t["feasible"]]
    assert feasible and record["eps_construction"] == min(t["eps"] for t in feasible)
    assert record["worst_piece"] in PIECES and record["eps_construction"] >= 0


def test_construction_refuses_other_architectures():
    task = make_task("teacher-student", **OPTIONS)
    a = task.energy.point_of(task.make_model(0))
    with pytest.raises(ConfigError, match="two-layer ReLU"):
        construction_path({"w": torch.zeros(2)}, a, task.energy.inputs, task.energy.targets, a, alpha=0.1)
    with pytest.raises(ConfigError, match="alpha"):
        construction_path(a, a, task.energy.inputs, task.energy.targets, teacher_point(**OPTIONS), alpha=-1)


def test_nearest_unit_angles_on_known_units():
    angles = torch.tensor([0.0, 0.1, 0.3, 1.0])
    rows = torch.stack([angles.cos(), angles.sin()], 1)  # units (w, b) in R^2 for a 1-d input
    point = {"0.weight": rows[:, :1].clone(), "0.bias": rows[:, 1].clone(), "2.weight": torch.ones(1, 4),
             "2.bias": torch.zeros(1)}
    assert nearest_unit_angles(point) == pytest.approx([0.1, 0.1, 0.2, 0.7], abs=1e-6)
    # a unit silent on every input is left out
    x = torch.tensor([[1.0], [2.0]])
    point["0.weight"][3], point["0.bias"][3] = -1.0, -5.0
    assert len(nearest_unit_angles(point, x=x)) == 3


def test_teacher_student_task_builds_and_is_deterministic():
    task = make_task("teacher-student", width=5, input_dim=3, n_train=128, teacher_width=2, data_seed=4)
    x, y = task.energy.inputs, task.energy.targets
    assert x.shape == (128, 3) and y.shape == (128, 1)
    assert float(y.mean()) == pytest.approx(0, abs=1e-5) and float(y.std()) == pytest.approx(1, abs=1e-5)
    assert task.energy(teacher_point(input_dim=3, n_train=128, teacher_width=2, data_seed=4)) < 1e-10
    a, b = task.make_model(7), task.make_model(7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a[0].weight.shape == (5, 3)
    x2, y2, _ = teacher_data(3, 2, 128, 4)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    other = make_task("teacher-student", width=5, input_dim=3, n_train=128, teacher_width=2, data_seed=5)
    assert not torch.equal(other.energy.inputs, x)


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, "width must be"),
    ({"width": 2.5}, "width must be"),
    ({"input_dim": True}, "input_dim must be"),
    ({"teacher_width": "3"}, "teacher_width must be"),
    ({"n_train": 1}, "n_train must be"),
    ({"data_seed": -1}, "data_seed must be"),
    ({"depth": 2}, "does not take"),
])
def test_teacher_student_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_task("teacher-student", **options)
    assert "\n" not in str(info.value)


def test_teacher_student_bad_setting_from_the_command_line(capsys):
    assert main(["connect", "--task", "teacher-student", "--width", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("modeconnect: error:") and "width" in err[0]


@pytest.mark.slow
def test_reproduction_quick_records_consistent_pairs_and_resumes(tmp_path):
    out = tmp_path / "ws"
    args = ["reproduce", "freeman-bruna-width-scaling", "--quick", "--quiet", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    pairs = [p for p in results["pairs"] if p["reached"]]
    assert len(results["pairs"]) == 2 * 3 and len(pairs) >= 4
    for p in pairs:
        assert 0 <= p["dss"] <= p["line"]
        assert p["best"] == min(v for v in (p["line"], p["dss"], p["construction"]) if v is not None)
        assert 0 < p["angle"] < math.pi
    assert {r["definition"] for r in results["table"]} >= {"line", "dss", "best", "angle"}
    assert (out / "figures" / "width_scaling.png").exists() and (out / "table.csv").exists()
    units = sorted((out / "units").iterdir())
    assert len([u for u in units if u.name.startswith("pair-")]) == 6
    assert len([u for u in units if u.name.startswith("construction-")]) == len(pairs)
    before = {u.name: u.stat().st_mtime_ns for u in units}
    assert main(args) == 0  # resumes: every pair is read back, none recomputed
    assert json.loads((out / "results.json").read_text())["pairs"] == results["pairs"]
    assert {u.name: u.stat().st_mtime_ns for u in sorted((out / "units").iterdir())} == before


def test_construction_survives_units_with_nearly_the_same_kink(monkeypatch):
    """Regression: a width-8 student on 1-d inputs has units whose kinks almost coincide on the data, so the
    plain least-squares refit is ill-conditioned (output weights ~1e4 that cancel) and rotating one unit by
    <= 0.05 rad sent the MSE from 0.0014 to ~74. The refit is now the most regularised one that keeps half the
    headroom below the network's own level (the theorem's kappa ||beta||_1 plays this role)."""
    import modeconnect.theory.construction as construction

    options = {"width": 8, "input_dim": 1, "teacher_width": 3, "n_train": 256}
    task = make_task("teacher-student", **options)
    config = TrainConfig(optimizer="adam", lr=0.01, check_every=10, max_steps=6000)
    start = task.energy.point_of(task.make_model(1006))
    a, status = train_to_target(start, energy=task.energy, objective=task.objective, target=0.002, config=config,
                                seed=1006)
    assert status.final_energy <= 0.002
    x, y, oracle = task.energy.inputs, task.energy.targets, teacher_point(**options)

    def rotated_energy() -> tuple[float, float]:
        built = construction_path(a, a, x, y, oracle, alpha=0.05)
        refit, rotated = built.path.beads[1], built.path.beads[2]
        values = task.energy.along_segment(refit, rotated, torch.linspace(0, 1, 11))
        return float(values.max()), float(refit["2.weight"].abs().max())

    top, largest = rotated_energy()
    assert top <= task.energy(a) and largest < 10
    monkeypatch.setattr(construction, "RIDGES", (0.0,))  # plain least squares: the failure this guards against
    top, largest = rotated_energy()
    assert top > 1 and largest > 1000

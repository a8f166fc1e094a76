"""``modeconnect compare``: every method on the same endpoints, one table, one figure, resumable."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest
import torch

from modeconnect import cli
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig
from modeconnect.experiments.compare import CompareConfig, energy_profile, parse_methods
from modeconnect.path import Bezier, Path

METHODS = "greedy_dss,string_evolution"


def compare_argv(out, *extra):
    return ["compare", "--task", "cubic", "--threshold", "0.1", "--methods", METHODS, "--pairs", "1",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert cli.main(compare_argv(out, "--quiet")) == 0
    return out


def digest(file) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_every_method_starts_from_the_same_endpoint_files(finished):
    runs = [finished / "runs" / m / "pair-00" for m in METHODS.split(",")]
    for which in ("a", "b"):
        assert len({digest(r / f"endpoint_{which}.safetensors") for r in runs}) == 1
    results = [json.loads((r / "result.json").read_text()) for r in runs]
    assert results[0]["endpoint_energies"] == results[1]["endpoint_energies"]
    assert [r["method"] for r in results] == METHODS.split(",")
    # the second method adopted the endpoints instead of training them
    assert results[1]["endpoint_time_s"] < 0.5 * results[0]["endpoint_time_s"]


def test_the_table_has_a_row_per_run_and_per_method(finished):
    table = json.loads((finished / "table.json").read_text())
    assert table["format"] == "modeconnect.compare_table" and table["threshold"] == 0.1
    assert [(r["method"], r["pair"]) for r in table["rows"]] == [("greedy_dss", 0), ("string_evolution", 0)]
    for row in table["rows"]:
        result = json.loads((finished / row["run_dir"] / "result.json").read_text())
        assert row["certified_max_energy"] == result["certified_max_energy"]
        assert row["trained_points"] == result["n_beads"]  # both methods train every intermediate bead
        assert row["trained_parameters"] == 33 * row["trained_points"]  # the cubic model has 33 parameters
        assert row["certification_evaluations"] == result["certificate"]["n_evaluations"]
        assert row["method_energy_evaluations"] > 0
    for agg, row in zip(table["aggregates"], table["rows"]):
        assert agg["method"] == row["method"] and agg["n_pairs"] == 1
        assert agg["n_connected"] == int(row["connected"])
    lines = list(csv.DictReader((finished / "table.csv").read_text().splitlines()))
    assert [line["row"] for line in lines] == ["unit", "unit", "method", "method"]


def test_profiles_cover_the_whole_path_and_the_figure_is_drawn(finished):
    profiles = json.loads((finished / "profiles.json").read_text())
    assert sorted(profiles) == ["greedy_dss/0", "string_evolution/0"]
    for prof in profiles.values():
        s = prof["s"]
        assert s[0] == 0 and math.isclose(s[-1], 1.0) and all(b >= a for a, b in zip(s, s[1:]))
        result = json.loads((finished / "runs" / prof["method"] / "pair-00" / "result.json").read_text())
        assert math.isclose(prof["length"], result["path_length"], rel_tol=1e-9)  # straight pieces: exact
        assert max(prof["energy"]) <= result["certified_max_energy"] + 1e-12
    assert (finished / "figures" / "profiles.png").stat().st_size > 10_000


def test_show_and_a_rerun_print_the_table_without_running_again(finished, capsys):
    before = (finished / "table.json").read_text()
    assert cli.main(compare_argv(finished, "--no-figures")) == 0
    captured = capsys.readouterr()
    assert "every run is finished" not in captured.out
    assert "2 of 2 runs already finished" in captured.err
    assert "greedy_dss" in captured.out and "string_evolution" in captured.out
    assert json.loads((finished / "table.json").read_text())["rows"] == json.loads(before)["rows"]
    assert cli.main(["show", str(finished)]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0].startswith("comparison on cubic: L0 = 0.1")


def test_a_different_threshold_in_the_same_directory_is_refused(finished, capsys):
    code = cli.main(["compare", "--task", "cubic", "--threshold", "0.2", "--methods", METHODS, "--pairs", "1",
                     "--out", str(finished), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "holds a different comparison" in err and "threshold" in err


@pytest.mark.parametrize("methods, message", [
    ("", "--methods needs at least one method"),
    ("greedy_dss,nosuch", "unknown path method(s) 'nosuch'"),
    ("neb,neb", "names a method twice"),
])
def test_bad_method_lists_are_refused(methods, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_methods(methods)


def test_bad_pairs_and_method_settings_are_refused():
    base = ConnectRunConfig(task="cubic")
    with pytest.raises(ConfigError, match="pairs must be a positive integer"):
        CompareConfig(base=base, methods=("greedy_dss",), pairs=0)
    with pytest.raises(ConfigError, match="--setting METHOD.NAME=VALUE"):
        CompareConfig(base=ConnectRunConfig(task="cubic", method_settings={"alpha": 0.5}), methods=("greedy_dss",))


class _Quadratic:
    """An energy with the Energy interface that profiles need: |theta|^2 at each point."""

    def along_segment(self, a, b, ts):
        return torch.stack([self.evaluate({k: ((1 - t) * a[k] + t * b[k])[None] for k in a})[0] for t in ts])

    def evaluate(self, points):
        return sum((v.double() ** 2).flatten(1).sum(1) for v in points.values())


def test_energy_profile_is_exact_on_a_straight_path_and_close_to_quadrature_on_a_curve():
    a, b = {"w": torch.tensor([-1.0, 0.0])}, {"w": torch.tensor([1.0, 0.0])}
    prof = energy_profile(Path([a, b]), _Quadratic(), points_per_piece=5)
    assert prof["s"] == [0.0, 0.25, 0.5, 0.75, 1.0] and math.isclose(prof["length"], 2.0)
    assert prof["energy"] == pytest.approx([1.0, 0.25, 0.0, 0.25, 1.0])
    curve = Path([a, b], [Bezier(controls=[{"w": torch.tensor([0.0, 2.0])}])])
    dense = energy_profile(curve, _Quadratic(), points_per_piece=401)
    assert math.isclose(dense["length"], curve.length, rel_tol=1e-4)
    with pytest.raises(ConfigError, match="points_per_piece must be >= 2"):
        energy_profile(curve, _Quadratic(), points_per_piece=1)


def test_per_method_settings_parse_reach_only_their_method_and_are_validated():
    from modeconnect.experiments.compare import parse_settings

    settings = parse_settings(["neb.max_time_s=600", "bezier.steps=5", "greedy_dss.bead_training.lr=0.01",
                               "neb.tangent=simple"])
    assert settings == {"neb": {"max_time_s": 600, "tangent": "simple"}, "bezier": {"steps": 5},
                        "greedy_dss": {"bead_training": {"lr": 0.01}}}
    with pytest.raises(ConfigError, match="METHOD.NAME=VALUE"):
        parse_settings(["max_time_s=600"])
    config = CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("greedy_dss", "neb"),
                           settings={"neb": {"max_time_s": 600}})
    assert config.unit("neb", 0).resolve().method_config.max_time_s == 600
    assert config.unit("greedy_dss", 0).method_settings == {}
    with pytest.raises(ConfigError, match="which --methods does not name"):
        CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("greedy_dss",), settings={"neb": {"lr": 1}})
    bad = CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("neb",), settings={"neb": {"spring": -1}})
    with pytest.raises(ConfigError, match="spring"):
        bad.unit("neb", 0).resolve()


def test_the_figure_switches_to_a_symlog_axis_only_for_a_far_higher_profile():
    from modeconnect.plots import compare_figure

    table = {"task": "t", "threshold": 3.0, "methods": ["a", "b"], "pairs": 1, "aggregates": []}
    low = {"a/0": {"method": "a", "connected": True, "s": [0, 0.5, 1], "energy": [1.0, 2.9, 1.0]}}
    high = {**low, "b/0": {"method": "b", "connected": False, "s": [0, 0.5, 1], "energy": [1.0, 40.0, None]}}
    assert compare_figure(table, low).axes[0].get_yscale() == "linear"
    ax = compare_figure(table, high).axes[0]
    assert ax.get_yscale() == "symlog" and [t.get_text() for t in ax.get_yticklabels()][:5] == \
        ["0", "1.5", "3", "6", "15"]

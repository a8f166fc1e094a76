"""Energy sweeps: aggregation, files, resume, failures, and identical numbers on every executor."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from modeconnect.errors import ConfigError, StoreError
from modeconnect.experiments import ConnectRunConfig, RunDirectory, run_connect
from modeconnect.experiments.connect_run import TIMING_FIELDS
from modeconnect.experiments.executors import InProcessExecutor, make_executor
from modeconnect.experiments.sweep import SweepConfig, aggregate, parse_levels, run_sweep

LEVELS = (0.1, 0.05)
CONFIG = SweepConfig(ConnectRunConfig(task="quadratic"), LEVELS, pairs=2, seed=3)


def comparable(table: dict) -> dict:
    """The table without wall-clock measurements (everything else must not depend on where units ran)."""
    def strip(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in TIMING_FIELDS and not k.startswith(("wall_time_s",))
                and not k.endswith("time_s_total")}
    return {**table, "rows": [strip(r) for r in table["rows"]], "aggregates": [strip(r) for r in table["aggregates"]]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "ref"
    return out, run_sweep(CONFIG, str(out))


def test_config_is_validated():
    base = ConnectRunConfig(task="quadratic")
    for levels, pairs, match in [((), 1, "at least one level"), ((0.1, -1.0), 1, "positive"),
                                 ((0.1, 0.1), 1, "distinct"), ((0.1,), 0, "pairs")]:
        with pytest.raises(ConfigError, match=match):
            SweepConfig(base, levels, pairs=pairs)
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_levels("0.1;0.05")


def test_pair_seeds_are_shared_across_levels_and_differ_between_pairs():
    units = {(level, pair): CONFIG.unit(level, pair) for level, pair in CONFIG.units()}
    assert len(units) == len(LEVELS) * 2
    assert units[(0.1, 0)].seed == units[(0.05, 0)].seed != units[(0.1, 1)].seed
    assert {u.threshold for u in units.values()} == set(LEVELS)


def test_aggregate_matches_a_hand_computation():
    def row(level, status, nl=None, beads=None, depth=None, e=0.01):
        return {"level": level, "status": status, "connected": status == "connected", "normalized_length": nl,
                "n_beads": beads, "depth": depth, "endpoint_energy_a": e, "endpoint_energy_b": e,
                "wall_time_s": 2.0}
    rows = [row(1.0, "connected", 1.1, 2, 1), row(1.0, "connected", 1.3, 5, 3), row(1.0, "connected", 1.6, 8, 4),
            row(1.0, "not_connected", 9.0, 50, 10), row(1.0, "endpoint_failed"),
            row(0.5, "not_connected", 2.0, 3, 2)]
    first, second = aggregate(rows, [1.0, 0.5, 0.25])
    assert first["n_pairs"] == 5 and first["n_endpoint_failed"] == 1 and first["n_connected"] == 3
    assert first["success_rate"] == 0.75
    assert first["normalized_length_mean"] == pytest.approx(statistics.mean([1.1, 1.3, 1.6]))
    assert first["n_beads_stderr"] == pytest.approx(statistics.stdev([2, 5, 8]) / math.sqrt(3))
    assert second["n_connected"] == 0 and second["success_rate"] == 0.0
    assert second["normalized_length_mean"] is None and second["n_beads_stderr"] is None


def test_sweep_writes_a_table_that_matches_its_runs(reference):
    out, table = reference
    assert [(r["level"], r["pair"]) for r in table["rows"]] == list(CONFIG.units())
    assert [a["level"] for a in table["aggregates"]] == list(LEVELS)
    assert json.loads((out / "table.json").read_text()) == json.loads(json.dumps(table))
    for row in table["rows"]:
        result = RunDirectory.read_result(out / row["run_dir"])
        assert row["normalized_length"] == result["normalized_length"] and row["n_beads"] == result["n_beads"]
        assert row["connected"] == result["connected"] and result["threshold"] == row["level"]
    with open(out / "table.csv") as handle:
        records = list(csv.DictReader(handle))
    assert [r["row"] for r in records] == ["pair"] * 4 + ["level"] * 2
    level_row = records[4]
    assert float(level_row["n_beads_mean"]) == pytest.approx(table["aggregates"][0]["n_beads_mean"])
    assert table["energy"]["metric"] == "mae"


def test_an_interrupted_sweep_continues_without_redoing_finished_pairs(reference, tmp_path):
    _, full = reference
    out = tmp_path / "interrupted"

    class Stop(Exception):
        pass

    class StopAfterTwo(InProcessExecutor):
        def map(self, fn, arg_tuples):
            for k, item in enumerate(super().map(fn, arg_tuples)):
                if k == 2:
                    raise Stop
                yield item

    with pytest.raises(Stop):
        run_sweep(CONFIG, str(out), executor=StopAfterTwo())
    partial = json.loads((out / "table.json").read_text())
    assert len(partial["rows"]) == 2  # the third unit finished too, but the sweep stopped before recording it
    finished = sorted(p.parent for p in out.glob("runs/*/*/result.json"))
    assert len(finished) == 3
    stamps = {d: (d / "result.json").stat().st_mtime_ns for d in finished}

    seen = []

    class Recording(InProcessExecutor):
        def map(self, fn, arg_tuples):
            seen.extend(args[1] for args in arg_tuples)
            return super().map(fn, arg_tuples)

    resumed = run_sweep(CONFIG, str(out), executor=Recording())
    assert len(seen) == 1 and str(seen[0]) not in {str(d) for d in stamps}
    assert all((d / "result.json").stat().st_mtime_ns == t for d, t in stamps.items())
    assert comparable(resumed) == comparable(full)


def test_a_sweep_directory_refuses_other_settings_but_accepts_more_levels(reference, tmp_path):
    out, _ = reference
    other = SweepConfig(ConnectRunConfig(task="quadratic", method_settings={"alpha": 0.5}), LEVELS, pairs=2, seed=3)
    with pytest.raises(StoreError, match=r"base.method_config.alpha: 0.8 there vs 0.5 now\)"):
        run_sweep(other, str(out))
    small = tmp_path / "grow"
    run_sweep(SweepConfig(CONFIG.base, (0.1,), pairs=1, seed=3), str(small))
    grown = run_sweep(SweepConfig(CONFIG.base, (0.1, 0.05), pairs=1, seed=3), str(small))
    assert [(r["level"], r["pair"]) for r in grown["rows"]] == [(0.1, 0), (0.05, 0)]


def test_pairs_whose_endpoints_do_not_train_are_recorded_once(tmp_path):
    config = SweepConfig(ConnectRunConfig(task="quadratic", endpoint_training={"max_steps": 1}), (0.01,), pairs=1)
    table = run_sweep(config, str(tmp_path / "fail"))
    (row,), (agg,) = table["rows"], table["aggregates"]
    assert row["status"] == "endpoint_failed" and "endpoint A" in row["message"]
    assert agg["n_endpoint_failed"] == 1 and agg["success_rate"] is None
    failed = tmp_path / "fail" / row["run_dir"] / "failed.json"
    stamp = failed.stat().st_mtime_ns
    again = run_sweep(config, str(tmp_path / "fail"))
    assert again["rows"][0]["status"] == "endpoint_failed" and failed.stat().st_mtime_ns == stamp


def test_a_run_directory_in_use_is_refused(tmp_path):
    store = RunDirectory(tmp_path / "busy")
    with store.lock():
        with pytest.raises(StoreError, match="in use"):
            run_connect(ConnectRunConfig(task="quadratic", threshold=0.1), str(tmp_path / "busy"))


def test_executor_settings_are_checked():
    with pytest.raises(ConfigError, match="workers"):
        make_executor("local", 0)
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor("slurm", 2)
    with pytest.raises(ConfigError, match="--address"):
        make_executor("local", 2, address="127.0.0.1:6379")


def test_a_local_process_pool_gives_identical_numbers(reference, tmp_path):
    _, full = reference
    with make_executor("local", 2) as executor:
        assert executor.workers == 2 and executor.threads >= 1
        table = run_sweep(CONFIG, str(tmp_path / "pool"), executor=executor)
    assert comparable(table) == comparable(full)


def test_ray_gives_identical_numbers(reference, tmp_path):
    pytest.importorskip("ray")
    _, full = reference
    with make_executor("ray", 2, threads=1) as executor:
        table = run_sweep(CONFIG, str(tmp_path / "ray"), executor=executor)
    assert comparable(table) == comparable(full)

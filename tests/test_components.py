"""``modeconnect components``: union-find, the schedule across components, resume, executors and the CLI."""

from __future__ import annotations

import csv
import json
import random

import pytest

from modeconnect import cli
from modeconnect.experiments import ConnectRunConfig
from modeconnect.experiments.components import (
    ComponentsConfig,
    UnionFind,
    counts_as_connection,
    next_round,
    run_components,
)
from modeconnect.experiments.connect_run import TIMING_FIELDS
from modeconnect.experiments.executors import Executor, make_executor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a mixed case: with at most 3 beads some cubic pairs connect at 0.05 and some do not; at 0.1 all do
LEVELS, MODELS, SETTINGS = "0.1,0.05", 3, {"max_beads": 3}
ARGV = ["components", "--task", "cubic", "--levels", LEVELS, "--models", str(MODELS), "--max-beads", "3"]


def reachable_groups(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components by breadth-first search (the reference for the union-find)."""
    adjacent = {i: set() for i in range(n)}
    for a, b in edges:
        adjacent[a].add(b)
        adjacent[b].add(a)
    seen, groups = set(), []
    for start in range(n):
        if start in seen:
            continue
        group, frontier = {start}, [start]
        while frontier:
            for nxt in adjacent[frontier.pop()] - group:
                group.add(nxt)
                frontier.append(nxt)
        seen |= group
        groups.append(sorted(group))
    return groups


@pytest.mark.parametrize("seed", range(20))
def test_union_find_matches_breadth_first_search(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 2 * n))]
    uf = UnionFind(range(n))
    merges = sum(uf.union(a, b) for a, b in edges)
    groups = uf.groups()
    assert groups == reachable_groups(n, edges)
    assert merges == n - len(groups)  # every union that returned True removed exactly one set
    assert sorted(m for g in groups for m in g) == list(range(n))  # a partition
    for g in groups:
        assert all(uf.find(m) == g[0] for m in g)  # the representative is the smallest member
    assert not any(uf.union(g[0], m) for g in groups for m in g)  # members are already together


@pytest.mark.parametrize("seed", range(20))
def test_a_round_is_a_maximal_matching_of_components_that_may_still_join(seed):
    rng = random.Random(100 + seed)
    n, tries = rng.randint(2, 12), rng.randint(1, 3)
    uf = UnionFind(range(n))
    for _ in range(rng.randint(0, n)):
        uf.union(rng.randrange(n), rng.randrange(n))
    cross = [(i, j) for i in range(n) for j in range(i + 1, n) if uf.find(i) != uf.find(j)]
    tried = set(rng.sample(cross, rng.randint(0, len(cross))))
    failed = sorted(tried)
    pairs = next_round(uf, tried, failed, tries)
    roots = [r for p in pairs for r in (uf.find(p[0]), uf.find(p[1]))]
    assert len(roots) == len(set(roots))  # no component takes part twice in a round
    for i, j in pairs:
        assert i < j and uf.find(i) != uf.find(j) and (i, j) not in tried

    def still_open(x: list[int], y: list[int]) -> bool:
        fails = sum(1 for i, j in failed if {uf.find(i), uf.find(j)} == {x[0], y[0]})
        untried = any(tuple(sorted((i, j))) not in tried for i in x for j in y)
        return fails < tries and untried

    groups = uf.groups()
    unmatched = [g for g in groups if g[0] not in roots]
    assert not any(still_open(x, y) for k, x in enumerate(unmatched) for y in unmatched[k + 1:])  # maximal
    assert (pairs == []) == (not any(still_open(x, y) for k, x in enumerate(groups) for y in groups[k + 1:]))


def test_a_connection_needs_the_method_and_the_certificate():
    assert counts_as_connection({"connected": True, "certified": True})
    assert not counts_as_connection({"connected": True, "certified": False})
    assert not counts_as_connection({"connected": False, "certified": True})
    assert not counts_as_connection(None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("components") / "cc"
    assert cli.main([*ARGV, "--out", str(out), "--quiet"]) == 0
    return out


def replay(record: dict) -> None:
    """Replay every level's rounds: each pair run must cross two components of the partition at its round."""
    below = None
    for entry in record["by_level"]:
        uf = UnionFind(m["model"] for m in record["models"] if m["status"] == "trained")
        inherited = [e for e in entry["edges"] if e["inherited_from"] is not None]
        assert [(e["a"], e["b"]) for e in inherited] == ([] if below is None else
                                                        [(e["a"], e["b"]) for e in below["edges"]])
        for e in inherited:
            assert uf.union(e["a"], e["b"])
        run = {(e["a"], e["b"]): e for e in entry["edges"] + entry["failed"] if e["inherited_from"] is None}
        for pairs in entry["rounds"]:
            assert all(uf.find(a) != uf.find(b) for a, b in pairs)  # never inside one component
            for a, b in pairs:
                if counts_as_connection(run[(a, b)]):
                    uf.union(a, b)
        assert sorted(run) == sorted(tuple(p) for r in entry["rounds"] for p in r)
        assert uf.groups() == entry["components"] and entry["n_components"] == len(entry["components"])
        below = entry


def test_the_cli_writes_the_record_the_csv_and_the_figures_and_prints_the_count(finished, capsys):
    record = json.loads((finished / "components.json").read_text())
    assert record["format"] == "modeconnect.components" and record["levels"] == [0.05, 0.1]
    assert [m["status"] for m in record["models"]] == ["trained"] * MODELS
    counts = [e["n_components"] for e in record["by_level"]]
    assert counts[0] > counts[1] >= 1 and all(e["complete"] for e in record["by_level"])  # a mixed case
    assert record["by_level"][0]["failed"] and any(e["inherited_from"] == 0.05 for e in record["by_level"][1]["edges"])
    replay(record)
    rows = list(csv.DictReader((finished / "components.csv").read_text().splitlines()))
    assert [int(r["n_components"]) for r in rows if r["row"] == "level"] == counts
    assert sum(r["row"] == "edge" for r in rows) == sum(len(e["edges"]) for e in record["by_level"])
    for name in ("graph.png", "count.png"):
        assert (finished / "figures" / name).stat().st_size > 5_000
    (finished / "figures" / "graph.png").unlink()
    assert cli.main(["plot", str(finished), "--quiet"]) == 0
    assert (finished / "figures" / "graph.png").exists()
    capsys.readouterr()
    assert cli.main(["show", str(finished)]) == 0
    shown = capsys.readouterr().out
    for entry in record["by_level"]:
        assert f"{entry['level']:g}" in shown and str(entry["n_components"]) in shown


def test_every_run_on_disk_was_scheduled_and_every_edge_is_certified(finished):
    record = json.loads((finished / "components.json").read_text())
    scheduled = {f"runs/L{e['level']:g}/pair-{a:02d}-{b:02d}" for e in record["by_level"]
                 for r in e["rounds"] for a, b in r}
    on_disk = {str(p.relative_to(finished)) for p in (finished / "runs").glob("L*/pair-*")}
    assert on_disk == scheduled
    for entry in record["by_level"]:
        for edge in entry["edges"]:
            result = json.loads((finished / edge["run_dir"] / "result.json").read_text())
            assert result["connected"] and result["certified"]
            assert result["certified_max_energy"] <= result["tolerance"] * entry["level"]
        for fail in entry["failed"]:
            assert not counts_as_connection(json.loads((finished / fail["run_dir"] / "result.json").read_text()))


def numbers(record: dict) -> list:
    """The record without timings and the run directories' wall times."""
    return [[{k: v for k, v in e.items() if k not in TIMING_FIELDS} for e in lv["edges"] + lv["failed"]]
            + [lv["components"], lv["rounds"]] for lv in record["by_level"]]


def test_the_table_is_the_same_with_two_workers(finished, tmp_path):
    config = ComponentsConfig(ConnectRunConfig(task="cubic", method_settings=SETTINGS), levels=(0.1, 0.05),
                              models=MODELS)
    with make_executor("local", 2, threads=1) as executor:
        pool = run_components(config, str(tmp_path / "pool"), executor=executor)
    assert numbers(pool) == numbers(json.loads((finished / "components.json").read_text()))


class Interrupting(Executor):
    """In-process, counting the units it is given; raises KeyboardInterrupt after ``stop_after`` connections."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.inner, self.stop_after, self.calls = make_executor("local", 1), stop_after, []

    def describe(self) -> str:
        return "test executor"

    def map(self, fn, arg_tuples):
        for index, result in self.inner.map(fn, arg_tuples):
            self.calls.append((fn.__name__, arg_tuples[index][1]))
            yield index, result
            if fn.__name__ == "connect_models" and self.stop_after is not None and \
                    sum(name == "connect_models" for name, _ in self.calls) >= self.stop_after:
                raise KeyboardInterrupt


def test_resuming_after_an_interruption_does_not_redo_finished_units(tmp_path):
    config = ComponentsConfig(ConnectRunConfig(task="cubic"), levels=(0.1,), models=3)
    first = Interrupting(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_components(config, str(tmp_path / "cc"), executor=first)
    assert [name for name, _ in first.calls] == ["train_model"] * 3 + ["connect_models"]
    second = Interrupting()
    record = run_components(config, str(tmp_path / "cc"), executor=second)
    assert [name for name, _ in second.calls] == ["connect_models"]  # no model retrained, no unit run twice
    assert second.calls[0][1] != first.calls[-1][1]
    assert record["by_level"][0]["n_components"] == 1 and record["by_level"][0]["n_units"] == 2
    third = Interrupting()
    assert numbers(run_components(config, str(tmp_path / "cc"), executor=third)) == numbers(record)
    assert third.calls == []


@pytest.mark.parametrize("extra, message", [
    (["--levels", "0.1,abc"], "--levels must be comma-separated numbers"),
    (["--level", "0.1", "--levels", "0.1,0.05"], "exactly one of --level"),
    ([], "exactly one of --level"),
    (["--level", "0.1", "--models", "1"], "models must be an integer >= 2"),
    (["--level", "0.1", "--tries", "0"], "tries must be an integer >= 1"),
    (["--level", "-1"], "levels must be positive"),
    (["--levels", "0.1,0.1"], "levels must be distinct"),
])
def test_bad_input_is_a_one_line_error_with_status_2(tmp_path, capsys, extra, message):
    out = tmp_path / "cc"
    assert cli.main(["components", "--task", "cubic", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modeconnect: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_lower_level_in_the_same_directory_is_refused(finished, capsys):
    argv = ["components", "--task", "cubic", "--levels", "0.02,0.05", "--models", str(MODELS), "--max-beads", "3",
            "--out", str(finished), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "model_level" in err and err.count("\n") == 1


def test_a_task_with_a_derived_endpoint_b_counts_both_kinds_of_endpoint(tmp_path):
    """The counterexample's A is constructed (the same for every seed) and B is derived from it: odd models are
    B, so the count separates A's copies from B's instead of reporting one component of copies of A."""
    from modeconnect._io import read_json

    config = ComponentsConfig(ConnectRunConfig(task="gaussian-mixture", method_settings={"max_beads": 2}),
                              levels=(0.05,), models=3, tries=1)
    record = run_components(config, str(tmp_path / "cc"))
    entry = record["by_level"][0]
    assert entry["components"] == [[0, 2], [1]]
    assert [read_json(tmp_path / "cc" / "models" / f"model-{i:02d}" / "model.json")["derived_endpoint_b"]
            for i in range(3)] == [False, True, False]
    assert entry["failed"]  # the A-B connection was tried, and failed

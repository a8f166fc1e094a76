"""The reproduction framework: registry, command line, saved records, resumable units, figures."""

from __future__ import annotations

import json
import sys
import types

import pytest

from modeconnect.cli import main
from modeconnect.experiments import reproduce
from modeconnect.experiments.reproduce import REPRODUCTIONS, Reproduction, UnitCache, claim, run_reproduction

CALLS: list[str] = []


def _fake_run(out, *, quick, progress):
    cache = UnitCache(out)
    values = [cache.get_or_compute(f"unit-{i}-quick={quick}", lambda i=i: (CALLS.append(f"unit-{i}"), i * i)[1])
              for i in range(3)]
    progress(f"3 units, values {values}")
    return {"values": values, "claims": [claim("squares are non-negative", all(v >= 0 for v in values), f"{values}"),
                                         claim("a failing statement", False, "shown as FAILS")]}


def _fake_figures(results):
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    ax.plot(results["values"])
    return {"values": figure}


@pytest.fixture
def fake_reproduction(monkeypatch):
    module = types.ModuleType("fake_reproduction_module")
    module.run = _fake_run
    module.FIGURE = "fake_reproduction_module:figures"
    module.figures = _fake_figures
    monkeypatch.setitem(sys.modules, "fake_reproduction_module", module)
    monkeypatch.setitem(REPRODUCTIONS, "fake",
                        Reproduction("fake", "Nobody 2026, Lemma 0", "squares", "fake_reproduction_module", 0.1))
    CALLS.clear()
    return module


def test_every_registered_reproduction_names_an_importable_module_path():
    for name, spec in REPRODUCTIONS.items():
        assert spec.name == name
        assert spec.module.startswith("modeconnect.experiments.reproductions.")
        assert spec.minutes <= 15  # the budget on 2 cores


def test_list_shows_every_reproduction(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name, spec in REPRODUCTIONS.items():
        assert name in out and spec.paper in out


def test_bad_invocations_are_one_line_errors(capsys, tmp_path):
    assert main(["reproduce"]) == 2
    assert "pass --list" in capsys.readouterr().err
    assert main(["reproduce", "no-such-thing", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown reproduction 'no-such-thing'" in err and not (tmp_path / "x").exists()
    assert main(["reproduce", "freeman-bruna-linear"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_run_writes_record_results_and_figure_and_resumes(fake_reproduction, tmp_path, capsys):
    out = tmp_path / "fake"
    assert main(["reproduce", "fake", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "[holds ] squares are non-negative" in printed and "[FAILS ] a failing statement" in printed
    assert (out / "figures" / "values.png").stat().st_size > 0
    record = json.loads((out / "reproduction.json").read_text())
    assert record["name"] == "fake" and record["paper"] == "Nobody 2026, Lemma 0"
    assert [c["holds"] for c in record["claims"]] == [True, False]
    assert json.loads((out / "results.json").read_text())["values"] == [0, 1, 4]
    assert CALLS == ["unit-0", "unit-1", "unit-2"]
    # a second run reads the finished units back instead of recomputing them
    assert main(["reproduce", "fake", "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert CALLS == ["unit-0", "unit-1", "unit-2"]
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "squares are non-negative" in capsys.readouterr().out


def test_a_directory_of_another_reproduction_is_refused(fake_reproduction, tmp_path):
    out = tmp_path / "fake"
    run_reproduction("fake", out)
    with pytest.raises(reproduce.StoreError, match="holds reproduction 'fake'"):
        run_reproduction("freeman-bruna-kernel-bound", out)


def test_unit_cache_ignores_a_file_written_for_another_key(tmp_path):
    cache = UnitCache(tmp_path)
    assert cache.get_or_compute("a/b", lambda: 1) == 1
    assert cache.get_or_compute("a_b", lambda: 2) == 2  # same file name after sanitising, different key
    assert cache.get_or_compute("a_b", lambda: 3) == 2

"""A task's defaults for one path method (``Task.method_defaults``): applied under the user's settings,
recorded, and shared by every method of a comparison."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig
from modeconnect.experiments.compare import CompareConfig
from modeconnect.tasks import TASKS, make_task

DEFAULTS = {"string_evolution": {"threshold": 0.07, "endpoint_training": {"max_steps": 1234, "min_steps": 10},
                                 "method_settings": {"max_rounds": 7}}}


@pytest.fixture
def cubic_with_defaults(monkeypatch):
    original = TASKS["cubic"]

    def factory(**options):
        return replace(original(**options), method_defaults=DEFAULTS)

    monkeypatch.setitem(TASKS, "cubic", factory)
    return factory


def test_a_method_with_task_defaults_gets_them_and_others_do_not(cubic_with_defaults):
    mine = ConnectRunConfig(task="cubic", method="string_evolution").resolve()
    assert mine.threshold == 0.07
    assert mine.endpoint_training.max_steps == 1234 and mine.endpoint_training.min_steps == 10
    assert mine.method_config.max_rounds == 7
    assert mine.record()["task"]["method_defaults"] == DEFAULTS
    other = ConnectRunConfig(task="cubic", method="greedy_dss").resolve()
    plain = make_task("cubic")
    assert other.threshold == plain.default_threshold
    assert other.endpoint_training == plain.endpoint_training


def test_the_users_settings_win_over_the_tasks_method_defaults(cubic_with_defaults):
    run = ConnectRunConfig(task="cubic", method="string_evolution", threshold=0.05,
                           endpoint_training={"max_steps": 99}, method_settings={"max_rounds": 3}).resolve()
    assert run.threshold == 0.05
    assert run.endpoint_training.max_steps == 99
    assert run.endpoint_training.min_steps == 10  # the task's default for what the user left alone
    assert run.method_config.max_rounds == 3


def test_a_comparison_runs_every_method_at_the_first_methods_level_and_endpoint_training(cubic_with_defaults):
    compare = CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("greedy_dss", "string_evolution"))
    first, second = (compare.unit(m, 0).resolve() for m in compare.methods)
    assert first.threshold == second.threshold == make_task("cubic").default_threshold
    assert first.endpoint_training == second.endpoint_training
    assert second.method_config.max_rounds == 7  # method settings stay the method's own
    swapped = CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("string_evolution", "greedy_dss"))
    first, second = (swapped.unit(m, 0).resolve() for m in swapped.methods)
    assert first.threshold == second.threshold == 0.07
    assert second.endpoint_training.max_steps == 1234


def test_a_comparison_of_a_task_without_method_defaults_keeps_unit_configs_unchanged():
    compare = CompareConfig(base=ConnectRunConfig(task="cubic"), methods=("greedy_dss", "string_evolution"))
    unit = compare.unit("string_evolution", 1)
    assert unit.threshold is None and unit.endpoint_training == {}


@pytest.mark.parametrize("bad, message", [
    ({"greedy_dss": {"alpha": 0.9}}, "unknown key"),
    ({"greedy_dss": {"threshold": -1}}, "positive finite"),
])
def test_bad_method_defaults_are_refused_naming_the_problem(bad, message):
    with pytest.raises(ConfigError, match=message):
        replace(make_task("cubic"), method_defaults=bad)


def test_mnist_kuditipudi_trains_dropout_endpoints_for_the_theorem1_path_only(monkeypatch):
    """The Theorem 1 path needs endpoints whose p = 0.5 dropout versions are in the level set: the task trains
    them with dropout at a level set from the width; other methods keep the task's plain defaults."""
    import os
    from pathlib import Path

    from modeconnect.tasks.mnist import kuditipudi_dropout_defaults

    assert kuditipudi_dropout_defaults(32)["threshold"] < kuditipudi_dropout_defaults(16)["threshold"]
    data = Path(os.environ.get("MODECONNECT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (data / "mnist").is_dir():
        pytest.skip(f"no MNIST under {data}")
    monkeypatch.setenv("MODECONNECT_DATA", str(data))
    theorem1 = ConnectRunConfig(task="mnist-kuditipudi", method="kuditipudi_dropout").resolve()
    assert theorem1.threshold == 8.0
    assert theorem1.endpoint_training.dropout == 0.5 and theorem1.endpoint_training.min_steps == 3000
    dss = ConnectRunConfig(task="mnist-kuditipudi", method="greedy_dss").resolve()
    assert dss.threshold == 3.0 and dss.endpoint_training.dropout == 0.0
    wide = ConnectRunConfig(task="mnist-kuditipudi", method="kuditipudi_dropout", width=32).resolve()
    assert wide.threshold == 5.0

"""The settings schema: JSON round trips, overrides, validation on creation, flags derived once."""

from __future__ import annotations

import argparse
import json

import pytest

from modeconnect.certify import CertifyConfig
from modeconnect.cli_settings import add_run_flags, join_negative_values, run_config_from
from modeconnect.errors import ConfigError
from modeconnect.experiments import ConnectRunConfig
from modeconnect.methods import DSSConfig, Order, TStar
from modeconnect.settings import apply_overrides, field_docs, from_dict, setting_specs, to_dict
from modeconnect.train import Optimizer, TrainConfig


def test_nested_config_round_trips_through_json():
    config = DSSConfig(alpha=0.6, tstar="midpoint", order="breadth_first",
                       bead_training=TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9))
    data = json.loads(json.dumps(to_dict(config)))
    assert data["tstar"] == "midpoint" and data["bead_training"]["optimizer"] == "sgd"
    back = from_dict(DSSConfig, data)
    assert back == config
    assert back.tstar is TStar.MIDPOINT and back.order is Order.BREADTH_FIRST
    assert back.bead_training.optimizer is Optimizer.SGD


def test_unknown_keys_are_named_with_their_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) bead_training.learning_rate"):
        from_dict(DSSConfig, {"bead_training": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) alfa"):
        apply_overrides(DSSConfig(), {"alfa": 0.5})


def test_overrides_keep_the_other_fields_and_are_validated():
    base = DSSConfig(bead_training=TrainConfig(lr=0.3, max_steps=77))
    changed = apply_overrides(base, {"alpha": 0.5, "bead_training": {"lr": 0.01}})
    assert changed.alpha == 0.5 and changed.bead_training.lr == 0.01 and changed.bead_training.max_steps == 77
    with pytest.raises(ConfigError, match="alpha must be in"):
        apply_overrides(base, {"alpha": 3.0})


def test_a_run_config_is_validated_when_it_is_created():
    with pytest.raises(ConfigError, match="alpha must be in"):
        ConnectRunConfig(method_settings={"alpha": -1})
    with pytest.raises(ConfigError, match="unknown setting"):
        ConnectRunConfig(endpoint_training={"steps": 3})
    with pytest.raises(ConfigError, match="resolution must be in"):
        ConnectRunConfig(certify={"resolution": 0})
    with pytest.raises(ConfigError, match="unknown path method"):
        ConnectRunConfig(method="bezier-ish")
    with pytest.raises(ConfigError, match="threshold must be a positive finite"):
        ConnectRunConfig(threshold=float("nan"))
    config = ConnectRunConfig(task="quadratic", method_settings={"bead_training": {"lr": 1e-4}})
    assert ConnectRunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_resolve_fills_task_defaults_and_applies_overrides_on_top():
    run = ConnectRunConfig(task="cubic", seed=5, method_settings={"alpha": 0.7, "bead_training": {"lr": 0.02}},
                           endpoint_training={"max_steps": 123}).resolve()
    assert run.threshold == run.task.default_threshold
    assert run.method_config.alpha == 0.7 and run.method_config.seed == 5
    assert run.method_config.bead_training.lr == 0.02
    assert run.method_config.bead_training.max_steps == run.task.bead_training.max_steps  # the task's own
    assert run.endpoint_training.max_steps == 123 and run.endpoint_training.lr == run.task.endpoint_training.lr
    assert run.certify.resolution == run.task.certify_resolution
    record = run.record()
    assert record["method_config"]["alpha"] == 0.7 and record["certify"] == CertifyConfig(
        resolution=run.task.certify_resolution).to_dict()


def test_every_leaf_setting_has_one_flag_with_its_declared_default_and_doc():
    specs = {s.flag: s for s in setting_specs(DSSConfig)}
    assert "seed" not in specs  # set from the run's seed, not a user flag
    assert specs["alpha"].default == 0.8 and specs["alpha"].type is float
    assert specs["tstar"].choices == ("argmax", "midpoint") and specs["tstar"].default == "argmax"
    assert specs["max-time-s"].optional and specs["max-time-s"].default is None
    assert specs["bead-lr"].path == ("bead_training", "lr")
    assert specs["bead-batch-size"].optional
    assert "alpha * L0" in specs["alpha"].help  # from the field's docstring
    assert field_docs(CertifyConfig)["resolution"]


def test_flags_give_only_what_was_set():
    parser = argparse.ArgumentParser()
    add_run_flags(parser, "greedy_dss")
    args = parser.parse_args(join_negative_values(["--task", "quadratic", "--alpha", "0.6", "--bead-lr", "1e-4",
                                                   "--max-time-s", "none", "--endpoint-max-steps", "50",
                                                   "--certify-resolution", "0.01"]))
    config = run_config_from(args)
    assert config.method_settings == {"alpha": 0.6, "bead_training": {"lr": 1e-4}, "max_time_s": None}
    assert config.endpoint_training == {"max_steps": 50} and config.certify == {"resolution": 0.01}
    assert config.threshold is None and config.seed == 0

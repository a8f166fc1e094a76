"""Tasks: data, seeded models, and the structure each control relies on."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from modeconnect.errors import ConfigError
from modeconnect.params import interpolate, point_from_module
from modeconnect.tasks import make_task
from modeconnect.tasks.controls import permutation_points


@pytest.mark.parametrize("name, formula", [
    ("quadratic", lambda x: 0.5 * x**2 + 0.25 * x + 0.1),
    ("cubic", lambda x: 8 * x**3 - 10 * x**2 + 3 * x),
])
def test_polynomial_data(name, formula):
    task = make_task(name, n_train=50, n_test=40, data_seed=3)
    x, y = task.objective.inputs, task.objective.targets
    assert x.shape == (50, 1) and task.energy.inputs.shape == (40, 1)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(y, formula(x))
    assert torch.allclose(task.energy.targets, formula(task.energy.inputs))
    assert task.energy.metric.value == "mae" and task.objective.loss.value == "mse"
    # train and test samples differ, and the data seed decides them
    assert not torch.equal(x[:40], task.energy.inputs)
    assert torch.equal(make_task(name, n_train=50, n_test=40, data_seed=3).objective.inputs, x)
    assert not torch.equal(make_task(name, n_train=50, n_test=40, data_seed=4).objective.inputs, x)


def test_polynomial_model_is_the_papers_1441_mlp():
    model = make_task("cubic").make_model(0)
    shapes = {k: tuple(v.shape) for k, v in point_from_module(model).items()}
    assert shapes == {"0.weight": (4, 1), "0.bias": (4,), "2.weight": (4, 4), "2.bias": (4,),
                      "4.weight": (1, 4), "4.bias": (1,)}
    assert isinstance(model[1], torch.nn.Sigmoid)
    assert isinstance(make_task("cubic", activation="relu").make_model(0)[1], torch.nn.ReLU)


@pytest.mark.parametrize("name", ["quadratic", "convex", "permutation"])
def test_models_are_seeded_without_touching_global_randomness(name):
    state = torch.random.get_rng_state()
    task = make_task(name)
    a1, a2, b = (point_from_module(task.make_model(s)) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    assert not all(torch.equal(a1[k], b[k]) for k in a1)


def test_convex_energy_is_convex_along_segments():
    task = make_task("convex")
    a, b = (point_from_module(task.make_model(s)) for s in (1, 2))
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    values = task.energy.along_segment(a, b, ts)
    chord = (1 - ts) * values[0] + ts * values[-1]
    assert bool((values <= chord + 1e-6).all())


def test_permutation_endpoint_b_computes_the_same_function():
    task = make_task("permutation")
    a = point_from_module(task.make_model(5))
    b = task.derive_endpoint_b(a)
    x = permutation_points()
    model = task.energy.model
    assert torch.allclose(functional_call(model, a, (x,)), functional_call(model, b, (x,)))
    assert not torch.equal(a["0.weight"], b["0.weight"])
    assert torch.equal(a["0.weight"][[1, 0, 2]], b["0.weight"])
    # the midpoint merges hidden units 1 and 2 (identical incoming weights)
    mid = interpolate(a, b, 0.5)
    assert torch.allclose(mid["0.weight"][0], mid["0.weight"][1])


def test_permutation_model_has_12_parameters_and_one_unit_per_point():
    model = make_task("permutation").make_model(11)
    assert sum(p.numel() for p in model.parameters()) == 12
    active = (permutation_points() @ model[0].weight.T) > 0
    assert torch.equal(active.sum(0), torch.ones(3, dtype=torch.long))
    assert torch.equal(active.sum(1), torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize("name, options, message", [
    ("imagenet", {}, "unknown task 'imagenet'"),
    ("cubic", {"activation": "gelu"}, "unknown activation 'gelu'"),
    ("cubic", {"n_train": 0}, "n_train and n_test must be >= 1"),
    ("permutation", {"activation": "relu"}, "does not take these options"),
])
def test_bad_task_options(name, options, message):
    with pytest.raises(ConfigError, match=message):
        make_task(name, **options)

"""The real-data tasks (MNIST, CIFAR-10, PTB) at tiny sizes, on the shared datasets.

The data directory is ``$MODECONNECT_DATA`` or ``../shared/data`` next to the repository; the tests are
skipped (with the reason) when neither holds the datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from modeconnect import CertifyConfig, connect
from modeconnect.metrics import metric_sum
from modeconnect.tasks import TASKS, make_task
from modeconnect.train import TrainConfig, train_to_target

DATA = Path(os.environ.get("MODECONNECT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs = {name: pytest.mark.skipif(not (DATA / folder).is_dir(), reason=f"no {folder}/ in {DATA} "
                                  "(set MODECONNECT_DATA to a directory holding the datasets)")
         for name, folder in (("mnist", "mnist"), ("cifar10", "cifar10-subset"), ("ptb", "ptb"))}
TINY_MNIST = {"data_dir": DATA, "conv1": 4, "conv2": 8, "fc": 16, "n_eval": 200, "n_train": 2000}


def mean_ce(task, point, n=256):
    x, y = task.objective.inputs[:n], task.objective.targets[:n]
    with torch.no_grad():
        return float(metric_sum("cross_entropy", task.energy.train_forward(point, x), y)) / y.numel()


def test_tasks_are_registered():
    assert {"mnist", "mnist-kuditipudi", "mnist-mlp", "cifar10", "ptb"} <= set(TASKS)


@needs["mnist"]
@pytest.mark.parametrize("name, options", [("mnist", TINY_MNIST),
                                           ("mnist-kuditipudi", {"data_dir": DATA, "width": 4, "n_eval": 200,
                                                                 "n_train": 2000}),
                                           ("mnist-mlp", {"data_dir": DATA, "width": 16, "depth": 2, "n_eval": 200,
                                                          "n_train": 2000})])
def test_mnist_tasks_untrained_near_chance_and_training_lowers_the_loss(name, options):
    task = make_task(name, **options)
    assert task.energy.n_samples == 200 and len(task.objective.inputs) == 2000
    assert task.energy.describe()["selection"] == "first 200 of 10000"
    start = task.energy.point_of(task.make_model(0))
    error = task.energy(start)
    assert 0 <= error <= 100 and 70 <= error <= 98  # ten classes: about 90% wrong
    point, status = train_to_target(start, energy=task.energy, objective=task.objective, target=0.0,
                                    config=TrainConfig(lr=3e-3, batch_size=64, check_every=30, max_steps=30), seed=0)
    assert mean_ce(task, point) < mean_ce(task, start) and task.energy(point) < error


@needs["mnist"]
def test_seeded_selection_is_recorded_and_reproducible():
    a = make_task("mnist", **{**TINY_MNIST, "selection": "seeded", "data_seed": 3})
    b = make_task("mnist", **{**TINY_MNIST, "selection": "seeded", "data_seed": 3})
    assert torch.equal(a.energy.inputs, b.energy.inputs)
    assert a.energy.describe()["selection"].startswith("seeded sample (data_seed 4) of 200")


@needs["cifar10"]
@pytest.mark.parametrize("batchnorm", [None, "recompute"])
def test_cifar_task(batchnorm):
    task = make_task("cifar10", data_dir=DATA, conv1=4, conv2=4, fc1=16, fc2=8, n_eval=100, n_train=500,
                     batchnorm=batchnorm, bn_batches=2, bn_batch_size=32)
    start = task.energy.point_of(task.make_model(0))
    assert 70 <= task.energy(start) <= 98
    assert (task.energy.describe()["batchnorm"] or {}).get("policy") == batchnorm
    point, _ = train_to_target(start, energy=task.energy, objective=task.objective, target=0.0,
                               config=TrainConfig(lr=3e-3, batch_size=64, check_every=20, max_steps=20), seed=0)
    assert mean_ce(task, point) < mean_ce(task, start)


@needs["ptb"]
def test_ptb_task_perplexity_near_vocabulary_size_untrained_and_training_lowers_it():
    task = make_task("ptb", data_dir=DATA, embedding_dim=8, hidden_size=8, n_eval=5, n_train=4000)
    assert task.energy.inputs.shape == (5, 20) and task.energy.describe()["n_units"] == 100
    start = task.energy.point_of(task.make_model(0))
    assert 5000 <= task.energy(start) <= 20000  # uniform over 10,000 words
    point, _ = train_to_target(start, energy=task.energy, objective=task.objective, target=0.0,
                               config=TrainConfig(lr=1e-2, batch_size=32, check_every=20, max_steps=20), seed=0)
    assert mean_ce(task, point) < mean_ce(task, start) and task.energy(point) < task.energy(start)


@needs["mnist"]
def test_tiny_mnist_connect_runs_and_certifies():
    task = make_task("mnist", **{**TINY_MNIST, "n_eval": 100})
    threshold = 30.0
    config = TrainConfig(lr=3e-3, batch_size=64, check_every=20, max_steps=600)
    ends = []
    for seed in (1, 2):
        p, status = train_to_target(task.energy.point_of(task.make_model(seed)), energy=task.energy,
                                    objective=task.objective, target=threshold, config=config, seed=seed)
        assert status.reached, status
        ends.append(p)
    # certified at the task's documented resolution (1e-2 in t), finer than the DSS grid's 1/32
    result = connect(ends[0], ends[1], task.energy, threshold=threshold, objective=task.objective,
                     certification=CertifyConfig(resolution=0.01), bead_training=task.bead_training)
    assert result.connected and result.path.n_beads >= 1
    summary = result.summary()
    assert summary["max_interpolated_energy"] <= threshold
    # the refined sampling finds nothing above the threshold between the grid points DSS accepted (the error on
    # 100 images moves in steps of 1%: here the worst point is 28%, the same as the DSS grid's)
    assert summary["certified"] is True
    assert summary["max_interpolated_energy"] <= summary["certified_max_energy"] <= threshold
    assert summary["certification_resolution"] <= 0.01

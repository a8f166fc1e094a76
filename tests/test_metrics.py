"""Unit tests for modeconnect.metrics against hand-written references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeconnect.errors import ConfigError
from modeconnect.metrics import Metric, as_metric, metric_sum


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mse_and_mae_hand_values():
    outputs = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
    targets = torch.zeros(2, 2, dtype=torch.float64)
    # per sample: mean over entries; then summed over samples
    assert float(metric_sum("mse", outputs, targets)) == (1 + 4) / 2 + (9 + 25) / 2
    assert float(metric_sum("mae", outputs, targets)) == (1 + 2) / 2 + (3 + 5) / 2


def test_mse_and_mae_mean_over_entries_then_samples():
    g = _gen(0)
    outputs = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    targets = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    ref_mse = sum(
        sum(float(outputs[i, j, k] - targets[i, j, k]) ** 2 for j in range(2) for k in range(3)) / 6 for i in range(6)
    ) / 6
    ref_mae = sum(
        sum(abs(float(outputs[i, j, k] - targets[i, j, k])) for j in range(2) for k in range(3)) / 6 for i in range(6)
    ) / 6
    assert float(metric_sum(Metric.MSE, outputs, targets)) / 6 == pytest.approx(ref_mse, rel=1e-13)
    assert float(metric_sum(Metric.MAE, outputs, targets)) / 6 == pytest.approx(ref_mae, rel=1e-13)
    # and agrees with torch's element-mean losses (all samples have the same number of entries)
    for name, reference in (("mse", F.mse_loss), ("mae", F.l1_loss)):
        value = float(metric_sum(name, outputs, targets)) / 6
        assert value == pytest.approx(float(reference(outputs, targets)), rel=1e-13)


def test_cross_entropy_matches_torch_mean():
    g = _gen(1)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 4, (10,), generator=g)
    got = float(metric_sum("cross_entropy", logits, targets)) / 10
    assert got == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-13)
    # hand-written log-softmax reference
    ref = sum(float(torch.logsumexp(logits[i], 0) - logits[i, targets[i]]) for i in range(10)) / 10
    assert got == pytest.approx(ref, rel=1e-12)


def test_error_rate_in_percent():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 2, 2])  # the last one is wrong
    total = metric_sum("error_rate", logits, targets)
    assert float(total) / 4 == 25.0
    assert float(metric_sum("error_rate", logits, torch.tensor([0, 1, 2, 0]))) == 0.0
    assert float(metric_sum("error_rate", logits, torch.tensor([1, 0, 0, 1]))) / 4 == 100.0


def test_error_rate_random_reference():
    g = _gen(2)
    logits = torch.randn(50, 5, generator=g)
    targets = torch.randint(0, 5, (50,), generator=g)
    wrong = sum(int(torch.argmax(logits[i])) != int(targets[i]) for i in range(50))
    assert float(metric_sum("error_rate", logits, targets)) / 50 == pytest.approx(100.0 * wrong / 50, rel=1e-6)


def test_metric_sum_is_additive_over_sample_batches():
    g = _gen(3)
    logits = torch.randn(9, 3, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (9,), generator=g)
    for name in ("cross_entropy", "error_rate"):
        whole = float(metric_sum(name, logits, targets))
        parts = float(metric_sum(name, logits[:4], targets[:4])) + float(metric_sum(name, logits[4:], targets[4:]))
        assert whole == pytest.approx(parts, rel=1e-13, abs=1e-13)


def test_as_metric_parses_names_and_members():
    assert as_metric("mse") is Metric.MSE
    assert as_metric(Metric.CROSS_ENTROPY) is Metric.CROSS_ENTROPY
    assert as_metric("error_rate") is Metric.ERROR_RATE
    assert Metric.MSE.differentiable and Metric.CROSS_ENTROPY.differentiable
    assert not Metric.ERROR_RATE.differentiable


@pytest.mark.parametrize("name", ["rmse", "MSE", "", "accuracy"])
def test_unknown_metric_raises_config_error_listing_names(name):
    with pytest.raises(ConfigError, match=r"unknown metric .*choose one of: mse, mae, cross_entropy, error_rate"):
        as_metric(name)
    with pytest.raises(ConfigError):
        metric_sum(name, torch.zeros(1, 1), torch.zeros(1, 1))

"""The Appendix-D string picture data: stages from bead births, PCA axes, projected segments, energies."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from modeconnect import Energy
from modeconnect.errors import ConfigError
from modeconnect.params import flatten, interpolate, point_from_module, unflatten
from modeconnect.path import Path
from modeconnect.picture import principal_axes, select_stages, string_picture, string_stages


def _energy64(seed: int = 0) -> Energy:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randn(16, 5, generator=g, dtype=torch.float64)
    return Energy(nn.Linear(4, 5).double(), x, y, "mse", strategy="loop")


def _beads(energy: Energy, vectors: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [unflatten(v, energy.template) for v in vectors]


def _random_path(energy: Energy, n: int, seed: int = 1) -> Path:
    g = torch.Generator().manual_seed(seed)
    dim = flatten(energy.template).numel()
    return Path(_beads(energy, torch.randn(n, dim, generator=g, dtype=torch.float64)))


# -- stages ---------------------------------------------------------------------------------------
def test_string_stages_from_births():
    assert string_stages([0, 3, 1, 2, 0]) == [[0, 4], [0, 2, 4], [0, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert string_stages([0, 0]) == [[0, 1]]
    # bead 2 failed its training and was never inserted: birth 2 is missing
    assert string_stages([0, 3, 1, 0]) == [[0, 3], [0, 2, 3], [0, 1, 2, 3]]


@pytest.mark.parametrize("births", [[1, 0], [0, 1], [0, 1, 1, 0], [0, 0, 0], [0]])
def test_string_stages_rejects_inconsistent_births(births):
    with pytest.raises(ConfigError):
        string_stages(births)


def test_select_stages_keeps_first_and_last_evenly():
    assert select_stages(10, 4) == [0, 3, 6, 9]
    assert select_stages(10, 2) == [0, 9]
    assert select_stages(3, 10) == [0, 1, 2]
    assert select_stages(5, None) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        select_stages(5, 1)


def test_picture_stages_follow_births_and_max_stages():
    energy = _energy64()
    path = _random_path(energy, 7)
    births = [0, 4, 2, 5, 1, 3, 0]
    pic = string_picture(path, energy, births, points_per_segment=3)
    assert [s["stage"] for s in pic["stages"]] == [0, 1, 2, 3, 4, 5]
    assert [s["bead_indices"] for s in pic["stages"]] == string_stages(births)
    assert pic["stages"][-1]["bead_indices"] == list(range(7))
    sub = string_picture(path, energy, births, points_per_segment=3, max_stages=3)
    assert [s["stage"] for s in sub["stages"]] == [0, 3, 5]
    single = string_picture(path, energy, None, points_per_segment=3)
    assert [s["bead_indices"] for s in single["stages"]] == [list(range(7))]
    with pytest.raises(ConfigError, match="aligned"):
        string_picture(path, energy, [0, 1, 0], points_per_segment=3)


def test_segments_shared_by_stages_are_evaluated_once():
    energy = _energy64()
    path = _random_path(energy, 5)
    before = energy.n_evaluations
    pic = string_picture(path, energy, [0, 3, 1, 2, 0], points_per_segment=4)
    # stage 0: 1 segment; every later stage splits one segment into two new ones
    n_unique = 1 + 2 * (len(pic["stages"]) - 1)
    assert energy.n_evaluations - before == 4 * n_unique


# -- axes and projections -------------------------------------------------------------------------
def test_beads_in_a_plane_have_no_third_axis_and_keep_distances():
    energy = _energy64()
    dim = flatten(energy.template).numel()
    g = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    origin = torch.randn(dim, generator=g, dtype=torch.float64)
    plane = torch.randn(6, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    vectors = origin + plane @ basis.T
    pic = string_picture(Path(_beads(energy, vectors)), energy, points_per_segment=3)
    ev = pic["explained_variance"]
    assert ev[2] < 1e-12 and abs(sum(ev) - 1.0) < 1e-12 and ev[0] >= ev[1] > 0
    coords = torch.tensor(pic["stages"][-1]["beads"], dtype=torch.float64)
    assert torch.allclose(torch.cdist(coords, coords), torch.cdist(vectors, vectors), atol=1e-9)


def test_segment_coords_are_projections_of_the_interpolated_points():
    energy = _energy64()
    path = _random_path(energy, 4)
    pic = string_picture(path, energy, [0, 2, 1, 0], points_per_segment=5)
    mean, axes, _, _ = principal_axes(torch.stack([flatten(b) for b in path.beads]))
    for stage in pic["stages"]:
        idx = stage["bead_indices"]
        for (i, j), seg in zip(zip(idx[:-1], idx[1:]), stage["segments"]):
            for t, xyz, e in zip(seg["t"], seg["coords"], seg["energies"]):
                point = interpolate(path.beads[i], path.beads[j], t)
                expected = (flatten(point) - mean) @ axes.T
                assert torch.allclose(torch.tensor(xyz, dtype=torch.float64), expected, rtol=0, atol=1e-9)
                assert e == pytest.approx(energy(point), rel=1e-12, abs=1e-14)
        assert stage["bead_energies"] == pytest.approx([energy(path.beads[i]) for i in idx], rel=1e-12)


def test_axes_are_deterministic_under_sign_flips_and_reversal():
    energy = _energy64()
    path = _random_path(energy, 6)
    births = [0, 3, 1, 4, 2, 0]
    one = string_picture(path, energy, births, points_per_segment=3)
    assert json.dumps(one) == json.dumps(string_picture(path, energy, births, points_per_segment=3))

    negated = Path([{k: -v for k, v in b.items()} for b in path.beads])
    neg = string_picture(negated, energy, births, points_per_segment=3)
    assert torch.allclose(torch.tensor(neg["stages"][-1]["beads"]), -torch.tensor(one["stages"][-1]["beads"]),
                          atol=1e-9)
    assert neg["explained_variance"] == pytest.approx(one["explained_variance"], abs=1e-12)

    reversed_path = Path(path.beads[::-1])
    rev = string_picture(reversed_path, energy, points_per_segment=3)
    assert torch.allclose(torch.tensor(rev["stages"][-1]["beads"]),
                          torch.tensor(one["stages"][-1]["beads"]).flip(0), atol=1e-9)


def test_sign_convention_makes_largest_component_positive():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    _, axes, explained, n_real = principal_axes(x)
    assert n_real == 3 and explained[0] >= explained[1] >= explained[2] > 0
    for axis in axes:
        assert axis[axis.abs().argmax()] > 0
        assert float(axis.norm()) == pytest.approx(1.0)
    _, axes_neg, _, _ = principal_axes(-x)
    assert torch.allclose(axes, axes_neg, atol=1e-12)


def test_two_beads_pad_the_missing_axes():
    energy = _energy64()
    path = _random_path(energy, 2)
    pic = string_picture(path, energy, points_per_segment=3)
    assert pic["explained_variance"] == pytest.approx([1.0, 0.0, 0.0])
    assert "axes 2 and 3 are zero padding" in pic["axes_note"]
    beads = torch.tensor(pic["stages"][0]["beads"])
    assert torch.all(beads[:, 1:] == 0)
    assert float(beads[1, 0] - beads[0, 0]) == pytest.approx(path.chord)

    same = Path([path.beads[0], dict(path.beads[0])])
    flat = string_picture(same, energy, points_per_segment=3)
    assert flat["explained_variance"] == [0.0, 0.0, 0.0]
    assert "only 0 non-degenerate axes" in flat["axes_note"]


# -- format ---------------------------------------------------------------------------------------
class _BrokenEnergy:
    """An energy that is infinite / NaN in the middle of every segment."""

    def along_segment(self, a, b, ts):
        ts = torch.as_tensor(ts, dtype=torch.float64)
        out = 1.0 + ts * (1 - ts)
        out[len(ts) // 2] = float("inf")
        out[len(ts) // 2 - 1] = float("nan")
        return out

    def describe(self):
        return {"metric": "mse"}


def test_picture_is_json_safe_with_non_finite_energies():
    path = _random_path(_energy64(), 3)
    pic = string_picture(path, _BrokenEnergy(), [0, 1, 0], points_per_segment=5, threshold=1.1)
    text = json.dumps(pic, allow_nan=False)
    back = json.loads(text)
    assert set(back) == {"format", "version", "threshold", "metric", "explained_variance", "axes_note", "stages"}
    assert back["format"] == "modeconnect.string_picture" and back["version"] == 1
    assert back["threshold"] == 1.1 and back["metric"] == "mse"
    seg = back["stages"][-1]["segments"][0]
    assert seg["energies"][2] is None and seg["energies"][1] is None
    assert seg["energies"][0] == 1.0 and len(seg["t"]) == len(seg["coords"]) == 5
    with pytest.raises(ConfigError):
        string_picture(path, _BrokenEnergy(), points_per_segment=1)


def test_quadratic_task_picture():
    from modeconnect.tasks import make_task

    task = make_task("quadratic")
    beads = [point_from_module(task.make_model(seed)) for seed in range(4)]
    pic = string_picture(Path(beads), task.energy, [0, 2, 1, 0], points_per_segment=4, threshold=0.5)
    assert pic["metric"] == task.energy.describe()["metric"]
    final = pic["stages"][-1]
    assert final["bead_energies"] == pytest.approx([task.energy(b) for b in beads], rel=1e-6)
    assert all(math.isfinite(e) for s in final["segments"] for e in s["energies"])
    assert len(pic["stages"]) == 3 and pic["stages"][0]["bead_indices"] == [0, 3]


def test_a_curved_piece_is_drawn_along_the_curve_not_its_chord():
    """The picture of a Bezier piece projects the curve's own points and evaluates the energy on them."""
    from modeconnect.path import Bezier

    energy = _energy64(7)
    g = torch.Generator().manual_seed(8)
    dim = flatten(energy.template).numel()
    a, c, b = _beads(energy, torch.randn(3, dim, generator=g, dtype=torch.float64))
    path = Path([a, b], [Bezier([c])])
    pic = string_picture(path, energy, None, points_per_segment=9)
    (segment,) = pic["stages"][0]["segments"]
    ts = torch.tensor(segment["t"], dtype=torch.float64)
    points = path.points(0, ts)
    expected = [energy({k: v[i] for k, v in points.items()}) for i in range(len(ts))]
    assert segment["energies"] == pytest.approx(expected, rel=1e-12)
    coords = torch.tensor(segment["coords"])
    chord = torch.lerp(coords[0], coords[-1], 0.5)
    assert float(torch.linalg.norm(coords[4] - chord)) > 1e-3  # the midpoint is off the chord

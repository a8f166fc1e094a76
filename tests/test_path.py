"""Unit tests for modeconnect.path: geometry, editing, evaluation records and storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect.energy import Energy
from modeconnect.errors import ArchitectureMismatch, StoreError
from modeconnect.params import interpolate, point_from_module
from modeconnect.path import PATH_JSON, Path, Segment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _point(seed: int, dtype=torch.float32):
    g = _gen(seed)
    return {"w": torch.randn(3, 2, generator=g, dtype=dtype), "b": torch.randn(2, generator=g, dtype=dtype)}


def _np_dist(p, q) -> float:
    return float(np.sqrt(sum(np.sum((p[k].double().numpy() - q[k].double().numpy()) ** 2) for k in p)))


# -- geometry --------------------------------------------------------------------------------


def test_geometry_on_hand_made_points():
    a = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0])}
    bend = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0])}
    b = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0])}
    p = Path([a, bend, b])
    assert p.n_beads == 1
    assert p.segment_lengths == [3.0, 4.0]
    assert p.length == 7.0
    assert p.chord == 5.0
    assert p.normalized_length == pytest.approx(7.0 / 5.0, rel=1e-15)


def test_geometry_random_points_against_numpy():
    beads = [_point(s) for s in range(5)]
    p = Path(beads)
    assert p.n_beads == 3
    seg = [_np_dist(beads[i], beads[i + 1]) for i in range(4)]
    assert p.segment_lengths == pytest.approx(seg, rel=1e-12)
    assert p.length == pytest.approx(sum(seg), rel=1e-12)
    assert p.chord == pytest.approx(_np_dist(beads[0], beads[-1]), rel=1e-12)
    assert p.normalized_length >= 1.0
    assert p.normalized_length == pytest.approx(sum(seg) / _np_dist(beads[0], beads[-1]), rel=1e-12)


def test_straight_path_has_normalized_length_one():
    a, b = _point(10, torch.float64), _point(11, torch.float64)
    beads = [a] + [interpolate(a, b, t) for t in (0.1, 0.35, 0.5, 0.8)] + [b]
    p = Path(beads)
    assert p.n_beads == 4
    assert p.length == pytest.approx(p.chord, rel=1e-12)
    assert p.normalized_length == 1.0 or p.normalized_length == pytest.approx(1.0, rel=1e-12)
    assert p.normalized_length >= 1.0


def test_identical_endpoints():
    a = _point(12)
    p = Path([a, {k: v.clone() for k, v in a.items()}])
    assert p.n_beads == 0
    assert p.length == 0.0
    assert p.chord == 0.0
    assert p.normalized_length == 1.0
    # a loop away from and back to the same point has zero chord but positive length
    loop = Path([a, _point(13), a])
    assert loop.chord == 0.0 and loop.length > 0
    assert loop.normalized_length == math.inf


def test_path_needs_two_compatible_beads():
    with pytest.raises(ValueError, match="at least its two endpoints"):
        Path([_point(14)])
    bad = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    with pytest.raises(ArchitectureMismatch, match=r"w: shape \(3, 2\) in bead 0 vs \(2, 3\) in bead 1"):
        Path([_point(15), bad])
    with pytest.raises(ValueError, match="3 beads need 2 segments, got 1"):
        Path([_point(16), _point(17), _point(18)], [Segment()])


# -- editing ---------------------------------------------------------------------------------


def test_insert_bead_updates_segments_and_depths():
    a, m1, m2, b = (_point(s) for s in (20, 21, 22, 23))
    p = Path([a, b])
    p.set_segment(0, max_energy=2.0, argmax_t=0.5, grid_size=9)
    assert p.segments[0].evaluated and p.max_interpolated_energy == 2.0
    p.insert_bead(0, m1)
    assert len(p.beads) == 3
    assert p.n_beads == 1
    assert torch.equal(p.beads[1]["w"], m1["w"])
    assert p.segments == [Segment(depth=1), Segment(depth=1)]
    assert not any(s.evaluated for s in p.segments)
    assert p.max_interpolated_energy is None
    p.set_segment(0, max_energy=0.5, argmax_t=0.25, grid_size=9)
    p.insert_bead(1, m2)
    assert [torch.equal(x["w"], y["w"]) for x, y in zip(p.beads, [a, m1, m2, b])] == [True] * 4
    assert [s.depth for s in p.segments] == [1, 2, 2]
    assert p.segments[0].max_energy == 0.5  # untouched neighbour keeps its record
    assert p.depth == 2
    assert p.max_interpolated_energy == 0.5
    with pytest.raises(ArchitectureMismatch, match="the new bead"):
        p.insert_bead(0, {"w": torch.zeros(3, 2)})


def test_copy_is_independent():
    p = Path([_point(24), _point(25)], metadata={"k": 1})
    q = p.copy()
    q.beads[0]["w"].add_(1.0)
    q.set_segment(0, max_energy=1.0)
    q.metadata["k"] = 2
    assert not torch.equal(p.beads[0]["w"], q.beads[0]["w"])
    assert not p.segments[0].evaluated
    assert p.metadata["k"] == 1


def test_evaluate_segments_records_grid_maximum():
    net = nn.Linear(1, 1, bias=False).double()
    x = torch.ones(3, 1, dtype=torch.float64)
    energy = Energy(net, x, torch.zeros(3, 1, dtype=torch.float64), "mae", strategy="loop")

    def w(v):
        return {"weight": torch.tensor([[v]], dtype=torch.float64)}

    # energy = |w|: segment 0 from -1 to 3 (max 3 at t=1), segment 1 from 3 to -2 (max 3 at t=0)
    p = Path([w(-1.0), w(3.0), w(-2.0)]).evaluate_segments(energy, grid_size=5)
    assert p.segments[0] == Segment(depth=0, max_energy=3.0, argmax_t=1.0, grid_size=5)
    assert p.segments[1] == Segment(depth=0, max_energy=3.0, argmax_t=0.0, grid_size=5)
    assert p.max_interpolated_energy == 3.0


# -- storage ---------------------------------------------------------------------------------


def _saved_path(seed: int = 30) -> Path:
    beads = [_point(seed + i) for i in range(4)]
    segments = [
        Segment(depth=1, max_energy=0.25, argmax_t=0.5, grid_size=33),
        Segment(depth=2, max_energy=None, argmax_t=None, grid_size=None),
        Segment(depth=2, max_energy=1.5e-7, argmax_t=0.03125, grid_size=17),
    ]
    metadata = {"task": "poly", "seed": 3, "nested": {"threshold": 0.1, "list": [1, 2.5, "x"]}, "ok": True}
    return Path(beads, segments, metadata)


def test_save_load_round_trip_is_exact(tmp_path):
    p = _saved_path()
    p.save(tmp_path / "run")
    q = Path.load(tmp_path / "run")
    assert len(q.beads) == len(p.beads)
    for x, y in zip(p.beads, q.beads):
        assert set(x) == set(y)  # points are keyed by name (the stored order is sorted)
        for k in x:
            assert y[k].dtype == x[k].dtype
            assert torch.equal(x[k], y[k])
    assert q.segments == p.segments
    assert q.metadata == p.metadata
    assert q.length == p.length


def test_save_load_round_trip_float64_and_mixed_dtypes(tmp_path):
    beads = [{"w": torch.randn(4, generator=_gen(s), dtype=torch.float64),
              "h": torch.randn(2, generator=_gen(s + 100)).half()} for s in range(3)]
    Path(beads).save(tmp_path)
    q = Path.load(tmp_path, like=beads[0])
    for x, y in zip(beads, q.beads):
        assert y["w"].dtype == torch.float64 and y["h"].dtype == torch.float16
        assert torch.equal(x["w"], y["w"]) and torch.equal(x["h"], y["h"])


def test_beads_sharing_tensors_can_be_saved(tmp_path):
    # identical endpoints (the very same tensors) and beads that are views into one stacked tensor
    a = _point(50)
    stacked = {k: torch.stack([v, v + 1, v + 2]) for k, v in a.items()}
    views = [{k: v[i] for k, v in stacked.items()} for i in range(3)]
    p = Path([a, *views, a])
    p.save(tmp_path)
    q = Path.load(tmp_path)
    assert q.n_beads == 3
    for x, y in zip(p.beads, q.beads):
        for k in x:
            assert torch.equal(x[k], y[k])
    assert q.chord == 0.0 and q.length > 0


def test_load_with_like_of_same_architecture(tmp_path):
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    a = point_from_module(net)
    b = {k: v + 1 for k, v in a.items()}
    Path([a, b]).save(tmp_path)
    q = Path.load(tmp_path, like=net)
    assert torch.equal(q.beads[1]["2.bias"], b["2.bias"])
    Path.load(tmp_path, like=a)  # a point works too


def test_load_with_like_of_other_architecture_raises(tmp_path):
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    a = point_from_module(net)
    Path([a, a]).save(tmp_path)
    wider = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(ArchitectureMismatch, match=r"0\.weight: shape \(5, 2\) in the expected model vs \(3, 2\)"):
        Path.load(tmp_path, like=wider)
    with pytest.raises(ArchitectureMismatch, match=r"only in the expected model: fc\.weight"):
        Path.load(tmp_path, like={"fc.weight": torch.zeros(1), **a})


def test_corrupt_path_json_raises_store_error(tmp_path):
    _saved_path().save(tmp_path)
    (tmp_path / PATH_JSON).write_text("{this is not json", encoding="utf-8")
    with pytest.raises(StoreError, match=r"path\.json is not valid JSON"):
        Path.load(tmp_path)


def test_missing_path_json_raises_store_error(tmp_path):
    with pytest.raises(StoreError, match=r"path\.json does not exist"):
        Path.load(tmp_path)


def test_wrong_format_raises_store_error(tmp_path):
    (tmp_path / PATH_JSON).write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(StoreError, match="not a modeconnect path file"):
        Path.load(tmp_path)


def test_missing_tensor_file_raises_store_error_naming_it(tmp_path):
    _saved_path().save(tmp_path)
    (tensor_file,) = tmp_path.glob("beads-*.safetensors")
    tensor_file.unlink()
    with pytest.raises(StoreError, match=tensor_file.name + " does not exist"):
        Path.load(tmp_path)


def test_corrupt_tensor_file_raises_store_error_naming_it(tmp_path):
    _saved_path().save(tmp_path)
    (tensor_file,) = tmp_path.glob("beads-*.safetensors")
    tensor_file.write_bytes(b"garbage")
    with pytest.raises(StoreError, match=tensor_file.name + " could not be read"):
        Path.load(tmp_path)


def test_saving_twice_leaves_one_tensor_file(tmp_path):
    p = _saved_path()
    p.save(tmp_path)
    (first,) = tmp_path.glob("beads-*.safetensors")
    p.insert_bead(0, _point(99))
    p.save(tmp_path)
    files = list(tmp_path.glob("beads-*.safetensors"))
    assert len(files) == 1
    assert files[0].name != first.name
    assert json.loads((tmp_path / PATH_JSON).read_text())["tensors"] == files[0].name
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    q = Path.load(tmp_path)
    assert q.n_beads == p.n_beads == 3
    assert torch.equal(q.beads[1]["w"], _point(99)["w"])


def test_non_finite_values_are_written_as_valid_json(tmp_path):
    beads = [_point(40), _point(41)]
    p = Path(beads, [Segment(depth=0, max_energy=math.inf, argmax_t=0.5, grid_size=9)],
             {"best": math.inf, "worst": -math.inf, "nothing": math.nan})
    p.save(tmp_path)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    raw = json.loads((tmp_path / PATH_JSON).read_text(), parse_constant=refuse)  # strict JSON
    assert raw["metadata"]["best"] == "inf"
    q = Path.load(tmp_path)
    assert float(q.metadata["best"]) == math.inf
    assert float(q.metadata["worst"]) == -math.inf
    assert math.isnan(float(q.metadata["nothing"]))
    # a segment's energy is a number again after loading (greedy DSS records NaN energies as inf)
    assert q.segments[0].max_energy == math.inf
    assert isinstance(q.segments[0].max_energy, float)
    assert q.segments == p.segments
    assert q.max_interpolated_energy == math.inf

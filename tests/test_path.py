"""Unit tests for modeconnect.path: geometry, editing and storage of straight paths.

Curved (Bezier) pieces are tested in test_path_pieces.py."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path as FsPath

import numpy as np
import pytest
import torch
from torch import nn

import modeconnect.path as path_module
from modeconnect.errors import ArchitectureMismatch, ModeconnectError, StoreError
from modeconnect.params import interpolate, point_from_module
from modeconnect.path import PATH_JSON, Bezier, Path, Straight


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
    with pytest.raises(ValueError, match="3 beads need 2 pieces, got 1"):
        Path([_point(16), _point(17), _point(18)], [Straight()])
    with pytest.raises(TypeError, match="piece 1 is a str"):
        Path([_point(16), _point(17), _point(18)], [Straight(), "straight"])


def test_default_pieces_are_straight_and_points_interpolate_exactly():
    a, b = _point(19), _point(20)
    p = Path([a, b])
    assert p.n_pieces == 1 and isinstance(p.pieces[0], Straight)
    ts = [0.0, 0.25, 1.0]
    pts = p.points(0, ts)
    assert pts["w"].shape == (3, 3, 2) and pts["b"].shape == (3, 2)
    assert torch.equal(pts["w"][0], a["w"]) and torch.equal(pts["w"][2], b["w"])
    assert torch.equal(pts["b"][1], interpolate(a, b, 0.25)["b"])


# -- editing ---------------------------------------------------------------------------------


def test_insert_bead_splits_a_straight_piece():
    a, m1, m2, b = (_point(s) for s in (20, 21, 22, 23))
    p = Path([a, b])
    p.insert_bead(0, m1)
    assert len(p.beads) == 3 and p.n_beads == 1 and p.n_pieces == 2
    assert all(isinstance(piece, Straight) for piece in p.pieces)
    assert torch.equal(p.beads[1]["w"], m1["w"])
    p.insert_bead(1, m2)
    assert [torch.equal(x["w"], y["w"]) for x, y in zip(p.beads, [a, m1, m2, b])] == [True] * 4
    assert p.n_pieces == 3 and all(isinstance(piece, Straight) for piece in p.pieces)
    assert p.segment_lengths == pytest.approx(
        [_np_dist(a, m1), _np_dist(m1, m2), _np_dist(m2, b)], rel=1e-12)
    with pytest.raises(ArchitectureMismatch, match="the new bead"):
        p.insert_bead(0, {"w": torch.zeros(3, 2)})
    assert len(p.beads) == 4 and p.n_pieces == 3  # a refused bead changes nothing


def test_insert_bead_keeps_neighbouring_curves():
    a, c, m, b = (_point(s) for s in (60, 61, 62, 63))
    curve = Bezier([c])
    p = Path([a, m, b], [Straight(), curve])
    p.insert_bead(0, _point(64))
    assert [piece.kind for piece in p.pieces] == ["straight", "straight", "bezier"]
    assert p.pieces[2] is curve
    assert torch.equal(p.beads[2]["w"], m["w"]) and torch.equal(p.beads[3]["w"], b["w"])


def test_copy_is_independent():
    p = Path([_point(24), _point(25)], metadata={"k": 1})
    q = p.copy()
    q.beads[0]["w"].add_(1.0)
    q.metadata["k"] = 2
    q.insert_bead(0, _point(26))
    assert not torch.equal(p.beads[0]["w"], q.beads[0]["w"])
    assert p.metadata["k"] == 1
    assert len(p.beads) == 2 and p.n_pieces == 1


# -- storage ---------------------------------------------------------------------------------


def _saved_path(seed: int = 30) -> Path:
    beads = [_point(seed + i) for i in range(4)]
    metadata = {"task": "poly", "seed": 3, "nested": {"threshold": 0.1, "list": [1, 2.5, "x"]}, "ok": True}
    return Path(beads, metadata=metadata)


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
    assert [piece.kind for piece in q.pieces] == ["straight"] * 3
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
    with pytest.raises(StoreError, match=tensor_file.name + " has SHA-256"):
        Path.load(tmp_path)
    # garbage whose hash was recorded (path.json rewritten to match) fails when parsed, still a StoreError
    _edit_json(tmp_path, _with(tensors_sha256=hashlib.sha256(b"garbage").hexdigest()))
    with pytest.raises(StoreError, match=tensor_file.name + " could not be read as safetensors"):
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
    p = Path([_point(40), _point(41)], metadata={"best": math.inf, "worst": -math.inf, "nothing": math.nan,
                                                 "nested": [math.inf, {"x": math.nan}]})
    p.save(tmp_path)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    raw = json.loads((tmp_path / PATH_JSON).read_text(), parse_constant=refuse)  # strict JSON
    assert raw["metadata"]["best"] == "inf"
    assert raw["metadata"]["nested"] == ["inf", {"x": "nan"}]
    q = Path.load(tmp_path)
    assert float(q.metadata["best"]) == math.inf
    assert float(q.metadata["worst"]) == -math.inf
    assert math.isnan(float(q.metadata["nothing"]))


# -- storage: regression tests for hand-edited or corrupted files ----------------------------


def _tensor_file(directory):
    (found,) = directory.glob("beads-*.safetensors")
    return found


def _edit_json(directory, edit) -> None:
    """Replace path.json by ``edit(its parsed content)`` (edit returns the new JSON value)."""
    where = directory / PATH_JSON
    where.write_text(json.dumps(edit(json.loads(where.read_text()))), encoding="utf-8")


def _with(**fields):
    return lambda meta: {**meta, **fields}


def _without(name):
    return lambda meta: {k: v for k, v in meta.items() if k != name}


@pytest.mark.parametrize("where", ["relative", "absolute", "subdirectory"])
def test_tensor_file_outside_the_directory_is_refused_unopened(tmp_path, monkeypatch, where):
    run = tmp_path / "run" / "path"
    other = tmp_path / "other-run" / "path"
    _saved_path(30).save(run)
    Path([_point(70), _point(71)]).save(other)  # a genuine tensor file of another run, hash and all
    foreign = _tensor_file(other)
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    name = {"relative": f"../../other-run/path/{foreign.name}", "absolute": str(foreign),
            "subdirectory": f"sub/{foreign.name}"}[where]
    if where == "subdirectory":
        (run / "sub").mkdir()
        (run / "sub" / foreign.name).write_bytes(foreign.read_bytes())
    _edit_json(run, _with(tensors=name, tensors_sha256=digest, n_points=2, pieces=[{"kind": "straight",
                                                                                    "n_controls": 0}]))
    opened = []
    real = path_module.read_tensors
    monkeypatch.setattr(path_module, "read_tensors", lambda source, **kw: opened.append(source) or real(source, **kw))
    with pytest.raises(StoreError, match="field 'tensors' must name a beads-"):
        Path.load(run)
    assert opened == []


def test_tensor_file_named_by_absolute_system_path_is_refused(tmp_path):
    _saved_path().save(tmp_path)
    target = FsPath("/etc/passwd")
    digest = hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else "0" * 64
    _edit_json(tmp_path, _with(tensors=str(target), tensors_sha256=digest))
    with pytest.raises(StoreError, match="field 'tensors'"):
        Path.load(tmp_path)


def test_one_flipped_byte_in_the_tensor_file_is_detected(tmp_path):
    from modeconnect._io import read_tensors

    _saved_path().save(tmp_path)
    tensor_file = _tensor_file(tmp_path)
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 0x01  # a bit of the last stored value: the file still parses as safetensors
    tensor_file.write_bytes(bytes(data))
    read_tensors(tensor_file)  # without the recorded hash, the damage would go unnoticed
    with pytest.raises(StoreError, match=tensor_file.name + " has SHA-256 .* not the .* recorded"):
        Path.load(tmp_path)


_WRONG_SHAPES = {
    # whole-document shape
    "list": (lambda meta: [], "not a modeconnect path file"),
    "null": (lambda meta: None, "not a modeconnect path file"),
    "number": (lambda meta: 3, "not a modeconnect path file"),
    "no format": (_without("format"), "not a modeconnect path file"),
    "old version": (_with(version=1), "format version 1"),
    "no version": (_without("version"), "format version None"),
    # tensors
    "no tensors": (_without("tensors"), "field 'tensors'"),
    "tensors=123": (_with(tensors=123), "field 'tensors'"),
    "tensors=list": (_with(tensors=["beads-0123456789ab.safetensors"]), "field 'tensors'"),
    "tensors short hex": (_with(tensors="beads-0123.safetensors"), "field 'tensors'"),
    "tensors other suffix": (_with(tensors="beads-0123456789ab.pt"), "field 'tensors'"),
    "tensors_sha256 missing": (_without("tensors_sha256"), "field 'tensors_sha256'"),
    "tensors_sha256=123": (_with(tensors_sha256=123), "field 'tensors_sha256'"),
    "tensors_sha256 short": (_with(tensors_sha256="abc"), "field 'tensors_sha256'"),
    # n_points
    "n_points=-1": (_with(n_points=-1), "field 'n_points'"),
    "n_points=0": (_with(n_points=0), "field 'n_points'"),
    "n_points=1": (_with(n_points=1), "field 'n_points'"),
    "n_points='4'": (_with(n_points="4"), "field 'n_points'"),
    "n_points=4.0": (_with(n_points=4.0), "field 'n_points'"),
    "n_points=true": (_with(n_points=True), "field 'n_points'"),
    "n_points missing": (_without("n_points"), "field 'n_points'"),
    # parameters
    "parameters missing": (_without("parameters"), "field 'parameters'"),
    "parameters=[]": (_with(parameters=[]), "field 'parameters'"),
    "parameters={}": (_with(parameters={}), "field 'parameters'"),
    "parameters value not a dict": (_with(parameters={"w": 3, "b": 2}), "field 'parameters'"),
    "parameters shape not a list": (_with(parameters={"w": {"shape": "3x2"}, "b": {"shape": [2]}}),
                                    "field 'parameters'"),
    "parameters wrong shape": (_with(parameters={"w": {"shape": [2, 3]}, "b": {"shape": [2]}}),
                               r"parameter 'w' has shape \[3, 2\] in the tensor file but \[2, 3\] in path\.json"),
    # parameter_order
    "parameter_order string": (_with(parameter_order="w"), "field 'parameter_order'"),
    "parameter_order missing one": (_with(parameter_order=["w"]), "field 'parameter_order'"),
    "parameter_order extra": (_with(parameter_order=["w", "b", "x"]), "field 'parameter_order'"),
    "parameter_order numbers": (_with(parameter_order=[1, "w"]), "field 'parameter_order'"),
    "parameter_order objects": (_with(parameter_order=[{"a": 1}, "w"]), "field 'parameter_order'"),
    # pieces
    "pieces=[]": (_with(pieces=[]), "field 'pieces'"),
    "pieces missing": (_without("pieces"), "field 'pieces'"),
    "pieces string": (_with(pieces="straight"), "field 'pieces'"),
    "pieces too few": (lambda meta: {**meta, "pieces": meta["pieces"][:-1]}, "field 'pieces'"),
    "pieces too many": (lambda meta: {**meta, "pieces": meta["pieces"] * 2}, "field 'pieces'"),
    "piece not a dict": (lambda meta: {**meta, "pieces": ["straight"] * 3}, "field 'pieces'"),
    "piece unknown kind": (lambda meta: {**meta, "pieces": [{"kind": "spline", "n_controls": 0}] * 3},
                           "field 'pieces'"),
    "bezier without controls": (lambda meta: {**meta, "pieces": [{"kind": "bezier", "n_controls": 0}] * 3},
                                "field 'pieces'"),
    "straight with controls": (lambda meta: {**meta, "pieces": [{"kind": "straight", "n_controls": 1}] * 3},
                               "field 'pieces'"),
    "n_controls string": (lambda meta: {**meta, "pieces": [{"kind": "bezier", "n_controls": "1"}] * 3},
                          "field 'pieces'"),
}


@pytest.mark.parametrize("case", list(_WRONG_SHAPES), ids=list(_WRONG_SHAPES))
def test_path_json_of_the_wrong_shape_raises_store_error_naming_the_field(tmp_path, case):
    edit, message = _WRONG_SHAPES[case]
    _saved_path().save(tmp_path)
    _edit_json(tmp_path, edit)
    with pytest.raises(StoreError, match=message) as caught:
        Path.load(tmp_path)
    assert isinstance(caught.value, ModeconnectError)


def test_path_json_describing_fewer_tensors_than_the_file_holds_is_refused(tmp_path):
    # a shortened path (n_points and pieces consistent with each other) must not silently drop beads
    _saved_path().save(tmp_path)
    _edit_json(tmp_path, _with(n_points=3, pieces=[{"kind": "straight", "n_controls": 0}] * 2))
    with pytest.raises(StoreError, match="holds 8 tensors but path.json describes 6"):
        Path.load(tmp_path)


def test_curve_recorded_as_straight_is_refused(tmp_path):
    a, b = _point(80), _point(81)
    Path([a, b], [Bezier([_point(82)])]).save(tmp_path)
    _edit_json(tmp_path, _with(pieces=[{"kind": "straight", "n_controls": 0}]))
    with pytest.raises(StoreError, match="the file does not match path.json"):
        Path.load(tmp_path)


def test_tensor_file_of_another_architecture_with_valid_hash_is_refused(tmp_path):
    # a tensor file whose hash is right but whose parameters are not the ones path.json lists
    _saved_path().save(tmp_path / "run")
    Path([{"fc": torch.zeros(2)}, {"fc": torch.ones(2)}]).save(tmp_path / "other")
    foreign = _tensor_file(tmp_path / "other")
    for f in (tmp_path / "run").glob("beads-*.safetensors"):
        f.unlink()
    (tmp_path / "run" / foreign.name).write_bytes(foreign.read_bytes())
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    _edit_json(tmp_path / "run", _with(tensors=foreign.name, tensors_sha256=digest))
    with pytest.raises(StoreError, match="lacks parameter 'w' of bead 0"):
        Path.load(tmp_path / "run")


@pytest.mark.parametrize("content", [b'{"format": "\xff\xfe"}', b"[" * 100_000],
                         ids=["not utf-8", "nested too deeply"])
def test_unreadable_path_json_raises_store_error(tmp_path, content):
    _saved_path().save(tmp_path)
    (tmp_path / PATH_JSON).write_bytes(content)
    with pytest.raises(StoreError, match=r"path\.json is not valid JSON"):
        Path.load(tmp_path)

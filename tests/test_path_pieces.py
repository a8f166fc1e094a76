"""Curved pieces of a Path: Bezier points, quadrature lengths, energies along curves, storage, certification."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from modeconnect.certify import certify
from modeconnect.energy import Energy
from modeconnect.errors import ArchitectureMismatch
from modeconnect.path import PATH_JSON, Bezier, Path, Straight


def _point(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, generator=g, dtype=dtype), "b": torch.randn(2, generator=g, dtype=dtype)}


def _flat(point) -> np.ndarray:
    return np.concatenate([point[k].double().numpy().ravel() for k in point])


def _bezier_by_hand(nodes: list[np.ndarray], ts: np.ndarray) -> np.ndarray:
    """Points of the Bezier curve with control polygon ``nodes`` at each t (rows), from the Bernstein sum."""
    n = len(nodes) - 1
    weights = np.stack([math.comb(n, k) * ts**k * (1 - ts) ** (n - k) for k in range(n + 1)], axis=1)
    return weights @ np.stack(nodes)


def _assert_close(actual, expected, rtol: float, atol: float) -> None:
    # (torch.testing.assert_close costs over a second on its first call, for its imports)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), float((actual - expected).abs().max())


def _w(*values: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.tensor([list(values)], dtype=torch.float64)}


# -- points --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_controls", [1, 2, 3])
def test_curve_ends_are_the_beads_bit_for_bit(dtype, n_controls):
    a, m, b = _point(1, dtype), _point(2, dtype), _point(3, dtype)
    pieces = [Bezier([_point(10 + j, dtype) for j in range(n_controls)]), Bezier([_point(20, dtype)])]
    p = Path([a, m, b], pieces)
    ts = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    first, second = p.points(0, ts), p.points(1, ts)
    for k in a:
        assert first[k].dtype == dtype and first[k].shape == (4, *a[k].shape)
        assert torch.equal(first[k][0], a[k])
        assert torch.equal(first[k][-1], m[k])
        assert torch.equal(second[k][0], m[k])  # the two curves meet exactly at the bead
        assert torch.equal(second[k][-1], b[k])
        assert not torch.equal(first[k][1], a[k])  # the interior is somewhere else


def test_quadratic_bezier_matches_its_closed_form():
    a, c, b = _point(4), _point(5), _point(6)
    p = Path([a, b], [Bezier([c])])
    g = torch.Generator().manual_seed(7)
    ts = torch.cat([torch.linspace(0, 1, 11, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)])
    pts = p.points(0, ts)
    for k in a:
        t = ts.view(-1, *([1] * a[k].ndim))
        expected = (1 - t) ** 2 * a[k] + 2 * t * (1 - t) * c[k] + t**2 * b[k]
        assert pts[k].dtype == torch.float64
        _assert_close(pts[k], expected, rtol=1e-14, atol=1e-14)


def test_cubic_bezier_matches_its_closed_form():
    a, c1, c2, b = _point(8), _point(9), _point(10), _point(11)
    p = Path([a, b], [Bezier([c1, c2])])
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)
    pts = p.points(0, ts)
    for k in a:
        t = ts.view(-1, *([1] * a[k].ndim))
        expected = (1 - t) ** 3 * a[k] + 3 * t * (1 - t) ** 2 * c1[k] + 3 * t**2 * (1 - t) * c2[k] + t**3 * b[k]
        _assert_close(pts[k], expected, rtol=1e-14, atol=1e-14)


def test_integer_buffers_on_a_curve_are_rounded_not_truncated():
    def point(w: float, count: int):
        return {"w": torch.tensor([w]), "buffer:count": torch.tensor(count)}

    p = Path([point(0.0, 5), point(1.0, 5)], [Bezier([point(3.0, 5)])])
    counts = p.points(0, torch.linspace(0, 1, 101))["buffer:count"]
    assert counts.dtype == torch.int64
    assert counts.tolist() == [5] * 101  # equal everywhere stays equal (truncation turned some into 4)
    q = Path([point(0.0, 0), point(1.0, 10)], [Bezier([point(0.5, 10)])])
    ts = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    exact = 2 * ts * (1 - ts) * 10 + ts**2 * 10  # 1.9, 7.5, 9.9
    assert q.points(0, ts)["buffer:count"].tolist() == exact.round().long().tolist() == [2, 8, 10]


# -- geometry ------------------------------------------------------------------------------


def test_collinear_control_point_at_the_midpoint_gives_a_straight_length():
    a, b = _point(12), _point(13)
    mid = {k: (a[k] + b[k]) / 2 for k in a}
    p = Path([a, b], [Bezier([mid])])
    assert p.length == pytest.approx(p.chord, rel=1e-12)
    assert p.normalized_length == pytest.approx(1.0, abs=1e-12)
    assert p.normalized_length >= 1.0
    # the curve is the segment itself, walked at constant speed
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    straight = Path([a, b]).points(0, ts)
    for k in a:
        _assert_close(p.points(0, ts)[k], straight[k], rtol=1e-14, atol=1e-14)


def test_collinear_control_points_count_the_distance_travelled():
    a = {"w": torch.zeros(2, dtype=torch.float64)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.float64)}
    # control 90% of the way: the curve stays on the segment and moves forward only
    forward = Path([a, b], [Bezier([{"w": 0.9 * b["w"]}])])
    assert forward.length == pytest.approx(5.0, rel=1e-12)
    # control 150% of the way: the curve overshoots to 1.125 * b at t = 3/4 and comes back, 1.25 chords
    # (the speed has a kink where it stops, so the quadrature is only close, not exact)
    overshoot = Path([a, b], [Bezier([{"w": 1.5 * b["w"]}])])
    assert overshoot.chord == 5.0
    assert overshoot.length == pytest.approx(6.25, rel=1e-4)


@pytest.mark.parametrize("n_controls", [1, 2])
def test_curve_length_agrees_with_a_fine_polyline(n_controls):
    a, b = _point(14), _point(15)
    controls = [_point(16 + j) for j in range(n_controls)]
    p = Path([a, b], [Bezier(controls)])
    xs = _bezier_by_hand([_flat(a), *map(_flat, controls), _flat(b)], np.linspace(0.0, 1.0, 20001))
    polyline = float(np.linalg.norm(np.diff(xs, axis=0), axis=1).sum())
    assert p.segment_lengths == [p.length]
    assert p.length == pytest.approx(polyline, rel=1e-8)
    assert polyline <= p.length * (1 + 1e-12)  # a chordal polyline is never longer than its curve
    assert p.length > p.chord * 1.01  # a random curve really bends


def test_buffers_do_not_count_towards_curve_length():
    a, c, b = _point(18), _point(19), _point(20)
    p = Path([a, b], [Bezier([c])])
    with_buffers = Path([{**a, "buffer:s": torch.zeros(4, dtype=torch.float64)},
                         {**b, "buffer:s": torch.full((4,), 100.0, dtype=torch.float64)}],
                        [Bezier([{**c, "buffer:s": torch.full((4,), -50.0, dtype=torch.float64)}])])
    assert with_buffers.length == pytest.approx(p.length, rel=1e-14)
    assert with_buffers.chord == pytest.approx(p.chord, rel=1e-14)


@pytest.mark.parametrize("seed", range(5))
def test_curve_length_is_at_least_the_chord(seed):
    g = torch.Generator().manual_seed(100 + seed)
    beads = [{"w": torch.randn(6, generator=g, dtype=torch.float64)} for _ in range(3)]
    controls = [[{"w": torch.randn(6, generator=g, dtype=torch.float64)} for _ in range(1 + seed % 3)]]
    p = Path(beads, [Bezier(controls[0]), Straight()])
    assert p.length >= p.chord
    assert p.normalized_length >= 1.0
    assert p.segment_lengths[1] == pytest.approx(float(torch.linalg.norm(beads[2]["w"] - beads[1]["w"])),
                                                 rel=1e-14)
    assert p.segment_lengths[0] >= float(torch.linalg.norm(beads[1]["w"] - beads[0]["w"]))


# -- energies ------------------------------------------------------------------------------


def _linear_energy(**settings) -> Energy:
    g = torch.Generator().manual_seed(30)
    inputs = torch.randn(16, 3, generator=g, dtype=torch.float64)
    targets = torch.randn(16, 2, generator=g, dtype=torch.float64)
    return Energy(nn.Linear(3, 2).double(), inputs, targets, "mse", **settings)


def _linear_point(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(2, 3, generator=g, dtype=torch.float64),
            "bias": torch.randn(2, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("settings", [{}, {"strategy": "vmap", "chunk_size": 3}, {"strategy": "loop"}],
                         ids=["auto", "vmap-chunks-of-3", "loop"])
def test_energies_on_a_curve_equal_one_point_at_a_time(settings):
    energy = _linear_energy(**settings)
    a, m, b = _linear_point(31), _linear_point(32), _linear_point(33)
    p = Path([a, m, b], [Bezier([_linear_point(34), _linear_point(35)]), Straight()])
    ts = torch.linspace(0, 1, 7, dtype=torch.float64)
    for piece in range(2):
        values = p.energies(piece, ts, energy)
        assert values.dtype == torch.float64 and values.shape == (7,)
        points = p.points(piece, ts)
        one_by_one = [energy({k: v[i] for k, v in points.items()}) for i in range(7)]
        _assert_close(values, torch.tensor(one_by_one, dtype=torch.float64), rtol=1e-12, atol=0)
    # the curve's ends are the beads' energies
    assert float(p.energies(0, [0.0, 1.0], energy)[0]) == pytest.approx(energy(a), rel=1e-12)
    assert float(p.energies(0, [0.0, 1.0], energy)[1]) == pytest.approx(energy(m), rel=1e-12)
    assert p.energies(0, [], energy).shape == (0,)


def test_nan_energy_on_a_curve_counts_as_infinite():
    energy = _linear_energy(strategy="loop")
    broken = {k: torch.full_like(v, math.nan) for k, v in _linear_point(36).items()}
    p = Path([_linear_point(37), _linear_point(38)], [Bezier([broken])])
    values = p.energies(0, [0.0, 0.5, 1.0], energy)
    assert math.isfinite(values[0]) and math.isfinite(values[2])  # the beads themselves are fine
    assert values[1] == math.inf


# -- editing and validation ----------------------------------------------------------------


def test_insert_bead_refuses_to_split_a_curve():
    a, m, b = _point(40), _point(41), _point(42)
    p = Path([a, m, b], [Straight(), Bezier([_point(43)])])
    with pytest.raises(ValueError, match="piece 1 is a bezier curve"):
        p.insert_bead(1, _point(44))
    assert len(p.beads) == 3 and [piece.kind for piece in p.pieces] == ["straight", "bezier"]
    p.insert_bead(0, _point(45))  # the straight piece still splits
    assert [piece.kind for piece in p.pieces] == ["straight", "straight", "bezier"]


def test_bezier_needs_a_control_point():
    with pytest.raises(ValueError, match="at least one control point"):
        Bezier([])


@pytest.mark.parametrize("control, message", [
    ({"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)},
     r"w: shape \(3, 2\) in bead 0 vs \(2, 3\) in control point 0 of piece 1"),
    ({"w": torch.zeros(3, 2, dtype=torch.float32), "b": torch.zeros(2, dtype=torch.float64)},
     r"w: dtype torch\.float64 in bead 0 vs torch\.float32 in control point 0 of piece 1"),
    ({"w": torch.zeros(3, 2, dtype=torch.float64)}, r"only in bead 0: b"),
], ids=["shape", "dtype", "missing parameter"])
def test_control_point_of_another_architecture_is_refused(control, message):
    with pytest.raises(ArchitectureMismatch, match=message):
        Path([_point(46), _point(47), _point(48)], [Straight(), Bezier([control])])


def test_copy_of_a_curved_path_is_independent():
    p = Path([_point(50), _point(51)], [Bezier([_point(52)])])
    q = p.copy()
    q.pieces[0].controls[0]["w"].add_(1.0)
    assert not torch.equal(p.pieces[0].controls[0]["w"], q.pieces[0].controls[0]["w"])
    assert torch.equal(p.pieces[0].controls[0]["w"], _point(52)["w"])


# -- storage -------------------------------------------------------------------------------


def test_save_load_round_trip_of_mixed_pieces_is_exact(tmp_path):
    def point(seed):
        g = torch.Generator().manual_seed(seed)
        return {"w": torch.randn(3, 2, generator=g, dtype=torch.float64),
                "h": torch.randn(4, generator=g).half()}

    beads = [point(s) for s in range(60, 64)]
    pieces = [Bezier([point(70)]), Straight(), Bezier([point(71), point(72)])]
    p = Path(beads, pieces, {"method": "curves"})
    p.save(tmp_path)
    raw = json.loads((tmp_path / PATH_JSON).read_text())
    assert raw["pieces"] == [{"kind": "bezier", "n_controls": 1}, {"kind": "straight", "n_controls": 0},
                             {"kind": "bezier", "n_controls": 2}]
    q = Path.load(tmp_path, like=beads[0])
    assert [piece.kind for piece in q.pieces] == ["bezier", "straight", "bezier"]
    assert len(q.beads) == 4 and q.metadata == {"method": "curves"}
    for x, y in zip(p.beads, q.beads):
        for k in x:
            assert y[k].dtype == x[k].dtype and torch.equal(x[k], y[k])
    for before, after in zip(p.pieces, q.pieces):
        assert len(before.controls) == len(after.controls)
        for x, y in zip(before.controls, after.controls):
            assert set(x) == set(y)
            for k in x:
                assert y[k].dtype == x[k].dtype and torch.equal(x[k], y[k])
    assert q.segment_lengths == p.segment_lengths
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    assert torch.equal(q.points(2, ts)["w"], p.points(2, ts)["w"])


# -- certification -------------------------------------------------------------------------


def test_certify_finds_the_peak_of_a_curve():
    # energy = |w| (MAE of a 1-weight linear model on x = 1, y = 0). Piece 0 runs straight from 0.5 to -1
    # (max 1 at t = 1); piece 1 is a Bezier from -1 to 1 bent through 3:
    # w(t) = -(1-t)^2 + 6t(1-t) + t^2 = -1 + 8t - 6t^2, largest at t = 2/3 where w = 5/3.
    net = nn.Linear(1, 1, bias=False).double()
    x = torch.ones(4, 1, dtype=torch.float64)
    energy = Energy(net, x, torch.zeros(4, 1, dtype=torch.float64), "mae", strategy="loop")
    p = Path([_w(0.5), _w(-1.0), _w(1.0)], [Straight(), Bezier([_w(3.0)])])
    ts = torch.tensor([0.0, 0.25, 2 / 3, 1.0], dtype=torch.float64)
    _assert_close(p.energies(1, ts, energy), (-1 + 8 * ts - 6 * ts**2).abs(), rtol=1e-14, atol=1e-14)

    cert = certify(p, energy, resolution=1e-2)
    assert cert.segment == 1
    assert cert.segment_max[0] == pytest.approx(1.0, abs=1e-15)
    # a sampled maximum never exceeds the true one and, with samples <= 0.01 apart around the peak,
    # is short of it by at most 6 * 0.005^2 (w'' = -12)
    assert 5 / 3 - 1.5e-4 <= cert.max_energy <= 5 / 3 + 1e-12
    assert cert.t == pytest.approx(2 / 3, abs=5e-3)
    assert cert.resolution <= 1e-2 * (1 + 1e-9)

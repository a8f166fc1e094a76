"""Figures: sweep, profile, string (3D + projections), snapshots, GIF, offline HTML, headless-browser check."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path as FsPath

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

from modeconnect import Energy  # noqa: E402
from modeconnect.errors import ConfigError  # noqa: E402
from modeconnect.params import flatten, unflatten  # noqa: E402
from modeconnect.path import Path  # noqa: E402
from modeconnect.picture import string_picture  # noqa: E402
from modeconnect.plots import (  # noqa: E402
    profile_figure,
    save_string_animation,
    save_string_html,
    snapshots_figure,
    string_figure,
    sweep_figure,
)
from modeconnect.plots._common import EnergyScale  # noqa: E402

REPO = FsPath(__file__).resolve().parents[1]
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    energy = Energy(nn.Linear(2, 1).double(), x, y, "mse", strategy="loop")
    dim = flatten(energy.template).numel()
    vectors = torch.randn(5, dim, generator=g, dtype=torch.float64) * 2
    beads = [unflatten(v, energy.template) for v in vectors]
    return string_picture(Path(beads), energy, [0, 3, 1, 2, 0], points_per_segment=9, threshold=THRESHOLD)


@pytest.fixture
def no_pyplot_figures():
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "plot functions must not create pyplot figures"


def _table(levels=(0.5, 0.1, 0.02)):
    aggregates, rows = [], []
    for k, level in enumerate(levels):
        connected = [True, True, False] if k < len(levels) - 1 else [False, False, False]
        lengths = [1.1 + 0.2 * k + 0.05 * p for p in range(3)]
        for p, ok in enumerate(connected):
            rows.append({"level": level, "pair": p, "status": "connected" if ok else "not_connected", "connected": ok,
                         "normalized_length": lengths[p] if ok else None, "n_beads": (k + p) if ok else None,
                         "depth": 1 if ok else None})
        ok_len = [lengths[p] for p in range(3) if connected[p]]
        ok_beads = [k + p for p in range(3) if connected[p]]
        n_ok = len(ok_len)
        agg = {"level": level, "n_pairs": 3, "n_connected": n_ok, "success_rate": n_ok / 3}
        for key, vals in (("normalized_length", ok_len), ("n_beads", ok_beads), ("depth", [1] * n_ok)):
            agg[f"{key}_mean"] = float(np.mean(vals)) if vals else None
            agg[f"{key}_stderr"] = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else None
        aggregates.append(agg)
    return {"task": "cubic", "energy": {"metric": "mae", "split": "test"}, "levels": list(levels), "rows": rows,
            "aggregates": aggregates}


# -- sweep ----------------------------------------------------------------------------------------
def test_sweep_figure_plots_the_table_means(tmp_path, no_pyplot_figures):
    table = _table()
    fig = sweep_figure(table)
    assert len(fig.axes) == 2
    for ax, key in zip(fig.axes, ("normalized_length", "n_beads")):
        [container] = [c for c in ax.containers if c.get_label() == "mean ± s.e."]
        line = container.lines[0]
        have = [a for a in table["aggregates"] if a[f"{key}_mean"] is not None]
        assert list(line.get_xdata()) == [a["level"] for a in have]
        assert list(line.get_ydata()) == pytest.approx([a[f"{key}_mean"] for a in have])
        lo, hi = ax.get_xlim()
        assert lo > hi, "energy must decrease to the right"
        assert ax.get_xscale() == "log"  # levels span a factor 25
        assert "decreasing" in ax.get_xlabel() and "test MAE" in ax.get_xlabel()
        texts = [t.get_text() for t in ax.texts]
        assert texts == ["2/3", "2/3", "0/3"]
    out = tmp_path / "sweep.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000


def test_sweep_figure_linear_axis_for_a_narrow_range():
    fig = sweep_figure(_table(levels=(0.05, 0.04, 0.03)))
    assert fig.axes[0].get_xscale() == "linear"
    assert fig.axes[0].get_xlim()[0] > fig.axes[0].get_xlim()[1]
    with pytest.raises(ConfigError):
        sweep_figure({"aggregates": []})


# -- profile --------------------------------------------------------------------------------------
def test_profile_figure_threshold_and_positions(picture, tmp_path, no_pyplot_figures):
    fig = profile_figure(picture)
    [ax] = fig.axes
    [line] = [ln for ln in ax.lines if ln.get_gid() == "threshold"]
    assert list(line.get_ydata()) == [THRESHOLD, THRESHOLD]
    assert line.get_label() == "L0 = 0.5"
    n_seg = len(picture["stages"][-1]["segments"])
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_gid() != "threshold" and len(ln.get_xdata()) > 2])
    assert xs.min() == 0 and xs.max() == n_seg
    energies = [e for s in picture["stages"][-1]["segments"] for e in s["energies"]]
    spans_decades = max(energies) / min(min(energies), THRESHOLD) > 100
    assert ax.get_yscale() == ("log" if spans_decades else "linear")
    first = profile_figure(picture, stage=0)
    assert max(first.axes[0].lines[0].get_xdata()) == 1.0
    with pytest.raises(ConfigError):
        profile_figure(picture, stage=7)
    fig.savefig(tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 1000


def test_profile_log_scale_and_non_finite():
    stage = {"stage": 0, "bead_indices": [0, 1], "beads": [[0, 0, 0], [1, 0, 0]], "bead_energies": [0.01, 0.02],
             "segments": [{"t": [0, 0.5, 1], "coords": [[0, 0, 0], [0.5, 0, 0], [1, 0, 0]],
                           "energies": [0.01, None, 0.02]}]}
    pic = {"format": "modeconnect.string_picture", "version": 1, "threshold": 10.0, "metric": "mse",
           "explained_variance": [1, 0, 0], "axes_note": "", "stages": [stage]}
    ax = profile_figure(pic).axes[0]
    assert ax.get_yscale() == "log"  # 0.01 .. 10 spans 3 decades
    assert any(c.get_label() == "non-finite" for c in ax.collections)
    scale = EnergyScale(pic)
    assert list(scale.log([None, float("inf"), 0.01])) == pytest.approx([scale.vmax, scale.vmax, -2.0])
    assert scale.vmax == pytest.approx(1.0)  # the threshold is inside the colour range


# -- string figures -------------------------------------------------------------------------------
def test_string_figure_layout(picture, tmp_path, no_pyplot_figures):
    fig = string_figure(picture)
    assert len(fig.axes) == 5  # 3D panel, three projections, colorbar
    assert fig.axes[0].name == "3d"
    assert [ax.name for ax in fig.axes[1:4]] == ["rectilinear"] * 3
    assert fig.axes[4].get_ylabel() == "log10 energy"
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert "A" in texts and "B" in texts
    n_points = sum(len(s["t"]) for s in picture["stages"][-1]["segments"])
    assert sum(len(ln.get_xdata()) for ln in fig.axes[1].lines) == n_points
    fig.savefig(tmp_path / "string.png")
    assert (tmp_path / "string.png").stat().st_size > 5000
    early = string_figure(picture, stage=0)
    assert "after 0 beads" in early.axes[0].get_title()


def test_snapshots_share_one_colour_scale(picture, tmp_path):
    fig = snapshots_figure(picture, n=3)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:3]] == ["after 0 beads", "after 2 beads", "after 3 beads (final)"]
    norms = {(c.norm.vmin, c.norm.vmax) for ax in fig.axes[:3] for c in ax.collections if c.get_array() is not None}
    assert len(norms) == 1
    scale = EnergyScale(picture)
    assert norms == {(scale.vmin, scale.vmax)}
    fig.savefig(tmp_path / "snap.png")
    assert (tmp_path / "snap.png").stat().st_size > 5000


def test_animation_has_one_frame_per_stage(picture, tmp_path):
    from PIL import Image, ImageSequence

    out = tmp_path / "string.gif"
    assert save_string_animation(picture, out, fps=4) == len(picture["stages"])
    with Image.open(out) as im:
        frames = [f.copy() for f in ImageSequence.Iterator(im)]
    assert len(frames) == len(picture["stages"])
    assert frames[0].tobytes() != frames[-1].tobytes()


def test_html_is_offline_and_holds_the_data(picture, tmp_path):
    pytest.importorskip("plotly")
    out = tmp_path / "string.html"
    save_string_html(picture, out)
    text = out.read_text(encoding="utf-8")
    assert len(text) > 1_000_000  # plotly.js is embedded
    assert '<script src="http' not in text and "cdn.plot.ly" not in text.split("plotly-graph-div")[-1]
    assert "plotly-graph-div" in text and "Plotly.newPlot" in text
    assert "L0 = 0.5" in text and "DSS string after 3 beads" in text
    final = picture["stages"][-1]
    assert f"bead 1, energy {final['bead_energies'][1]}" in text


def test_html_without_plotly_says_how_to_install(picture, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ConfigError, match="pip install 'modeconnect\\[plot\\]'"):
        save_string_html(picture, tmp_path / "x.html")


def require_chromium() -> None:
    """Skip without a browser -- except in CI (``CI=true``), where a skipped browser check would go unnoticed:
    there a missing chromium fails the test (``.ci/run`` installs it)."""
    name = os.environ.get("CHROMIUM", "chromium")  # the browser scripts/check_html.py runs
    if shutil.which(name) is not None:
        return
    why = f"{name!r} is not on PATH (Debian: apt-get install -y chromium)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true but {why}: the browser check of the HTML figure must run in CI, not skip; "
                    ".ci/run installs chromium with apt-get when it runs as root")
    pytest.skip(why)


def test_html_renders_in_headless_chromium(picture, tmp_path):
    require_chromium()
    pytest.importorskip("plotly")
    out = tmp_path / "string.html"
    save_string_html(picture, out)
    script = REPO / "scripts" / "check_html.py"
    ok = subprocess.run([sys.executable, str(script), str(out), "--screenshot", str(tmp_path / "shot.png")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "shot.png").stat().st_size > 1000
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>", encoding="utf-8")
    bad = subprocess.run([sys.executable, str(script), str(blank)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "plotly-graph-div" in bad.stderr and "blank" in bad.stderr

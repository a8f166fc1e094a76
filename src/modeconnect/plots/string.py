"""The string in its three principal axes (Freeman & Bruna, Appendix D, Figures 3 and 4).

Every function reads a picture dict from :func:`modeconnect.picture.string_picture`. Segments are
coloured by log10 energy on one scale shared by all stages of the picture (so snapshots compare),
with the threshold L0 marked on the colorbar; beads are black dots, the endpoints are labelled A and B.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import (
    CMAP,
    PLOTLY_CMAP,
    EnergyScale,
    Figure,
    axis_labels,
    get_stage,
    limits,
    new_figure,
    pick_positions,
    stage_arrays,
    stage_title,
)

__all__ = ["string_figure", "snapshots_figure", "save_string_animation", "save_string_html"]

_PAIRS = ((0, 1), (0, 2), (1, 2))


def _coloured_segments(points: np.ndarray, logs: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Short pieces between consecutive dense points of the same segment, each coloured by its larger end."""
    same = ids[:-1] == ids[1:]
    pieces = np.stack([points[:-1], points[1:]], axis=1)[same]
    colour = np.maximum(logs[:-1], logs[1:])[same]
    return pieces, colour


def _draw_3d(ax, picture: Mapping[str, Any], stage: Mapping[str, Any], scale: EnergyScale,
             lims, *, shadows: bool = True, bead_size: float = 14) -> Any:
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    points, logs, ids = stage_arrays(stage, scale)
    pieces, colour = _coloured_segments(points, logs, ids)
    lines = Line3DCollection(pieces, cmap=CMAP, norm=scale.norm, linewidths=2.2)
    lines.set_array(colour)
    ax.add_collection3d(lines)
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    ax.set_zlim(*lims[2])
    if shadows:  # the paper's black projections, drawn on the back walls of the box
        ax.plot(points[:, 0], points[:, 1], np.full(len(points), lims[2][0]), color="0.35", lw=0.8)
        ax.plot(points[:, 0], np.full(len(points), lims[1][1]), points[:, 2], color="0.35", lw=0.8)
        ax.plot(np.full(len(points), lims[0][0]), points[:, 1], points[:, 2], color="0.35", lw=0.8)
    beads = np.asarray(stage["beads"], dtype=float)
    ax.scatter(beads[:, 0], beads[:, 1], beads[:, 2], color="black", s=bead_size, depthshade=False, zorder=5)
    for name, p in (("A", beads[0]), ("B", beads[-1])):
        ax.text(p[0], p[1], p[2], f"  {name}", fontsize=12, fontweight="bold", color="black", zorder=6)
    labels = axis_labels(picture)
    ax.set_xlabel(labels[0], fontsize=8, labelpad=-2)
    ax.set_ylabel(labels[1], fontsize=8, labelpad=-2)
    ax.set_zlabel(labels[2], fontsize=8, labelpad=-2)
    ax.tick_params(labelsize=6, pad=-1)
    return lines


def string_figure(picture: Mapping[str, Any], stage: int = -1) -> Figure:
    """A 3D view of one stage (default: the final string) plus its projections on PC pairs (1,2), (1,3), (2,3).

    The figure has 5 axes: the 3D panel, three 2D panels and the colorbar.
    """
    st = get_stage(picture, stage)
    scale = EnergyScale(picture)
    lims = limits(picture)
    labels = axis_labels(picture)
    fig = new_figure(12.5, 7.5)
    grid = fig.add_gridspec(3, 2, width_ratios=[2.3, 1])
    ax3 = fig.add_subplot(grid[:, 0], projection="3d")
    _draw_3d(ax3, picture, st, scale, lims)
    final = stage in (-1, len(picture["stages"]) - 1)
    ax3.set_title(("final string" if final else "string") + f" {stage_title(st)}, coloured by log10 interpolated "
                  f"energy; black: projections on PC pairs", fontsize=10)
    points, _, ids = stage_arrays(st, scale)
    beads = np.asarray(st["beads"], dtype=float)
    for k, (i, j) in enumerate(_PAIRS):
        ax = fig.add_subplot(grid[k, 1])
        for s in np.unique(ids):
            ax.plot(points[ids == s, i], points[ids == s, j], color="black", lw=1.0)
        ax.scatter(beads[:, i], beads[:, j], color="black", s=10, zorder=3)
        for name, p in (("A", beads[0]), ("B", beads[-1])):
            ax.annotate(name, (p[i], p[j]), xytext=(4, 4), textcoords="offset points", fontsize=9,
                        fontweight="bold")
        ax.set_xlim(*lims[i])
        ax.set_ylim(*lims[j])
        ax.set_xlabel(labels[i], fontsize=8)
        ax.set_ylabel(labels[j], fontsize=8)
        ax.tick_params(labelsize=7)
    scale.colorbar(fig, scale.mappable(), ax3, shrink=0.6, pad=0.02)
    note = picture.get("axes_note", "")
    if "zero padding" in note:
        fig.suptitle(note.split("; ")[-1], fontsize=8, color="0.3")
    return fig


def snapshots_figure(picture: Mapping[str, Any], n: int = 4) -> Figure:
    """``n`` stages side by side (first, evenly spread intermediate ones, final), one shared colour scale."""
    get_stage(picture, -1)
    positions = pick_positions(len(picture["stages"]), n)
    scale = EnergyScale(picture)
    lims = limits(picture)
    fig = new_figure(3.9 * len(positions) + 1.2, 4.4)
    axes = []
    for col, pos in enumerate(positions):
        ax = fig.add_subplot(1, len(positions), col + 1, projection="3d")
        st = picture["stages"][pos]
        _draw_3d(ax, picture, st, scale, lims, bead_size=10)
        ax.set_title(stage_title(st) + (" (final)" if pos == len(picture["stages"]) - 1 else ""), fontsize=11)
        axes.append(ax)
    scale.colorbar(fig, scale.mappable(), axes, shrink=0.7, pad=0.02)
    return fig


def save_string_animation(picture: Mapping[str, Any], path_gif: str | os.PathLike, fps: float = 2) -> int:
    """Write a GIF with one frame per stage (fixed axes, fixed colour scale); returns the number of frames.

    The last frame is shown three times as long, so a looping viewer pauses on the final string.
    """
    get_stage(picture, -1)
    if not fps > 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    from PIL import Image

    scale = EnergyScale(picture)
    lims = limits(picture)
    fig = new_figure(7.5, 6.0)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    scale.colorbar(fig, scale.mappable(), ax, shrink=0.65, pad=0.04)
    frames = []
    n_stages = len(picture["stages"])
    for pos, st in enumerate(picture["stages"]):
        ax.cla()
        _draw_3d(ax, picture, st, scale, lims)
        ax.set_title(f"DSS string {stage_title(st)}  (stage {pos + 1}/{n_stages})", fontsize=11)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
                      .quantize(colors=255, method=Image.Quantize.MEDIANCUT))
    step = int(round(1000 / fps))
    durations = [step] * (len(frames) - 1) + [3 * step]
    frames[0].save(os.fspath(path_gif), save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   disposal=1)
    return len(frames)


def save_string_html(picture: Mapping[str, Any], path_html: str | os.PathLike) -> None:
    """An interactive 3D view (plotly, fully offline: plotly.js is embedded) with a slider across stages."""
    get_stage(picture, -1)
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError("plotly is not installed: pip install 'modeconnect[plot]'") from None
    scale = EnergyScale(picture)
    lims = limits(picture)
    labels = axis_labels(picture)
    stages = picture["stages"]
    traces, owner = [], []
    for pos, st in enumerate(stages):
        points, logs, ids = stage_arrays(st, scale)
        energies = [e for seg in st["segments"] for e in seg["energies"]]
        # a None between segments breaks the line, so each segment is drawn on its own
        xs, ys, zs, cs, text = [], [], [], [], []
        for s in np.unique(ids):
            m = ids == s
            xs += points[m, 0].tolist() + [None]
            ys += points[m, 1].tolist() + [None]
            zs += points[m, 2].tolist() + [None]
            cs += logs[m].tolist() + [float(logs[m][-1])]
            text += [f"segment {s}, energy {e if e is not None else 'non-finite'}"
                     for e, keep in zip(energies, m) if keep] + [""]
        visible = pos == len(stages) - 1
        threshold = picture.get("threshold")
        bar_title = "log10 energy" + (f"<br>L0 = {threshold:.3g}" if threshold else "")
        traces.append(go.Scatter3d(
            x=xs, y=ys, z=zs, mode="lines+markers", name="segments", visible=visible, text=text,
            hoverinfo="text",
            line={"color": cs, "colorscale": PLOTLY_CMAP, "cmin": scale.vmin, "cmax": scale.vmax, "width": 6},
            marker={"size": 2, "color": cs, "colorscale": PLOTLY_CMAP, "cmin": scale.vmin, "cmax": scale.vmax,
                    "showscale": True, "colorbar": {"title": {"text": bar_title}}}))
        beads = np.asarray(st["beads"], dtype=float)
        names = ["A"] + [""] * (len(beads) - 2) + ["B"]
        bead_text = [f"bead {i}, energy {e}" for i, e in zip(st["bead_indices"], st["bead_energies"])]
        traces.append(go.Scatter3d(
            x=beads[:, 0], y=beads[:, 1], z=beads[:, 2], mode="markers+text", name="beads", visible=visible,
            text=names, hovertext=bead_text, hoverinfo="text", textposition="top center",
            marker={"size": 4, "color": "black"}))
        owner += [pos, pos]
    steps = [{"method": "update", "label": str(len(st["bead_indices"]) - 2),
              "args": [{"visible": [o == pos for o in owner]}, {"title.text": f"DSS string {stage_title(st)}"}]}
             for pos, st in enumerate(stages)]
    fig = go.Figure(traces)
    scene = {f"{a}axis": {"title": {"text": labels[k]}, "range": list(lims[k])} for k, a in enumerate("xyz")}
    fig.update_layout(
        title={"text": f"DSS string {stage_title(stages[-1])}"}, scene=scene, showlegend=False,
        sliders=[{"active": len(stages) - 1, "currentvalue": {"prefix": "beads on the string: "}, "steps": steps}],
        margin={"l": 0, "r": 0, "t": 40, "b": 0})
    fig.write_html(os.fspath(path_html), include_plotlyjs=True, full_html=True, auto_open=False,
                   config={"displaylogo": False})

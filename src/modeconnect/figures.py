"""Every figure of a run or sweep directory, written into its ``figures/`` folder.

The drawing functions in :mod:`modeconnect.plots` are pure: stored results in,
a figure out. This module finds those stored results. A sweep's figure needs
only its table. A run's energy profile and string picture need energies at
densely interpolated points along the string and its earlier states; they are
computed once from the run's own configuration (the task is rebuilt, so real
tasks need their data directory) and cached in ``string_picture.json`` once
the run has finished.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path as FsPath

from ._io import read_json, write_json
from .errors import StoreError
from .experiments.compare import CompareDirectory, read_profiles
from .experiments.connect_run import ConnectRunConfig
from .experiments.reproduce import is_reproduction, read_reproduction
from .experiments.store import CONFIG, FIGURES_DIR, PATH_DIR, PICTURE, RESULT, TABLE_JSON, SweepDirectory
from .path import PATH_JSON, Path
from .picture import string_picture

__all__ = ["draw_directory", "run_picture"]

POINTS_PER_SEGMENT = 17
"""Interpolated points per segment (endpoints included) in the string picture and profile."""
MAX_STAGES = 24
"""Most string states drawn (the first and the final one always among them)."""


def run_picture(directory: str | FsPath, progress: Callable[[str], None] | None = None) -> dict:
    """The string-picture data of a run directory (computed, or read from its cache)."""
    say = progress or (lambda message: None)
    root = FsPath(directory)
    cache = root / PICTURE
    finished = (root / RESULT).exists()
    if finished and cache.exists():
        return read_json(cache)
    if not (root / CONFIG).exists() or not (root / PATH_DIR / PATH_JSON).exists():
        raise StoreError(f"{root} is neither a sweep nor a run directory with a saved path; "
                         "point `modeconnect plot` at the --out directory of a connect or sweep command")
    stored = read_json(root / CONFIG)["config"]
    run = ConnectRunConfig.from_dict(stored["run"]).resolve()
    path = Path.load(root / PATH_DIR, like=run.task.energy.template)
    births = path.metadata.get("method_state", {}).get("state", {}).get("bead_births")
    say(f"evaluating the energy along {path.n_pieces} piece(s) and up to {MAX_STAGES} string states "
        f"({POINTS_PER_SEGMENT} points per piece)")
    picture = string_picture(path, run.task.energy, births, points_per_segment=POINTS_PER_SEGMENT,
                             max_stages=MAX_STAGES, threshold=run.threshold)
    if finished:
        write_json(cache, picture)
    return picture


def draw_directory(directory: str | FsPath, *, fmt: str = "png", html: bool = True, gif: bool = True,
                   progress: Callable[[str], None] | None = None) -> list[str]:
    """Draw every figure of a sweep or run directory; returns the files written."""
    from . import plots  # matplotlib is needed only here

    root = FsPath(directory)
    out = root / FIGURES_DIR
    written: list[str] = []

    def save(figure, name: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        file = out / f"{name}.{fmt}"
        figure.savefig(file, dpi=150, bbox_inches="tight")
        written.append(str(file))

    if is_reproduction(root):
        record = read_reproduction(root)
        if record.get("figure"):
            module, function = record["figure"].split(":")
            for stem, figure in getattr(importlib.import_module(module), function)(record["results"]).items():
                save(figure, stem)
        return written
    from .experiments.components import ComponentsDirectory

    if ComponentsDirectory.is_components(root):
        for stem, figure in plots.components_figures(ComponentsDirectory.read_record(root)).items():
            save(figure, stem)
        return written
    if CompareDirectory.is_comparison(root):
        save(plots.compare_figure(read_json(root / TABLE_JSON), read_profiles(root)), "profiles")
        return written
    if SweepDirectory.is_sweep(root):
        save(plots.sweep_figure(SweepDirectory.read_table(root)), "sweep")
        return written
    if not root.is_dir():
        raise StoreError(f"{root} is not a directory")
    picture = run_picture(root, progress)
    save(plots.profile_figure(picture), "profile")
    save(plots.string_figure(picture), "string")
    save(plots.snapshots_figure(picture), "snapshots")
    if gif:
        file = out / "string.gif"
        plots.save_string_animation(picture, file)
        written.append(str(file))
    if html:
        file = out / "string.html"
        plots.save_string_html(picture, file)
        written.append(str(file))
    return written

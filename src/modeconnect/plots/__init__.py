"""Figures: pure functions from stored results (dicts read from JSON) to matplotlib Figures.

Nothing here touches pyplot state or shows a window; save a figure with ``fig.savefig(path)``.
matplotlib (and plotly, for :func:`save_string_html`) are optional: ``pip install 'modeconnect[plot]'``.
"""

from __future__ import annotations

from .compare import compare_figure
from .components import components_figures as components_figures
from .profile import profile_figure
from .string import save_string_animation, save_string_html, snapshots_figure, string_figure
from .sweep import sweep_figure

__all__ = ["sweep_figure", "compare_figure", "profile_figure", "string_figure", "snapshots_figure",
           "save_string_animation", "save_string_html"]

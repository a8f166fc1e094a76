#!/usr/bin/env python3
"""Check that an HTML figure written by ``modeconnect.plots.save_string_html`` renders in a real browser.

Runs Debian's headless chromium twice on the file (offline: background networking is disabled):

1. ``--dump-dom``: the DOM after scripts ran must hold a plotly graph div with the rendered plot
   inside it (an ``svg.main-svg`` and, for 3D scenes, a ``gl-container``), not just the empty div.
2. ``--screenshot``: the picture must not be blank (the pixel values of the page must vary).

Usage::

    python scripts/check_html.py FIGURE.html [--screenshot OUT.png] [--chromium chromium]

Exit status 0 when both checks pass, 1 when one fails (with a message saying which and why),
2 when chromium or Pillow is missing. Install chromium on Debian with ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# --no-sandbox: CI runs as root, where chromium refuses to start sandboxed. --disable-dev-shm-usage: containers
# often have a 64 MB /dev/shm, too small for the renderer; Debian's launcher adds the flag itself only when its
# check of /dev/shm works (it breaks when findmnt lists /dev/shm twice), so it is passed here unconditionally.
FLAGS = ["--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
         "--enable-unsafe-swiftshader", "--virtual-time-budget=8000"]


def run_chromium(chromium: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="check_html_profile_") as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def check_dom(dom: str) -> list[str]:
    """Problems with the dumped DOM (empty list: a rendered plotly graph is there)."""
    problems = []
    if "plotly-graph-div" not in dom:
        problems.append("no element with class plotly-graph-div")
    if not re.search(r'<svg[^>]*class="[^"]*main-svg', dom):
        problems.append("no svg.main-svg: plotly did not render the graph (did its JavaScript run?)")
    if "scene" in dom and "gl-container" not in dom:
        problems.append("a 3D scene is declared but there is no gl-container (WebGL scene not created)")
    return problems


def check_screenshot(png: Path, min_std: float = 2.0) -> list[str]:
    """Problems with the screenshot (empty list: it exists and is not a blank page)."""
    from PIL import Image, ImageStat

    if not png.is_file() or png.stat().st_size == 0:
        return [f"chromium wrote no screenshot at {png}"]
    with Image.open(png) as im:
        stat = ImageStat.Stat(im.convert("L"))
        std = stat.stddev[0]
        extrema = im.convert("L").getextrema()
    if std < min_std:
        return [f"the screenshot is blank (grey-level std {std:.2f} < {min_std}, range {extrema})"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the HTML file to check")
    parser.add_argument("--screenshot", type=Path, default=None, help="where to keep the screenshot (PNG)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"), help="browser executable")
    args = parser.parse_args(argv)

    if not args.html.is_file():
        print(f"FAIL: {args.html} does not exist", file=sys.stderr)
        return 1
    chromium = shutil.which(args.chromium)
    if chromium is None:
        print(f"cannot check: {args.chromium!r} is not on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 2
    try:
        import PIL  # noqa: F401
    except ImportError:
        print("cannot check: Pillow is not installed (pip install pillow)", file=sys.stderr)
        return 2
    url = args.html.resolve().as_uri()

    dom_run = run_chromium(chromium, ["--dump-dom", url])
    problems = [f"DOM: {p}" for p in check_dom(dom_run.stdout)]
    if dom_run.returncode != 0:
        problems.append(f"DOM: chromium exited with status {dom_run.returncode}: {dom_run.stderr.strip()[-500:]}")

    with tempfile.TemporaryDirectory(prefix="check_html_") as tmp:
        png = args.screenshot.resolve() if args.screenshot else Path(tmp) / "screenshot.png"
        shot = run_chromium(chromium, [f"--screenshot={png}", "--window-size=1000,800", url])
        if shot.returncode != 0:
            problems.append(f"screenshot: chromium exited with status {shot.returncode}: "
                            f"{shot.stderr.strip()[-500:]}")
        problems += [f"screenshot: {p}" for p in check_screenshot(png)]

    if problems:
        print(f"FAIL: {args.html}", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"OK: {args.html} renders a plotly graph (DOM {len(dom_run.stdout)} chars, screenshot not blank)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

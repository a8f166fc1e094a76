"""The bring-your-own-model example runs as documented and its saved path reloads against the user's model."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from modeconnect.path import Path as StringPath

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bring_your_own_model.py"


def test_bring_your_own_model_example(tmp_path):
    out = tmp_path / "my_path"
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"connected: (\w+) .*beads: (\d+); normalized length: ([\d.]+); sampled max energy: ([\d.]+)",
                      proc.stdout)
    assert found, proc.stdout
    connected, beads, length, certified = found.group(1) == "True", int(found.group(2)), float(found.group(3)), \
        float(found.group(4))
    assert connected and certified <= 0.15 and length >= 1.0
    spec = importlib.util.spec_from_file_location("byo_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = StringPath.load(out, like=module.SpiralNet())  # the user's class checks names and shapes
    assert path.n_beads == beads

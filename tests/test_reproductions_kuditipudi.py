"""The Kuditipudi et al. reproductions in quick mode, on the real data (skipped without it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modeconnect.cli import main

DATA = Path(os.environ.get("MODECONNECT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no mnist/ in {DATA}")
def test_fig2_quick_panels_agree_with_each_other(tmp_path, capsys):
    out = tmp_path / "fig2"
    assert main(["reproduce", "kuditipudi-fig2", "--quick", "--quiet", "--out", str(out), "--data-dir", str(DATA)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    left = {r["p"]: r for r in results["left"]}
    for row in left.values():
        assert row["best"] <= row["median"] <= row["worst"]
    line = results["centre"]["error"]
    # the line runs from the net itself to the best p = 0.2 mask of the left panel
    assert line[0] == pytest.approx(results["full_error"])
    assert line[-1] == pytest.approx(left[0.2]["best"])
    assert [r["width"] for r in results["right"]] == [2, 4]
    assert len(json.loads((out / "reproduction.json").read_text())["claims"]) == 4
    assert "dropout stable" in printed and (out / "figures" / "figure2.png").exists()


@pytest.mark.skipif(not (DATA / "cifar10-subset").is_dir(), reason=f"no cifar10-subset/ in {DATA}")
def test_fig3_quick_writes_noise_stability_and_path_profiles(tmp_path):
    out = tmp_path / "fig3"
    assert main(["reproduce", "kuditipudi-fig3", "--quick", "--quiet", "--out", str(out), "--data-dir", str(DATA)]) == 0
    results = json.loads((out / "results.json").read_text())
    direct = results["direct"]
    assert direct["s"][0] == 0 and direct["s"][-1] == 1
    assert all(0 <= a <= 100 for a in direct["accuracy"]) and all(v > 0 for v in direct["loss"])
    layers = [r["i"] for r in results["noise"]["layer_cushion"]]
    assert layers == list(range(1, len(layers) + 1)) and len(layers) == 6  # five conv layers and the head
    assert {f.name for f in (out / "figures").iterdir()} == {"noise_stability.png", "paths.png"}

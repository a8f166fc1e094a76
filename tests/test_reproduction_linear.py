"""The freeman-bruna-linear reproduction in quick mode (synthetic data, about 20 s)."""

from __future__ import annotations

import csv
import json

import pytest

from modeconnect.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_quick_reproduction_claims_hold_and_files_agree(tmp_path):
    out = tmp_path / "linear"
    assert main(["reproduce", "freeman-bruna-linear", "--quick", "--quiet", "--out", str(out)]) == 0
    record = json.loads((out / "reproduction.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert len(record["claims"]) == 8 and all(c["holds"] for c in record["claims"])
    assert [p["label"] for p in results["pairs"]] == ["K=2 pair 0", "K=3 pair 0", "K=4 pair 0", "K=2 ridge pair 0"]
    for p in results["pairs"] + [results["flipped"]]:
        c = p["construction"]
        assert c["construction_max_energy_f64"] <= c["lambda_f64"] * (1 + 1e-9)
        assert c["certified_max"] <= p["threshold"] < p["line_max"]
        assert max(c["profile"]["energy"]) <= p["lambda"] * (1 + 1e-5)  # the stored profile respects lambda too
    assert results["descent"]["largest_step"] < 0 and results["descent"]["certified"]
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 6 and rows[-1]["construction_reason"] == "orientation"
    assert (out / "figures" / "profiles.png").exists() and (out / "figures" / "ratios.png").exists()

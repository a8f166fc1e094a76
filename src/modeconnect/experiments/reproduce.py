"""Reproductions: the papers' experiments and theorems as named, re-runnable jobs.

``modeconnect reproduce NAME --out DIR`` runs one; ``modeconnect reproduce --list`` lists them. Each
reproduction lives in its own module under :mod:`modeconnect.experiments.reproductions` and is found
through :data:`REPRODUCTIONS` (imported lazily, so listing costs nothing). A module provides

* ``run(out: pathlib.Path, *, quick: bool, progress) -> dict``: compute, write its own data files into
  ``out`` (``results.json`` at least; ``table.csv`` where a table helps) and return a JSON-safe dict with
  a ``"claims"`` list (see :func:`claim`) and whatever the figure needs;
* optionally ``FIGURE``: ``"module:function"`` of a pure plotting function in :mod:`modeconnect.plots`
  that takes the returned dict and returns ``{stem: matplotlib Figure}``. The experiment never imports
  matplotlib; the command line draws.

The framework writes ``reproduction.json`` (name, paper, settings, claims, elapsed time, environment),
so a reproduction directory can be shown and redrawn later. Long reproductions make their units
resumable with :class:`UnitCache`: finished units are read back instead of recomputed.

>>> sorted(REPRODUCTIONS)[:2]  # doctest: +SKIP
['freeman-bruna-counterexample', 'freeman-bruna-kernel-bound']
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path as FsPath
from typing import Any

from .._io import read_json, write_json
from ..errors import ConfigError, StoreError
from .store import environment

__all__ = ["Reproduction", "REPRODUCTIONS", "REPRODUCTION_JSON", "get_reproduction", "run_reproduction",
           "read_reproduction", "claim", "UnitCache"]

REPRODUCTION_JSON = "reproduction.json"
RESULTS_JSON = "results.json"


@dataclass(frozen=True)
class Reproduction:
    """One reproducible experiment of a paper."""

    name: str
    paper: str
    """Which paper and which result (e.g. "Freeman & Bruna 2017, Proposition 2.2")."""
    summary: str
    """One line for ``--list``."""
    module: str
    """The module with ``run`` (and ``FIGURE``), imported only when the reproduction runs."""
    minutes: float
    """Expected wall time on 2 CPU cores (full, not --quick)."""
    needs_data: bool = False
    """Whether it reads the real datasets (``--data-dir`` / ``$MODECONNECT_DATA``)."""

    def load(self):
        return importlib.import_module(self.module)


_R = "modeconnect.experiments.reproductions."
REPRODUCTIONS: dict[str, Reproduction] = {r.name: r for r in (
    Reproduction("freeman-bruna-linear", "Freeman & Bruna 2017, Proposition 2.2 (Appendix B.2)",
                 "deep linear nets: the constructive path stays below the endpoints' level; DSS beside it",
                 _R + "linear_nets", 5),
    Reproduction("freeman-bruna-counterexample", "Freeman & Bruna 2017, Section 2.3.1",
                 "two-unit ReLU net on a Gaussian mixture: every method finds a barrier; barrier vs covariance",
                 _R + "counterexample", 10),
    Reproduction("freeman-bruna-kernel-bound", "Freeman & Bruna 2017, Proposition 2.3, inequality (7)",
                 "the ReLU kernel [w1, w2]_Z against its lower and upper bounds as the angle varies",
                 _R + "kernel_bound", 1),
    Reproduction("freeman-bruna-width-scaling", "Freeman & Bruna 2017, Theorem 2.4 and Corollary 2.5",
                 "energy gap epsilon(m) against width m for n = 1, 2, 4, with a fitted exponent",
                 _R + "width_scaling", 6),
    Reproduction("kuditipudi-fig2", "Kuditipudi et al. 2019, Figure 2 (MNIST)",
                 "dropout stability of a 3-layer convnet, the line to its dropout version, narrow nets",
                 _R + "kuditipudi_fig2", 12, needs_data=True),
    Reproduction("kuditipudi-fig3", "Kuditipudi et al. 2019, Figure 3 (CIFAR-10 subset)",
                 "noise stability of a dropout-trained VGG-style net; loss along the Theorem 3 path vs the line",
                 _R + "kuditipudi_fig3", 15, needs_data=True),
)}
"""Every reproduction, by name."""


def get_reproduction(name: str) -> Reproduction:
    if name not in REPRODUCTIONS:
        raise ConfigError(f"unknown reproduction {name!r}; `modeconnect reproduce --list` shows them: "
                          f"{', '.join(sorted(REPRODUCTIONS))}")
    return REPRODUCTIONS[name]


def claim(statement: str, holds: bool, detail: str) -> dict[str, Any]:
    """One checked statement of a paper: what it says, whether our numbers agree, and the numbers."""
    return {"claim": statement, "holds": bool(holds), "detail": detail}


class UnitCache:
    """Finished units of a reproduction, one JSON file each under ``out/units/``, so an interrupted run
    resumes where it stopped. ``key`` must identify the unit's settings completely."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.root = FsPath(out) / "units"

    def _file(self, key: str) -> FsPath:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
        return self.root / f"{safe}.json"

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        target = self._file(key)
        if target.exists():
            stored = read_json(target)
            if stored.get("key") == key:
                return stored["value"]
        value = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(target, {"key": key, "value": value})
        return value


def run_reproduction(name: str, out: str | os.PathLike, *, quick: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run reproduction ``name`` into directory ``out``; returns the record saved as ``reproduction.json``
    (with the module's results under ``"results"``)."""
    spec = get_reproduction(name)
    root = FsPath(out)
    if root.exists() and not root.is_dir():
        raise StoreError(f"--out {root} is a file; pass a directory")
    existing = root / REPRODUCTION_JSON
    if existing.exists():
        previous = read_json(existing)
        if previous.get("name") != name:
            raise StoreError(f"{root} holds reproduction {previous.get('name')!r}, not {name!r}; "
                             "choose another --out directory")
    root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    module = spec.load()
    start = time.perf_counter()
    results = module.run(root, quick=quick, progress=say)
    if "claims" not in results:
        raise RuntimeError(f"reproduction {name!r} returned no claims")  # a bug in the module, not user input
    record = {"name": name, "paper": spec.paper, "summary": spec.summary, "quick": quick,
              "elapsed_s": round(time.perf_counter() - start, 2), "claims": results["claims"],
              "figure": getattr(module, "FIGURE", None), "env": environment(0)}
    write_json(root / RESULTS_JSON, results)
    write_json(existing, record)
    return {**record, "results": results}


def read_reproduction(root: str | os.PathLike) -> dict[str, Any]:
    """The saved record and results of a reproduction directory."""
    root = FsPath(root)
    if not (root / REPRODUCTION_JSON).exists():
        raise StoreError(f"{root} is not a reproduction directory (no {REPRODUCTION_JSON})")
    record = read_json(root / REPRODUCTION_JSON)
    return {**record, "results": read_json(root / RESULTS_JSON)}


def is_reproduction(root: str | os.PathLike) -> bool:
    return (FsPath(root) / REPRODUCTION_JSON).exists()


def describe(spec: Reproduction) -> dict[str, Any]:
    return asdict(spec)

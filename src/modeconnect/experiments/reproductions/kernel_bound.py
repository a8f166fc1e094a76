"""Freeman & Bruna (2017), Proposition 2.3: the ReLU kernel [w1, w2]_Z = E{max(0, <w1, X>) max(0, <w2, X>)}
between the bounds of inequality (7) as the angle alpha between the unit vectors w1, w2 varies
(``docs/kernel_bound.md``; library: :mod:`modeconnect.theory.kernel_bound`).

Distributions of X:

* ``gaussian``: N(0, I_10); the kernel in closed form (arc-cosine kernel of degree 1) and by a seeded float64
  Monte Carlo with its standard error; bounds in closed form;
* ``gaussian-aniso``: N(0, C), C = diag(1, 1/2, ..., 1/10); closed form;
* ``mnist``: the 10,000 MNIST test images (pixels in [0, 1], 784 dimensions, uncentred as in the paper's
  Sigma_X = E XX^T) when ``--data-dir`` / ``$MODECONNECT_DATA`` holds ``mnist/``; otherwise ``mixture``: 20,000
  draws of a non-Gaussian synthetic law (a 3-component Gaussian mixture with non-zero means in R^10, seeded).
  Kernel and bounds on the empirical measure of the sample (where the proof, hence (7), holds exactly),
  with the kernel's standard error as an estimate of the population value.

Pairs: ``random`` (w1 and the plane of w1, w2 drawn uniformly; several planes per angle) and ``data`` (the
plane of the two leading eigenvectors of E XX^T, where X has the most energy: the hardest plane for the lower
bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

import torch

from ...errors import ConfigError, DatasetError
from ...tasks.datasets import load_mnist
from ...theory.kernel_bound import (
    gaussian_kernel_bound,
    kernel_bound,
    monte_carlo_gaussian_kernel,
    pair_at_angle,
    second_moment_norm,
)
from ..reproduce import UnitCache, claim

FIGURE = "modeconnect.plots.repro_kernel_bound:kernel_bound_figures"

FULL = {"alphas": 25, "alpha_max": 0.95 * math.pi, "planes": 5, "dim": 10, "mc_samples": 400_000,
        "mixture_samples": 20_000, "seed": 0, "z_limit": 4.0}
QUICK = {**FULL, "alphas": 7, "planes": 2, "mc_samples": 20_000, "mixture_samples": 4_000}


SMALL_ALPHA = 0.05
"""The angle (radians) at which the claims check that the bounds pinch the kernel."""


def _alphas(settings: dict[str, Any]) -> list[float]:
    k = settings["alphas"]
    return sorted({settings["alpha_max"] * i / (k - 1) for i in range(k)} | {0.02, SMALL_ALPHA, 0.1})


def _mixture(n: int, dim: int, seed: int) -> torch.Tensor:
    """A non-Gaussian law: three equally likely Gaussian components with means of norm 2 and scales 0.3, 0.6
    and 1 (seeded)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g, dtype=torch.float64)
    means = 2 * means / means.norm(dim=1, keepdim=True)
    scales = torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64)
    which = torch.randint(0, 3, (n,), generator=g)
    return means[which] + scales[which].unsqueeze(1) * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _data(settings: dict[str, Any], say: Callable[[str], None]) -> tuple[str, torch.Tensor, str]:
    try:
        images, _ = load_mnist(None, "test")
    except (DatasetError, ConfigError) as exc:
        say(f"no MNIST ({str(exc).split(';')[0]}): using the synthetic mixture instead")
        n = settings["mixture_samples"]
        return "mixture", _mixture(n, settings["dim"], settings["seed"] + 7), (
            f"{n} draws of a 3-component Gaussian mixture in R^{settings['dim']} (means of norm 2, scales 0.3/0.6/1)")
    x = images.reshape(len(images), -1).to(torch.float64) / 255.0
    return "mnist", x, f"the {len(x)} MNIST test images, 784 pixels in [0, 1], uncentred"


def _row(kind: str, pair: str, plane: int, bound) -> dict[str, Any]:
    return {"distribution": kind, "pair": pair, "plane": plane, **bound.to_dict()}


def _top_plane(x: torch.Tensor | None, cov: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if cov is None:
        gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        for start in range(0, len(x), 4096):
            chunk = x[start:start + 4096]
            gram += chunk.T @ chunk
        cov = gram / len(x)
    _, vecs = torch.linalg.eigh(cov)
    top, second = vecs[:, -1], vecs[:, -2]
    if x is not None:  # eigenvectors have no sign: point them where the data is (non-negative pixels: the
        # leading one is one-signed, and its negative would see max(0, <w, X>) = 0 on every image)
        top, second = (v if float((x @ v).mean()) >= 0 else -v for v in (top, second))
    return top, second


def run(out: FsPath, *, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    cache = UnitCache(out)
    torch.set_num_threads(1)
    alphas, dim, seed = _alphas(settings), settings["dim"], settings["seed"]
    aniso = torch.diag(1.0 / torch.arange(1, dim + 1, dtype=torch.float64))
    kind, x, described = _data(settings, progress)
    sigma = cache.get_or_compute(f"sigma-{kind}-{len(x)}", lambda: second_moment_norm(x))
    data_plane = _top_plane(x, None)
    rows: list[dict[str, Any]] = []

    def planes_of(d: int, cov: torch.Tensor | None, sample: torch.Tensor | None):
        g = torch.Generator().manual_seed(seed)
        random = [tuple(torch.randn(2, d, generator=g, dtype=torch.float64)) for _ in range(settings["planes"])]
        top = data_plane if sample is not None else _top_plane(None, torch.eye(d) if cov is None else cov)
        return [("random", i, p) for i, p in enumerate(random)] + [("data", 0, top)]

    for name, cov in (("gaussian", None), ("gaussian-aniso", aniso)):
        for pair, index, plane in planes_of(dim, cov, None):
            for alpha in alphas:
                w1, w2 = pair_at_angle(alpha, dim, plane=plane)
                rows.append(_row(name, pair, index, gaussian_kernel_bound(w1, w2, cov)))

    def empirical() -> list[dict[str, Any]]:
        found = []
        for pair, index, plane in planes_of(x.shape[1], None, x):
            for alpha in alphas:
                w1, w2 = pair_at_angle(alpha, x.shape[1], plane=plane)
                found.append(_row(kind, pair, index, kernel_bound(w1, w2, x, sigma_norm=sigma)))
        return found

    rows += cache.get_or_compute(f"empirical-{kind}-{len(x)}-a{len(alphas)}-p{settings['planes']}-s{seed}", empirical)
    progress(f"bounds at {len(rows)} (distribution, pair, angle) points")

    def monte_carlo() -> list[dict[str, Any]]:
        found = []
        w1 = pair_at_angle(0.0, dim, generator=torch.Generator().manual_seed(seed + 1))[0]
        plane = (w1, torch.randn(dim, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64))
        for i, alpha in enumerate(alphas):
            a, b = pair_at_angle(alpha, dim, plane=plane)
            est = monte_carlo_gaussian_kernel(a, b, settings["mc_samples"], seed=seed + 100 + i)
            exact = gaussian_kernel_bound(a, b).kernel
            found.append({"alpha": alpha, "exact": exact, "mc": est.mean, "se": est.se,
                          "z": (est.mean - exact) / est.se if est.se > 0 else 0.0})
        return found

    mc = cache.get_or_compute(f"mc-d{dim}-n{settings['mc_samples']}-a{len(alphas)}-s{seed}", monte_carlo)
    progress(f"Monte Carlo vs closed form: largest |z| = {max(abs(r['z']) for r in mc):.2f}")
    lines = ["distribution,pair,plane,alpha,kernel,kernel_se,upper,lower_paper,lower_sharp"]
    lines += [f"{r['distribution']},{r['pair']},{r['plane']},{r['alpha']:.6f},{r['kernel']:.8g},{r['kernel_se']:.3g},"
              f"{r['upper']:.8g},{r['lower_paper']:.8g},{r['lower_sharp']:.8g}" for r in rows]
    (out / "table.csv").write_text("\n".join(lines) + "\n")
    vacuous = [r["alpha"] for r in rows if r["lower_paper"] < 0]
    return {"settings": settings, "data": {"kind": kind, "description": described, "sigma_norm": sigma},
            "lower_paper_negative_from": min(vacuous) if vacuous else None,
            "rows": rows, "monte_carlo": mc, "claims": _claims(rows, mc, settings)}


def _claims(rows: list[dict[str, Any]], mc: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    slack = 1e-12

    def worst(key_low: str, key_high: str) -> tuple[float, dict[str, Any]]:
        """The smallest margin high - low over all rows (relative to the row's scale ||Sigma||)."""
        row = min(rows, key=lambda r: (r[key_high] - r[key_low]) / max(r["sigma_norm"], 1e-300))
        return (row[key_high] - row[key_low]) / max(row["sigma_norm"], 1e-300), row

    def where(r: dict[str, Any]) -> str:
        return f"{r['distribution']}/{r['pair']} plane {r['plane']} at alpha = {r['alpha']:.3f}"

    kinds = sorted({r["distribution"] for r in rows})
    claims = []
    for low, high, statement in (
            ("kernel", "upper", "upper bound of (7): [w1, w2]_Z <= (1 + cos a)/2 ||wm||_Z^2"),
            ("lower_paper", "kernel", "lower bound of (7): [w1, w2]_Z >= (1 + cos a)/2 ||wm||_Z^2 - 2||Sigma_X||"
                                      "((1 - cos a)/2 + sin^2 a)"),
            ("lower_sharp", "kernel", "the sharper lower bound (docs/kernel_bound.md): [w1, w2]_Z >= "
                                      "(1 + cos a)/2 ||wm||_Z^2 - sin^2(a/2) E{||QX||^2; <X, wm> >= 0}")):
        margin, row = worst(low, high)
        claims.append(claim(f"{statement}, on {len(rows)} pairs ({', '.join(kinds)}; random and data-driven planes)",
                            margin >= -slack, f"smallest margin {margin:.3g} x ||Sigma_X||, at {where(row)}"))
    biggest = max(mc, key=lambda r: abs(r["z"]))
    claims.append(claim(f"the arc-cosine closed form equals a float64 Monte Carlo ({settings['mc_samples']} samples) "
                        f"within {settings['z_limit']:g} standard errors at every angle",
                        abs(biggest["z"]) <= settings["z_limit"],
                        f"largest |z| = {abs(biggest['z']):.2f} at alpha = {biggest['alpha']:.3f} "
                        f"(closed form {biggest['exact']:.6f}, Monte Carlo {biggest['mc']:.6f} "
                        f"+- {biggest['se']:.1g})"))
    small = [r for r in rows if abs(r["alpha"] - SMALL_ALPHA) < 1e-9]
    paper = max((r["upper"] - r["lower_paper"]) / r["sigma_norm"] for r in small)
    sharp = max((r["upper"] - r["lower_sharp"]) / r["kernel"] for r in small if r["kernel"] > 0)
    loosest = max(small, key=lambda r: (r["upper"] - r["lower_paper"]) / max(r["kernel"], 1e-300))
    looseness = (loosest["upper"] - loosest["lower_paper"]) / loosest["kernel"]
    claims.append(claim(f"the bounds pinch the kernel as alpha -> 0 (the kernel is locally the linear one): at alpha "
                        f"= {SMALL_ALPHA:g}, upper - lower of (7) <= 2.5 alpha^2 ||Sigma_X|| and the sharper bounds "
                        "are within 1% of the kernel, on every pair", paper <= 2.5 * SMALL_ALPHA**2 * (1 + 1e-9)
                        and sharp <= 0.01,
                        f"largest (upper - lower_paper) / ||Sigma_X|| = {paper:.3g}; largest (upper - lower_sharp) / "
                        f"kernel = {sharp:.3g}; relative to the kernel, (7) is loosest at {where(loosest)}: "
                        f"(upper - lower_paper) / kernel = {looseness:.3g}"
                        " (||Sigma_X|| is far above the energy of X in that plane)"))
    return claims

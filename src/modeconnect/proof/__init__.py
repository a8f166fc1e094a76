"""Proofs: a sound upper bound of the energy over every point of a path, not just the points sampled.

:func:`~modeconnect.certify.certify` samples each piece and refines near the maxima it sees; a barrier
narrower than its spacing can go unseen. :func:`prove` bounds the energy over *continuous* sub-intervals
of every piece instead: on ``[t0, t1]`` every weight is a polynomial in ``t`` (affine on a straight piece),
so the network's activations can be enclosed as first-order Taylor models in ``t`` (:mod:`.taylor`),
layer by layer (:mod:`.layers`), then the metric (:mod:`.losses`); sub-intervals whose bound is above
the level are bisected (:mod:`.search`). If every sub-interval ends within the level, the path is proved to
lie in the sublevel set -- the two endpoints are in one connected component of it. See docs/proof.md for the
derivation, what is supported, and the handling of floating-point rounding.

>>> import torch
>>> from modeconnect.energy import Energy
>>> from modeconnect.path import Path
>>> net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.ReLU()).double()
>>> energy = Energy(net, torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64), "mae")
>>> path = Path([{"0.weight": torch.tensor([[-1.0]]).double()}, {"0.weight": torch.tensor([[0.5]]).double()}])
>>> proof = prove(path, energy, threshold=0.6)
>>> proof.kind, proof.proved, 0.5 <= proof.upper_bound < 0.5 + 1e-9
('proof', True, True)
"""

from .chain import SUPPORTED, Unsupported
from .results import Proof, ProofConfig, SegmentProof
from .search import prove, segment_bounds

__all__ = ["prove", "segment_bounds", "Proof", "ProofConfig", "SegmentProof", "Unsupported", "SUPPORTED"]

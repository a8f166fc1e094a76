"""Permutation alignment of two networks (Git Re-Basin) and REPAIR renormalisation of interpolated points.

* :func:`align` with :class:`AlignMethod` ``"weight"`` or ``"activation"``: B's hidden units relabelled
  into A's order (the same function), returned as an :class:`Alignment`.
* :class:`PermutationSpec` (which tensor axes share a permutation), inferred for ``nn.Sequential`` chains
  by :func:`infer_spec` or declared with :class:`SpecBuilder` (residual networks).
* :class:`Repair` / :func:`repair`: the interpolated point with each hidden unit's mean and standard
  deviation reset to the interpolation of the endpoints'.

See docs/align.md.
"""

from .activation_matching import activation_matching, correlations
from .alignment import Alignment, AlignMethod, align, as_align_method
from .infer import default_repair_sites, infer_spec
from .repair import Repair, repair
from .spec import (
    Axis,
    PermutationSpec,
    SpecBuilder,
    apply_permutations,
    identity_permutations,
    random_permutations,
)
from .weight_matching import WeightMatchingResult, weight_matching

__all__ = [
    "AlignMethod", "Alignment", "align", "as_align_method", "Axis", "PermutationSpec", "SpecBuilder", "infer_spec",
    "apply_permutations", "identity_permutations", "random_permutations", "weight_matching",
    "WeightMatchingResult", "activation_matching", "correlations", "Repair", "repair", "default_repair_sites",
]

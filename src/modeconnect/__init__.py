"""modeconnect: topology and geometry of neural-network loss landscapes.

The main entry points:

* :func:`connect` -- a low-energy path between two models from any registered path method
  (:data:`METHODS`; greedy Dynamic String Sampling by default), certified by refined sampling.
* :class:`Energy` -- the thresholded quantity, evaluated at many parameter points at once.
* :class:`Objective`, :class:`TrainConfig` -- how beads are trained.
* :class:`Path` -- beads and pieces (straight or Bezier), geometry, save/load; :func:`certify` -- the
  maximum energy along a path by refined sampling (:class:`CertifyConfig`, :class:`Certificate`).
"""

from .certify import Certificate, CertifyConfig, certify
from .connect import Connection, connect
from .energy import Energy, Strategy
from .errors import ModeconnectError
from .methods import METHODS, DSSConfig, DSSState, Order, Outcome, PathMethod, Reason, TStar, register
from .metrics import Metric
from .params import distance, interpolate, permute_hidden_units, point_from_module
from .path import Bezier, Path, Piece, Straight
from .train import Objective, TrainConfig, train_to_target

__version__ = "0.1.0"

__all__ = [
    "Certificate", "CertifyConfig", "certify", "Connection", "connect", "Energy", "Strategy", "ModeconnectError",
    "Metric", "distance", "interpolate", "permute_hidden_units", "point_from_module", "Path", "Piece", "Straight",
    "Bezier", "METHODS", "PathMethod", "Outcome", "register", "DSSConfig", "DSSState", "Order", "Reason", "TStar",
    "Objective", "TrainConfig", "train_to_target", "__version__",
]

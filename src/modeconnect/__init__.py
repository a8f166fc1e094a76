"""modeconnect: topology and geometry of neural-network loss landscapes.

The main entry points:

* :func:`connect` -- certified low-energy path between two models (greedy Dynamic String Sampling).
* :class:`Energy` -- the thresholded quantity, evaluated at many parameter points at once.
* :class:`Objective`, :class:`TrainConfig` -- how beads are trained.
* :class:`Path` -- beads, geometry, save/load; :func:`certify` -- certified maximum energy.
"""

from .certify import Certificate, certify
from .connect import Connection, connect
from .energy import Energy, Strategy
from .errors import ModeconnectError
from .metrics import Metric
from .params import distance, interpolate, permute_hidden_units, point_from_module
from .path import Path, Segment
from .strings import DSSConfig, DSSStatus, Order, Reason, TStar
from .train import Objective, TrainConfig, train_to_target

__version__ = "0.1.0"

__all__ = [
    "Certificate", "certify", "Connection", "connect", "Energy", "Strategy", "ModeconnectError", "Metric",
    "distance", "interpolate", "permute_hidden_units", "point_from_module", "Path", "Segment", "DSSConfig",
    "DSSStatus", "Order", "Reason", "TStar", "Objective", "TrainConfig", "train_to_target", "__version__",
]

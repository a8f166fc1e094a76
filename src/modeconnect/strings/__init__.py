"""Path-finding methods. Each returns a :class:`~modeconnect.path.Path` (one file per method)."""

from .greedy import DSSConfig, DSSState, DSSStatus, Order, Reason, TStar, choose_tstar, greedy_dss

__all__ = ["DSSConfig", "DSSState", "DSSStatus", "Order", "Reason", "TStar", "choose_tstar", "greedy_dss"]

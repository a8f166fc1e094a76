"""Experiments: pure functions of a config that write a run directory."""

from .connect_run import ConnectRunConfig, run_connect
from .store import RunDirectory

__all__ = ["ConnectRunConfig", "run_connect", "RunDirectory"]

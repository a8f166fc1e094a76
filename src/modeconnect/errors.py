"""Exceptions raised by modeconnect.

Every error a user can cause derives from :class:`ModeconnectError`, carries a
message that says what is wrong and what to do, and is turned by the command
line into a one-line message and a non-zero exit status (no traceback).
"""

from __future__ import annotations


class ModeconnectError(Exception):
    """Base class of every error caused by input or configuration."""


class ConfigError(ModeconnectError, ValueError):
    """A setting is out of range or inconsistent with another setting."""


class ArchitectureMismatch(ModeconnectError, ValueError):
    """Two parameter points (or a point and a model) do not share names and shapes."""


class UnsupportedModelError(ModeconnectError, ValueError):
    """The model has state the library cannot treat correctly yet (e.g. BatchNorm statistics)."""


class ThresholdError(ModeconnectError, ValueError):
    """An endpoint's energy exceeds the threshold it is supposed to meet."""


class NonFiniteEnergyError(ModeconnectError, FloatingPointError):
    """The energy evaluated to NaN or infinity."""


class StoreError(ModeconnectError, OSError):
    """A saved file is missing, corrupt, or does not match what was expected."""


class DatasetError(ModeconnectError):
    """A dataset file is missing, corrupt or unreadable."""

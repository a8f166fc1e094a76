"""Where tensors live: ``--device cpu|cuda|auto`` and ``device=`` in the library.

The library follows its inputs: an :class:`~modeconnect.energy.Energy` moves its data to the device of the
points it evaluates, training moves minibatches to the point's device, and paths stay where their beads
are. So choosing a device means putting the *points* there: the experiments (``connect``, ``sweep``,
``compare``, ``components``, the reproductions) create or load their endpoints on :func:`resolve_device`'s
answer. Saved files are always written from CPU copies, so a run directory does not depend on the device.

The device is a property of the machine, not of a run: it is not part of a run's identity (a run started
on a GPU resumes on a CPU), and, like the data directory, the command line hands it to worker processes
through an environment variable (:data:`DEVICE_ENV_VAR`).

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import os

import torch

from .errors import ConfigError

__all__ = ["DEVICE_ENV_VAR", "DEVICE_CHOICES", "resolve_device", "default_device", "describe_device"]

DEVICE_ENV_VAR = "MODECONNECT_DEVICE"
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (the first GPU when one is visible, else the CPU).

    Asking for a GPU that is not there is an error that says why (a CPU-only PyTorch build, or no GPU visible),
    never a silent fall-back to the CPU."""
    if isinstance(name, torch.device):
        name = str(name)
    text = "cpu" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            device = torch.device(text)
        except RuntimeError:
            raise ConfigError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:N or auto") from None
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "no GPU is visible to this process (check CUDA_VISIBLE_DEVICES and the driver)")
            raise ConfigError(f"--device {name} asks for a GPU but {why}; use --device cpu, or auto to take a "
                              "GPU only when one is there")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return device
    raise ConfigError(f"unknown device {name!r}; choose one of: cpu, cuda, cuda:N, auto")


def default_device() -> torch.device:
    """The device named by ``$MODECONNECT_DEVICE`` (set by ``--device``), else the CPU."""
    return resolve_device(os.environ.get(DEVICE_ENV_VAR) or "cpu")


def describe_device(device: torch.device) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H100 ...)"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)

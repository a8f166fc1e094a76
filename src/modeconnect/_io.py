"""Crash-safe file writing: write to a temporary file, then rename over the target."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import StoreError


def _clean(value: Any) -> Any:
    """Make floats JSON-safe: NaN/inf become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _replace_into(target: FsPath, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(target: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, key-sorted JSON."""
    text = json.dumps(_clean(data), indent=2, sort_keys=True) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _replace_into(FsPath(target), write)


def read_json(source: str | os.PathLike) -> Any:
    source = FsPath(source)
    if not source.is_file():
        raise StoreError(f"{source} does not exist")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{source} is not valid JSON ({exc}); the file is corrupt, delete it to start over") from None


def write_tensors(target: str | os.PathLike, tensors: Mapping[str, Tensor]) -> None:
    """Atomically write tensors in safetensors format.

    Values may share memory (e.g. a path whose two endpoints are the same tensors): safetensors refuses
    shared tensors, so every value is written from its own contiguous CPU copy.
    """
    data = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format) for k, v in tensors.items()}
    _replace_into(FsPath(target), lambda tmp: save_file(data, tmp))


def read_tensors(source: str | os.PathLike) -> dict[str, Tensor]:
    source = FsPath(source)
    if not source.is_file():
        raise StoreError(f"{source} does not exist")
    try:
        return load_file(str(source))
    except Exception as exc:  # safetensors raises its own error types
        raise StoreError(f"{source} could not be read as safetensors ({exc}); the file is corrupt") from None

"""Crash-safe file writing: write to a temporary file, then rename over the target."""

from __future__ import annotations

import hashlib
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreError(f"{source} is not valid JSON ({exc}); the file is corrupt, delete it to start over") from None


def sha256_of(source: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tensors(target: str | os.PathLike, tensors: Mapping[str, Tensor]) -> str:
    """Atomically write tensors in safetensors format; returns the file's SHA-256 (to record where it is named).

    Values may share memory (e.g. a path whose two endpoints are the same tensors): safetensors refuses
    shared tensors, so every value is written from its own contiguous CPU copy.
    """
    data = {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format) for k, v in tensors.items()}
    digest: list[str] = []

    def write(tmp: str) -> None:
        save_file(data, tmp)
        digest.append(sha256_of(tmp))

    _replace_into(FsPath(target), write)
    return digest[0]


def read_tensors(source: str | os.PathLike, sha256: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file; with ``sha256``, refuse a file whose bytes do not hash to it."""
    source = FsPath(source)
    if not source.is_file():
        raise StoreError(f"{source} does not exist")
    if sha256 is not None and (found := sha256_of(source)) != sha256:
        raise StoreError(f"{source} has SHA-256 {found[:16]}..., not the {sha256[:16]}... recorded when it was "
                         "written: the file was modified or corrupted; delete the run directory (or this file and "
                         "the JSON that names it) to recompute it")
    try:
        return load_file(str(source))
    except Exception as exc:  # safetensors raises its own error types
        raise StoreError(f"{source} could not be read as safetensors ({exc}); the file is corrupt") from None

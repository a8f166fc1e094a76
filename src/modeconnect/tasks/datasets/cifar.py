"""CIFAR-10, binary version: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``.

Each record is 1 label byte then 3,072 pixel bytes: the 1,024 red, then green,
then blue values of a 32x32 image in row-major order. A file may hold any
number of records (the full distribution has 10,000 per file; the project's
``cifar10-subset`` has 1,000).

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> (root / "cifar10").mkdir()
>>> record = bytes([3]) + bytes(range(256)) * 12
>>> _ = (root / "cifar10" / "test_batch.bin").write_bytes(record * 2)
>>> images, labels = load_cifar10(root, "test")
>>> images.shape, images.dtype, labels.tolist()
(torch.Size([2, 3, 32, 32]), torch.uint8, [3, 3])
>>> int(images[0, 0, 0, 1]), int(images[0, 1, 0, 0])  # red pixel (0, 1); green pixel (0, 0)
(1, 0)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, DatasetError
from .checksums import CIFAR10_RECORD_BYTES, verify_known_file
from .location import dataset_dir, expected_layout, read_dataset_bytes, resolve_data_dir

__all__ = ["CIFAR10_NAMES", "CIFAR10_CLASSES", "load_cifar10", "cifar10_classes", "read_cifar10_batch"]

CIFAR10_NAMES = ("cifar10", "cifar10-subset")
"""Dataset folders in the CIFAR-10 binary layout, in the order they are looked for."""

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""The CIFAR-10 class names by label (as in ``batches.meta.txt``)."""

_SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def _resolve_name(data_dir: str | os.PathLike | None, name: str | None) -> str:
    if name is not None:
        if name not in CIFAR10_NAMES:
            raise ConfigError(f"load_cifar10 reads {' or '.join(CIFAR10_NAMES)}, not {name!r}")
        return name
    root = resolve_data_dir(data_dir)
    for candidate in CIFAR10_NAMES:
        if (root / candidate).is_dir():
            return candidate
    raise DatasetError(
        f"no CIFAR-10 folder in {root}: looked for {' and '.join(str(root / n) for n in CIFAR10_NAMES)}; "
        f"expected {expected_layout('cifar10', root)}"
    )


def read_cifar10_batch(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 binary file: ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    path = Path(path)
    raw = read_dataset_bytes(path, "CIFAR-10")
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD_BYTES:
        raise DatasetError(
            f"{path} has {len(raw)} bytes, not a positive multiple of the {CIFAR10_RECORD_BYTES}-byte CIFAR-10 "
            f"record (1 label + 3x32x32 pixels): it is truncated or not the binary version "
            f"(the Python-pickle and MATLAB versions are not supported)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        bad = int(torch.nonzero(labels > 9)[0, 0])
        raise DatasetError(f"{path}: record {bad} has label {int(labels[bad])}, expected 0..9; the file is corrupt")
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, labels


def load_cifar10(
    data_dir: str | os.PathLike | None, split: str = "train", *, name: str | None = None, verify: bool = True
) -> tuple[Tensor, Tensor]:
    """Load CIFAR-10 (binary version) from ``DIR/cifar10/`` or ``DIR/cifar10-subset/``.

    ``name=None`` takes whichever folder exists, preferring the full ``cifar10``.
    Returns ``(images uint8 [N, 3, 32, 32], labels int64 [N])``; the train split
    concatenates ``data_batch_1.bin`` ... ``data_batch_5.bin`` in order.

    With ``verify``, ``cifar10-subset`` files are checked against their recorded
    SHA-256; the full distribution's hashes are not recorded, so ``cifar10`` gets
    the structural checks only (size a multiple of 3,073 bytes, labels 0..9),
    which always apply. ``data_dir=None`` reads ``$MODECONNECT_DATA``.
    """
    if split not in _SPLIT_FILES:
        raise ConfigError(f"unknown CIFAR-10 split {split!r}; choose one of: {', '.join(_SPLIT_FILES)}")
    name = _resolve_name(data_dir, name)
    folder = dataset_dir(data_dir, name)
    paths = [folder / f for f in _SPLIT_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"missing CIFAR-10 file(s) {', '.join(missing)}; expected {expected_layout(name, folder.parent)}"
        )
    images, labels = [], []
    for path in paths:
        if verify:
            verify_known_file(name, path)
        x, y = read_cifar10_batch(path)
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def cifar10_classes(data_dir: str | os.PathLike | None, *, name: str | None = None) -> tuple[str, ...]:
    """Class names by label, from ``batches.meta.txt`` if the dataset folder has one, else the standard names.

    The names do not depend on the files: :data:`CIFAR10_CLASSES` gives them without a data directory.
    """
    folder = dataset_dir(data_dir, _resolve_name(data_dir, name))
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = tuple(line.strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != 10:
        raise DatasetError(f"{meta} lists {len(names)} class names, expected 10 (one per line)")
    return names

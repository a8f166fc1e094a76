"""IDX files (LeCun's format for MNIST and Fashion-MNIST) and the MNIST loaders.

An IDX file is ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the values in big-endian row-major order. Files may be
gzipped; that is detected from the magic bytes ``1f 8b``, not from the name.

>>> import tempfile, torch
>>> p = Path(tempfile.mkdtemp()) / "x.idx"
>>> write_idx(p, torch.tensor([[1, -2], [300, 4]], dtype=torch.int16))
>>> read_idx(p)
tensor([[  1,  -2],
        [300,   4]], dtype=torch.int16)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, DatasetError
from .checksums import verify_known_file
from .location import dataset_dir, find_file, read_dataset_bytes

__all__ = ["IDX_DTYPES", "read_idx", "write_idx", "load_mnist", "MNIST_NAMES"]

IDX_DTYPES: dict[int, tuple[np.dtype, torch.dtype]] = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}
"""IDX type code -> (big-endian numpy dtype on disk, torch dtype returned)."""

MNIST_NAMES = ("mnist", "fashion-mnist")
"""Dataset folders in MNIST's layout that :func:`load_mnist` reads."""

_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    raw = read_dataset_bytes(path, "IDX")
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(
            f"{path} starts like a gzip file but cannot be decompressed ({exc}); it is probably truncated "
            f"or corrupt: delete it and download it again"
        ) from None


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file (gzipped or not) into a tensor of its dtype and shape.

    Raises :class:`~modeconnect.errors.DatasetError` naming the file if the magic
    number, the type code or the payload size (truncated or trailing bytes) is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file: only {len(data)} bytes (an IDX header has at least 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file: magic bytes {data[:4].hex(' ')}, expected 00 00 then a type code "
            f"({', '.join(f'{c:02x}' for c in IDX_DTYPES)}) then the dimension count"
        )
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions; the file is corrupt")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: its header declares {ndim} dimensions but the file ends first")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    np_dtype, torch_dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {what}: the header declares shape {tuple(shape)} ({expected} payload bytes) but the "
            f"payload has {actual} bytes; delete the file and download it again"
        )
    array = np.frombuffer(data, dtype=np_dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike, tensor: Tensor, *, compress: bool = False) -> None:
    """Write ``tensor`` as an IDX file (gzipped if ``compress``); the inverse of :func:`read_idx`."""
    codes = {torch_dtype: (code, np_dtype) for code, (np_dtype, torch_dtype) in IDX_DTYPES.items()}
    if tensor.dtype not in codes:
        raise ConfigError(f"IDX cannot store dtype {tensor.dtype}; use one of {', '.join(map(str, codes))}")
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ConfigError(f"IDX stores 1 to 255 dimensions, got {tensor.dim()}")
    code, np_dtype = codes[tensor.dtype]
    header = struct.pack(f">HBB{tensor.dim()}I", 0, code, tensor.dim(), *tensor.shape)
    data = header + tensor.detach().cpu().contiguous().numpy().astype(np_dtype).tobytes()
    Path(path).write_bytes(gzip.compress(data, mtime=0) if compress else data)


def _mnist_file(folder: Path, stem: str, name: str) -> Path:
    return find_file(folder, [f"{stem}.gz", stem], dataset=name)


def load_mnist(
    data_dir: str | os.PathLike | None, split: str = "train", *, name: str = "mnist", verify: bool = True
) -> tuple[Tensor, Tensor]:
    """Load MNIST (or Fashion-MNIST with ``name="fashion-mnist"``) from ``DIR/<name>/``.

    Reads ``{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``,
    each gzipped (``.gz``) or plain. Returns ``(images uint8 [N, 28, 28], labels int64 [N])``.

    With ``verify`` the files are checked against the recorded SHA-256 hashes
    (MNIST: the original ``.gz`` files, or their decompressed content for plain
    or re-compressed copies; Fashion-MNIST: the decompressed content only, since
    gzip headers differ between distributions). Shapes, dtypes, the image/label
    count agreement and the label range 0..9 are always checked.
    ``data_dir=None`` reads ``$MODECONNECT_DATA``.
    """
    if split not in _MNIST_PREFIX:
        raise ConfigError(f"unknown MNIST split {split!r}; choose one of: {', '.join(_MNIST_PREFIX)}")
    if name not in MNIST_NAMES:
        raise ConfigError(f"load_mnist reads {' or '.join(MNIST_NAMES)}, not {name!r}")
    folder = dataset_dir(data_dir, name)
    prefix = _MNIST_PREFIX[split]
    images_path = _mnist_file(folder, f"{prefix}-images-idx3-ubyte", name)
    labels_path = _mnist_file(folder, f"{prefix}-labels-idx1-ubyte", name)
    if verify:
        verify_known_file(name, images_path)
        verify_known_file(name, labels_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DatasetError(
            f"{images_path} holds {images.dtype} of shape {tuple(images.shape)}, expected uint8 [N, 28, 28]; "
            f"is it the images file?"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise DatasetError(
            f"{labels_path} holds {labels.dtype} of shape {tuple(labels.shape)}, expected uint8 [N]; "
            f"is it the labels file?"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels; "
            f"the two files come from different copies: replace both"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise DatasetError(f"{labels_path} has label {int(labels.max())}, expected 0..9; the file is corrupt")
    return images, labels.to(torch.int64)

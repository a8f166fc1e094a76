"""Known files of each dataset, their SHA-256 hashes, and verification.

A dataset lives in ``DIR/NAME/`` (see :mod:`.location`). :data:`KNOWN_DATASETS`
lists, per name, the files a loader reads and what is known about them:

- ``mnist`` and ``ptb``: hashes of the original distribution files (the gzipped
  IDX files for MNIST, the three text files of Zaremba's PTB copy). MNIST also
  records the hash of each *decompressed* IDX payload, so plain (gunzipped)
  copies are verified too.
- ``fashion-mnist``: only the hashes of the decompressed IDX payloads
  (computed from the Debian package ``dataset-fashion-mnist``
  0.0~git20200523.55506a9-1). Its gzip headers differ from the upstream
  archives, so the ``.gz`` bytes are not hash-checked; the data inside is.
- ``cifar10-subset``: the 1,000-records-per-file subset of CIFAR-10 kept in the
  project's shared data folder. It is *not* the original distribution.
- ``cifar10``: the full CIFAR-10 binary distribution. Its hashes are **not
  recorded** here (we have not been able to compute them), so its files are
  accepted after a structural check only (file size a multiple of
  :data:`CIFAR10_RECORD_BYTES`, labels in 0..9).

Verified hashes are cached in-process per ``(path, size, mtime)``, so loading
the same file again does not hash it again.

>>> import pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
>>> _ = p.write_bytes(b"hello\\n")
>>> sha256_file(p)
'5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03'
>>> verify_file(p, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
>>> verify_file(p, "0" * 64)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
modeconnect.errors.DatasetError: ...hello.txt is corrupt or not the expected file: ...
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ...errors import DatasetError

__all__ = [
    "CIFAR10_RECORD_BYTES",
    "KNOWN_DATASETS",
    "KnownDataset",
    "KnownFile",
    "Verified",
    "known_dataset",
    "known_datasets",
    "sha256_file",
    "verify_file",
    "verify_payload",
    "verify_known_file",
]

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
"""One CIFAR-10 binary record: 1 label byte, then 1,024 R, 1,024 G and 1,024 B bytes."""

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownFile:
    """One file of a dataset, relative to ``DIR/NAME/``, with what is known about its content."""

    path: str
    """File name relative to the dataset folder, e.g. ``"train-images-idx3-ubyte.gz"``."""
    sha256: str | None = None
    """SHA-256 of the file's bytes, or None where it is not recorded."""
    payload_sha256: str | None = None
    """For gzipped files: SHA-256 of the decompressed bytes (also matches a gunzipped copy)."""

    def __post_init__(self) -> None:
        for h in (self.sha256, self.payload_sha256):
            if h is not None and (len(h) != 64 or any(c not in "0123456789abcdef" for c in h)):
                raise ValueError(f"{self.path}: {h!r} is not a lowercase hex SHA-256")


@dataclass(frozen=True)
class KnownDataset:
    """A dataset name and the files that make it up (in ``DIR/<name>/``)."""

    name: str
    description: str
    files: tuple[KnownFile, ...]
    record_bytes: int | None = None
    """If set, every ``.bin`` file must be a whole number of records of this size."""

    def file(self, filename: str) -> KnownFile | None:
        """The entry for ``filename`` (a ``.gz`` entry also describes its gunzipped name), or None."""
        for f in self.files:
            if f.path == filename:
                return f
        for f in self.files:
            if f.path.endswith(".gz") and f.path[:-3] == filename:
                return KnownFile(filename, sha256=f.payload_sha256, payload_sha256=None)
        return None


def _cifar_files(hashes: dict[str, str] | None) -> tuple[KnownFile, ...]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]
    return tuple(KnownFile(n, sha256=(hashes or {}).get(n)) for n in names)


KNOWN_DATASETS: dict[str, KnownDataset] = {
    d.name: d
    for d in (
        KnownDataset(
            "mnist",
            "MNIST handwritten digits (LeCun et al. 1998): 60,000 train + 10,000 test, gzipped IDX files",
            (
                KnownFile("train-images-idx3-ubyte.gz",
                          "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                          "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                KnownFile("train-labels-idx1-ubyte.gz",
                          "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                          "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                KnownFile("t10k-images-idx3-ubyte.gz",
                          "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                          "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                KnownFile("t10k-labels-idx1-ubyte.gz",
                          "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                          "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            ),
        ),
        KnownDataset(
            "fashion-mnist",
            "Fashion-MNIST (Xiao et al. 2017): MNIST's format and sizes; gzip bytes vary, payload hashes recorded",
            (
                KnownFile("train-images-idx3-ubyte.gz", None,
                          "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
                KnownFile("train-labels-idx1-ubyte.gz", None,
                          "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
                KnownFile("t10k-images-idx3-ubyte.gz", None,
                          "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
                KnownFile("t10k-labels-idx1-ubyte.gz", None,
                          "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
            ),
        ),
        KnownDataset(
            "cifar10",
            "CIFAR-10 binary version (Krizhevsky 2009), full: hashes not recorded, structural checks only",
            _cifar_files(None),
            record_bytes=CIFAR10_RECORD_BYTES,
        ),
        KnownDataset(
            "cifar10-subset",
            "the first 1,000 records of each CIFAR-10 binary file (5,000 train + 1,000 test); not the original",
            _cifar_files({
                "data_batch_1.bin": "1c5f9ea0fc1111d586f29115efd3db25eecf7db27b29aaebbe84721446b052cc",
                "data_batch_2.bin": "4f979f9b23aaa1ed4caa123051abf301d1bf3efaafb71eb652c88915b5724f2d",
                "data_batch_3.bin": "b22c7fc2fb3577032913fa43c14b40b539abf70f40cfc257fa90f035d3728e34",
                "data_batch_4.bin": "998398a620412db9b26cad6a83aff2d049fef005e171474ed2676c0397c7157f",
                "data_batch_5.bin": "d427e63de6374fb63b5a1d61a35cf7a9457aaac5f1af2ef2ac87ecfef4877085",
                "test_batch.bin": "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
                "batches.meta.txt": "2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00",
            }),
            record_bytes=CIFAR10_RECORD_BYTES,
        ),
        KnownDataset(
            "ptb",
            "Penn Treebank text as in Zaremba et al. 2014 (Mikolov's preprocessing); LDC license: do not redistribute",
            (
                KnownFile("ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
                KnownFile("ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
                KnownFile("ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
            ),
        ),
    )
}
"""Every dataset the loaders and ``fetch_dataset`` know, by folder name."""


def known_datasets() -> dict[str, tuple[str, ...]]:
    """Dataset names and the files (relative to ``DIR/NAME/``) each one is made of.

    >>> known_datasets()["ptb"]
    ('ptb.train.txt', 'ptb.valid.txt', 'ptb.test.txt')
    """
    return {name: tuple(f.path for f in d.files) for name, d in KNOWN_DATASETS.items()}


def known_dataset(name: str) -> KnownDataset:
    """The :class:`KnownDataset` called ``name``, with an error listing the known names."""
    try:
        return KNOWN_DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}") from None


class Verified(str, Enum):
    """How a file's content was checked."""

    FILE_HASH = "file_hash"
    """The SHA-256 of the file's bytes matched the recorded hash."""
    PAYLOAD_HASH = "payload_hash"
    """The SHA-256 of the decompressed content matched the recorded hash (gzip headers may differ)."""
    UNRECORDED = "unrecorded"
    """No hash is recorded for this file: only the loader's structural checks apply."""
    SKIPPED = "skipped"
    """Verification was turned off by the caller (``verify=False``)."""


# (resolved path, size, mtime_ns, kind, expected hash) of files already verified in this process.
_verified: set[tuple[str, int, int, str, str]] = set()
_verified_lock = threading.Lock()


def _stat_key(path: Path, kind: str, expected: str) -> tuple[str, int, int, str, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, kind, expected)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _hash_stream(fh) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _hash_stream(fh)
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def _payload_sha256(path: Path) -> str:
    """SHA-256 of the decompressed content of a gzip file (of the bytes themselves if not gzipped)."""
    try:
        if not _is_gzip(path):
            return sha256_file(path)
        with gzip.open(path, "rb") as fh:
            return _hash_stream(fh)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(
            f"{path} is not a valid gzip file ({exc}); it is probably truncated: delete it and download it again"
        ) from None


def _mismatch(path: Path, expected: str, actual: str, what: str, dataset: str | None) -> DatasetError:
    fix = f"`modeconnect data fetch {dataset}`" if dataset else "`modeconnect data fetch NAME`"
    return DatasetError(
        f"{path} is corrupt or not the expected file: the SHA-256 of its {what} is {actual}, expected {expected}. "
        f"Delete it and download it again ({fix}, or copy the original file by hand), "
        f"or pass verify=False to load it anyway"
    )


def _verify(path: str | os.PathLike, expected_sha256: str, kind: str, dataset: str | None) -> None:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    key = _stat_key(path, kind, expected_sha256)
    with _verified_lock:
        if key in _verified:
            return
    actual = sha256_file(path) if kind == "file" else _payload_sha256(path)
    if actual != expected_sha256:
        raise _mismatch(path, expected_sha256, actual, "bytes" if kind == "file" else "decompressed content",
                        dataset)
    with _verified_lock:
        _verified.add(key)


def verify_file(path: str | os.PathLike, expected_sha256: str, *, dataset: str | None = None) -> None:
    """Check that the SHA-256 of ``path``'s bytes is ``expected_sha256``; raise DatasetError if not.

    A success is remembered for this ``(path, size, mtime)``; checking again is free.
    """
    _verify(path, expected_sha256, "file", dataset)


def verify_payload(path: str | os.PathLike, expected_sha256: str, *, dataset: str | None = None) -> None:
    """Like :func:`verify_file` for the *decompressed* content of a (possibly) gzipped file."""
    _verify(path, expected_sha256, "payload", dataset)


def verify_known_file(dataset: str | KnownDataset, path: str | os.PathLike, *, verify: bool = True) -> Verified:
    """Verify ``path`` (a file of ``DIR/<dataset>/``) against what :data:`KNOWN_DATASETS` records.

    Uses the file hash where recorded, else (or if a gzipped file's bytes differ,
    as after re-compressing it) the decompressed-content hash, else
    returns :attr:`Verified.UNRECORDED` (the caller's structural checks are all there is).
    """
    if not verify:
        return Verified.SKIPPED
    spec = dataset if isinstance(dataset, KnownDataset) else known_dataset(dataset)
    path = Path(path)
    entry = spec.file(path.name)
    if entry is None:
        return Verified.UNRECORDED
    if entry.sha256 is not None:
        try:
            verify_file(path, entry.sha256, dataset=spec.name)
            return Verified.FILE_HASH
        except DatasetError as file_error:
            # A re-compressed copy (other gzip header, same data) still passes on its content.
            if entry.payload_sha256 is None or not _is_gzip(path):
                raise
            try:
                verify_payload(path, entry.payload_sha256, dataset=spec.name)
            except DatasetError:
                raise file_error from None
            return Verified.PAYLOAD_HASH
    if entry.payload_sha256 is not None:
        verify_payload(path, entry.payload_sha256, dataset=spec.name)
        return Verified.PAYLOAD_HASH
    return Verified.UNRECORDED

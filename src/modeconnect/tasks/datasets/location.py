"""Where datasets live: one data directory holding one folder per dataset.

The data directory comes from an explicit argument (the CLI's ``--data-dir``),
else from the environment variable ``MODECONNECT_DATA``. Nothing is ever looked
up relative to the package or the working directory.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> resolve_data_dir(d) == Path(d)
True
>>> dataset_dir(d, "mnist")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
modeconnect.errors.DatasetError: dataset folder .../mnist does not exist; ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ...errors import DatasetError
from .checksums import KNOWN_DATASETS

__all__ = ["DATA_ENV_VAR", "resolve_data_dir", "dataset_dir", "find_file", "expected_layout", "read_dataset_bytes"]

DATA_ENV_VAR = "MODECONNECT_DATA"
"""Environment variable naming the data directory when none is passed explicitly."""


def expected_layout(name: str | None = None, root: str | os.PathLike = "DIR") -> str:
    """A short description of the files expected under the data directory (for error messages).

    >>> expected_layout("ptb")
    'DIR/ptb/ptb.train.txt, DIR/ptb/ptb.valid.txt, DIR/ptb/ptb.test.txt'
    """
    names = [name] if name in KNOWN_DATASETS else list(KNOWN_DATASETS)
    parts = []
    for n in names:
        files = [f.path for f in KNOWN_DATASETS[n].files]
        shown = files if name is not None else files[:1] + (["..."] if len(files) > 1 else [])
        parts.extend(f"{root}/{n}/{f}" for f in shown)
    return ", ".join(parts)


def resolve_data_dir(data_dir: str | os.PathLike | None = None, *, create: bool = False) -> Path:
    """The data directory: ``data_dir`` if given, else ``$MODECONNECT_DATA``; it must exist unless ``create``.

    Raises :class:`~modeconnect.errors.DatasetError` if neither is set or the
    directory does not exist (with ``create``: if it cannot be created).
    """
    source = "the data directory"
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get(DATA_ENV_VAR, "")
        if not env:
            raise DatasetError(
                f"no data directory given: pass --data-dir DIR (data_dir=... in Python) or set {DATA_ENV_VAR}=DIR. "
                f"DIR holds one folder per dataset, e.g. {expected_layout()}"
            )
        data_dir, source = env, f"the data directory from ${DATA_ENV_VAR}"
    path = Path(data_dir).expanduser()
    if create and not path.exists():
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise DatasetError(f"cannot create {source} {path}: {exc}") from None
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(
            f"{source} {path} {what}; create it and put the datasets in it "
            f"(e.g. {expected_layout()}), or point to another directory"
        )
    return path


def dataset_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``DIR/<name>/``, with an error naming it and the expected files if it is missing."""
    path = resolve_data_dir(data_dir) / name
    if not path.is_dir():
        raise DatasetError(
            f"dataset folder {path} does not exist; expected {expected_layout(name, path.parent)} "
            f"(fetch it with `modeconnect data fetch {name} --from URL` or copy the files by hand)"
        )
    return path


def find_file(folder: Path, candidates: Iterable[str], dataset: str | None = None) -> Path:
    """The first of ``candidates`` that exists in ``folder``; an error naming all of them otherwise."""
    candidates = list(candidates)
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    tried = " or ".join(str(folder / n) for n in candidates)
    hint = f"; expected {expected_layout(dataset, folder.parent)}" if dataset in KNOWN_DATASETS else ""
    raise DatasetError(f"missing file {tried}{hint}")


def read_dataset_bytes(path: Path, kind: str) -> bytes:
    """The bytes of a dataset file; a missing or unreadable file is a DatasetError naming it (``kind``: "IDX")."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{kind} file {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {kind} file {path}: {exc}") from None

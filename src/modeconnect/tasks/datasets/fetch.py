"""Download a known dataset's files into ``DIR/<name>/``, verified before they appear.

No download location is built in: the caller passes ``base_url`` (the CLI's
``modeconnect data fetch NAME --from URL``), and each file is fetched from
``base_url/<name>/<file>``. Every file is written to a temporary file in the
target folder, checked (SHA-256 where recorded, else structurally), and only
then renamed into place with :func:`os.replace`, so an interrupted or corrupt
download never leaves a file under its final name. Files already present and
valid are not downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ...errors import DatasetError
from .checksums import KnownDataset, KnownFile, Verified, _payload_sha256, known_dataset, verify_known_file
from .location import resolve_data_dir

__all__ = ["fetch_dataset", "Progress"]

Progress = Callable[[str, int, "int | None"], None]
"""``progress(relative_path, bytes_so_far, total_bytes_or_None)``, called as each file downloads."""

_CHUNK = 1 << 16


def _check_structure(spec: KnownDataset, path: Path) -> None:
    if spec.record_bytes and path.suffix == ".bin":
        size = path.stat().st_size
        if size == 0 or size % spec.record_bytes:
            raise DatasetError(
                f"{path} has {size} bytes, not a positive multiple of the {spec.record_bytes}-byte record of "
                f"{spec.name}; it is truncated or not the right file"
            )


def _valid(spec: KnownDataset, path: Path) -> bool:
    """Whether an existing file passes the same checks a download must pass."""
    try:
        verify_known_file(spec, path)
        _check_structure(spec, path)
    except DatasetError:
        return False
    return True


def _check_download(spec: KnownDataset, entry: KnownFile, tmp: Path, sha256: str, url: str) -> None:
    fix = f"check that {url} serves the original file, or copy it by hand into {tmp.parent}/"
    if entry.sha256 is not None and sha256 != entry.sha256:
        if entry.payload_sha256 is None or _payload_sha256(tmp) != entry.payload_sha256:
            raise DatasetError(
                f"the download of {url} is corrupt or not the expected file: SHA-256 {sha256}, "
                f"expected {entry.sha256}; {fix}"
            )
    elif entry.sha256 is None and entry.payload_sha256 is not None:
        actual = _payload_sha256(tmp)
        if actual != entry.payload_sha256:
            raise DatasetError(
                f"the download of {url} is corrupt or not the expected file: SHA-256 of its decompressed "
                f"content {actual}, expected {entry.payload_sha256}; {fix}"
            )
    _check_structure(spec, tmp)


def _download(url: str, tmp_fh, timeout: float, progress: Progress | None, rel: str) -> str:
    """Stream ``url`` into an open file; return the SHA-256 of what was written."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        if progress is not None:
            progress(rel, 0, total)
        while chunk := response.read(_CHUNK):
            tmp_fh.write(chunk)
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(rel, done, total)
    if total is not None and done != total:
        raise DatasetError(f"the download of {url} stopped after {done} of {total} bytes; try again")
    return h.hexdigest()


def fetch_dataset(
    name: str | KnownDataset,
    data_dir: str | os.PathLike | None,
    *,
    base_url: str,
    progress: Progress | None = None,
    timeout: float = 30,
) -> list[Path]:
    """Download every file of dataset ``name`` into ``DIR/<name>/``; return their paths.

    ``name`` is a key of :data:`~.checksums.KNOWN_DATASETS` (or a
    :class:`~.checksums.KnownDataset`). Each file comes from
    ``base_url + "/" + name + "/" + file``; ``timeout`` bounds every blocking
    network operation (seconds). ``data_dir=None`` reads ``$MODECONNECT_DATA``;
    the data directory and the dataset folder are created if needed. Network and HTTP errors, and
    downloads that fail verification, raise
    :class:`~modeconnect.errors.DatasetError`; nothing is left under the file's name.
    """
    spec = name if isinstance(name, KnownDataset) else known_dataset(name)
    if not base_url:
        raise DatasetError(
            f"no download location for {spec.name}: pass base_url (`modeconnect data fetch {spec.name} --from URL`), "
            f"where URL/{spec.name}/{spec.files[0].path} is a file"
        )
    folder = resolve_data_dir(data_dir, create=True) / spec.name
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create {folder}: {exc}") from None
    base = base_url.rstrip("/")
    paths = []
    for entry in spec.files:
        dest = folder / entry.path
        paths.append(dest)
        if dest.is_file() and _valid(spec, dest):
            continue
        url = f"{base}/{spec.name}/{entry.path}"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.path}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    sha256 = _download(url, fh, timeout, progress, entry.path)
                except urllib.error.HTTPError as exc:
                    raise DatasetError(
                        f"downloading {url} failed: HTTP {exc.code} {exc.reason}; check the base URL "
                        f"(it must serve {spec.name}/{entry.path}), or copy the files by hand into {folder}/"
                    ) from None
                except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                    reason = getattr(exc, "reason", exc)
                    raise DatasetError(
                        f"cannot download {url}: {reason}. Check the URL and the network; without network, "
                        f"copy the files by hand into {folder}/ ({', '.join(f.path for f in spec.files)})"
                    ) from None
            _check_download(spec, entry, tmp, sha256, url)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def check_dataset(name: str | KnownDataset, data_dir: str | os.PathLike | None) -> list[tuple[str, bool]]:
    """Check every file of dataset ``name`` in ``DIR/<name>/``: one ``(line, ok)`` per file, for people to read.

    A file is ok when it passes the loaders' checks: its recorded SHA-256 (or that of its decompressed
    content), else the structural checks only, which the line says.
    """
    spec = name if isinstance(name, KnownDataset) else known_dataset(name)
    folder = resolve_data_dir(data_dir) / spec.name
    lines = []
    for entry in spec.files:
        path = folder / entry.path
        if not path.is_file() and entry.path.endswith(".gz") and (folder / entry.path[:-3]).is_file():
            path = folder / entry.path[:-3]
        if not path.is_file():
            lines.append((f"MISSING  {path}", False))
            continue
        try:
            how = verify_known_file(spec, path)
            _check_structure(spec, path)
        except DatasetError as exc:
            lines.append((f"BAD      {exc}", False))
            continue
        detail = {Verified.FILE_HASH: "SHA-256 matches", Verified.PAYLOAD_HASH: "SHA-256 of the content matches",
                  Verified.UNRECORDED: "no recorded hash; size and format checked"}.get(how, how.value)
        lines.append((f"ok       {path} ({detail})", True))
    return lines

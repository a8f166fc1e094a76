"""Dataset loaders: real files from the shared data folder, synthetic files for every error path."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from modeconnect.errors import ConfigError, DatasetError
from modeconnect.tasks.datasets import (
    DATA_ENV_VAR,
    KnownDataset,
    KnownFile,
    Verified,
    Vocabulary,
    batchify,
    bptt_windows,
    cifar10_classes,
    fetch_dataset,
    known_datasets,
    load_cifar10,
    load_mnist,
    load_ptb,
    read_idx,
    resolve_data_dir,
    sha256_file,
    verify_file,
    write_idx,
)
from modeconnect.tasks.datasets.checksums import KNOWN_DATASETS, verify_known_file

SHARED = Path(os.environ.get("MODECONNECT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FASHION = Path(os.environ.get("MODECONNECT_FASHION_DATA", "/usr/share/datasets"))  # apt: dataset-fashion-mnist


def _need(name: str) -> Path:
    if not (SHARED / name).is_dir():
        pytest.skip(f"real-data test: {SHARED / name} not found (set MODECONNECT_SHARED_DATA to the shared data dir)")
    return SHARED


# ---------------------------------------------------------------- real data


def test_real_mnist():
    root = _need("mnist")
    x, y = load_mnist(root, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert int(y[0]) == 5 and y.unique().tolist() == list(range(10))
    xt, yt = load_mnist(root, "test")
    assert xt.shape == (10000, 28, 28) and int(yt[0]) == 7 and yt.unique().tolist() == list(range(10))
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_real_mnist_plain_copy_verified_by_content(tmp_path):
    root = _need("mnist")
    (tmp_path / "mnist").mkdir()
    with gzip.open(root / "mnist" / "t10k-labels-idx1-ubyte.gz") as src:
        (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(src.read())
    shutil.copy(root / "mnist" / "t10k-images-idx3-ubyte.gz", tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    assert verify_known_file("mnist", path) is Verified.FILE_HASH  # the payload hash of the .gz entry
    _, y = load_mnist(tmp_path, "test")
    assert int(y[0]) == 7
    # A re-compressed copy (different gzip header) passes on its content.
    regz = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    regz.write_bytes(gzip.compress(path.read_bytes(), mtime=12345))
    assert verify_known_file("mnist", regz) is Verified.PAYLOAD_HASH


@pytest.mark.skipif(not (FASHION / "fashion-mnist").is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    x, y = load_mnist(FASHION, "test", name="fashion-mnist")
    assert x.shape == (10000, 28, 28) and int(y[0]) == 9 and y.bincount().tolist() == [1000] * 10


def test_real_cifar_subset():
    root = _need("cifar10-subset")
    x, y = load_cifar10(root, "train")  # only the subset is there: picked automatically
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.unique().tolist() == list(range(10))
    xt, yt = load_cifar10(root, "test", name="cifar10-subset")
    assert xt.shape == (1000, 3, 32, 32) and yt.shape == (1000,)
    # Record 7 of data_batch_2.bin is train index 1007: parse its bytes by hand.
    raw = (root / "cifar10-subset" / "data_batch_2.bin").read_bytes()
    rec = raw[7 * 3073 : 8 * 3073]
    assert int(y[1007]) == rec[0]
    r, g, b = rec[1:1025], rec[1025:2049], rec[2049:3073]
    for row, col in [(0, 0), (5, 17), (31, 31)]:
        assert x[1007, :, row, col].tolist() == [r[32 * row + col], g[32 * row + col], b[32 * row + col]]
    assert cifar10_classes(root)[:3] == ("airplane", "automobile", "bird")


def test_real_ptb():
    root = _need("ptb")
    train, vocab = load_ptb(root, "train")
    text = (root / "ptb" / "ptb.train.txt").read_text()
    n_words, n_lines = len(text.split()), text.count("\n")
    assert n_words == 887_521
    assert train.shape == (n_words + n_lines,) and train.dtype == torch.int64
    assert len(vocab) == 10_000 and "<unk>" in vocab and int((train == vocab.eos_id).sum()) == n_lines
    assert vocab.words[:3] == ("the", "<unk>", "<eos>")  # Zaremba's ids
    valid, same = load_ptb(root, "valid", vocab=vocab)
    assert same is vocab and valid.shape == (73_760,)
    test, vocab2 = load_ptb(root, "test")  # vocabulary rebuilt from train: the same
    assert vocab2 == vocab and test.shape == (82_430,)
    batched = batchify(train, 20)
    assert batched.shape == (20, train.numel() // 20)
    assert torch.equal(batched[3], train[3 * batched.shape[1] : 4 * batched.shape[1]])
    windows = bptt_windows(batched, 35)
    assert len(windows) == (batched.shape[1] - 1) // 35
    for x, t in windows[:3] + windows[-1:]:
        assert x.shape == t.shape == (20, 35)
    flat_x = torch.cat([x for x, _ in windows], dim=1)
    flat_t = torch.cat([t for _, t in windows], dim=1)
    assert torch.equal(flat_t[:, :-1], flat_x[:, 1:])
    assert torch.equal(flat_x, batched[:, : flat_x.shape[1]])


# ---------------------------------------------------------------- PTB helpers on toy data


def test_vocabulary_order_and_oov(tmp_path):
    vocab = Vocabulary.build("b a c a b d <eos>".split())
    assert vocab.words == ("a", "b", "<eos>", "c", "d")
    assert vocab.decode(vocab.encode(["d", "a"])) == ["d", "a"]
    with pytest.raises(KeyError, match="'zz'"):
        vocab.encode(["zz"])
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.train.txt").write_text(" a b a \n b c \n")
    (tmp_path / "ptb" / "ptb.valid.txt").write_text(" a x \n")
    ids, v = load_ptb(tmp_path, "train", verify=False)
    assert v.words == ("<eos>", "a", "b", "c") and v.decode(ids) == ["a", "b", "a", "<eos>", "b", "c", "<eos>"]
    with pytest.raises(DatasetError, match=r"ptb\.valid\.txt has 1 word.*'x'"):
        load_ptb(tmp_path, "valid", verify=False)
    with pytest.raises(DatasetError, match=r"ptb\.train\.txt is corrupt.*expected fcea919f"):
        load_ptb(tmp_path, "train")


def test_batchify_and_windows_edges():
    ids = torch.arange(23)
    b = batchify(ids, 4)
    assert b.shape == (4, 5) and b[1].tolist() == [5, 6, 7, 8, 9]
    assert len(bptt_windows(b, 2)) == 2
    last_x, last_t = bptt_windows(b, 3, drop_last=False)[-1]
    assert last_x.tolist() == [[3], [8], [13], [18]] and last_t.tolist() == [[4], [9], [14], [19]]
    with pytest.raises(ConfigError, match="smaller batch_size"):
        batchify(torch.arange(3), 4)
    with pytest.raises(ConfigError):
        bptt_windows(ids, 3)


# ---------------------------------------------------------------- IDX reader


def _idx_bytes(code: int, fmt: str, shape: tuple[int, ...], values: list) -> bytes:
    header = struct.pack(f">BBBB{len(shape)}I", 0, 0, code, len(shape), *shape)
    return header + struct.pack(f">{len(values)}{fmt}", *values)


@pytest.mark.parametrize(
    "code,fmt,dtype,values",
    [
        (0x08, "B", torch.uint8, [0, 1, 200, 255, 7, 9]),
        (0x09, "b", torch.int8, [-128, -1, 0, 1, 100, 127]),
        (0x0B, "h", torch.int16, [-32768, -2, 258, 0, 32767, 5]),
        (0x0C, "i", torch.int32, [-(2**31), -70000, 70000, 0, 2**31 - 1, 1]),
        (0x0D, "f", torch.float32, [1.5, -2.25, 0.0, 1e30, -1e-30, 3.0]),
        (0x0E, "d", torch.float64, [1.5, -2.25, 0.1, 1e300, -1e-300, 3.0]),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_every_dtype(tmp_path, code, fmt, dtype, values, compressed):
    data = _idx_bytes(code, fmt, (2, 3), values)
    path = tmp_path / "plain-name.idx"  # gzip is detected from the magic bytes, not the name
    path.write_bytes(gzip.compress(data) if compressed else data)
    t = read_idx(path)
    expected = torch.tensor(np.array(values, dtype=np.dtype(f">{fmt}")).astype(np.dtype(f"={fmt}"))).reshape(2, 3)
    assert t.dtype == dtype and t.shape == (2, 3) and torch.equal(t, expected)
    write_idx(tmp_path / "again.gz", t, compress=True)
    assert torch.equal(read_idx(tmp_path / "again.gz"), t)


def test_read_idx_big_endian_and_3d(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x0B, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    assert read_idx(path).tolist() == [[[258, -2]]]


@pytest.mark.parametrize(
    "payload,match",
    [
        (bytes([0, 0, 0x08]), "only 3 bytes"),
        (bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 9]), "not an IDX file: magic bytes 01 00 08 01"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 9]), "not an IDX file"),
        (bytes([0, 0, 0x08, 2, 0, 0, 0, 1]), "truncated: its header declares 2 dimensions"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 5, 1, 2]), r"truncated: .*shape \(5,\)"),
        (bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 1, 2]), "longer than its header says"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, payload, match):
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(bytes(range(256)) * 50)[:-30])
    with pytest.raises(DatasetError, match="cannot be decompressed") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_load_mnist_synthetic_checks(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte", torch.zeros(4, 28, 28, dtype=torch.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", torch.tensor([0, 9, 3, 3], dtype=torch.uint8), compress=True)
    x, y = load_mnist(tmp_path, "test", name="fashion-mnist", verify=False)
    assert x.shape == (4, 28, 28) and y.tolist() == [0, 9, 3, 3] and y.dtype == torch.int64
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte is corrupt .* expected 5b4141f0"):
        load_mnist(tmp_path, "test", name="fashion-mnist")  # fashion: the hash of the IDX payload is recorded
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match="SHA-256 of its decompressed content is .* expected 0402a96d"):
        verify_known_file("fashion-mnist", labels)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", torch.tensor([0, 9, 3], dtype=torch.uint8), compress=True)
    with pytest.raises(DatasetError, match="4 images but .* 3 labels"):
        load_mnist(tmp_path, "test", name="fashion-mnist", verify=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", torch.tensor([0, 9, 3, 10], dtype=torch.uint8), compress=True)
    with pytest.raises(DatasetError, match="label 10, expected 0..9"):
        load_mnist(tmp_path, "test", name="fashion-mnist", verify=False)
    with pytest.raises(DatasetError, match=r"missing file .*train-images-idx3-ubyte\.gz or .*train-images-idx3-ubyte;"):
        load_mnist(tmp_path, "train", name="fashion-mnist", verify=False)
    with pytest.raises(ConfigError, match="unknown MNIST split 'valid'"):
        load_mnist(tmp_path, "valid")


def test_cifar_structural_checks(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes([1]) + bytes(3072) + bytes([2]) + bytes(100))
    with pytest.raises(DatasetError, match=r"test_batch\.bin has 3174 bytes, not a positive multiple of the 3073"):
        load_cifar10(tmp_path, "test")
    (folder / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(DatasetError, match="record 0 has label 12"):
        load_cifar10(tmp_path, "test")
    (folder / "test_batch.bin").write_bytes((bytes([4]) + bytes(3072)) * 3)
    x, y = load_cifar10(tmp_path, "test")  # full distribution: no recorded hash, structure only
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [4, 4, 4]
    assert cifar10_classes(tmp_path)[9] == "truck"  # no batches.meta.txt: the standard names
    with pytest.raises(DatasetError, match=r"missing CIFAR-10 file\(s\) .*data_batch_1\.bin"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(DatasetError, match="no CIFAR-10 folder"):
        load_cifar10(tmp_path / "cifar10", "test")


# ---------------------------------------------------------------- checksums and location


def test_corrupted_copy_names_file_and_both_hashes(tmp_path):
    root = _need("mnist")
    (tmp_path / "mnist").mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(root / "mnist" / f, tmp_path / "mnist" / f)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[2000] ^= 0x01
    bad.write_bytes(bytes(data))
    expected = KNOWN_DATASETS["mnist"].file(bad.name).sha256
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path, "test")
    msg = str(info.value)
    assert str(bad) in msg and expected in msg and actual in msg and "modeconnect data fetch mnist" in msg
    with pytest.raises(DatasetError, match="cannot be decompressed"):  # unverified, the gzip CRC still catches it
        load_mnist(tmp_path, "test", verify=False)


def test_verify_file_caches_per_stat(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert sha256_file(p) == good
    verify_file(p, good)
    import modeconnect.tasks.datasets.checksums as checksums

    calls = []
    monkeypatch.setattr(checksums, "sha256_file", lambda path: calls.append(path) or good)
    verify_file(p, good)
    assert calls == []  # cached
    p.write_bytes(b"abd")  # size equal, content and mtime change
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    monkeypatch.undo()
    with pytest.raises(DatasetError, match=f"expected {good}"):
        verify_file(p, good)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(DatasetError, match="no data directory given: pass --data-dir DIR .* set MODECONNECT_DATA") as e:
        resolve_data_dir(None)
    assert "DIR/mnist/train-images-idx3-ubyte.gz" in str(e.value)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(tmp_path / "..") == tmp_path / ".."  # the explicit argument wins
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match=r"MODECONNECT_DATA .*nope does not exist"):
        resolve_data_dir(None)
    with pytest.raises(DatasetError, match=r"dataset folder .*mnist does not exist; expected .*mnist/t10k-labels"):
        load_mnist(tmp_path, "test")


def test_known_datasets_lists_files():
    names = known_datasets()
    assert set(names) == {"mnist", "fashion-mnist", "cifar10", "cifar10-subset", "ptb"}
    assert "test_batch.bin" in names["cifar10"]
    assert all(f.sha256 is None for f in KNOWN_DATASETS["cifar10"].files)  # not invented


# ---------------------------------------------------------------- fetch


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server over a temporary folder; yields (folder, base_url)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _tiny(files: dict[str, bytes]) -> KnownDataset:
    return KnownDataset(
        "tiny", "test", tuple(KnownFile(n, hashlib.sha256(b).hexdigest()) for n, b in files.items())
    )


def test_fetch_real_ptb(http_root, tmp_path):
    root = _need("ptb")
    served, url = http_root
    shutil.copytree(root / "ptb", served / "ptb")
    dest = tmp_path / "data" / "new"  # created by fetch
    seen = []
    paths = fetch_dataset("ptb", dest, base_url=url + "/", progress=lambda f, done, total: seen.append((f, total)))
    assert [p.name for p in paths] == ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"]
    for p in paths:
        assert sha256_file(p) == KNOWN_DATASETS["ptb"].file(p.name).sha256
    assert ("ptb.valid.txt", 399782) in seen
    assert sorted(os.listdir(dest / "ptb")) == sorted(p.name for p in paths)  # no temporary files left
    seen.clear()
    fetch_dataset("ptb", dest, base_url=url, progress=lambda *a: seen.append(a))
    assert seen == []  # present and valid: skipped


def test_fetch_corrupt_missing_and_unreachable(http_root, tmp_path):
    served, url = http_root
    spec = _tiny({"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    (served / "tiny").mkdir()
    (served / "tiny" / "a.txt").write_bytes(b"alpha\n")
    (served / "tiny" / "b.txt").write_bytes(b"betA\n")
    dest = tmp_path / "data"
    dest.mkdir()
    with pytest.raises(DatasetError, match=r"tiny/b\.txt is corrupt .*SHA-256 [0-9a-f]{64}, expected") as info:
        fetch_dataset(spec, dest, base_url=url, timeout=5)
    assert f"{url}/tiny/b.txt" in str(info.value)
    assert sorted(os.listdir(dest / "tiny")) == ["a.txt"]  # the good one stays, nothing else left behind
    (served / "tiny" / "b.txt").unlink()
    with pytest.raises(DatasetError, match="HTTP 404") as info:
        fetch_dataset(spec, dest, base_url=url, timeout=5)
    assert f"{url}/tiny/b.txt" in str(info.value) and "copy the files by hand" in str(info.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    (dest / "tiny" / "a.txt").write_bytes(b"stale")  # present but invalid: downloaded again
    with pytest.raises(DatasetError, match=f"cannot download http://127.0.0.1:{closed}/tiny/a.txt") as info:
        fetch_dataset(spec, dest, base_url=f"http://127.0.0.1:{closed}", timeout=5)
    assert "copy the files by hand" in str(info.value)
    assert sorted(os.listdir(dest / "tiny")) == ["a.txt"]
    (served / "tiny" / "b.txt").write_bytes(b"beta\n")
    paths = fetch_dataset(spec, dest, base_url=url, timeout=5)
    assert [p.read_bytes() for p in paths] == [b"alpha\n", b"beta\n"]
    with pytest.raises(DatasetError, match="pass base_url"):
        fetch_dataset("ptb", dest, base_url="")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        fetch_dataset("imagenet", dest, base_url=url)

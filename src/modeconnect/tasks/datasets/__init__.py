"""Loaders for the standard distribution formats of the datasets the tasks use.

Every loader reads ``DIR/<name>/`` where ``DIR`` is an explicit ``data_dir`` or
``$MODECONNECT_DATA`` (:func:`resolve_data_dir`), checks the files against the
SHA-256 hashes recorded in :mod:`.checksums` (``verify=True``), and returns
plain tensors:

=================  ==========================================  ===============================================
dataset            folder and files                            loader
=================  ==========================================  ===============================================
MNIST              ``mnist/{train,t10k}-*-ubyte[.gz]``          :func:`load_mnist` -> uint8 [N,28,28], int64 [N]
Fashion-MNIST      ``fashion-mnist/`` (same names)              ``load_mnist(..., name="fashion-mnist")``
CIFAR-10 (binary)  ``cifar10/`` or ``cifar10-subset/*.bin``     :func:`load_cifar10` -> uint8 [N,3,32,32], int64
Penn Treebank      ``ptb/ptb.{train,valid,test}.txt``           :func:`load_ptb` -> int64 ids, :class:`Vocabulary`
=================  ==========================================  ===============================================

:func:`fetch_dataset` downloads a known dataset from a mirror the caller names.
"""

from __future__ import annotations

from .checksums import KNOWN_DATASETS, KnownDataset, KnownFile, Verified, known_datasets, sha256_file, verify_file
from .cifar import CIFAR10_CLASSES, cifar10_classes, load_cifar10, read_cifar10_batch
from .fetch import check_dataset, fetch_dataset
from .idx import load_mnist, read_idx, write_idx
from .location import DATA_ENV_VAR, dataset_dir, resolve_data_dir
from .ptb import Vocabulary, batchify, bptt_windows, load_ptb, read_words

__all__ = [
    "CIFAR10_CLASSES",
    "DATA_ENV_VAR",
    "KNOWN_DATASETS",
    "KnownDataset",
    "KnownFile",
    "Verified",
    "Vocabulary",
    "batchify",
    "bptt_windows",
    "check_dataset",
    "cifar10_classes",
    "dataset_dir",
    "fetch_dataset",
    "known_datasets",
    "load_cifar10",
    "load_mnist",
    "load_ptb",
    "read_cifar10_batch",
    "read_idx",
    "read_words",
    "resolve_data_dir",
    "sha256_file",
    "verify_file",
    "write_idx",
]

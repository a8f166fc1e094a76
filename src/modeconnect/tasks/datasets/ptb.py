"""Penn Treebank language modelling (``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``).

Follows Zaremba et al.'s reader (``reader.py`` of their LSTM code): each line
end becomes the token ``<eos>``; the vocabulary is built from the train split
only, sorted by decreasing frequency then alphabetically, so ids are
deterministic; ``<unk>`` is already part of the text. On the standard files this
gives 887,521 words + 42,068 ``<eos>`` = 929,589 train tokens and 10,000 words.

>>> vocab = Vocabulary.build("the cat sat on the mat <eos>".split())
>>> vocab.words[:2], len(vocab)
(('the', '<eos>'), 6)
>>> batched = batchify(torch.arange(10), batch_size=2)
>>> batched
tensor([[0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9]])
>>> [(x.tolist(), y.tolist()) for x, y in bptt_windows(batched, num_steps=2)]
[([[0, 1], [5, 6]], [[1, 2], [6, 7]]), ([[2, 3], [7, 8]], [[3, 4], [8, 9]])]
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ...errors import ConfigError, DatasetError
from .checksums import verify_known_file
from .location import dataset_dir, find_file

__all__ = ["EOS", "UNK", "PTB_SPLITS", "Vocabulary", "read_words", "load_ptb", "batchify", "bptt_windows"]

EOS = "<eos>"
"""Token appended at the end of every line."""
UNK = "<unk>"
"""PTB's own token for rare words (already in the text)."""
PTB_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Vocabulary:
    """Word <-> id mapping; ``words[i]`` is the word with id ``i``."""

    words: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.words))
        ids = {w: i for i, w in enumerate(self.words)}
        if len(ids) != len(self.words):
            dup = next(w for w in self.words if self.words.count(w) > 1)
            raise ConfigError(f"vocabulary lists {dup!r} more than once; every word must appear once")
        object.__setattr__(self, "_ids", ids)

    @classmethod
    def build(cls, tokens: Iterable[str]) -> Vocabulary:
        """Vocabulary of ``tokens``, by decreasing count, ties broken alphabetically (Zaremba's order)."""
        counts = Counter(tokens)
        return cls(tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def id(self, word: str) -> int:
        """The id of ``word``; KeyError with the word if it is not in the vocabulary."""
        try:
            return self._ids[word]
        except KeyError:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self)} words)") from None

    @property
    def eos_id(self) -> int:
        return self.id(EOS)

    def encode(self, tokens: Sequence[str]) -> Tensor:
        """Token ids (int64). Raises KeyError naming the first unknown word."""
        ids = self._ids
        try:
            return torch.tensor([ids[t] for t in tokens], dtype=torch.int64)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]!r} is not in the vocabulary ({len(self)} words)") from None

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """The words of ``ids``."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.words[i] for i in values]


def read_words(path: str | os.PathLike) -> list[str]:
    """The whitespace-separated words of a text file, with ``<eos>`` at every line end."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as UTF-8 text: {exc}") from None
    return text.replace("\n", f" {EOS} ").split()


def _split_path(folder: Path, split: str, verify: bool) -> Path:
    path = find_file(folder, [f"ptb.{split}.txt"], dataset="ptb")
    verify_known_file("ptb", path, verify=verify)
    return path


def load_ptb(
    data_dir: str | os.PathLike | None, split: str = "train", *, vocab: Vocabulary | None = None, verify: bool = True
) -> tuple[Tensor, Vocabulary]:
    """Token ids (int64, 1-D) of one PTB split from ``DIR/ptb/``, and the vocabulary used.

    Without ``vocab`` the vocabulary is built from the train split (whatever
    ``split`` is). A word of ``split`` missing from the vocabulary raises
    :class:`~modeconnect.errors.DatasetError` (the standard files have none).
    With ``verify`` the files read are checked against the recorded SHA-256 of
    Zaremba's copies. ``data_dir=None`` reads ``$MODECONNECT_DATA``.
    """
    if split not in PTB_SPLITS:
        raise ConfigError(f"unknown PTB split {split!r}; choose one of: {', '.join(PTB_SPLITS)}")
    folder = dataset_dir(data_dir, "ptb")
    path = _split_path(folder, split, verify)
    words = read_words(path)
    if vocab is None:
        train_words = words if split == "train" else read_words(_split_path(folder, "train", verify))
        vocab = Vocabulary.build(train_words)
    try:
        ids = vocab.encode(words)
    except KeyError:
        unknown = [w for w in dict.fromkeys(words) if w not in vocab]
        raise DatasetError(
            f"{path} has {len(unknown)} word(s) not in the {len(vocab)}-word vocabulary (e.g. "
            f"{', '.join(map(repr, unknown[:5]))}); build the vocabulary from the train split of the same copy "
            f"of PTB (the standard files have no out-of-vocabulary words)"
        ) from None
    return ids, vocab


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous streams: ``[batch_size, len(ids) // batch_size]``.

    Row ``b`` is ``ids[b * n : (b + 1) * n]``; the last ``len(ids) % batch_size`` tokens are dropped.
    """
    if ids.dim() != 1:
        raise ConfigError(f"batchify expects a 1-D token tensor, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n_steps = ids.numel() // batch_size
    if n_steps == 0:
        raise ConfigError(f"{ids.numel()} tokens cannot fill {batch_size} streams; use a smaller batch_size")
    return ids[: batch_size * n_steps].view(batch_size, n_steps)


def bptt_windows(batched: Tensor, num_steps: int, *, drop_last: bool = True) -> list[tuple[Tensor, Tensor]]:
    """Truncated-backpropagation windows ``(inputs [B, T], targets [B, T])``, targets shifted by one step.

    Windows are consecutive and do not overlap; as in Zaremba's ``ptb_iterator``
    there are ``(n_steps - 1) // num_steps`` of them. With ``drop_last=False`` a
    final shorter window covers the remaining steps. The tensors are views of ``batched``.
    """
    if batched.dim() != 2:
        raise ConfigError(f"bptt_windows expects [batch_size, n_steps] (see batchify), got {tuple(batched.shape)}")
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    usable = batched.shape[1] - 1
    windows = []
    for start in range(0, usable, num_steps):
        length = min(num_steps, usable - start)
        if length < num_steps and drop_last:
            break
        windows.append((batched[:, start : start + length], batched[:, start + 1 : start + 1 + length]))
    return windows

"""Penn Treebank task (``"ptb"``): Zaremba's LSTM language model, energy = test perplexity.

Text is cut into independent sequences of ``num_steps`` tokens (targets shifted by one token), i.e. the
windows of ``bptt_windows(batchify(ids, 1), num_steps)``; every sequence starts from a zero LSTM state
(no state is carried between windows, so perplexities are somewhat higher than Zaremba's stateful
evaluation). The energy is the perplexity, exp of the mean per-token cross-entropy, on a fixed
restricted test set (the first ``n_eval`` test sequences by default); training minimises the per-token
cross-entropy on minibatches of sequences from the first ``n_train`` training tokens. The data
directory is ``data_dir``, else ``$MODECONNECT_DATA`` (``ptb/ptb.{train,valid,test}.txt``).

Defaults are CPU-scale (embedding and 2 LSTM layers of 64); Zaremba's small configuration is
``embedding_dim=200, hidden_size=200`` with the whole training split.

Endpoints are trained to 0.9 * L0: trained only to L0, endpoint A sat at perplexity 398 for L0 = 400, and
the string kept a barrier next to it through ten beads (every bead trained to about 357). Beads get the
endpoints' 5,000 steps. Not re-measured at this setting (a PTB pair takes about 10 minutes on 2 cores).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from ..energy import Energy
from ..models import LSTMLanguageModel, init_uniform_
from ..train import Objective, TrainConfig
from ._init import build_without_global_rng
from ._subsets import select
from .base import Task

__all__ = ["ptb_task", "sequences"]


def sequences(ids: Tensor, num_steps: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping ``(inputs [n, num_steps], targets [n, num_steps])`` from a 1-D token stream."""
    n = (ids.numel() - 1) // num_steps
    return ids[: n * num_steps].view(n, num_steps), ids[1 : n * num_steps + 1].view(n, num_steps)


def ptb_task(*, data_dir: str | os.PathLike | None = None, embedding_dim: int = 64, hidden_size: int = 64,
             num_layers: int = 2, num_steps: int = 20, n_eval: int | None = 20,
             n_train: int | None = 200_000, selection: str = "first", data_seed: int = 0,
             init_scale: float = 0.1) -> Task:
    """PTB next-word prediction with :class:`~modeconnect.models.LSTMLanguageModel`; energy = perplexity."""
    from .datasets import load_ptb

    train_ids, vocab = load_ptb(data_dir, "train")
    test_ids, _ = load_ptb(data_dir, "test", vocab=vocab)
    if n_train is not None:
        train_ids = train_ids[: n_train + 1]
    x_train, y_train = sequences(train_ids, num_steps)
    x_test, y_test = sequences(test_ids, num_steps)
    eval_idx, eval_desc = select(len(x_test), n_eval, selection, data_seed + 1, "n_eval")
    x_eval, y_eval = x_test[eval_idx], y_test[eval_idx]
    vocab_size = len(vocab)

    def build() -> nn.Module:
        return LSTMLanguageModel(vocab_size, embedding_dim, hidden_size, num_layers)

    def make_model(seed: int) -> nn.Module:
        return init_uniform_(build_without_global_rng(build), init_scale, torch.Generator().manual_seed(int(seed)))

    energy = Energy(build_without_global_rng(build), x_eval, y_eval, "perplexity", strategy="loop",
                    split="test", selection=f"{eval_desc} sequences of {num_steps} tokens")
    return Task(
        name="ptb",
        description=f"PTB next word, LSTM {num_layers}x{hidden_size} (embedding {embedding_dim}, vocabulary "
                    f"{vocab_size}), energy = test perplexity ({eval_desc} sequences of {num_steps} tokens, zero "
                    f"initial state), trained with cross-entropy on {len(x_train)} training sequences",
        make_model=make_model,
        objective=Objective(x_train, y_train, "cross_entropy"),
        energy=energy,
        default_threshold=400.0,
        certify_resolution=1e-2,
        endpoint_training=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, check_every=100, max_steps=5000),
        bead_training=TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, check_every=25, dense_checks=50,
                                  max_steps=5000),
        endpoint_fraction=0.9,
        options={"embedding_dim": embedding_dim, "hidden_size": hidden_size, "num_layers": num_layers,
                 "num_steps": num_steps, "n_eval": n_eval, "n_train": n_train,
                 "selection": selection, "data_seed": data_seed, "init_scale": init_scale,
                 "vocab_size": vocab_size, "n_train_sequences": len(x_train)},
    )

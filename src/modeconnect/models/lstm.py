"""An LSTM language model written with explicit matmuls, so that ``torch.func.vmap`` can batch it.

``nn.LSTM`` runs one fused kernel (``aten::lstm``) that has no ``vmap`` batching rule; :class:`LSTM`
computes the same function step by step with the same parameter names, shapes and gate order
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...; gates i, f, g, o), so an
``nn.LSTM`` state dict loads into it unchanged.

>>> import torch
>>> ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
>>> mine = LSTM(3, 5, num_layers=2)
>>> _ = mine.load_state_dict(ref.state_dict())
>>> x = torch.randn(2, 4, 3)
>>> torch.allclose(mine(x), ref(x)[0], atol=1e-6)
True
>>> LSTMLanguageModel(vocab_size=50, embedding_dim=8, hidden_size=8)(torch.zeros(2, 4, dtype=torch.long)).shape
torch.Size([2, 4, 50])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["LSTM", "LSTMLanguageModel", "init_uniform_"]


class LSTM(nn.Module):
    """A multi-layer, batch-first LSTM with zero initial state, equal to ``nn.LSTM(batch_first=True)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        if min(input_size, hidden_size, num_layers) < 1:
            raise ConfigError(f"LSTM sizes must be >= 1, got input {input_size}, hidden {hidden_size}, "
                              f"layers {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        bound = 1.0 / math.sqrt(hidden_size)
        for k in range(num_layers):
            cin = input_size if k == 0 else hidden_size
            for name, shape in ((f"weight_ih_l{k}", (4 * hidden_size, cin)),
                                (f"weight_hh_l{k}", (4 * hidden_size, hidden_size)),
                                (f"bias_ih_l{k}", (4 * hidden_size,)), (f"bias_hh_l{k}", (4 * hidden_size,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: Tensor) -> Tensor:
        """Hidden states of the top layer, ``[B, T, hidden]``, for inputs ``[B, T, input_size]``."""
        batch, steps = x.shape[0], x.shape[1]
        for k in range(self.num_layers):
            w_hh = getattr(self, f"weight_hh_l{k}")
            # input contributions of all steps in one matmul; only the recurrence is sequential
            pre = x @ getattr(self, f"weight_ih_l{k}").T + getattr(self, f"bias_ih_l{k}") \
                + getattr(self, f"bias_hh_l{k}")
            h = x.new_zeros(batch, self.hidden_size)
            c = x.new_zeros(batch, self.hidden_size)
            outputs = []
            for t in range(steps):
                gates = pre[:, t] + h @ w_hh.T
                i, f, g, o = gates.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
        return x


class LSTMLanguageModel(nn.Module):
    """Next-word model of Zaremba et al. (2014): embedding -> stacked LSTM -> linear decoder over the vocabulary.

    The defaults are Zaremba's "small" configuration (vocabulary 10,000, embedding 200, 2 layers of 200;
    trained on 20 unrolled steps), without dropout. ``forward`` maps token ids ``[B, T]`` to logits
    ``[B, T, vocab_size]``, starting every sequence from a zero state.
    """

    def __init__(self, vocab_size: int = 10000, embedding_dim: int = 200, hidden_size: int = 200,
                 num_layers: int = 2) -> None:
        super().__init__()
        if min(vocab_size, embedding_dim) < 1:
            raise ConfigError(f"vocab_size and embedding_dim must be >= 1, got {vocab_size}, {embedding_dim}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = LSTM(embedding_dim, hidden_size, num_layers)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(self.lstm(self.embedding(tokens)))


def init_uniform_(module: nn.Module, scale: float, generator: torch.Generator) -> nn.Module:
    """Draw every parameter of ``module`` from U(-scale, scale) with ``generator`` (Zaremba's init, scale 0.1)."""
    if not scale > 0:
        raise ConfigError(f"init scale must be positive, got {scale}")
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.empty_like(p).uniform_(-scale, scale, generator=generator))
    return module

"""The token LSTM language model the char-RNN and the music LSTM share, and its sampler.

genfast.nn.LSTMLanguageModel (embedding -> genfast.nn.LSTM -> linear head, with the native
sampling loop) is used when it exists; until then this module's equivalent, whose generate is a
Python loop over the same network (one step per token, genfast.sample_categorical per step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn import LSTM


class TokenLSTM(nn.Module):
    """Embedding (V, E) -> L-layer LSTM (hidden H, batch_first) -> Linear (H, V)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                         dropout=dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Logits (B, T, V) of the next token after each of tokens (B, T); the state after."""
        y, state = self.lstm(self.embedding(tokens), state)
        return self.head(y), state

    @torch.no_grad()
    def generate(self, prime: Tensor, n: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(tokens (B, Tp + n) = [prime, n drawn], state before the last token)."""
        from .. import sample_categorical

        if prime.dim() != 2 or prime.shape[1] < 1:
            raise ValueError(f"prime must be (B, Tp) with Tp >= 1, got {tuple(prime.shape)}")
        gen = torch.Generator().manual_seed(seed if seed is not None else
                                            int(torch.randint(0, 2**62, ()).item()))
        logits, state = self(prime[:, :-1]) if prime.shape[1] > 1 else (None, None)
        out = [prime]
        tok = prime[:, -1:]
        for _ in range(n):
            before = state
            logits, state = self(tok, state)
            step_seed = int(torch.randint(0, 2**62, (), generator=gen))
            tok = sample_categorical(logits[:, -1], temperature, top_k, top_p,
                                     seed=step_seed)[:, None]
            out.append(tok)
        return torch.cat(out, 1), (before if n else state)


def language_model(vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                   dropout: float = 0.0) -> nn.Module:
    """genfast.nn.LSTMLanguageModel when present (same submodule names, so the same
    state_dict), else TokenLSTM."""
    try:
        from ..nn.lstm_lm import LSTMLanguageModel
    except ImportError:
        return TokenLSTM(vocab_size, embedding_dim, hidden_size, num_layers, dropout)
    return LSTMLanguageModel(vocab_size, embedding_dim, hidden_size, num_layers, dropout)

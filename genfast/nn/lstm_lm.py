"""An LSTM language model (token embedding or one-hot input -> genfast.nn.LSTM -> linear head)
whose ``generate`` runs genfast.lstm_generate: the whole sampling loop in one native call."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import _checks
from .lstm import LSTM

__all__ = ["LSTMLanguageModel"]

State = tuple[Tensor, Tensor]


class LSTMLanguageModel(nn.Module):
    """Next-token model over a vocabulary of `vocab_size` tokens.

    embed_dim: the token embedding's size, or 0 for one-hot input (the LSTM reads V-dim one-hot
    vectors). hidden_size / num_layers / dropout: as nn.LSTM (dropout between layers while
    training). backend: the genfast backend of the LSTM and of generate (None: auto).
    Submodules: ``embedding`` (nn.Embedding or None), ``lstm`` (genfast.nn.LSTM, batch_first),
    ``head`` (nn.Linear hidden -> vocab).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, backend: str | None = None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        V = _checks.integer("vocab_size", vocab_size, low=2)
        E = _checks.integer("embed_dim", embed_dim, low=0)
        H = _checks.integer("hidden_size", hidden_size, low=1)
        L = _checks.integer("num_layers", num_layers, low=1)
        kw = {"device": device, "dtype": dtype}
        self.vocab_size = V
        self.embedding = nn.Embedding(V, E, **kw) if E else None
        self.lstm = LSTM(E or V, H, L, batch_first=True, dropout=dropout, backend=backend, **kw)
        self.head = nn.Linear(H, V, **kw)
        self.backend = backend
        self._pack: Any = None
        self._pack_key: tuple | None = None

    def _inputs(self, tokens: Tensor) -> Tensor:
        if self.embedding is not None:
            return self.embedding(tokens)
        return nn.functional.one_hot(tokens, self.vocab_size).to(self.head.weight.dtype)

    def _check_tokens(self, name: str, tokens: object, dims: tuple[int, ...]) -> Tensor:
        t = _checks.tensor(name, tokens, dtypes=(torch.int64,))
        if t.dim() not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape "
                             f"{tuple(t.shape)}")
        return t

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Teacher-forced logits: tokens (B, T) int64 -> (logits (B, T, V), (h, c)), h and c
        (num_layers, B, hidden) the state after the last token (state: the one before the
        first, None = zeros). Unbatched (T,) tokens give (T, V) logits and (num_layers, hidden)
        states, as nn.LSTM."""
        tokens = self._check_tokens("tokens", tokens, (1, 2))
        y, state = self.lstm(self._inputs(tokens), state)
        return self.head(y), state

    def pack(self) -> Any:
        """The weights packed for genfast.lstm_generate; rebuilt only when a parameter changed
        (keyed on every parameter's identity, version, device and dtype)."""
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        if self._pack_key != key:
            from ..ops.lstm_generate import pack_lstm

            self._pack = pack_lstm(self.embedding, self.lstm, self.head)
            self._pack_key = key
        return self._pack

    def generate(self, prime: Tensor, n: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 state: State | None = None, offset: int = 0,
                 backend: str | None = None) -> tuple[Tensor, State]:
        """Continue prime (B, Tp) (or unbatched (Tp,)) int64 by n sampled tokens: returns
        (tokens (B, Tp + n) = [prime, drawn], (h, c)) with the state before the last token
        (see genfast.lstm_generate: pass tokens[:, -1:], that state and offset + Tp + n - 1 to
        continue exactly). One native call on the cpu / cuda backends; dropout is off."""
        from ..ops.lstm_generate import lstm_generate

        prime = self._check_tokens("prime", prime, (1, 2))
        unbatched = prime.dim() == 1
        if unbatched:
            prime = prime[None]
            if state is not None:
                state = (state[0].unsqueeze(1), state[1].unsqueeze(1))
        tokens, (h, c) = lstm_generate(self.pack(), prime, n, state=state,
                                       temperature=temperature, top_k=top_k, top_p=top_p,
                                       seed=seed, offset=offset, backend=backend or self.backend)
        if unbatched:
            return tokens[0], (h[:, 0], c[:, 0])
        return tokens, (h, c)

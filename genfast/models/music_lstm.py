"""Monophonic music LSTM: predict the next note of a folk tune from the notes before it.

    p(tune) = prod_t Cat(n_t | softmax(W h_t + b)),  h_t = LSTM(embed(n_{<t}))

A token is one note, the pair (pitch or rest, duration), or the tune boundary (genfast.data.
music: the Essen folk songs that ship in music21's wheel, parsed by genfast's own ABC reader and
transposed to C major / A minor). The network is the char-RNN's (2 layers of 128 units,
windows of 64 notes, Adam 2e-3, clipping 5) over the note vocabulary, trained on the stream of
all training tunes. `evaluate` reports held-out bits per note on 5% of the tunes never trained on
(``bits_per_note`` counts the notes; ``bits_per_token`` also the end-of-tune tokens).
Generation starts from the first notes of a held-out tune and feeds each drawn note back until
the model ends the tune or the length is reached; `genfast sample music-lstm` writes the result
as MIDI, as a WAV from a small built-in synthesiser and as a piano roll
(genfast/models/_music_cli.py, _music_io.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..data.music import BOUNDARY, NoteVocab
from ._lm_train import TokenLMModel, check_lm_config


@dataclass
class MusicLSTMConfig:
    vocab: tuple = ()  # (pitch or -1, numerator, denominator) per note token (set by training)
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    seq_len: int = 64  # training window, in notes
    clip: float = 5.0
    eval_chunk: int = 4000
    corpus: str = "essen"  # genfast.data.music corpus name, .abc file or folder
    transpose: bool = True  # every tune to C major / A minor
    min_count: int = 3  # notes rarer than this in the training tunes are not tokens
    max_notes: int | None = None  # keep only tunes of at most this many notes
    tempo: float = 120.0  # quarter notes per minute of the MIDI / WAV output

    def __post_init__(self) -> None:
        check_lm_config(self)
        self.vocab = tuple(tuple(int(v) for v in row) for row in self.vocab)
        if not self.vocab:
            raise ValueError("vocab is empty: a music LSTM needs its note vocabulary (genfast "
                             "train sets it from the training tunes)")
        if any(len(row) != 3 or row[2] <= 0 or row[1] <= 0 for row in self.vocab):
            raise ValueError("vocab rows must be (pitch or -1, numerator > 0, denominator > 0)")
        if not isinstance(self.transpose, bool):
            raise ValueError(f"transpose must be a bool, got {self.transpose!r}")
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) \
                or self.min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {self.min_count!r}")
        if self.max_notes is not None and (not isinstance(self.max_notes, int)
                                           or self.max_notes < 1):
            raise ValueError(f"max_notes must be None or an int >= 1, got {self.max_notes!r}")
        if not (isinstance(self.tempo, (int, float)) and math.isfinite(self.tempo)
                and self.tempo > 0):
            raise ValueError(f"tempo must be > 0 beats per minute, got {self.tempo!r}")


class MusicLSTM(TokenLMModel):
    """The note LSTM with its training step, held-out bits per note and tune continuation."""

    config_cls: ClassVar[type] = MusicLSTMConfig
    description: ClassVar[str] = "monophonic music LSTM, Essen folk tunes -> MIDI/WAV/piano roll"

    def __init__(self, config: MusicLSTMConfig | None = None) -> None:
        super().__init__()
        self.config = config or MusicLSTMConfig()
        self.vocab = NoteVocab.from_list(self.config.vocab)
        self._build(len(self.vocab))

    def evaluate(self, test: Tensor) -> dict[str, float]:
        """Held-out ``bits_per_note`` (the headline: the notes of the stream after its first
        token), ``bits_per_token`` (notes and tune ends) and ``loss`` (nats per token)."""
        nll = self.token_nll(test)
        notes = test[1:] != BOUNDARY
        return {"loss": float(nll.mean()), "bits_per_note": float(nll[notes].mean()) / math.log(2),
                "bits_per_token": float(nll.mean()) / math.log(2)}

    @torch.no_grad()
    def continue_tune(self, tune: Tensor, prime_notes: int, n: int, **knobs: Any
                      ) -> tuple[Tensor, bool]:
        """(tokens, ended): the boundary and the first `prime_notes` notes of `tune` (1-D, as
        genfast.data.music.Melodies holds it), then up to n drawn notes, cut where the model
        ends the tune (ended = True)."""
        if isinstance(prime_notes, bool) or not isinstance(prime_notes, int) or prime_notes < 0:
            raise ValueError(f"prime_notes must be an int >= 0, got {prime_notes!r}")
        body = tune[1:]
        body = body[:int((body == BOUNDARY).nonzero()[0])] if (body == BOUNDARY).any() else body
        if prime_notes > len(body):
            raise ValueError(f"prime_notes={prime_notes} but the tune has {len(body)} notes")
        prime = torch.cat([tune.new_tensor([BOUNDARY]), body[:prime_notes]])
        device = next(self.parameters()).device
        out = self.generate(prime[None].to(device), n, **knobs)[0].cpu()
        drawn = out[len(prime):]
        ends = (drawn == BOUNDARY).nonzero()
        if len(ends):
            return torch.cat([prime, drawn[:int(ends[0])]]), True
        return out, False

    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._music_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._music_cli import sample

        return sample(cls, args)

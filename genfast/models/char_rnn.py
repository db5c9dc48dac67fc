"""char-RNN (Karpathy 2015): a character-level LSTM language model of English text.

    p(text) = prod_t Cat(c_t | softmax(W h_t + b)),  h_t = LSTM(embed(c_{<t}))

Karpathy's char-rnn defaults, sized for a CPU: 2 layers of 128 units, windows of 100
characters, Adam at 2e-3 (char-rnn used RMSprop at 2e-3), gradients clipped to norm 5, no
dropout. `genfast train char-rnn` trains on the Lee background corpus that ships in gensim's
wheel (genfast.data.text; ``--data FILE.txt`` for a user's own text) and reports the held-out
bits per character on 15 whole documents (5%) never trained on, beside the uniform and the
training-histogram (unigram) baselines. `genfast sample char-rnn --checkpoint P --prime "..."
--temperature T --length N` prints the continuation and its speed in characters per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..data.text import UNK, CharVocab
from ._char_lm import sample_char_lm, train_char_lm
from ._lm_train import (
    TokenLMModel,
    check_lm_config,
)


@dataclass
class CharRNNConfig:
    chars: str = ""  # the vocabulary, id order (set from the training text by `genfast train`)
    unk: str | None = UNK  # id 0 stands for characters outside the vocabulary (None: error)
    embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    seq_len: int = 100  # training window (characters of truncated backpropagation)
    clip: float = 5.0  # gradient norm clipping (0: off)
    eval_chunk: int = 4000  # held-out text is scored in chunks, the state carried across
    data: str = "lee"  # genfast.data.text.load_text name or a text file path

    def __post_init__(self) -> None:
        check_lm_config(self)
        if not isinstance(self.chars, str) or not self.chars:
            raise ValueError("chars is empty: a char-RNN needs its vocabulary (genfast train "
                             "sets it from the training text; CharRNNConfig.for_text)")
        _ = self.vocab  # validates chars and unk

    @property
    def vocab(self) -> CharVocab:
        return CharVocab.from_dict({"chars": self.chars, "unk": self.unk})

    @classmethod
    def for_text(cls, text: str, **kwargs: Any) -> CharRNNConfig:
        """A config whose vocabulary is the characters of `text` (and `unk`)."""
        vocab = CharVocab.from_text(text, unk=kwargs.get("unk", UNK))
        return cls(chars="".join(vocab.chars), **kwargs)


class CharRNN(TokenLMModel):
    """The char-RNN with its training step, held-out bits per character and generation."""

    config_cls: ClassVar[type] = CharRNNConfig
    description: ClassVar[str] = "char-RNN LSTM language model, English text (Karpathy 2015)"

    def __init__(self, config: CharRNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CharRNNConfig()
        self.vocab = self.config.vocab
        self._build(len(self.vocab))

    def evaluate(self, test: Tensor) -> dict[str, float]:
        """Held-out ``bits_per_char`` (the headline) and ``loss`` (nats per character) of every
        character of `test` after its first."""
        nll = float(self.token_nll(test).mean())
        return {"loss": nll, "bits_per_char": nll / math.log(2)}

    def complete(self, prime: str, n: int, **knobs: Any) -> str:
        """`prime` and n characters drawn after it."""
        if not isinstance(prime, str) or not prime:
            raise ValueError("prime must be a non-empty str")
        if self.vocab.unk is not None:
            missing = sorted(set(prime) - set(self.vocab.chars[1:]))
            if missing:
                raise ValueError(f"prime holds characters outside the model's vocabulary: "
                                 f"{missing!r}")
        ids = self.vocab.encode(prime).to(next(self.parameters()).device)
        return self.vocab.decode(self.generate(ids[None], n, **knobs)[0].cpu())

    @classmethod
    def cli_train(cls, args: Any) -> int:
        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        return sample(cls, args)


def train(cls: type[CharRNN], args: Any) -> int:
    return train_char_lm(cls, args, lambda c: f"{c.num_layers}x{c.hidden_size} LSTM")


def sample(cls: type[CharRNN], args: Any) -> int:
    return sample_char_lm(cls, args)

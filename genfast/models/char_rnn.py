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
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..data.text import UNK, CharVocab, load_text, split_text
from ._lm_train import (
    TokenLMModel,
    check_lm_config,
    fit_from_args,
    load_model,
    sampling_knobs,
    timed_generate,
    unigram_bits,
)
from ._trainer import resumed_config

SNAPSHOT_CHARS = 300


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

    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, dict(getattr(args, "config", None) or {}))
    source = args.data or overrides.get("data", CharRNNConfig.data)
    try:
        text = load_text(source)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise SystemExit(f"genfast: {e}") from None
    train_text, test_text = split_text(text)
    try:
        if "chars" not in overrides:
            config = CharRNNConfig.for_text(train_text, **{**overrides, "data": source})
        else:
            config = CharRNNConfig(**overrides)
        model = cls(config)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    vocab = model.vocab
    train_ids, test_ids = vocab.encode(train_text), vocab.encode(test_text)

    def snapshot(out_dir: str, step: int, held_out: dict) -> None:
        sample = model.complete("\n", SNAPSHOT_CHARS, temperature=0.8, seed=0)
        path = os.path.join(out_dir, f"sample_step{step:06d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# {args.model} step {step}, held-out {held_out['bits_per_char']:.3f} "
                    f"bits/char, temperature 0.8\n{sample.lstrip()}\n")

    tc, metrics, wall = fit_from_args(cls, model, args, train_ids, test_ids, out, snapshot)
    n_docs = test_text.count("\n")
    print(f"{args.model}: {tc.steps} steps on {source} ({len(train_text):,} training characters, "
          f"{len(vocab)} symbols, {config.num_layers}x{config.hidden_size} LSTM), "
          f"{wall:.1f} s this run")
    print(f"  held-out {metrics['bits_per_char']:.3f} bits/char ({len(test_text):,} characters "
          f"of {n_docs} documents never trained on); baselines: uniform "
          f"{math.log2(len(vocab)):.3f}, unigram (training histogram) "
          f"{unigram_bits(train_ids, test_ids, len(vocab)):.3f}")
    print(f"checkpoint, metrics.jsonl and sample_step*.txt in {out}")
    return 0


def sample(cls: type[CharRNN], args: Any) -> int:
    model, ckpt = load_model(cls, args)
    prime = getattr(args, "prime", None) or "\n"
    n = getattr(args, "length", None) or args.n or 500
    if n < 1:
        raise SystemExit(f"genfast: --length must be >= 1, got {n}")
    knobs = sampling_knobs(args, 0.8)
    try:
        text = model.complete(prime, 0)  # validates the prime before timing
    except ValueError as e:
        raise SystemExit(f"genfast: --prime: {e}") from None
    ids = model.vocab.encode(prime)[None]
    tokens, dt = timed_generate(model, ids, n, knobs)
    text = model.vocab.decode(tokens[0])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    print(f"\n{args.model} step {ckpt['step']}: {n} characters in {dt:.3f} s = {n / dt:,.0f} "
          f"chars/s (batch 1, temperature {knobs['temperature']:g}, seed {knobs['seed']})"
          + (f"; written to {args.out}" if args.out else ""))
    return 0

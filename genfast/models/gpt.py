"""GPT-style character Transformer (Radford et al. 2018/2019; nanoGPT's shakespeare-char recipe
sized for a CPU): continue an English sentence one character at a time.

    p(text) = prod_t Cat(c_t | softmax(W_e^T h_t)),  h_t = Transformer(c_{t-block_size..t-1})

Decoder-only: token + learned position embeddings, pre-LN blocks of causal multi-head
self-attention (genfast.nn.CausalSelfAttention: the fused kernel, differentiable twice) and a
GELU MLP (4x), final LayerNorm, head tied to the token embedding; init N(0, 0.02) with the
residual projections scaled by 1/sqrt(2 n_layer). Defaults: 4 layers, 4 heads, 128 dims,
128-character context; AdamW at 2e-3 (betas 0.9 / 0.99, weight decay 0.1 on matrices only),
linear warm-up then cosine decay to lr / 10, gradients clipped to norm 1; 1500 steps of 16
windows. `genfast train gpt` trains on
the char-RNN's text (genfast.data.text: the Lee corpus from gensim's wheel, ``--data FILE.txt``
for one's own) and reports held-out bits per character on the same 15 held-out documents as
char-rnn. `genfast sample gpt --prime "..."` continues the prime with a KV cache per layer and
genfast's Gumbel-max sampler and prints the speed in characters (tokens) per second;
GPT.generate(..., use_cache=False) is the recompute-the-context baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import UNK, CharVocab
from ..ops import _checks
from ._char_lm import sample_char_lm, train_char_lm
from ._gpt_net import GPTNet


@dataclass
class GPTConfig:
    chars: str = ""  # the vocabulary, id order (set from the training text by `genfast train`)
    unk: str | None = UNK  # id 0 stands for characters outside the vocabulary (None: error)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128  # context length (training windows, position embeddings)
    dropout: float = 0.0
    bias: bool = False  # biases in the Linears and LayerNorms (nanoGPT's default: none)
    weight_decay: float = 0.1
    beta2: float = 0.99
    warmup_steps: int = 100
    lr_decay_steps: int = 1500  # cosine decay from lr to min_lr_ratio * lr over these steps
    min_lr_ratio: float = 0.1
    clip: float = 1.0  # gradient norm clipping (0: off)
    data: str = "lee"  # genfast.data.text.load_text name or a text file path

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "lr_decay_steps"):
            _checks.integer(name, getattr(self, name), low=1)
        _checks.integer("warmup_steps", self.warmup_steps, low=0)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head})")
        _checks.real("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _checks.boolean("bias", self.bias)
        _checks.real("weight_decay", self.weight_decay, 0.0)
        _checks.real("beta2", self.beta2, 0.0, 1.0, high_open=True)
        _checks.real("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _checks.real("clip", self.clip, 0.0)
        if not isinstance(self.chars, str) or not self.chars:
            raise ValueError("chars is empty: a char GPT needs its vocabulary (genfast train "
                             "sets it from the training text; GPTConfig.for_text)")
        _ = self.vocab  # validates chars and unk

    @property
    def seq_len(self) -> int:
        """The training window (genfast.models._lm_train.fit): one whole context."""
        return self.block_size

    @property
    def vocab(self) -> CharVocab:
        return CharVocab.from_dict({"chars": self.chars, "unk": self.unk})

    @classmethod
    def for_text(cls, text: str, **kwargs: Any) -> GPTConfig:
        """A config whose vocabulary is the characters of `text` (and `unk`)."""
        vocab = CharVocab.from_text(text, unk=kwargs.get("unk", UNK))
        return cls(chars="".join(vocab.chars), **kwargs)


class GPT(nn.Module):
    """The character GPT with its training step, held-out bits per character and generation."""

    config_cls: ClassVar[type] = GPTConfig
    description: ClassVar[str] = "GPT-style character Transformer, English text (nanoGPT)"
    # nanoGPT's CPU recipe scaled to the 2-core box: 1500 steps of 16 windows of a whole
    # 128-character context (3M characters, ~9 epochs of the Lee corpus); lr 2e-3, twice
    # nanoGPT's, escaped the bigram plateau twice as fast here (1e-3 for 800 steps of 8 x 256:
    # 3.40 held-out bits/char)
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1500, "batch_size": 16, "lr": 2e-3, "checkpoint_every": 250,
        "sample_every": 500, "log_every": 50, "n_samples": 1}

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GPTConfig()
        self.vocab = c.vocab
        self.net = GPTNet(len(self.vocab), c.block_size, c.n_layer, c.n_head, c.n_embd,
                          c.dropout, c.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T <= block_size) int64 -> next-token logits (B, T, V)."""
        return self.net(tokens)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        # weight decay on matrices (and the tied embedding), none on gains and biases (nanoGPT)
        decay = [p for p in self.parameters() if p.dim() >= 2]
        rest = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": rest, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, self.config.beta2))
        for g in opt.param_groups:
            g["base_lr"] = lr
        return {"adamw": opt}

    def lr_at(self, step: int, base_lr: float) -> float:
        """Linear warm-up over warmup_steps, then cosine to min_lr_ratio * base_lr at
        lr_decay_steps, constant after."""
        c = self.config
        if step < c.warmup_steps:
            return base_lr * (step + 1) / c.warmup_steps
        span = max(1, c.lr_decay_steps - c.warmup_steps)
        frac = min(1.0, (step - c.warmup_steps) / span)
        return base_lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(
            math.pi * frac)))

    def train_step(self, batch: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        opt = optimizers["adamw"]
        for g in opt.param_groups:
            g["lr"] = self.lr_at(step, g["base_lr"])
        opt.zero_grad(set_to_none=True)
        logits = self(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(self.parameters(), self.config.clip)
        opt.step()
        return {"loss": loss.detach(), "bits": loss.detach() / math.log(2)}

    @torch.no_grad()
    def token_nll(self, stream: Tensor) -> Tensor:
        """NLL (nats, float64) of every token of a 1-D stream after the first, each given at
        least block_size // 2 earlier tokens (all of them near the start): windows of a whole
        context every block_size // 2 tokens (GPTNet.token_nll)."""
        if stream.dim() != 1 or len(stream) < 2:
            raise ValueError(f"stream must be 1-D with >= 2 tokens, got {tuple(stream.shape)}")
        return self.net.token_nll(stream, max(1, self.config.block_size // 2))

    def evaluate(self, test: Tensor) -> dict[str, float]:
        """Held-out ``bits_per_char`` (the headline) and ``loss`` (nats per character) of every
        character of `test` after its first."""
        nll = float(self.token_nll(test).mean())
        return {"loss": nll, "bits_per_char": nll / math.log(2)}

    def generate(self, prime: Tensor, n: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, use_cache: bool = True,
                 keep: int | None = None) -> Tensor:
        """(B, Tp + n) tokens: prime (B, Tp) and n drawn after it (GPTNet.generate: the KV
        cache, the context past block_size, the sampler's noise rows)."""
        return self.net.generate(prime, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed, use_cache=use_cache, keep=keep)

    def complete(self, prime: str, n: int, **knobs: Any) -> str:
        """`prime` and n characters drawn after it."""
        if not isinstance(prime, str) or not prime:
            raise ValueError("prime must be a non-empty str")
        missing = sorted(set(prime) - set(self.vocab.chars[1 if self.vocab.unk else 0:]))
        if missing:
            raise ValueError(f"prime holds characters outside the model's vocabulary: "
                             f"{missing!r}")
        ids = self.vocab.encode(prime).to(self.net.lm_head.weight.device)
        return self.vocab.decode(self.generate(ids[None], n, **knobs)[0].cpu())

    @classmethod
    def cli_train(cls, args: Any) -> int:
        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        return sample(cls, args)


def train(cls: type[GPT], args: Any) -> int:
    return train_char_lm(cls, args, lambda c: f"{c.n_layer} layers x {c.n_head} heads x "
                                              f"{c.n_embd} dims, context {c.block_size}")


def sample(cls: type[GPT], args: Any) -> int:
    return sample_char_lm(cls, args, how="KV cache, ", unit="tokens")

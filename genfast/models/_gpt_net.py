"""The GPT network (nanoGPT's module tree and parameter names, so a nanoGPT ``GPT`` state_dict
loads) on genfast.nn.CausalSelfAttention, and its two generation loops: with a KV cache per
layer (one position per step) and by full recompute of the context (the benchmark's baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import random
from ..nn import CausalSelfAttention, KVCache
from ..ops import _checks
from ..ops.attention_generate import GPTPack, attention_generate, pack_gpt
from ..ops.sample import ref_draw, sampler_knobs

__all__ = ["GPTNet"]


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float,
                 bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias=bias, dropout=dropout,
                                        block_size=block_size)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPTNet(nn.Module):
    """Decoder-only Transformer: token + learned position embeddings, n_layer pre-LN blocks,
    a final LayerNorm and a head tied to the token embedding. Init N(0, 0.02), the residual
    projections (``c_proj``) N(0, 0.02 / sqrt(2 n_layer)) (GPT-2)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                 n_embd: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(Block(n_embd, n_head, block_size, dropout, bias)
                            for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd, bias=bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self._pack: GPTPack | None = None  # generate's packed weights, rebuilt when they change
        self._pack_key: tuple | None = None
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif p.dim() == 2:  # every other matrix and both embeddings (the tied one once)
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias") and "ln_" not in name:
                nn.init.zeros_(p)

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features

    def new_caches(self, batch_size: int) -> list[KVCache]:
        """One empty KVCache of block_size positions per layer."""
        return [blk.attn.new_cache(batch_size) for blk in self.transformer.h]

    def forward(self, idx: Tensor, caches: list[KVCache] | None = None,
                last_only: bool = False) -> Tensor:
        """idx (B, T) int64 -> logits (B, T, V) (or (B, 1, V) of the last position when
        last_only). With caches, idx continues the cached positions (its first token sits at
        position caches[0].length); the caches take its keys and values."""
        start = caches[0].length if caches else 0
        T = idx.shape[1]
        if start + T > self.block_size:
            raise ValueError(f"context of {start + T} tokens exceeds block_size="
                             f"{self.block_size}")
        tr = self.transformer
        pos = torch.arange(start, start + T, device=idx.device)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))
        for i, blk in enumerate(tr.h):
            x = blk(x, caches[i] if caches else None)
        x = tr.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x)

    def generate(self, prime: Tensor, n: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 use_cache: bool = True, keep: int | None = None, native: bool = True,
                 backend: str | None = None) -> Tensor:
        """(B, Tp + n) tokens: prime (B, Tp) and n drawn after it.

        Token p of the result (batch row b) is drawn from the logits by genfast's Gumbel-max
        sampler (temperature, top_k, top_p as genfast.sample_categorical) with the Philox noise
        row p * B + b of `seed` (None: one seed drawn from torch's RNG), so
        genfast.sample_categorical over the teacher-forced logits of the whole result (rows in
        position-major order) gives the same tokens while the context fits the block.

        The context is the last block_size tokens at most (a longer prime is cut to them).
        use_cache=True: each layer's keys and values live in a KVCache of block_size positions
        and each step runs one position. When the cache is full, it is refilled with the last
        `keep` tokens (default block_size // 2) in one prefill pass, so past the block a token
        sees between keep and block_size - 1 earlier tokens, and the refill cost is paid once
        per block_size - keep steps. use_cache=False: every step runs the whole context (the
        last block_size tokens) through the network again, as nanoGPT's generate; it matches
        the cached loop until the context first fills the block.

        native=True (with use_cache): the whole cached loop is one genfast.attention_generate
        call on the packed weights (no Python per token; `backend` picks its kernel);
        native=False runs the same loop over the modules in Python (the same tokens).
        """
        prime = _checks.tensor("prime", prime, dtypes=(torch.int64,))
        if prime.dim() != 2 or prime.shape[1] < 1:
            raise ValueError(f"prime must be (batch, time) with time >= 1, got shape "
                             f"{tuple(prime.shape)}")
        V = self.vocab_size
        if bool(((prime < 0) | (prime >= V)).any()):
            raise ValueError(f"prime must hold tokens in [0, {V})")
        n = _checks.integer("n", n, low=0)
        _checks.boolean("use_cache", use_cache)
        T = self.block_size
        keep = T // 2 if keep is None else _checks.integer("keep", keep, low=1, high=T)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, (1,)))
        _checks.boolean("native", native)
        if use_cache and native:  # attention_generate checks the sampler's knobs itself
            return attention_generate(self.packed(), prime, n, temperature=temperature,
                                      top_k=top_k, top_p=top_p, seed=seed, keep=keep,
                                      backend=backend)
        inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, V)
        # inference_mode, not no_grad: a cached step is ~80 tiny ops, and skipping their
        # version counters and view tracking is ~15% of its time (batch 1, CPU); the tokens
        # come back as a normal tensor (a clone outside it), usable as training input.
        with torch.inference_mode():
            out = self._generate(prime, n, inv_temp, k, p, seed, use_cache, keep)
        with torch.no_grad():
            return out.clone()

    def packed(self) -> GPTPack:
        """pack_gpt(self), repacked only after a parameter changed (in place or replaced)."""
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        if self._pack_key != key:
            self._pack, self._pack_key = pack_gpt(self), key
        assert self._pack is not None
        return self._pack

    def _generate(self, prime: Tensor, n: int, inv_temp: float, k: int, p: float, seed: int,
                  use_cache: bool, keep: int) -> Tensor:
        T = self.block_size
        V = self.vocab_size
        B, Tp = prime.shape
        out = torch.empty(B, Tp + n, dtype=torch.int64, device=prime.device)
        out[:, :Tp] = prime
        if n == 0:
            return out
        wd = torch.float64 if self.lm_head.weight.dtype == torch.float64 else torch.float32
        rows = torch.arange(Tp * B, (Tp + n) * B, device=prime.device)
        noise = random.gumbel(seed, rows, V, dtype=wd).view(n, B, V)
        caches = self.new_caches(B) if use_cache else None
        for i in range(n):
            end = Tp + i  # tokens known so far
            if caches is None:
                ctx = out[:, max(0, end - T):end]
            elif i == 0 or caches[0].length == T:
                for c in caches:
                    c.reset()
                ctx = out[:, max(0, end - (T if i == 0 else keep)):end]
            else:
                ctx = out[:, end - 1:end]
            logits = self(ctx, caches, last_only=True)[:, 0].to(wd)
            out[:, end] = ref_draw(logits, noise[i], inv_temp, k, p)
        return out

    def token_nll(self, stream: Tensor, stride: int, batch_size: int = 32) -> Tensor:
        """NLL (nats, float64) of every token of a 1-D stream after the first: windows of
        block_size tokens every `stride` tokens, each scoring only its last `stride` targets
        (the first window all of its), so every target is conditioned on at least
        block_size - stride earlier tokens (all of them near the start)."""
        T, N = self.block_size, len(stream) - 1
        first = min(T, N)
        out = [self._window_nll(stream[None, :first + 1], first)]
        ends = list(range(first + stride, N, stride)) + ([N] if first < N else [])
        prev = [first] + ends[:-1]
        for j in range(0, len(ends), batch_size):
            e, pv = ends[j:j + batch_size], prev[j:j + batch_size]
            win = torch.stack([stream[a - T:a + 1] for a in e])
            nll = self._window_nll(win, T)  # (b, T)
            out += [nll[r, T - (a - b):] for r, (a, b) in enumerate(zip(e, pv, strict=True))]
        return torch.cat([o.reshape(-1) for o in out])

    def _window_nll(self, win: Tensor, T: int) -> Tensor:
        logits = self(win[:, :T])
        return F.cross_entropy(logits.double().transpose(1, 2), win[:, 1:T + 1],
                               reduction="none")

"""The reference backend of genfast/ops/lstm_generate.py (whose docstring is the contract): the
torch loop over the packed weights that carries the state (what the reference backend runs), and
the two benchmark baselines over the torch modules: module_generate, the step-by-step loop a
PyTorch user writes (one nn.LSTM call per token, the state carried), and naive_generate, which
re-runs nn.LSTM over the whole prefix at every step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import random
from ._boundary import seed_value, work_dtype
from .sample import ref_draw

Sampler = Callable[[Tensor, int], Tensor]  # (logits (B, V), position p) -> tokens (B,)


def packed_sizes(meta: list[int]) -> list[tuple[int, ...]]:
    """The shapes of the packed buffer's parts, in order (module docstring)."""
    L, V, H = meta
    return ([(V, 4 * H), (4 * H, H)] + [(4 * H, H), (4 * H, H), (4 * H,)] * (L - 1)
            + [(V, H), (V,)])


def unpack(weights: Tensor, meta: list[int]) -> tuple[Tensor, Tensor, list[tuple[Tensor, ...]],
                                                      Tensor, Tensor]:
    """Views of the packed buffer: (tab, w_hh0, per layer l >= 1 (w_ih, w_hh, b), w_out, b_out);
    raises if the buffer's size is wrong for the meta."""
    shapes = packed_sizes(meta)
    sizes = [math.prod(s) for s in shapes]
    if weights.dim() != 1 or weights.numel() != sum(sizes):
        raise ValueError(f"weights must be 1-D with {sum(sizes)} elements for meta {meta}, got "
                         f"shape {tuple(weights.shape)}")
    v = [t.view(s) for t, s in zip(weights.split(sizes), shapes, strict=True)]
    layers = [tuple(v[2 + 3 * i:5 + 3 * i]) for i in range(meta[0] - 1)]
    return v[0], v[1], layers, v[-2], v[-1]


def _cell(G: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = G.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def contract_sampler(seed: int, offset: int, inv_temp: float, top_k: int,
                     top_p: float) -> Sampler:
    """The contract's draw: ref_draw of the logits with the Philox noise rows (offset + p)*B + b."""
    def draw(logits: Tensor, p: int) -> Tensor:
        B, V = logits.shape
        rows = (offset + p) * B + torch.arange(B, device=logits.device)
        g = random.gumbel(seed, rows, V, dtype=logits.dtype)
        return ref_draw(logits, g, inv_temp, top_k, top_p)
    return draw


def ref_generate(weights, meta_t, tokens, h, c, start, offset, seed, inv_temp, top_k, top_p):
    """The contract as a batched torch loop over the packed weights: per step one row gather of
    the folded table, one addmm per layer input, the cell, the head and the draw. Mutates
    tokens, h and c in place."""
    meta = meta_t.tolist()
    wd = work_dtype(weights.dtype)
    tab, w_hh0, layers, w_out, b_out = unpack(weights.to(wd), meta)
    B, N = tokens.shape
    hs, cs = list(h.to(wd).unbind(0)), list(c.to(wd).unbind(0))
    draw = contract_sampler(seed_value(seed), offset, inv_temp, top_k, top_p)
    for p in range(1, N):
        G = torch.addmm(tab[tokens[:, p - 1]], hs[0], w_hh0.t())
        hs[0], cs[0] = _cell(G, cs[0])
        for li, (w_ih, w_hh, b) in enumerate(layers, start=1):
            G = torch.addmm(torch.addmm(b, hs[li - 1], w_ih.t()), hs[li], w_hh.t())
            hs[li], cs[li] = _cell(G, cs[li])
        if p >= start:
            tokens[:, p] = draw(torch.addmm(b_out, hs[-1], w_out.t()), p)
    h.copy_(torch.stack(hs))
    c.copy_(torch.stack(cs))


def _inputs(embedding: nn.Embedding | None, tokens: Tensor, vocab: int, like: Tensor) -> Tensor:
    if embedding is None:
        return nn.functional.one_hot(tokens, vocab).to(like.dtype)
    return embedding(tokens)


def _run(lstm: nn.LSTM, x: Tensor, state: tuple[Tensor, Tensor] | None):
    """nn.LSTM on batch-major x (B, T, E), whatever its batch_first."""
    if lstm.batch_first:
        return lstm(x, state)
    y, st = lstm(x.transpose(0, 1), state)
    return y.transpose(0, 1), st


@torch.no_grad()
def module_generate(embedding: nn.Embedding | None, lstm: nn.LSTM, head: nn.Linear,
                    prime: Tensor, n: int, sampler: Sampler,
                    state: tuple[Tensor, Tensor] | None = None
                    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The step-by-step Python loop over the modules: the prime through nn.LSTM in one call
    (all but its last token), then per step one nn.LSTM call on one token, the head and
    `sampler(logits, p)`. Returns (tokens (B, Tp + n), the state before the last token)."""
    V = head.out_features
    B, Tp = prime.shape
    out = torch.empty(B, Tp + n, dtype=torch.int64, device=prime.device)
    out[:, :Tp] = prime
    w = head.weight
    if Tp > 1:
        _, state = _run(lstm, _inputs(embedding, prime[:, :-1], V, w), state)
    for p in range(Tp, Tp + n):
        y, state = _run(lstm, _inputs(embedding, out[:, p - 1:p], V, w), state)
        logits = head(y[:, 0])
        out[:, p] = sampler(logits.to(work_dtype(logits.dtype)), p)
    if state is None:
        L, H = lstm.num_layers, lstm.hidden_size
        state = (w.new_zeros(L, B, H), w.new_zeros(L, B, H))
    return out, state


@torch.no_grad()
def naive_generate(embedding: nn.Embedding | None, lstm: nn.LSTM, head: nn.Linear,
                   prime: Tensor, n: int, sampler: Sampler) -> Tensor:
    """The naive loop: at every step nn.LSTM over the whole prefix from a zero state, the head on
    its last output and `sampler(logits, p)`. Returns tokens (B, Tp + n)."""
    V = head.out_features
    B, Tp = prime.shape
    out = torch.empty(B, Tp + n, dtype=torch.int64, device=prime.device)
    out[:, :Tp] = prime
    for p in range(Tp, Tp + n):
        y, _ = _run(lstm, _inputs(embedding, out[:, :p], V, head.weight), None)
        logits = head(y[:, -1])
        out[:, p] = sampler(logits.to(work_dtype(logits.dtype)), p)
    return out

"""The reference backend of genfast/ops/attention_generate.py (whose docstring is the contract):
a torch loop over the packed GPT weights that follows the contract's context rule, running every
fill (the prime, each refill) as one batched causal pass and every other position as a one-query
step on a per-layer KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import seed_value, work_dtype
from ._lstm_generate_ref import contract_sampler

META_LEN = 5  # [L, V, C, Hh, T]
LN_EPS = 1e-5


def packed_sizes(meta: list[int]) -> list[tuple[int, ...]]:
    """The shapes of the packed buffer's parts, in order (module docstring)."""
    L, V, C, _, T = meta
    layer = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (4 * C, C), (4 * C,),
             (C, 4 * C), (C,)]
    return [(V, C), (T, C)] + layer * L + [(C,), (C,), (V, C)]


def check_meta(meta: list[int]) -> None:
    if len(meta) != META_LEN:
        raise ValueError(f"meta must hold {META_LEN} entries [L, V, C, Hh, T], got {meta}")
    L, V, C, Hh, T = meta
    if min(L, V, C, Hh, T) < 1 or C % Hh:
        raise ValueError(f"meta [L, V, C, Hh, T] must be positive with C % Hh == 0, got {meta}")


def unpack(weights: Tensor, meta: list[int]) -> tuple[Tensor, Tensor, list[list[Tensor]],
                                                      Tensor, Tensor, Tensor]:
    """Views of the packed buffer: (wte, wpe, per layer its 12 parts, lnf_w, lnf_b, w_head);
    raises if the buffer's size is wrong for the meta."""
    check_meta(meta)
    shapes = packed_sizes(meta)
    sizes = [math.prod(s) for s in shapes]
    if weights.dim() != 1 or weights.numel() != sum(sizes):
        raise ValueError(f"weights must be 1-D with {sum(sizes)} elements for meta {meta}, got "
                         f"shape {tuple(weights.shape)}")
    v = [t.view(s) for t, s in zip(weights.split(sizes), shapes, strict=True)]
    layers = [v[2 + 12 * i:14 + 12 * i] for i in range(meta[0])]
    return v[0], v[1], layers, v[-3], v[-2], v[-1]


class _Net:
    """The unpacked network with one (B, Hh, T, D) key and value cache per layer."""

    def __init__(self, weights: Tensor, meta: list[int], kcache: Tensor, vcache: Tensor) -> None:
        self.wte, self.wpe, self.layers, self.lnf_w, self.lnf_b, self.w_head = unpack(weights,
                                                                                      meta)
        self.Hh = meta[3]
        self.k, self.v = kcache, vcache
        self.length = 0

    def fill(self, tokens: Tensor) -> Tensor:
        """Empty the cache and run tokens (B, t) at positions 0 .. t-1: the last's logits."""
        self.length = 0
        return self.append(tokens)

    def append(self, tokens: Tensor) -> Tensor:
        """Run tokens (B, t) at the next t cache positions (causal): the last one's logits."""
        B, t = tokens.shape
        p0, p1 = self.length, self.length + t
        C = self.wte.shape[1]
        D = C // self.Hh
        x = self.wte[tokens] + self.wpe[p0:p1]
        # Query i (position p0 + i) sees cache positions j <= p0 + i.
        mask = torch.ones(t, p1, dtype=torch.bool, device=x.device).tril(p0)
        for li, (ln1_w, ln1_b, w_attn, b_attn, w_proj, b_proj, ln2_w, ln2_b, w_fc, b_fc,
                 w_proj2, b_proj2) in enumerate(self.layers):
            a = F.layer_norm(x, (C,), ln1_w, ln1_b, LN_EPS)
            q, k, v = F.linear(a, w_attn, b_attn).view(B, t, 3, self.Hh, D).permute(2, 0, 3, 1, 4)
            self.k[li, :, :, p0:p1] = k
            self.v[li, :, :, p0:p1] = v
            s = (q @ self.k[li, :, :, :p1].transpose(-1, -2)) / math.sqrt(D)
            y = s.masked_fill(~mask, -math.inf).softmax(-1) @ self.v[li, :, :, :p1]
            x = x + F.linear(y.transpose(1, 2).reshape(B, t, C), w_proj, b_proj)
            m = F.layer_norm(x, (C,), ln2_w, ln2_b, LN_EPS)
            x = x + F.linear(F.gelu(F.linear(m, w_fc, b_fc)), w_proj2, b_proj2)
        self.length = p1
        return F.linear(F.layer_norm(x[:, -1], (C,), self.lnf_w, self.lnf_b, LN_EPS), self.w_head)


def ref_generate(weights, meta_t, tokens, kcache, vcache, scratch, start, keep, seed, inv_temp,
                 top_k, top_p):
    """The contract as a batched torch loop over the packed weights. Mutates tokens (and uses
    kcache / vcache, in the work dtype, as its caches)."""
    meta = meta_t.tolist()
    T = meta[4]
    wd = work_dtype(weights.dtype)
    net = _Net(weights.to(wd), meta, kcache, vcache)
    draw = contract_sampler(seed_value(seed), 0, inv_temp, top_k, top_p)
    N = tokens.shape[1]
    for p in range(start, N):
        if p == start:
            logits = net.fill(tokens[:, max(0, p - T):p])
        elif net.length == T:
            logits = net.fill(tokens[:, p - keep:p])
        else:
            logits = net.append(tokens[:, p - 1:p])
        tokens[:, p] = draw(logits, p)

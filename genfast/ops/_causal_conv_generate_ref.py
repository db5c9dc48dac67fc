"""The reference backend of genfast/ops/causal_conv_generate.py (whose docstring is the
contract): the teacher-forced forward that is the oracle of the exactness tests, and the
fast-wavenet loop in plain PyTorch (per-layer queues), which is also the benchmark baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import random
from ._boundary import seed_value, work_dtype
from .sample import ref_draw

META_HEAD = 8  # meta = [L, A, R, G, S, E, K, input_kind, d_0 .. d_{L-1}]
_NOISE_STEPS = 64  # steps whose noise the reference loop draws at once


def unpack(weights: Tensor, meta: list[int]) -> tuple[list[Tensor], list[list[Tensor]], list]:
    """Views of the packed buffer: (input [emb] or [w_in, b_in], per layer [w_dil, b_dil, w_res,
    b_res, w_skip, b_skip], head [w1, b1, w2, b2]); raises if the buffer's size is wrong."""
    L, A, R, G, S, E, K, kind = meta[:META_HEAD]
    H = G // 2
    shapes = [[(A, R)] if kind == 0 else [(R,), (R,)]]
    shapes += [[(G, R, K), (G,), (R, H), (R,), (S, H), (S,)] for _ in range(L)]
    shapes += [[(E, S), (E,), (A, E), (A,)]]
    sizes = [math.prod(s) for group in shapes for s in group]
    if weights.dim() != 1 or weights.numel() != sum(sizes):
        raise ValueError(f"weights must be 1-D with {sum(sizes)} elements for this meta, got "
                         f"shape {tuple(weights.shape)}")
    flat = iter(weights.split(sizes))
    groups = [[next(flat).view(s) for s in group] for group in shapes]
    return groups[0], groups[1:-1], groups[-1]


def _input(first: list[Tensor], tok: Tensor, A: int, kind: int) -> Tensor:
    if kind == 0:
        return first[0][tok]
    v = tok.to(first[0].dtype) * 2 / (A - 1) - 1
    return first[0] * v.unsqueeze(-1) + first[1]


def wavenet_forward_packed(pack, tokens_in: Tensor, gcond: Tensor | None = None,
                           lcond: Tensor | None = None) -> Tensor:
    """Teacher-forced logits (B, A, T) of tokens_in (B, T) int64 (position t sees
    tokens_in[:, :t+1]); gcond (B, L, G), lcond (B, T, L, G). F.conv1d with left padding: the
    oracle of the exactness tests."""
    meta = pack.meta.tolist()
    L, A, R, G, S, E, K, kind = meta[:META_HEAD]
    first, layers, (w1, b1, w2, b2) = unpack(pack.weights, meta)
    x = _input(first, tokens_in, A, kind).transpose(1, 2)
    skip = 0
    for j, (wd, bd, wr, br, ws, bs) in enumerate(layers):
        d = meta[META_HEAD + j]
        a = F.conv1d(F.pad(x, ((K - 1) * d, 0)), wd, bd, dilation=d)
        if gcond is not None:
            a = a + gcond[:, j, :, None]
        if lcond is not None:
            a = a + lcond[:, :, j, :].transpose(1, 2)
        z = torch.tanh(a[:, :G // 2]) * torch.sigmoid(a[:, G // 2:])
        x = x + F.conv1d(z, wr[:, :, None], br)
        skip = skip + F.conv1d(z, ws[:, :, None], bs)
    h = torch.relu(F.conv1d(torch.relu(skip), w1[:, :, None], b1))
    return F.conv1d(h, w2[:, :, None], b2)


def ref_generate(weights, meta_t, gcond, lcond, rings, pos, n, seed, inv_temp, top_k, top_p):
    """The fast-wavenet loop in plain PyTorch (per-layer ring queues, one GEMM per layer for the
    taps and one for residual|skip): what a careful PyTorch user writes; the benchmark baseline."""
    meta = meta_t.tolist()
    L, A, R, G, S, E, K, kind = meta[:META_HEAD]
    wd_ = work_dtype(weights.dtype)
    first, layers, (w1, b1, w2, b2) = unpack(weights.to(wd_), meta)
    B, dev = pos.shape[0], pos.device
    taps_w = [wd.permute(0, 2, 1).reshape(G, K * R).t() for wd, *_ in layers]  # i = k*R + r
    rs_w = [torch.cat([wr, ws]).t() for _, _, wr, _, ws, _ in layers]
    rs_b = [torch.cat([br, bs]) for _, _, _, br, _, bs in layers]
    cond = [None] * L
    if gcond is not None:
        cond = [gcond[:, j].to(wd_) + layers[j][1] for j in range(L)]
    ar = torch.arange(B, device=dev)
    sd = seed_value(seed)
    tokens = torch.empty(B, n, dtype=torch.int64, device=dev)
    offs, rings_l = 0, []
    for d in meta[META_HEAD:]:
        m = (K - 1) * d
        rings_l.append(rings[:, offs:offs + m * R].view(B, m, R))
        offs += m * R
    p0, tok = pos[:, 0].clone(), pos[:, 1].clone()
    # Streams that step together (the usual case; one host read per call) index their queues by
    # a Python int: a view instead of a gather.
    q0 = int(p0[0]) if B and bool((p0 == p0[0]).all()) else None
    for i in range(n):
        p = p0 + i
        if i % _NOISE_STEPS == 0:  # the noise of the next steps at once: Philox is ~40 torch ops
            steps = torch.arange(min(_NOISE_STEPS, n - i), device=dev)[:, None]
            rows = ((p + steps) * B + ar).reshape(-1)
            noise = random.gumbel(sd, rows, A, dtype=wd_).view(-1, B, A)
        x = _input(first, tok, A, kind)
        skip = torch.zeros(B, S, dtype=wd_, device=dev)
        for j, d in enumerate(meta[META_HEAD:]):
            m, ring = (K - 1) * d, rings_l[j]
            if q0 is None:
                taps = [ring[ar, (p - (K - 1 - k) * d) % m] for k in range(K - 1)]
            else:
                taps = [ring[:, (q0 + i - (K - 1 - k) * d) % m] for k in range(K - 1)]
            inp = torch.cat([*(t.to(wd_) for t in taps), x], 1)  # copied before the write
            if m and q0 is None:
                ring[ar, p % m] = x.to(rings.dtype)
            elif m:
                ring[:, (q0 + i) % m] = x
            bias = layers[j][1] if cond[j] is None else cond[j]
            if lcond is not None:
                bias = bias + lcond[:, i, j].to(wd_)
            a = torch.addmm(bias, inp, taps_w[j])
            z = torch.tanh(a[:, :G // 2]) * torch.sigmoid(a[:, G // 2:])
            o = torch.addmm(rs_b[j], z, rs_w[j])
            x, skip = x + o[:, :R], skip + o[:, R:]
        logits = torch.addmm(b2, torch.relu(torch.addmm(b1, torch.relu(skip), w1.t())), w2.t())
        tok = ref_draw(logits, noise[i % _NOISE_STEPS], inv_temp, top_k, top_p)
        tokens[:, i] = tok
    pos[:, 0] += n
    if n:
        pos[:, 1] = tok
    return tokens

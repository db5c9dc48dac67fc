"""The reference backend of genfast/ops/masked_conv_generate.py (whose docstring is the contract):
the teacher-forced forward that is the oracle of the exactness tests, the naive generator (a
full forward per pixel), and the cached fast-pixel-cnn loop in plain PyTorch (vertical stacks
once per row, horizontal stacks per pixel, a ring of c+1 rows per layer), which is also the
benchmark baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import random
from ._boundary import seed_value, work_dtype
from .sample import ref_draw

LAYER_KEYS = ("v_weight", "v_bias", "h_weight", "h_bias", "link_weight", "link_bias",
              "res_weight", "res_bias")


def unpack(weights: Tensor, meta: list[int]) -> tuple[Tensor, list[list[Tensor]], list[Tensor]]:
    """Views of the packed buffer: (emb, per layer [wv, bv, wh, bh, wl, bl, wr, br], head
    [w1, b1, w2, b2]); raises if the buffer's size is wrong for the meta."""
    L, A, C, E, k = meta
    c = k // 2
    layer = [(2 * C, C, c + 1, k), (2 * C,), (2 * C, C, c + 1), (2 * C,), (2 * C, 2 * C),
             (2 * C,), (C, C), (C,)]
    shapes = [(A, C)] + layer * L + [(E, C), (E,), (A, E), (A,)]
    sizes = [math.prod(s) for s in shapes]
    if weights.dim() != 1 or weights.numel() != sum(sizes):
        raise ValueError(f"weights must be 1-D with {sum(sizes)} elements for this meta, got "
                         f"shape {tuple(weights.shape)}")
    views = [t.view(s) for t, s in zip(weights.split(sizes), shapes, strict=True)]
    return views[0], [views[1 + 8 * i:9 + 8 * i] for i in range(L)], views[-4:]


def _gate(u: Tensor, C: int) -> Tensor:
    return torch.tanh(u[:, :C]) * torch.sigmoid(u[:, C:])


def pixelcnn_forward_packed(pack, tokens: Tensor, cond_bias: Tensor | None = None) -> Tensor:
    """Teacher-forced logits (B, A, H, W) of tokens (B, H, W) (pixel p sees tokens < p);
    cond_bias (B, L, 2C). Plain F.conv2d with the unread taps zeroed: the exactness oracle."""
    meta = pack.meta.tolist()
    L, A, C, E, k = meta
    c = k // 2
    emb, layers, (w1, b1, w2, b2) = unpack(pack.weights, meta)
    x = emb[tokens].permute(0, 3, 1, 2)
    v = h = x
    for li, (wv, bv, wh, bh, wl, bl, wr, br) in enumerate(layers):
        if li == 0:  # mask A: neither the current row (vertical) nor pixel (horizontal)
            wv, wh = wv.clone(), wh.clone()
            wv[:, :, c] = 0
            wh[:, :, c] = 0
        cond = 0 if cond_bias is None else cond_bias[:, li, :, None, None]
        V = F.conv2d(F.pad(v, (c, c, c, 0)), wv, bv)
        Hp = F.conv2d(F.pad(h, (c, 0)), wh[:, :, None], bh) + F.conv2d(V, wl[:, :, None, None],
                                                                        bl) + cond
        v = _gate(V + cond, C)
        h = (h if li else 0) + F.conv2d(_gate(Hp, C), wr[:, :, None, None], br)
    return F.conv2d(torch.relu(F.conv2d(h, w1[:, :, None, None], b1)), w2[:, :, None, None], b2)


def naive_generate(pack, tokens: Tensor, cond_bias: Tensor | None, start: int, seed: int,
                   inv_temp: float, top_k: int, top_p: float) -> Tensor:
    """The naive generator: a full teacher-forced forward per pixel, the same sampler and noise
    rows as the contract. Returns a new tokens tensor (B, H, W)."""
    tokens = tokens.clone()
    B, H, W = tokens.shape
    wd = work_dtype(pack.weights.dtype)
    ar = torch.arange(B)
    for p in range(start, H * W):
        i, j = divmod(p, W)
        logits = pixelcnn_forward_packed(pack, tokens, cond_bias)[:, :, i, j].to(wd)
        g = random.gumbel(seed, p * B + ar, pack.classes, dtype=wd)
        tokens[:, i, j] = ref_draw(logits, g, inv_temp, top_k, top_p)
    return tokens


def ref_generate(weights, meta_t, cond, tokens, start, seed, inv_temp, top_k, top_p):
    """The cached loop in plain PyTorch, batched over images: at each row the vertical stacks of
    every layer for the whole row (one conv2d per layer over its ring of c+1 input rows) and the
    row's link term wl V + bl + bh + cond; at each pixel one GEMM per stack and per layer, the
    head, the draw and the embedding of the token. What a careful PyTorch user writes."""
    meta = meta_t.tolist()
    L, A, C, E, k = meta
    c = k // 2
    wd = work_dtype(weights.dtype)
    emb, layers, (w1, b1, w2, b2) = unpack(weights.to(wd), meta)
    B, H, W = tokens.shape
    dev = tokens.device
    sd = seed_value(seed)
    conds = [None if cond is None else cond[:, li].to(wd) for li in range(L)]
    # Per layer: the vertical weight (mask A drops its last row), the horizontal weight as a
    # (taps*C, 2C) matrix matching a contiguous (B, taps, C) slice of the row cache, the link
    # as a 1x1 conv, the residual and head matrices transposed for addmm.
    wv_ = [wv[:, :, :c] if li == 0 else wv for li, (wv, *_) in enumerate(layers)]
    taps = [c if li == 0 else c + 1 for li in range(L)]
    wh_ = [wh[:, :, :taps[li]].permute(2, 1, 0).reshape(taps[li] * C, 2 * C)
           for li, (_, _, wh, *_) in enumerate(layers)]
    wr_ = [lay[6].t() for lay in layers]
    w1t, w2t = w1.t(), w2.t()
    # Caches: ring[l] (B, C, c+1, W+2c) holds rows i-c..i of layer l's vertical input, zero
    # padded left and right; hrow[l] (B, c+W, C) row i of layer l's horizontal input, c zero
    # columns on the left. Row i of ring[0] and hrow[0] is filled pixel by pixel (x0).
    ring = [torch.zeros(B, C, c + 1, W + 2 * c, dtype=wd, device=dev) for _ in range(L)]
    hrow = [torch.zeros(B, c + W, C, dtype=wd, device=dev) for _ in range(L + 1)]
    link = torch.empty(L, B, W, 2 * C, dtype=wd, device=dev)
    flat = tokens.view(B, H * W)
    ar = torch.arange(B, device=dev)
    for i in range(H):
        for li, (_, bv, _, bh, wl, bl, _, _) in enumerate(layers):
            rows = ring[li][:, :, :c] if li == 0 else ring[li]
            if rows.shape[2]:
                V = F.conv2d(rows, wv_[li], bv)[:, :, 0]  # (B, 2C, W)
            else:
                V = bv[None, :, None].expand(B, 2 * C, W)
            Vt = V.transpose(1, 2)  # (B, W, 2C)
            lk = torch.matmul(Vt, wl.t()) + (bl + bh)
            if conds[li] is not None:
                lk += conds[li][:, None]
                Vt = Vt + conds[li][:, None]
            link[li] = lk
            if li + 1 < L:
                ring[li + 1][:, :, c, c:c + W] = _gate(Vt.transpose(1, 2), C)
        if i * W + W > start:
            g = random.gumbel(sd, ((i * W + torch.arange(W, device=dev))[:, None] * B + ar)
                              .reshape(-1), A, dtype=wd).view(W, B, A)
        for j in range(W):
            p = i * W + j
            for li in range(L):
                hs = hrow[li][:, j:j + taps[li]].reshape(B, taps[li] * C)
                Hp = torch.addmm(link[li][:, j], hs, wh_[li]) if taps[li] else link[li][:, j]
                out = torch.addmm(layers[li][7], _gate(Hp, C), wr_[li])
                if li:
                    out += hrow[li][:, c + j]
                hrow[li + 1][:, c + j] = out
            if p >= start:
                logits = torch.addmm(b2, torch.relu(torch.addmm(b1, hrow[L][:, c + j], w1t)), w2t)
                flat[:, p] = ref_draw(logits, g[j], inv_temp, top_k, top_p)
            x0 = emb[flat[:, p]]
            ring[0][:, :, c, c + j] = x0
            hrow[0][:, c + j] = x0
        for r in ring:  # the oldest row leaves; row i+1's slot is filled by this layer's writer
            r[:, :, :c] = r[:, :, 1:].clone()
    return None

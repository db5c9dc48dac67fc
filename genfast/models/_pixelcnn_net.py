"""The original PixelCNN (van den Oord et al. 2016a, "Pixel Recurrent Neural Networks", section
3.5 and figure 5) built from genfast.nn.MaskedConv2d, and its cached sampler.

    x (B, K, H, W) tokens -> 7x7 mask A (K -> 2h) -> R residual blocks
    [ReLU, 1x1 (2h -> h), ReLU, kxk mask B (h -> h), ReLU, 1x1 (h -> 2h)] + skip
    -> ReLU, 1x1 (2h -> E), ReLU, 1x1 (E -> K * levels): a levels-way softmax per colour.

Every conv is masked with K colour groups (R -> G -> B within a pixel, contiguous channel
blocks), so the logits of colour k at pixel p see the pixels before p and colours < k at p.
The mask-A input layer reads the tokens scaled to [-1, 1].

``sample``: the cached torch loop. Per pixel and colour, each layer's output is computed at the
new position only: the kxk convs read their input's window from an image-sized cache of that
input (the tokens for the first conv, each block's 1x1 output for its kxk), everything else is
pointwise. A position's cached values are final once its last colour's logits are computed
(group k there depends on input colours < k only), so later positions read exact values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import random
from ..nn.masked_conv import MaskedConv2d
from ..ops._boundary import work_dtype
from ..ops.sample import ref_draw, sampler_knobs


class ResidualBlock(nn.Module):
    def __init__(self, h: int, k: int, groups: int) -> None:
        super().__init__()
        self.conv1 = MaskedConv2d(2 * h, h, 1, "B", color_groups=groups)
        self.conv2 = MaskedConv2d(h, h, k, "B", color_groups=groups)
        self.conv3 = MaskedConv2d(h, 2 * h, 1, "B", color_groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.conv1(torch.relu(x)))
        return x + self.conv3(torch.relu(self.conv2(a)))


class OriginalPixelCNN(nn.Module):
    """forward(tokens (B, K, H, W) int) -> logits (B, K, levels, H, W)."""

    def __init__(self, colors: int, levels: int, hidden: int, blocks: int, kernel_size: int,
                 block_kernel: int, head: int) -> None:
        super().__init__()
        self.colors, self.levels = colors, levels
        g = colors
        self.input = MaskedConv2d(colors, 2 * hidden, kernel_size, "A", color_groups=g)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, block_kernel, g) for _ in range(blocks))
        self.out1 = MaskedConv2d(2 * hidden, head, 1, "B", color_groups=g)
        self.out2 = MaskedConv2d(head, colors * levels, 1, "B", color_groups=g)

    def scale(self, tokens: Tensor) -> Tensor:
        return tokens.to(self.out2.weight.dtype) * (2.0 / (self.levels - 1)) - 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        y = self.input(self.scale(tokens))
        for blk in self.blocks:
            y = blk(y)
        out = self.out2(torch.relu(self.out1(torch.relu(y))))
        B, _, H, W = out.shape
        return out.view(B, self.colors, self.levels, H, W)

    @torch.no_grad()
    def sample(self, n: int, height: int, width: int, *, seed: int | None = None,
               temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None) -> Tensor:
        """(n, K, H, W) int64 tokens, drawn in raster order, colour by colour. Colour k of
        pixel p in image b is genfast's Gumbel-max draw (genfast.sample_categorical: its
        temperature / top-k / top-p) as row (p * K + k) * n + b of the stream of `seed`: the
        teacher-forced forward sampled with those rows gives the same tokens."""
        L, K = self.levels, self.colors
        inv_temp, k_top, p_top = sampler_knobs(temperature, top_k, top_p, L)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, (1,)))
        w0 = self.out2.weight
        dev, wd = w0.device, work_dtype(w0.dtype)

        def dense(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
            """The masked weight's rows <= the centre as (C_out, C_in * (kh//2+1) * kw)."""
            kh = conv.kernel_size[0]
            w = (conv.weight * conv.mask)[:, :, :kh // 2 + 1].to(wd)
            return w.reshape(w.shape[0], -1).t().contiguous(), conv.bias.to(wd)

        def at(cache: Tensor, wb: tuple[Tensor, Tensor], kh: int, kw: int, i: int, j: int):
            patch = cache[:, :, i:i + kh // 2 + 1, j:j + kw].reshape(n, -1)
            return torch.addmm(wb[1], patch, wb[0])

        k0 = self.input.kernel_size
        p0h, p0w = k0[0] // 2, k0[1] // 2
        xin = torch.zeros(n, K, height + 2 * p0h, width + 2 * p0w, dtype=wd, device=dev)
        w_in = dense(self.input)
        blocks = []
        for blk in self.blocks:
            kh, kw = blk.conv2.kernel_size
            cache = torch.zeros(n, blk.conv2.in_channels, height + 2 * (kh // 2),
                                width + 2 * (kw // 2), dtype=wd, device=dev)
            blocks.append((dense(blk.conv1), dense(blk.conv2), dense(blk.conv3), cache, kh, kw))
        o1, o2 = dense(self.out1), dense(self.out2)
        tokens = torch.empty(n, K, height, width, dtype=torch.int64, device=dev)
        ar = torch.arange(n, device=dev)
        for pos in range(height * width):
            i, j = divmod(pos, width)
            noise = random.gumbel(seed, ((pos * K + torch.arange(K, device=dev)[:, None]) * n
                                         + ar).reshape(-1), L, dtype=wd).view(K, n, L)
            for c in range(K):
                y = at(xin, w_in, *k0, i, j)
                for w1, w2, w3, cache, kh, kw in blocks:
                    a = torch.relu(torch.addmm(w1[1], torch.relu(y), w1[0]))
                    cache[:, :, i + kh // 2, j + kw // 2] = a
                    y = y + torch.addmm(w3[1], torch.relu(at(cache, w2, kh, kw, i, j)), w3[0])
                h = torch.relu(torch.addmm(o1[1], torch.relu(y), o1[0]))
                logits = torch.addmm(o2[1], h, o2[0]).view(n, K, L)[:, c]
                tok = ref_draw(logits, noise[c], inv_temp, k_top, p_top)
                tokens[:, c, i, j] = tok
                xin[:, c, i + p0h, j + p0w] = tok.to(wd) * (2.0 / (L - 1)) - 1.0
        return tokens


def teacher_forced_draw(logits: Tensor, seed: int, **kwargs) -> Tensor:
    """genfast.sample_categorical on logits (B, K, levels, H, W) with rows ordered (pixel,
    colour, image): what ``OriginalPixelCNN.sample`` draws when the logits are its own."""
    from ..ops.sample import sample_categorical

    B, K, L, H, W = logits.shape
    rows = logits.permute(3, 4, 1, 0, 2).reshape(-1, L)
    return sample_categorical(rows, seed=seed, **kwargs).view(H, W, K, B).permute(3, 2, 0, 1)


def nll_bits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean NLL in bits per sub-pixel of tokens (B, K, H, W) under logits (B, K, L, H, W)."""
    return F.cross_entropy(logits.transpose(1, 2), tokens) / math.log(2)

"""PGGAN's building blocks (Karras et al. 2018, tkarras/progressive_growing_of_gans networks.py):
equalised-learning-rate layers, pixel-wise feature normalisation, the minibatch standard
deviation layer, the growing generator and discriminator, and the stage / alpha schedule.

Stage k works at resolution 4 * 2^k. Both networks hold every stage's layers from the start;
``forward(.., stage, alpha)`` runs the ones that stage needs. During the fade-in of stage k
(0 <= alpha < 1) the new block's output is blended with the previous stage's path:

    G:  lerp(upsample(to_rgb[k-1](h)), to_rgb[k](block[k](h)), alpha)
    D:  lerp(from_rgb[k-1](avgpool(x)), block[k](from_rgb[k](x)), alpha), then blocks k-1 .. 1

so alpha = 0 is exactly the stage k-1 network (G's output nearest-upsampled, D's input
average-pooled) and alpha = 1 the stage k one (torch.lerp returns its endpoints exactly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SLOPE = 0.2  # LeakyReLU everywhere, as the paper
PN_EPS = 1e-8


class EqualizedConv2d(nn.Module):
    """Conv with weights N(0, 1) scaled at run time by He's constant gain / sqrt(fan_in), so
    Adam's per-parameter step size is the same relative change for every layer (the paper's
    equalised learning rate). Square kernel, stride 1, 'same' padding; bias starts at 0."""

    def __init__(self, c_in: int, c_out: int, kernel: int, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """Linear layer with the same run-time He scaling as EqualizedConv2d."""

    def __init__(self, d_in: int, d_out: int, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = gain / math.sqrt(d_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: Tensor, eps: float = PN_EPS) -> Tensor:
    """Each pixel's feature vector scaled to unit mean square over channels (dim 1)."""
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps)


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """(N, C, H, W) -> (N, C + 1, H, W): appends, as a constant map, the standard deviation of
    each feature over the sample's group (biased, + 1e-8 under the root), averaged over
    features and pixels. Groups as the official code: sample n = g * M + m is in group m,
    M = N / G, G = min(group_size, N)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: group size {g} must divide the batch size {n}")
    y = x.reshape(g, n // g, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # (M,)
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], 1)


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, SLOPE)


def upsample2(x: Tensor, factor: int = 2) -> Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample2(x: Tensor, factor: int = 2) -> Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


class _GBlock(nn.Module):
    """Nearest 2x upsample, then two 3x3 conv + LeakyReLU + pixel norm."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_out, 3)
        self.conv2 = EqualizedConv2d(c_out, c_out, 3)

    def forward(self, h: Tensor) -> Tensor:
        h = pixel_norm(_act(self.conv1(upsample2(h))))
        return pixel_norm(_act(self.conv2(h)))


class Generator(nn.Module):
    """z -> pixel norm -> dense to ch[0] x 4 x 4 -> 3x3 conv (each LeakyReLU + pixel norm);
    stage k adds a _GBlock to ch[k] at 4 * 2^k; to_rgb[k] is a linear 1x1 conv (gain 1).
    The output is linear, as the paper (images live in [-1, 1])."""

    def __init__(self, z_dim: int, channels: list[int], image_channels: int) -> None:
        super().__init__()
        self.z_dim, self.channels = z_dim, list(channels)
        # The paper's gain sqrt(2) / 4 for the dense layer that makes the 4x4 map.
        self.dense = EqualizedLinear(z_dim, channels[0] * 16, gain=math.sqrt(2.0) / 4)
        self.conv = EqualizedConv2d(channels[0], channels[0], 3)
        self.blocks = nn.ModuleList(_GBlock(a, b) for a, b in zip(channels, channels[1:],
                                                                  strict=False))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, image_channels, 1, gain=1.0)
                                    for c in channels)

    def base(self, z: Tensor) -> Tensor:
        """The 4x4 features of stage 0, (N, ch[0], 4, 4)."""
        h = self.dense(pixel_norm(z.reshape(len(z), -1)))
        h = pixel_norm(_act(h.view(len(z), self.channels[0], 4, 4)))
        return pixel_norm(_act(self.conv(h)))

    def forward(self, z: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
        h = self.base(z)
        for block in self.blocks[:stage - 1] if stage > 0 else ():
            h = block(h)
        if stage == 0:
            return self.to_rgb[0](h)
        out = self.to_rgb[stage](self.blocks[stage - 1](h))
        if alpha < 1.0:
            out = torch.lerp(upsample2(self.to_rgb[stage - 1](h)), out, alpha)
        return out


class _DBlock(nn.Module):
    """Two 3x3 conv + LeakyReLU (ch[k] -> ch[k] -> ch[k-1]), then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = EqualizedConv2d(c_in, c_in, 3)
        self.conv2 = EqualizedConv2d(c_in, c_out, 3)

    def forward(self, h: Tensor) -> Tensor:
        return downsample2(_act(self.conv2(_act(self.conv1(h)))))


class Discriminator(nn.Module):
    """from_rgb[k] (1x1 conv + LeakyReLU) at 4 * 2^k, _DBlocks down to 4x4, then minibatch
    stddev, 3x3 conv, dense (4x4 -> ch[0]) and dense to one score; -> (N,) scores."""

    def __init__(self, channels: list[int], image_channels: int, mbstd_group: int) -> None:
        super().__init__()
        self.channels, self.mbstd_group = list(channels), mbstd_group
        self.from_rgb = nn.ModuleList(EqualizedConv2d(image_channels, c, 1) for c in channels)
        # blocks[k - 1] takes stage k's maps to stage k - 1's.
        self.blocks = nn.ModuleList(_DBlock(b, a) for a, b in zip(channels, channels[1:],
                                                                  strict=False))
        c0 = channels[0]
        self.conv = EqualizedConv2d(c0 + (1 if mbstd_group > 1 else 0), c0, 3)
        self.dense = EqualizedLinear(c0 * 16, c0)
        self.out = EqualizedLinear(c0, 1, gain=1.0)

    def head(self, h: Tensor) -> Tensor:
        """The 4x4 end: (N, ch[0], 4, 4) features -> (N,) scores."""
        if self.mbstd_group > 1:
            h = minibatch_stddev(h, self.mbstd_group)
        h = _act(self.conv(h))
        h = _act(self.dense(h.flatten(1)))
        return self.out(h).view(-1)

    def forward(self, x: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
        h = _act(self.from_rgb[stage](x))
        if stage > 0:
            h = self.blocks[stage - 1](h)
            if alpha < 1.0:
                h = torch.lerp(_act(self.from_rgb[stage - 1](downsample2(x))), h, alpha)
            for block in reversed(self.blocks[:stage - 1]):
                h = block(h)
        return self.head(h)


def channels_for(n_stages: int, fmap_base: int, fmap_max: int) -> list[int]:
    """Feature maps per stage, the paper's min(fmap_base / 2^stage, fmap_max) (stage 0: 4x4)."""
    return [max(1, min(fmap_base >> k, fmap_max)) for k in range(n_stages + 1)]


def schedule(step: int, last_stage: int, stabilize_steps: int, fade_steps: int
             ) -> tuple[int, float, int]:
    """(stage, alpha, first step of the current phase) for the 0-based training `step`.

    Stage 0 trains ``stabilize_steps``; every later stage fades in over ``fade_steps``
    (alpha = i / fade_steps on its i-th step, 0 first) then stabilises (alpha = 1) for
    ``stabilize_steps``; the last stage stabilises until training ends."""
    if step < stabilize_steps:
        return 0, 1.0, 0
    period = fade_steps + stabilize_steps
    k, r = divmod(step - stabilize_steps, period)
    stage = k + 1
    if stage > last_stage:
        return last_stage, 1.0, stabilize_steps + (last_stage - 1) * period + fade_steps
    start = stabilize_steps + k * period
    if r < fade_steps:
        return stage, r / fade_steps, start
    return stage, 1.0, start + fade_steps

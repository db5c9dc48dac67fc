"""SRGAN's networks (Ledig et al. 2017) and the degradation model of its data.

Generator (SRResNet, the paper's Fig. 4; PyTorch-GAN's srgan/models.py): conv 9x9 + PReLU;
``blocks`` residual blocks of conv3-BN-PReLU-conv3-BN with an identity skip; conv3-BN plus the
long skip from the first conv; ``log2(scale)`` up-sampling stages of conv3 to 4x channels,
PixelShuffle(2) (sub-pixel convolution, Shi et al. 2016), PReLU; conv 9x9 to RGB and tanh.
The paper feeds [0, 1] and emits [-1, 1]; here both ends are [0, 1] images (the input is
centred to [-1, 1] inside, the tanh output mapped back), so the losses and metrics see images.
``bicubic_skip=True`` (a departure, as VDSR's global residual, Kim et al. 2016) adds the
bicubic up-sampling of the input to the last conv's output instead of the tanh, and zero-
initialises that conv, so the network learns only the detail bicubic misses and starts as the
baseline: from scratch, the paper's form was 8.7 dB PSNR under bicubic after 300 steps (64 px
crops, batch 16, a few CPU minutes), where the residual form starts level with it. Every layer
is "same"-padded and the only resampling is the pixel shuffle, so any (H, W) input, odd sizes
included, gives exactly (scale H, scale W).

The sub-pixel convolutions are ICNR-initialised (Aitken et al. 2017, as fastai's
PixelShuffle_ICNR): at step 0 each stage is a nearest-neighbour up-sampling, which removes the
checkerboard a random sub-pixel conv starts with and that a few-minute CPU run would not train
away. ICNR only fixes the start: under the adversarial loss the four sub-kernels of each stage
drift apart again, and 200 GAN steps grew a 4-pixel-period dot lattice (the gradient of the
strided discriminator is itself periodic). ``blur=True`` ends every stage with a 2x2 box filter
(stride 1, replication-padded; Sugawara et al. 2019's zero-order hold, fastai's ``blur``),
whose response is zero at the Nyquist frequency: any period-2 pattern the sub-pixel conv
writes is averaged flat, so neither stage can form a lattice whatever it learns. Measured on
the held-out strips (rms of the part of SR - bicubic that is locked to the 4-pixel phase; the
true HR - bicubic has 0.88e-3): after the GAN phase 10.3e-3 without the blur, 0.3e-3 with it.

Discriminator: a patch discriminator (PyTorch-GAN's; the paper ends in dense 1024 + sigmoid,
which fixes the input size): conv3 s1 + LeakyReLU 0.2, then per stage conv3 s2-BN-LeakyReLU,
conv3 s1-BN-LeakyReLU doubling the channels, and a conv3 to one logit per patch, flattened to
(B, P).

Degradation: the low-resolution input is the bicubic down-sampling of the high-resolution crop
(antialiased, as MATLAB's imresize, which the SR literature uses), and the baseline is bicubic
up-sampling of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._unet_net import icnr_


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected (B, 3, H, W) RGB images, got {shape}")


def downsample(hr: Tensor, scale: int) -> Tensor:
    """Bicubic (antialiased) down-sampling by an integer `scale`; H and W must divide."""
    _check_images(hr, "downsample")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"downsample: image size {(h, w)} is not a multiple of scale {scale}")
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False,
                         antialias=True).clamp(0.0, 1.0)


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """The baseline: bicubic up-sampling to exactly (scale H, scale W), clamped to [0, 1]."""
    _check_images(lr, "bicubic_upsample")
    h, w = lr.shape[-2:]
    return F.interpolate(lr, size=(scale * h, scale * w), mode="bicubic",
                         align_corners=False).clamp(0.0, 1.0)


def nearest_upsample(lr: Tensor, scale: int) -> Tensor:
    """The low-resolution input shown at the output's size (pixels as blocks)."""
    return F.interpolate(lr, scale_factor=scale, mode="nearest")


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SubPixelUp(nn.Module):
    """conv3 to 4x channels, PixelShuffle(2), PReLU, and with ``blur`` a 2x2 box filter
    (stride 1, replication-padded top-left): (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, c: int, blur: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 4 * c, 3, 1, 1)
        icnr_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(c)
        self.blur = nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, 1)) \
            if blur else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.blur(self.act(self.shuffle(self.conv(x))))


class SRResNet(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 3, scale H, scale W) in [0, 1] (``bicubic_skip``: not
    clamped; the metrics clamp)."""

    def __init__(self, width: int = 64, blocks: int = 16, scale: int = 4,
                 bicubic_skip: bool = False, blur: bool = False) -> None:
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of 2 >= 2 (x2 sub-pixel stages), got "
                             f"{scale!r}")
        self.scale, self.bicubic_skip = scale, bicubic_skip
        self.head = nn.Sequential(nn.Conv2d(3, width, 9, 1, 4), nn.PReLU(width))
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.post = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))
        self.up = nn.Sequential(*(SubPixelUp(width, blur) for _ in range(int(math.log2(scale)))))
        self.tail = nn.Conv2d(width, 3, 9, 1, 4)
        if bicubic_skip:
            # The residual starts at 0: at step 0 the network is exactly the bicubic baseline.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "SRResNet")
        h = self.head(2.0 * x - 1.0)
        h = self.tail(self.up(h + self.post(self.blocks(h))))
        if self.bicubic_skip:
            return bicubic_upsample(x, self.scale) + h
        return (torch.tanh(h) + 1.0) / 2.0


def discriminator(width: int = 32, stages: int = 3) -> nn.Sequential:
    """Patch discriminator: (B, 3, S, S) in [-1, 1] -> (B, (S / 2**stages)**2) logits."""
    def block(a: int, b: int, stride: int, bn: bool = True) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, stride, 1, bias=not bn), *((nn.BatchNorm2d(b),) if bn else ()),
                nn.LeakyReLU(0.2, inplace=True)]

    layers, c = block(3, width, 1, bn=False), width
    for i in range(stages):
        nxt = width * 2 ** i
        layers += block(c, nxt, 2) + block(nxt, nxt, 1)
        c = nxt
    layers += [nn.Conv2d(c, 1, 3, 1, 1), nn.Flatten()]
    return nn.Sequential(*layers)

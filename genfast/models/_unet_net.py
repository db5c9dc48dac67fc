"""The U-Net generator and the patch critic of unet-nogan (after DeOldify / fastai).

Generator (fastai DynamicUnet, NormType.Spectral, self_attention=True, blur=True, last_cross):
an encoder of conv3-BN-ReLU pairs, stride-2 down-sampling (DeOldify's is a pretrained ResNet,
which has BatchNorm and no spectral norm, so the encoder here keeps BatchNorm), a middle pair of
convs, and per decoder level an up-sampling block: a 1x1 conv to 4x channels + PixelShuffle
(ICNR initialised: it starts as nearest-neighbour up-sampling, no checkerboard) + a 2x2 blur,
concatenated with the BatchNorm'd skip, then two conv3-ReLU. Every decoder conv is
spectrally normalised (genfast.nn.spectral_norm) and a SAGAN self-attention layer
(genfast.nn.SelfAttention2d) follows the first decoder block (fastai puts it at the third-last
block, a middle resolution). The last cross concatenates the input again before a conv3 and
a 1x1 conv to the output channels. ``spectral=False, attention=False`` is the plain U-Net.

Critic (DeOldify critics.py custom_gan_critic): SN conv k4 s2 + LeakyReLU 0.2 + Dropout2d(p/2),
then per block SN conv k3 + Dropout2d(p) + SN conv k4 s2 doubling the channels (self-attention
after the first block's), then SN conv k3 and an SN conv k4 (no padding) to one logit per
patch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genfast.nn.spectral_norm import spectral_norm


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module) if on else module


def _attention(channels: int) -> nn.Module:
    from genfast.nn.attention2d import SelfAttention2d

    return SelfAttention2d(channels, spectral_norm=True)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def icnr_(weight: Tensor, scale: int = 2) -> None:
    """ICNR (Aitken et al. 2017): sub-kernels of a pixel-shuffle conv start equal, so the
    up-sampling is nearest-neighbour at initialisation."""
    c_out, *rest = weight.shape
    k = torch.empty(c_out // scale ** 2, *rest)
    nn.init.kaiming_normal_(k)
    with torch.no_grad():
        weight.copy_(k.repeat_interleave(scale ** 2, 0))


class UpBlock(nn.Module):
    """fastai UnetBlock: PixelShuffle_ICNR up-sampling (+ blur), BN'd skip, two convs."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, spectral: bool, blur: bool) -> None:
        super().__init__()
        conv = nn.Conv2d(c_in, 4 * c_out, 1)
        icnr_(conv.weight)
        self.up = nn.Sequential(_sn(conv, spectral), nn.ReLU(inplace=True), nn.PixelShuffle(2),
                                *((nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, 1))
                                  if blur else ()))
        self.skip_bn = nn.BatchNorm2d(c_skip)
        self.convs = nn.Sequential(
            _sn(nn.Conv2d(c_out + c_skip, c_out, 3, 1, 1), spectral), nn.ReLU(inplace=True),
            _sn(nn.Conv2d(c_out, c_out, 3, 1, 1), spectral), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([self.up(x), self.skip_bn(skip)], 1))


class UNet(nn.Module):
    """(B, in_ch, S, S) -> (B, out_ch, S, S) with S a multiple of 2**depth; tanh * out_scale."""

    def __init__(self, in_ch: int = 1, out_ch: int = 2, width: int = 32, depth: int = 3, *,
                 spectral: bool = True, attention: bool = True, blur: bool = True,
                 out_scale: float = 0.5) -> None:
        super().__init__()
        self.depth, self.out_scale = depth, out_scale
        self.stem = nn.Sequential(*_conv_bn(in_ch, width), *_conv_bn(width, width))
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.downs = nn.ModuleList(
            nn.Sequential(*_conv_bn(a, b, 2), *_conv_bn(b, b))
            for a, b in zip(chans, chans[1:], strict=False))
        top = chans[-1]
        self.middle = nn.Sequential(_sn(nn.Conv2d(top, top, 3, 1, 1), spectral),
                                    nn.ReLU(inplace=True),
                                    _sn(nn.Conv2d(top, top, 3, 1, 1), spectral),
                                    nn.ReLU(inplace=True))
        self.ups = nn.ModuleList(UpBlock(chans[i + 1], chans[i], chans[i], spectral, blur)
                                 for i in reversed(range(depth)))
        self.attention = _attention(chans[depth - 1]) if attention else None
        self.last = nn.Sequential(_sn(nn.Conv2d(width + in_ch, width, 3, 1, 1), spectral),
                                  nn.ReLU(inplace=True),
                                  _sn(nn.Conv2d(width, out_ch, 1), spectral))

    def forward(self, x: Tensor) -> Tensor:
        s = x.shape[-1]
        if x.dim() != 4 or x.shape[-2] != s or s % 2 ** self.depth:
            raise ValueError(f"UNet: expected square (B, C, S, S) inputs with S a multiple of "
                             f"{2 ** self.depth}, got {tuple(x.shape)}")
        skips, h = [], self.stem(x)
        for down in self.downs:
            skips.append(h)
            h = down(h)
        h = self.middle(h)
        for i, up in enumerate(self.ups):
            h = up(h, skips.pop())
            if i == 0 and self.attention is not None:
                h = self.attention(h)
        return torch.tanh(self.last(torch.cat([h, x], 1))) * self.out_scale


def critic(channels: int = 3, width: int = 32, blocks: int = 2, dropout: float = 0.15
           ) -> nn.Sequential:
    """DeOldify's custom_gan_critic: (B, C, S, S) -> (B, P) patch logits."""
    def conv(a: int, b: int, k: int, s: int) -> list[nn.Module]:
        return [spectral_norm(nn.Conv2d(a, b, k, s, (k - 1) // 2 if k == 3 else 1)),
                nn.LeakyReLU(0.2, inplace=True)]

    layers = [*conv(channels, width, 4, 2), nn.Dropout2d(dropout / 2)]
    nf = width
    for i in range(blocks):
        layers += [*conv(nf, nf, 3, 1), nn.Dropout2d(dropout), *conv(nf, 2 * nf, 4, 2)]
        if i == 0:
            layers.append(_attention(2 * nf))
        nf *= 2
    layers += [*conv(nf, nf, 3, 1), spectral_norm(nn.Conv2d(nf, 1, 4, 1, 0, bias=False)),
               nn.Flatten()]
    return nn.Sequential(*layers)

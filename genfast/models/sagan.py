"""SAGAN (Zhang, Goodfellow, Metaxas & Odena 2018): self-attention in both networks, spectral
norm in both, hinge loss, two-timescale learning rates.

Generator: the DCGAN stack (ConvTranspose + BatchNorm + ReLU, Tanh out) with every conv
spectrally normalised and a genfast.nn.SelfAttention2d after the stage at ``attention_size``
(default half the image: z 128 -> 128x4x4 -> 64x8x8 [attention] -> 1x16x16 on the digits).
Discriminator: spectrally normalised Conv(4, 2, 1) + LeakyReLU(0.1) stages (heykeetae/
Self-Attention-GAN's), no BatchNorm, the attention layer after the stage that reaches
``attention_size`` (1x16x16 -> 64x8x8 [attention] -> 128x4x4 -> 1). The attention layer is
BigGAN-PyTorch's (theta / phi to C/8, g to C/2, phi and g max-pooled 2x2, gamma = 0 at init),
spectrally normalised, on genfast's fused attention.

Hinge loss (as SN-GAN here), Adam betas (0, 0.9), two-timescale update rule (Heusel et al.):
the discriminator learns at the trainer's ``lr`` (default 4e-4), the generator at
``config.g_lr`` (1e-4), one update each per step (``n_critic`` 1), as the paper.

R1 variant (``r1_gamma`` > 0, CLI ``--set r1_gamma=GAMMA``): adds the zero-centred gradient
penalty gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al. 2018; StyleGAN's
convention, genfast.gradient_penalty kind "r1"), every ``r1_every`` steps (lazy regularisation,
weight scaled by it). Its backward differentiates the discriminator's backward, attention
included, a second time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genfast.nn.attention2d import SelfAttention2d
from genfast.nn.spectral_norm import SpectralNormGroup, spectral_norm
from genfast.ops.gradient_penalty import gradient_penalty

from ._gan import GAN, GANConfig, stages


@dataclass
class SAGANConfig(GANConfig):
    z_dim: int = 128
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 1
    g_lr: float = 1e-4  # the generator's Adam lr; the discriminator's is the trainer's lr
    attention_size: int = 0  # feature-map side where G and D attend; 0: image side / 2
    r1_gamma: float = 0.0  # R1 penalty weight (0: off)
    r1_every: int = 1  # lazy R1: every k-th step, weight * k

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.g_lr, (int, float)) and math.isfinite(self.g_lr)
                and self.g_lr > 0):
            raise ValueError(f"g_lr must be a finite float > 0, got {self.g_lr!r}")
        if not (isinstance(self.r1_gamma, (int, float)) and math.isfinite(self.r1_gamma)
                and self.r1_gamma >= 0):
            raise ValueError(f"r1_gamma must be a finite float >= 0, got {self.r1_gamma!r}")
        if not isinstance(self.r1_every, int) or self.r1_every < 1:
            raise ValueError(f"r1_every must be an int >= 1, got {self.r1_every!r}")
        size = self.image_shape[1]
        a = self.attention_size
        if not isinstance(a, int) or (a and not (4 <= a <= size // 2 and a & (a - 1) == 0)):
            raise ValueError(f"attention_size must be 0 or a power of 2 in [4, {size // 2}] "
                             f"for {size}x{size} images, got {a!r}")
        for name in ("g_width", "d_width"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8 (the attention layer's "
                                 f"C/8 projections), got {getattr(self, name)}")

    @property
    def attention_at(self) -> int:
        return self.attention_size or self.image_shape[1] // 2


def sagan_generator(z_dim: int, width: int, channels: int, size: int, attention_at: int
                    ) -> nn.Sequential:
    """The DCGAN generator (genfast.models._gan.dcgan_generator's stages) with every conv
    spectrally normalised and self-attention after the stage of side `attention_at`."""
    k = stages(size)
    ch = [width * 2 ** (k - 1 - i) for i in range(k)]  # at 4x4 ... size/2 x size/2
    layers: list[nn.Module] = []
    c_in, side = z_dim, 1
    for c in ch:
        first = side == 1
        layers += [spectral_norm(nn.ConvTranspose2d(c_in, c, 4, 1 if first else 2,
                                                    0 if first else 1, bias=False)),
                   nn.BatchNorm2d(c), nn.ReLU(True)]
        side = 4 if first else side * 2
        if side == attention_at:
            layers.append(SelfAttention2d(c))
        c_in = c
    layers += [spectral_norm(nn.ConvTranspose2d(c_in, channels, 4, 2, 1, bias=False)),
               nn.Tanh()]
    return nn.Sequential(*layers)


def sagan_discriminator(channels: int, width: int, size: int, attention_at: int,
                        slope: float = 0.1) -> nn.Sequential:
    """Spectrally normalised Conv(4, 2, 1) + LeakyReLU stages doubling channels from `width`
    down to 4x4, self-attention after the stage of side `attention_at`, then Conv(4, 1, 0) to
    one score per image, (B,)."""
    layers: list[nn.Module] = []
    c_in, side = channels, size
    for i in range(stages(size)):
        c = width * 2 ** i
        layers += [spectral_norm(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(slope, True)]
        side //= 2
        if side == attention_at:
            layers.append(SelfAttention2d(c))
        c_in = c
    layers += [spectral_norm(nn.Conv2d(c_in, 1, 4, 1, 0)), nn.Flatten(0)]
    return nn.Sequential(*layers)


class SAGAN(GAN):
    config_cls: ClassVar[type] = SAGANConfig
    description: ClassVar[str] = ("SAGAN: self-attention + spectral norm in G and D, hinge, "
                                  "TTUR (Zhang 2018)")
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 2500, "batch_size": 64, "lr": 4e-4, "sample_every": 500,
        "checkpoint_every": 500}

    def __init__(self, config: SAGANConfig | None = None) -> None:
        super().__init__(config or SAGANConfig())
        # One multi-tensor power-iteration call per network forward, not one per layer.
        self._sn_groups = (SpectralNormGroup(self.generator),
                           SpectralNormGroup(self.discriminator))

    def build_generator(self) -> nn.Module:
        c = self.config
        channels, size, _ = c.image_shape
        return sagan_generator(c.z_dim, c.g_width, channels, size, c.attention_at)

    def build_discriminator(self) -> nn.Module:
        c, s, _ = self.config.image_shape
        return sagan_discriminator(c, self.config.d_width, s, self.config.attention_at)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        b = self.config.betas
        return {"d": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=b),
                "g": torch.optim.Adam(self.generator.parameters(), lr=self.config.g_lr,
                                      betas=b)}

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()

    def penalty(self, real: Tensor, fake: Tensor, step: int) -> tuple[Tensor | None,
                                                                      dict[str, Tensor]]:
        if not self.config.r1_gamma:
            return None, {}
        gp = gradient_penalty(self.discriminator, real, kind="r1", weight=self.config.r1_gamma,
                              every=self.config.r1_every, step=step)
        return gp.penalty, {"r1": gp.penalty.detach()}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """FD-digits (as every GAN here) and each network's attention gamma: how much of the
        attention output it adds to its features (0 at init)."""
        out = super().evaluate(x)
        for net in ("generator", "discriminator"):
            for m in getattr(self, net).modules():
                if isinstance(m, SelfAttention2d):
                    out[f"gamma_{net[0]}"] = m.gamma.item()
        return out

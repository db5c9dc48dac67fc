"""DCGAN (Radford, Metz & Chintala 2016), the pytorch/examples dcgan/main.py model scaled to
the embedded digits (upsampled to 16x16).

Generator: ConvTranspose + BatchNorm + ReLU, Tanh out (z 100 -> 128x4x4 -> 64x8x8 -> 1x16x16;
64x64 images give the original 8ngf-4ngf-2ngf-ngf stack). Discriminator: strided Conv +
LeakyReLU(0.2), BatchNorm on all but the first stage (1x16x16 -> 64x8x8 -> 128x4x4 -> 1).
Weights N(0, 0.02), BatchNorm gamma N(1, 0.02). Loss: binary cross-entropy,
D: -log D(x) - log(1 - D(G(z))), G: the non-saturating -log D(G(z)); one D and one G update
per step; Adam lr 2e-4, betas (0.5, 0.999), batch 64: the reference settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ._gan import GAN, GANConfig, bce_d_loss, bce_g_loss, dcgan_discriminator, dcgan_init_


@dataclass
class DCGANConfig(GANConfig):
    z_dim: int = 100
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1


class DCGAN(GAN):
    config_cls: ClassVar[type] = DCGANConfig
    description: ClassVar[str] = "DCGAN, pytorch/examples architecture (Radford et al. 2016)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 3000, "batch_size": 64, "lr": 2e-4, "sample_every": 500,
        "checkpoint_every": 500}

    def __init__(self, config: DCGANConfig | None = None) -> None:
        super().__init__(config or DCGANConfig())
        dcgan_init_(self)

    def build_discriminator(self) -> nn.Module:
        c, s, _ = self.config.image_shape
        return dcgan_discriminator(c, self.config.d_width, s, batchnorm=True)

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return bce_d_loss(d_real, d_fake)

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return bce_g_loss(d_fake)

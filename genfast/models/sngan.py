"""SN-GAN (Miyato et al. 2018): spectrally normalised discriminator, hinge loss.

Every weight of the discriminator goes through genfast.nn.spectral_norm (one power iteration
per training forward, W / sigma(W)), which bounds its Lipschitz constant without a gradient
penalty. The discriminator is the paper's "standard CNN" scaled to 16x16: per stride-2 stage
a 3x3 stride-1 conv and a 4x4 stride-2 conv, LeakyReLU(0.1), then a 3x3 conv and a linear
layer to one score (1x16x16 -> 32x16x16 -> 32x8x8 -> 64x8x8 -> 64x4x4 -> 128x4x4 -> 1); no
BatchNorm. The generator is the DCGAN one (genfast.models._gan), z 128.

Hinge loss (BigGAN-PyTorch losses.py): D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],
G: -E[D(G(z))]. Adam lr 2e-4, betas (0, 0.9), ``n_critic`` discriminator updates per
generator update (christiancosgrove/pytorch-spectral-normalization-gan uses 5 with these
betas; 2 is enough on the digits and gives more generator updates per CPU minute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ._gan import GAN, GANConfig, stages

try:  # TODO: drop the fallback once genfast.nn.spectral_norm lands
    from genfast.nn.spectral_norm import spectral_norm
except ImportError:  # pragma: no cover
    from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class SNGANConfig(GANConfig):
    z_dim: int = 128
    d_width: int = 32
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 2


def sngan_discriminator(channels: int, width: int, size: int, slope: float = 0.1
                        ) -> nn.Sequential:
    """The SN-GAN standard CNN discriminator for `size`, every conv/linear spectrally
    normalised; (B, C, S, S) -> (B,) scores."""
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(stages(size)):
        c = width * 2 ** i
        layers += [spectral_norm(nn.Conv2d(c_in, c, 3, 1, 1)), nn.LeakyReLU(slope, True),
                   spectral_norm(nn.Conv2d(c, c, 4, 2, 1)), nn.LeakyReLU(slope, True)]
        c_in = c
    c = width * 2 ** stages(size)
    layers += [spectral_norm(nn.Conv2d(c_in, c, 3, 1, 1)), nn.LeakyReLU(slope, True),
               nn.Flatten(), spectral_norm(nn.Linear(c * 4 * 4, 1)), nn.Flatten(0)]
    return nn.Sequential(*layers)


class SNGAN(GAN):
    config_cls: ClassVar[type] = SNGANConfig
    description: ClassVar[str] = "SN-GAN: spectral-norm discriminator, hinge loss (Miyato 2018)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 4000, "batch_size": 64, "lr": 2e-4, "sample_every": 500,
        "checkpoint_every": 500}

    def __init__(self, config: SNGANConfig | None = None) -> None:
        super().__init__(config or SNGANConfig())

    def build_discriminator(self) -> nn.Module:
        c, s, _ = self.config.image_shape
        return sngan_discriminator(c, self.config.d_width, s)

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()

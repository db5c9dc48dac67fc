"""SN-GAN (Miyato et al. 2018): spectrally normalised discriminator, hinge loss.

Every weight of the discriminator goes through genfast.nn.spectral_norm (one power iteration
per training forward, W / sigma(W)), which bounds its Lipschitz constant without a gradient
penalty; the discriminator has no BatchNorm. Two discriminators are built in:

* ``"dcgan"`` (default): the pytorch/examples DCGAN discriminator with every conv spectrally
  normalised and BatchNorm removed (1x16x16 -> 64x8x8 -> 128x4x4 -> 1, LeakyReLU 0.2);
* ``"sngan-cnn"``: the paper's "standard CNN" (3x3 stride-1 and 4x4 stride-2 conv per stage,
  LeakyReLU 0.1, then 3x3 conv and a linear layer). On the 16x16 digits it is 2-4x slower per
  step and reached FD-digits ~25-45 where the default reaches ~7 in the same CPU minutes.

The generator is the DCGAN one (genfast.models._gan), z 128. Hinge loss (BigGAN-PyTorch
losses.py): D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))], G: -E[D(G(z))]. Adam lr 2e-4,
betas (0, 0.9). ``n_critic`` defaults to 1: christiancosgrove/pytorch-spectral-normalization-gan
uses 5 with these betas, which on the digits needs ~5x the CPU time for the same FD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from genfast.nn.spectral_norm import SpectralNormGroup, spectral_norm

from ._gan import GAN, GANConfig, stages

DISCRIMINATORS = ("dcgan", "sngan-cnn")


@dataclass
class SNGANConfig(GANConfig):
    z_dim: int = 128
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 1
    discriminator: str = "dcgan"  # or "sngan-cnn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, "
                             f"got {self.discriminator!r}")


def sn_dcgan_discriminator(channels: int, width: int, size: int, slope: float = 0.2
                           ) -> nn.Sequential:
    """DCGAN discriminator, no BatchNorm, every conv spectrally normalised; -> (B,) scores."""
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(stages(size)):
        c = width * 2 ** i
        layers += [spectral_norm(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(slope, True)]
        c_in = c
    layers += [spectral_norm(nn.Conv2d(c_in, 1, 4, 1, 0)), nn.Flatten(0)]
    return nn.Sequential(*layers)


def sngan_cnn_discriminator(channels: int, width: int, size: int, slope: float = 0.1
                            ) -> nn.Sequential:
    """The SN-GAN paper's standard CNN discriminator for `size`; -> (B,) scores."""
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
        "steps": 2500, "batch_size": 64, "lr": 2e-4, "sample_every": 500,
        "checkpoint_every": 500}

    def __init__(self, config: SNGANConfig | None = None) -> None:
        super().__init__(config or SNGANConfig())
        # One multi-tensor power-iteration call per discriminator forward, not one per layer.
        self._sn_group = SpectralNormGroup(self.discriminator)

    def build_discriminator(self) -> nn.Module:
        c, s, _ = self.config.image_shape
        build = (sn_dcgan_discriminator if self.config.discriminator == "dcgan"
                 else sngan_cnn_discriminator)
        return build(c, self.config.d_width, s)

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()

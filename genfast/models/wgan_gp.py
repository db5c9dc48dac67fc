"""WGAN-GP (Gulrajani et al. 2017): Wasserstein critic with a gradient penalty.

Critic loss  E[D(G(z))] - E[D(x)] + lambda * E[(||grad_x^ D(x^)||_2 - 1)^2],
x^ = a x + (1 - a) G(z), a ~ U(0, 1) per sample (genfast.gradient_penalty, lambda = 10);
generator loss -E[D(G(z))]. Five critic updates per generator update, Adam betas
(0, 0.9): the paper's settings. The critic is the DCGAN discriminator without BatchNorm
(the penalty is per sample, and BatchNorm would couple the samples of a batch); the
generator is the DCGAN one, z 128. A trainer step is one critic update, so the default 5000
steps are 1000 generator updates. The learning rate defaults to 2e-4 (as w86763777/
pytorch-gan-collections); the paper's 1e-4 reached FD-digits 12 instead of 7 after 5000 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from genfast.ops.gradient_penalty import gradient_penalty

from ._gan import GAN, GANConfig, dcgan_discriminator


@dataclass
class WGANGPConfig(GANConfig):
    z_dim: int = 128
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 5
    gp_weight: float = 10.0  # lambda

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.gp_weight >= 0:
            raise ValueError(f"gp_weight must be >= 0, got {self.gp_weight}")


class WGANGP(GAN):
    config_cls: ClassVar[type] = WGANGPConfig
    description: ClassVar[str] = "WGAN-GP: Wasserstein critic + gradient penalty (Gulrajani 2017)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 5000, "batch_size": 64, "lr": 2e-4, "sample_every": 1000,
        "checkpoint_every": 1000}

    def __init__(self, config: WGANGPConfig | None = None) -> None:
        super().__init__(config or WGANGPConfig())

    def build_discriminator(self) -> nn.Module:
        c, s, _ = self.config.image_shape
        return dcgan_discriminator(c, self.config.d_width, s, batchnorm=False)

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()

    def penalty(self, real: Tensor, fake: Tensor, step: int) -> tuple[Tensor, dict[str, float]]:
        gp = gradient_penalty(self.discriminator, real, fake, kind="wgan-gp",
                              weight=self.config.gp_weight, center=1.0)
        return gp.penalty, {"gp": gp.penalty.detach(), "grad_norm": gp.grad_norm.mean()}

"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2015).

An autoencoder whose aggregated posterior q(z) = E_x q(z|x) is pushed onto the prior p(z) =
N(0, I) by a discriminator on z, instead of a KL term. Each training step runs the paper's two
phases on the step's batch:

1. reconstruction: encoder and decoder take one step on -log p(x|z) (Adam ``ae``);
2. regularisation: the discriminator takes one step separating prior draws z ~ N(0, I) (real)
   from encoded z = E(x) (fake) with binary cross-entropy (Adam ``d``), then the encoder, as
   the generator, one step on the non-saturating -log D(E(x)) (Adam ``g``).

Encoder and decoder are those of genfast.models.autoencoder with a linear code (dense by
default; ``arch="conv"`` for the conv / deconv blocks); the encoder is deterministic, the
paper's main variant (eriklindernoren/PyTorch-GAN's aae.py reparameterises a Gaussian instead).
The discriminator is an MLP on z, latent_dim-256-256-1, LeakyReLU(0.2) (PyTorch-GAN's);
``spectral_norm=True`` wraps its layers in genfast.nn.spectral_norm. The adversarial
optimizers use betas (0.5, 0.999) as the GANs do.

Samples decode z ~ N(0, I), which is the point of the method. Held-out figures: ``loss`` =
reconstruction loss (nats/image), ``mse``, ``fd`` = FD-digits of samples, and ``z_fd`` = the
Fréchet distance between the held-out codes and N(0, I) in latent space (0 when the matched
moments agree: how well the regularisation phase did its job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genfast.nn import spectral_norm

from . import fid
from ._latent import model_device, pixel_mean, randn
from .autoencoder import Autoencoder, AutoencoderConfig


@dataclass
class AAEConfig(AutoencoderConfig):
    code: str = "linear"
    disc_hidden: tuple[int, ...] = (256, 256)
    spectral_norm: bool = False  # genfast.nn.spectral_norm on the discriminator's layers
    betas: tuple[float, float] = (0.5, 0.999)  # Adam of the regularisation phase

    def __post_init__(self) -> None:
        super().__post_init__()
        self.disc_hidden = tuple(int(h) for h in self.disc_hidden)
        self.betas = tuple(float(b) for b in self.betas)
        if self.code != "linear":
            raise ValueError(f"code must be 'linear' for an AAE (its codes are matched to "
                             f"N(0, I)), got {self.code!r}")
        if not self.disc_hidden or any(h < 1 for h in self.disc_hidden):
            raise ValueError(f"disc_hidden must be a non-empty tuple of ints >= 1, "
                             f"got {self.disc_hidden}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas}")


def latent_discriminator(c: AAEConfig) -> nn.Sequential:
    """z (B, latent_dim) -> one logit per code (B,)."""
    sizes = [c.latent_dim, *c.disc_hidden, 1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        if c.spectral_norm:
            lin = spectral_norm(lin)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers, nn.Flatten(0))


class AAE(Autoencoder):
    config_cls: ClassVar[type] = AAEConfig
    description: ClassVar[str] = "adversarial autoencoder, discriminator on z (Makhzani et al.)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 10000, "batch_size": 100, "lr": 1e-3, "sample_every": 1000,
        "checkpoint_every": 1000}

    def __init__(self, config: AAEConfig | None = None) -> None:
        super().__init__(config or AAEConfig())
        self.discriminator = latent_discriminator(self.config)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        ae = [*self.encoder.parameters(), *self.decoder.parameters()]
        b = self.config.betas
        return {"ae": torch.optim.Adam(ae, lr=lr),
                "d": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=b),
                "g": torch.optim.Adam(self.encoder.parameters(), lr=lr, betas=b)}

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        # Reconstruction phase.
        z = self.encode(x)
        recon = self.recon_loss(x, z).mean()
        optimizers["ae"].zero_grad(set_to_none=True)
        recon.backward()
        optimizers["ae"].step()

        # Regularisation phase: the discriminator sees codes of the updated encoder.
        z = self.encode(x)
        prior = torch.randn_like(z)
        d_real, d_fake = self.discriminator(prior), self.discriminator(z.detach())
        d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["d"].step()

        d_enc = self.discriminator(z)
        g_loss = F.binary_cross_entropy_with_logits(d_enc, torch.ones_like(d_enc))
        optimizers["g"].zero_grad(set_to_none=True)
        g_loss.backward()  # also fills the discriminator's grads; its next zero_grad drops them
        optimizers["g"].step()
        self._track_codes(z)
        return {"loss": recon.detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(d_real.detach()).mean(),
                "d_fake": torch.sigmoid(d_fake.detach()).mean()}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        out = super().evaluate(x)
        h = torch.cat([self.encode(xb) for xb in x.split(512)]).double()
        d = h.shape[1]
        mu, cov = fid.gaussian_stats(h) if len(h) > 1 else (h[0], torch.zeros(d, d))
        out["z_fd"] = fid.frechet_distance(mu, cov, torch.zeros(d), torch.eye(d))
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1] decoded from z ~ N(0, I)."""
        z = randn((n, self.config.latent_dim), model_device(self), generator)
        return pixel_mean(self.decode(z), self.config)

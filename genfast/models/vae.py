"""Variational autoencoder with a Gaussian latent (Kingma & Welling 2014), the pytorch/examples
vae/main.py model scaled to the embedded 8x8 digits.

q(z|x) = N(mu(x), diag exp(logvar(x))) from an encoder with a (mu, logvar) head; prior N(0, I);
p(x|z) from the decoder (Bernoulli logits on grey levels by default, genfast.models._latent).
Training maximises the single-sample reparameterised ELBO

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)),   z = mu + exp(logvar / 2) * eps,

with the KL in closed form (``beta`` scales it in the training objective only, as beta-VAE and
AntixK/PyTorch-VAE's kld_weight do; the reported figures are always the true bound).

Held-out figures (`evaluate`, nats per image): ``loss`` = negative ELBO (``recon`` + ``kl``),
``iwae`` = the negative importance-weighted bound of Burda et al. (2016) with ``iwae_samples``
draws (a tighter upper bound on the negative log-likelihood), ``mse`` = per-pixel squared error
of the mean reconstruction from z = mu, and ``fd`` = FD-digits of prior samples.
Defaults: encoder 64-256-256-(8, 8), decoder mirrored, Adam lr 1e-3, batch 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ._latent import (
    LatentConfig,
    build_decoder,
    build_encoder,
    elbo_iwae,
    fd_of_samples,
    gaussian_kl,
    log_likelihood,
    log_weights,
    model_device,
    pixel_mean,
    randn,
)


@dataclass
class VAEConfig(LatentConfig):
    beta: float = 1.0  # KL weight in the training objective (1 = the ELBO)
    iwae_samples: int = 64  # k of the held-out importance-weighted bound

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.beta, (int, float)) and self.beta >= 0):
            raise ValueError(f"beta must be a float >= 0, got {self.beta!r}")
        if not isinstance(self.iwae_samples, int) or self.iwae_samples < 1:
            raise ValueError(f"iwae_samples must be an int >= 1, got {self.iwae_samples!r}")


class VAE(nn.Module):
    """x (B, C, H, W) in [0, 1] -> (mu, logvar) (B, latent_dim) -> decoder outputs (B, C, H, W).
    ``arch="conv"`` gives the convolutional VAE (genfast.models.conv_vae)."""

    config_cls: ClassVar[type] = VAEConfig
    description: ClassVar[str] = "VAE, Gaussian latent, dense nets (Kingma & Welling 2014)"
    # Held-out negative ELBO still falls slowly at 10k steps (23.7 nats, 1.5 min at 2 threads).
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 10000, "batch_size": 100, "lr": 1e-3, "sample_every": 1000,
        "checkpoint_every": 1000}

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or self.config_cls()
        self.image_shape = c.image_shape
        self.encoder = build_encoder(c, 2 * c.latent_dim)
        self.decoder = build_decoder(c)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|x), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Decoder outputs (logits or means) (B, C, H, W) for latents (B, latent_dim)."""
        return self.decoder(z)

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Training objective (mean over the batch of recon + beta * KL) and its parts."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -log_likelihood(self.decode(z), x, self.config).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return recon + self.config.beta * kl, {"recon": recon, "kl": kl}

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        loss, parts = self.loss(x)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # 0-dim tensors: the trainer sums them on the device (no host sync per step).
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def bounds(self, x: Tensor, k: int | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-image estimates (nats) on x: ``elbo`` (k-sample mean of log p(x|z) minus the
        closed-form KL), ``iwae`` (the k-sample importance-weighted bound), ``recon``, ``kl``."""
        k = k or self.config.iwae_samples
        mu, logvar = self.encode(x)
        log_w, ll = log_weights(x, mu, logvar, self.decode, self.config, k, generator)
        kl = gaussian_kl(mu, logvar)
        recon = -ll.mean(0)
        return {"elbo": -recon - kl, "iwae": elbo_iwae(log_w)[1], "recon": recon, "kl": kl}

    @torch.no_grad()
    def evaluate(self, x: Tensor, batch_size: int = 256) -> dict[str, float]:
        """Held-out negative ELBO (``loss``), negative IWAE bound, per-pixel MSE, FD-digits."""
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "iwae": 0.0, "mse": 0.0}
        for xb in x.split(batch_size):
            b = self.bounds(xb)
            sums["loss"] -= b["elbo"].sum().item()
            sums["iwae"] -= b["iwae"].sum().item()
            sums["recon"] += b["recon"].sum().item()
            sums["kl"] += b["kl"].sum().item()
            sums["mse"] += (self.reconstruct(xb) - xb).square().flatten(1).mean(1).sum().item()
        out = {k: v / len(x) for k, v in sums.items()}
        out["fd"] = fd_of_samples(self, x)
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1]: z ~ N(0, I), shown as the decoder's mean image."""
        z = randn((n, self.config.latent_dim), model_device(self), generator)
        return pixel_mean(self.decode(z), self.config)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from the posterior means (no sampling noise)."""
        return pixel_mean(self.decode(self.encode(x)[0]), self.config)

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """Posterior means (B, latent_dim): what the latent-space map plots."""
        return self.encode(x)[0]

"""Autoencoders, dense and convolutional: a deterministic code H = sigma(W_e X) (seed 003's
sigmoid code; ``code="linear"`` drops the squashing) and a decoder back to the image, trained on
the reconstruction loss -log p(x|h) (per-pixel binary cross-entropy on grey levels by default,
Gaussian = scaled squared error with ``likelihood="gaussian"``).

* ``autoencoder``: dense, 64-256-256-8 and back (hidden=() is the seed's one-layer
  H = sigma(W_e X), X' = sigma(W_d H)).
* ``conv-autoencoder``: Conv(k4, s2, p1) + LeakyReLU stages 1x8x8 -> 32x4x4 -> 64x2x2, a linear
  code, ConvTranspose stages back (the shapes are checked as in genfast.models.conv_vae).

An autoencoder has no prior to sample from. ``sample`` decodes codes drawn from a Gaussian
fitted to the training codes (a running mean and covariance over the training batches, stored
as buffers so checkpoints resume exactly; sigmoid codes are clipped to [0, 1]): a plain way to
see what the code space holds, and what FD-digits scores. Held-out figures: ``loss`` =
reconstruction loss (nats per image for the Bernoulli likelihood), ``mse`` = per-pixel squared
error, ``fd`` = FD-digits of those samples against the held-out digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ._latent import (
    LatentConfig,
    build_decoder,
    build_encoder,
    fd_of_samples,
    log_likelihood,
    pixel_mean,
    randn,
)

# After this many batches the code statistics become an exponential average (weight 1/this),
# so the fitted Gaussian follows the codes as training moves them.
_STAT_WINDOW = 100


@dataclass
class AutoencoderConfig(LatentConfig):
    code: Literal["sigmoid", "linear"] = "sigmoid"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.code not in ("sigmoid", "linear"):
            raise ValueError(f"code must be 'sigmoid' or 'linear', got {self.code!r}")


@dataclass
class ConvAutoencoderConfig(AutoencoderConfig):
    arch: str = "conv"


class Autoencoder(nn.Module):
    """x (B, C, H, W) in [0, 1] -> code h (B, latent_dim) -> decoder outputs (B, C, H, W)."""

    config_cls: ClassVar[type] = AutoencoderConfig
    description: ClassVar[str] = "autoencoder, dense, sigmoid code H = sigma(W_e X) (seed 003)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 10000, "batch_size": 100, "lr": 1e-3, "sample_every": 1000,
        "checkpoint_every": 1000}

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or self.config_cls()
        self.image_shape = c.image_shape
        self.encoder = build_encoder(c, c.latent_dim)
        self.decoder = build_decoder(c)
        d = c.latent_dim
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_outer", torch.zeros(d, d))  # running E[h h^T]
        self.register_buffer("code_batches", torch.zeros((), dtype=torch.long))

    def encode(self, x: Tensor) -> Tensor:
        h = self.encoder(x)
        return torch.sigmoid(h) if self.config.code == "sigmoid" else h

    def decode(self, h: Tensor) -> Tensor:
        return self.decoder(h)

    def recon_loss(self, x: Tensor, h: Tensor) -> Tensor:
        """-log p(x|h) per image (B,)."""
        return -log_likelihood(self.decode(h), x, self.config)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    @torch.no_grad()
    def _track_codes(self, h: Tensor) -> None:
        # Computed on the device: reading the count back would sync the host every step.
        self.code_batches.add_(1)
        w = (1.0 / self.code_batches).clamp_min(1.0 / _STAT_WINDOW)
        h = h.detach().float()
        self.code_mean.lerp_(h.mean(0), w)
        self.code_outer.lerp_(h.T @ h / len(h), w)

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        h = self.encode(x)
        loss = self.recon_loss(x, h).mean()
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self._track_codes(h)
        return {"loss": loss.detach()}  # summed on the device by the trainer

    @torch.no_grad()
    def recon_metrics(self, x: Tensor, batch_size: int = 512) -> dict[str, float]:
        """Mean reconstruction loss per image and mean per-pixel squared error on x."""
        loss = mse = 0.0
        for xb in x.split(batch_size):
            h = self.encode(xb)
            out = self.decode(h)
            loss -= log_likelihood(out, xb, self.config).sum().item()
            mse += (pixel_mean(out, self.config) - xb).square().flatten(1).mean(1).sum().item()
        return {"loss": loss / len(x), "mse": mse / len(x)}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        return {**self.recon_metrics(x), "fd": fd_of_samples(self, x)}

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n codes from N(running mean, running covariance) of the training codes."""
        cov = self.code_outer - torch.outer(self.code_mean, self.code_mean)
        w, v = torch.linalg.eigh((cov + cov.T) / 2)
        eps = randn((n, len(w)), w.device, generator)
        h = self.code_mean + (eps * w.clamp_min(0).sqrt()) @ v.T
        return h.clamp(0.0, 1.0) if self.config.code == "sigmoid" else h

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1] decoded from codes drawn as the module says."""
        return pixel_mean(self.decode(self.sample_codes(n, generator)), self.config)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return pixel_mean(self.decode(self.encode(x)), self.config)

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """Codes (B, latent_dim): what the latent-space map plots."""
        return self.encode(x)


class ConvAutoencoder(Autoencoder):
    config_cls: ClassVar[type] = ConvAutoencoderConfig
    description: ClassVar[str] = "autoencoder, conv / deconv blocks, sigmoid code"

"""Categorical VAE (Jang, Gu & Poole 2017, "Categorical Reparameterization with Gumbel-Softmax").

The latent code is `latents` independent categorical variables with `categories` classes each.
The encoder gives their logits; training passes a Gumbel-Softmax relaxation of a sample to the
decoder, with the temperature annealed as in the paper (genfast.nn.TemperatureSchedule).

Negative ELBO per image, in nats:
    recon = sum_pixels BCE(decoder(z), x),   z ~ q(z|x)
    kl    = sum_latents KL(q(z_i|x) || Uniform(K)) = sum_i sum_k q_ik (log q_ik + log K)
Pixels are grey levels in [0, 1] used as Bernoulli targets (as most VAE code does). That is not
a normalised likelihood of continuous data, so the figure compares runs and models on the same
data; it is not an NLL in the PixelCNN/binarised-MNIST sense.

Training uses the relaxed sample (the objective the paper optimises); `evaluate` reports the
true discrete-latent bound, drawing exact one-hot z ~ q with genfast.sample_categorical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genfast
from genfast.nn import GumbelSoftmax, TemperatureSchedule


@dataclass
class GumbelVAEConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)
    latents: int = 8  # N categorical variables
    categories: int = 10  # K classes each: N * log K = 18.4 nats of code, plenty for 8x8 digits
    hidden: int = 256
    hard: bool = False  # straight-through one-hot in the forward pass (the paper's "ST" variant)
    # Jang et al. anneal tau = max(0.5, exp(-r t)); r is scaled up here because a run is
    # thousands of steps, not hundreds of thousands.
    tau_start: float = 1.0
    tau_end: float = 0.5
    tau_rate: float = 5e-4
    tau_every: int = 100
    eval_samples: int = 8  # z draws per held-out image for the discrete bound

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # lists after a JSON trip
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        for name in ("latents", "categories", "hidden", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.categories < 2:
            raise ValueError(f"categories must be >= 2, got {self.categories}")


class GumbelVAE(nn.Module):
    """x (B, C, H, W) in [0, 1] -> logits of q(z|x) (B, latents, categories) -> x logits."""

    config_cls: ClassVar[type] = GumbelVAEConfig
    description: ClassVar[str] = "categorical VAE with Gumbel-Softmax latents (Jang et al. 2017)"
    # Held-out negative ELBO bottoms out near step 3000 on the digits (25.4 nats) and rises after.
    train_defaults: ClassVar[dict[str, float | int]] = {"steps": 3000, "batch_size": 100,
                                                         "lr": 1e-3}

    def __init__(self, config: GumbelVAEConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GumbelVAEConfig()
        self.image_shape = c.image_shape
        d, code = math.prod(c.image_shape), c.latents * c.categories
        self.encoder = nn.Sequential(nn.Linear(d, c.hidden), nn.ReLU(),
                                     nn.Linear(c.hidden, c.hidden), nn.ReLU(),
                                     nn.Linear(c.hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, c.hidden), nn.ReLU(),
                                     nn.Linear(c.hidden, c.hidden), nn.ReLU(),
                                     nn.Linear(c.hidden, d))
        self.gumbel = GumbelSoftmax(tau=c.tau_start, hard=c.hard)
        self.schedule = TemperatureSchedule(c.tau_start, c.tau_end, c.tau_rate, c.tau_every)

    def encode(self, x: Tensor) -> Tensor:
        """Logits of q(z|x): (B, latents, categories)."""
        return self.encoder(x.flatten(1)).view(-1, self.config.latents, self.config.categories)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits (B, C, H, W) from codes z (B, latents, categories), one-hot or relaxed."""
        return self.decoder(z.flatten(1)).view(-1, *self.image_shape)

    def loss(self, x: Tensor, z: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean negative ELBO over the batch, relaxed z unless `z` (one-hot) is given."""
        logits = self.encode(x)
        if z is None:
            z = self.gumbel(logits)
        recon = F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none")
        recon = recon.flatten(1).sum(1)
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * (log_q + math.log(self.config.categories))).sum((1, 2))
        return (recon + kl).mean(), {"recon": recon.mean(), "kl": kl.mean()}

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, float]:
        tau = self.schedule.apply(self, step)
        loss, parts = self.loss(x)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "tau": tau}

    @torch.no_grad()
    def evaluate(self, x: Tensor, batch_size: int = 512) -> dict[str, float]:
        """Discrete-latent negative ELBO (nats/image) on `x`, averaged over eval_samples draws."""
        totals = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        for xb in x.split(batch_size):
            logits = self.encode(xb)
            for _ in range(self.config.eval_samples):
                idx = genfast.sample_categorical(logits)
                z = F.one_hot(idx, self.config.categories).to(logits.dtype)
                loss, parts = self.loss(xb, z)
                w = len(xb) / (len(x) * self.config.eval_samples)
                totals["loss"] += loss.item() * w
                for k, v in parts.items():
                    totals[k] += v.item() * w
        return totals

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1]: z drawn from the uniform prior as exact one-hots,
        shown as the decoder's pixel means (Bernoulli probabilities)."""
        dev = next(self.parameters()).device
        idx = torch.randint(self.config.categories, (n, self.config.latents), device=dev,
                            generator=generator)
        z = F.one_hot(idx, self.config.categories).float()
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel means decoded from the most likely code of each image (no sampling noise)."""
        logits = self.encode(x)
        z = F.one_hot(logits.argmax(-1), self.config.categories).to(logits.dtype)
        return torch.sigmoid(self.decode(z))

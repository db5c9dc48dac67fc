"""What the image GANs share: DCGAN-style builders, the alternating train step, truncation.

A GAN here is a :class:`GAN` subclass that picks its discriminator and its two losses; the
generator is the pytorch/examples DCGAN generator, scaled to the image size. Training plugs
into genfast.models._trainer like every image model:

* one trainer step = one discriminator (critic) update on that step's real batch; every
  ``n_critic``-th step (``step % n_critic == n_critic - 1``) is followed by one generator
  update. ``--steps`` therefore counts discriminator updates (WGAN-GP's 5000 steps are 1000
  generator updates). The schedule is a function of the step, so resumed runs match.
* the generator draws z ~ N(0, I); images are tanh outputs in [-1, 1], shown in [0, 1].
* ``evaluate`` reports FD-digits (genfast.models.fid) between ``fd_samples`` generated images
  and the held-out digits, as ``fd`` and as the headline ``loss``.

Truncation trick (``sample(n, truncation=psi)``, CLI ``--truncation PSI``): the default mode
``"resample"`` is BigGAN's (Brock et al. 2019): every latent component with |z_i| > psi is
redrawn until it lies in [-psi, psi], i.e. z follows N(0, I) truncated to [-psi, psi]^d (drawn
in one pass by the inverse CDF, which gives exactly that distribution); psi = None (or inf) is
no truncation. ``"interpolate"`` is the StyleGAN form w = mean + psi (w - mean); with no
mapping network the mean latent is E[z] = 0, so it scales z by psi (psi = 1 is a no-op,
psi = 0 gives the single "mean" image). Either way smaller psi means less diversity. These
generators sample with BatchNorm's running statistics, so shrinking z pulls every image
toward G(0), a faint blurred digit: on the digits, diversity falls monotonically with psi but
FD-digits and the classifier's confidence get worse rather than better; psi >= 1.5 keeps
samples digit-like (the trick pays off on large conditional models such as BigGAN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fid

TruncationMode = Literal["resample", "interpolate"]


@dataclass
class GANConfig:
    image_shape: tuple[int, int, int] = (1, 16, 16)  # (C, H, W); H = W = 4 * 2^k
    z_dim: int = 100
    g_width: int = 64  # ngf: generator channels at the last hidden stage (doubling inward)
    d_width: int = 64  # ndf: discriminator channels at the first stage
    betas: tuple[float, float] = (0.5, 0.999)  # Adam, both networks
    n_critic: int = 1  # discriminator updates per generator update
    fd_samples: int = 1000  # generated images per FD-digits evaluation

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # lists after a JSON trip
        self.betas = tuple(float(b) for b in self.betas)
        c, h, w = self.image_shape if len(self.image_shape) == 3 else (0, 0, 0)
        if c < 1 or h != w or h < 8 or h & (h - 1):
            raise ValueError(f"image_shape must be (C, S, S) with S a power of 2 >= 8, "
                             f"got {self.image_shape}")
        for name in ("z_dim", "g_width", "d_width", "n_critic", "fd_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.fd_samples < 2:
            raise ValueError(f"fd_samples must be >= 2, got {self.fd_samples}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas}")


def stages(size: int) -> int:
    """Stride-2 stages between 4x4 and size x size."""
    return int(math.log2(size // 4))


def dcgan_generator(z_dim: int, width: int, channels: int, size: int) -> nn.Sequential:
    """pytorch/examples dcgan Generator for `size`: ConvT(z -> width*2^(k-1), 4, 1, 0) to 4x4,
    then k ConvT(4, 2, 1) stages halving channels, BatchNorm + ReLU between, Tanh out.
    (size 64 gives the original 8ngf-4ngf-2ngf-ngf; 16 gives 2ngf-ngf.) Input (B, z, 1, 1)."""
    k = stages(size)
    ch = [width * 2 ** (k - 1 - i) for i in range(k)]  # 4x4 ... size/2 x size/2
    layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ch[0], 4, 1, 0, bias=False),
                               nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
    for a, b in zip(ch, ch[1:], strict=False):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def dcgan_discriminator(channels: int, width: int, size: int, batchnorm: bool = True,
                        slope: float = 0.2) -> nn.Sequential:
    """pytorch/examples dcgan Discriminator for `size`: k Conv(4, 2, 1) stages doubling
    channels from `width` to 4x4 (BatchNorm after all but the first, LeakyReLU), then
    Conv(4, 1, 0) to one logit per image, returned as (B,) (no sigmoid: losses take logits).
    ``batchnorm=False`` is the critic WGAN-GP needs (the penalty is per sample)."""
    k = stages(size)
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(k):
        c_out = width * 2 ** i
        layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not (batchnorm and i > 0)))
        if batchnorm and i > 0:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(slope, True))
        c_in = c_out
    layers += [nn.Conv2d(c_in, 1, 4, 1, 0, bias=False), nn.Flatten(0)]
    return nn.Sequential(*layers)


def dcgan_init_(module: nn.Module) -> None:
    """pytorch/examples weights_init: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def truncated_normal(shape: tuple[int, ...], psi: float, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """N(0, 1) conditioned on |z| <= psi, by the inverse CDF (the distribution that
    resampling every |z| > psi until it lands inside gives), in float64 then float32."""
    if not psi > 0:
        raise ValueError(f"truncation psi must be > 0, got {psi}")
    hi = 0.5 * (1.0 + math.erf(psi / math.sqrt(2.0)))  # Phi(psi)
    u = torch.rand(shape, device=device, generator=generator, dtype=torch.float64)
    u = (1.0 - hi) + (2.0 * hi - 1.0) * u  # U(Phi(-psi), Phi(psi))
    return torch.special.ndtri(u).clamp_(-psi, psi).float()


def draw_latent(shape: tuple[int, ...], dev: torch.device, truncation: float | None = None,
                truncation_mode: TruncationMode = "resample",
                generator: torch.Generator | None = None) -> Tensor:
    """N(0, I) latents of `shape`, truncated as the module docstring describes (psi None or,
    resampling, inf: none)."""
    if truncation is None or (truncation_mode == "resample" and math.isinf(truncation)):
        return torch.randn(shape, device=dev, generator=generator)
    if truncation_mode == "resample":
        return truncated_normal(shape, float(truncation), dev, generator)
    if truncation_mode == "interpolate":
        if not 0.0 <= truncation < math.inf:
            raise ValueError(f"interpolation truncation psi must be finite and >= 0, "
                             f"got {truncation}")
        return torch.randn(shape, device=dev, generator=generator) * float(truncation)
    raise ValueError(f"truncation_mode must be 'resample' or 'interpolate', "
                     f"got {truncation_mode!r}")


class GAN(nn.Module):
    """Generator + discriminator with the alternating update. Subclasses set ``config_cls``,
    ``description``, ``train_defaults``, build ``self.discriminator`` (and ``self.generator``
    when not the DCGAN one) and define the losses."""

    config_cls: ClassVar[type] = GANConfig
    description: ClassVar[str] = ""
    train_defaults: ClassVar[dict[str, float | int]] = {}

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = c = config
        self.image_shape = c.image_shape
        self.generator: nn.Module = self.build_generator()
        self.discriminator: nn.Module = self.build_discriminator()
        # The last generator loss, reported on steps that only update the discriminator (so
        # the trainer's per-window mean is a mean of real values); saved with the model so a
        # resumed run logs what an unbroken one would.
        self.register_buffer("last_g_loss", torch.zeros(()))

    # -- what a subclass defines --------------------------------------------------------------
    def build_generator(self) -> nn.Module:
        """The generator, from ``self.config``: maps latents (B, z_dim, 1, 1) to tanh images
        (B, C, H, W). The DCGAN generator unless a subclass builds its own."""
        c = self.config
        channels, size, _ = c.image_shape
        return dcgan_generator(c.z_dim, c.g_width, channels, size)

    def build_discriminator(self) -> nn.Module:
        raise NotImplementedError

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        raise NotImplementedError

    def g_loss(self, d_fake: Tensor) -> Tensor:
        raise NotImplementedError

    def penalty(self, real: Tensor, fake: Tensor, step: int) -> tuple[Tensor | None,
                                                                      dict[str, float]]:
        """An extra discriminator loss term (WGAN-GP's gradient penalty); none by default."""
        return None, {}

    # -- shared -------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        b = self.config.betas
        return {"d": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=b),
                "g": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=b)}

    def _device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def latent(self, n: int, truncation: float | None = None,
               truncation_mode: TruncationMode = "resample",
               generator: torch.Generator | None = None) -> Tensor:
        """n latent vectors (n, z_dim, 1, 1), truncated as the module docstring describes."""
        return draw_latent((n, self.config.z_dim, 1, 1), self._device(), truncation,
                           truncation_mode, generator)

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, float]:
        real = x * 2.0 - 1.0  # data in [0, 1] -> tanh range
        g_step = step % self.config.n_critic == self.config.n_critic - 1
        z = self.latent(real.shape[0])
        # One generator forward per step (as pytorch/examples): kept in the graph when the
        # generator is updated this step, detached for the discriminator update.
        with torch.set_grad_enabled(g_step):
            fake = self.generator(z)

        opt_d, opt_g = optimizers["d"], optimizers["g"]
        # Real and fake go through the discriminator as separate batches, so BatchNorm
        # statistics are never mixed (as in pytorch/examples).
        d_real = self.discriminator(real)
        d_fake = self.discriminator(fake.detach())
        d_loss = self.d_loss(d_real, d_fake)
        pen, extra = self.penalty(real, fake.detach(), step)
        opt_d.zero_grad(set_to_none=True)
        (d_loss if pen is None else d_loss + pen).backward()
        opt_d.step()

        if g_step:
            g_loss = self.g_loss(self.discriminator(fake))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # Gradients also reached the discriminator; the next update clears them.
            self.last_g_loss.fill_(g_loss.detach())
        # Tensors, not floats: the trainer reads them once per log (no host sync per step).
        return {"d_loss": d_loss.detach(), "g_loss": self.last_g_loss.clone(),
                "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean(), **extra}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """FD-digits between ``fd_samples`` generated images and `x` (held-out images)."""
        fd = fid.fd_digits(self.sample(self.config.fd_samples), x)
        return {"loss": fd, "fd": fd}

    @torch.no_grad()
    def generate(self, z: Tensor) -> Tensor:
        """Images in [0, 1] from latents (n, z_dim, 1, 1) or (n, z_dim)."""
        return (self.generator(z.view(len(z), -1, 1, 1)) + 1.0) / 2.0

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None,
               truncation_mode: TruncationMode = "resample",
               generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1]; `truncation` = psi of the truncation trick."""
        return self.generate(self.latent(n, truncation, truncation_mode, generator))


def bce_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def bce_g_loss(d_fake: Tensor) -> Tensor:
    """Non-saturating generator loss: -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))

"""What the latent-variable image models share: the autoencoder, the VAE, the convolutional VAE
and the adversarial autoencoder (genfast.models.autoencoder, vae, conv_vae, aae).

* :class:`LatentConfig` — image shape, latent size, dense or convolutional networks, the pixel
  likelihood; the convolutional shapes are checked when the config is built.
* dense / convolutional encoder and decoder builders (:func:`build_encoder`,
  :func:`build_decoder`), and the output-size formulas they are checked with:
  convolution ``floor((n + 2p - k) / s) + 1``, transposed convolution
  ``s (n - 1) - 2p + k + output_padding``. A configuration whose decoder does not return to the
  input size fails with a ValueError naming the argument, not with a shape error mid-training.
* the pixel likelihood p(x|z): ``"bernoulli"`` (decoder outputs logits; grey levels in [0, 1]
  are used as Bernoulli targets, as most VAE code does: comparable between models on the same
  data, not a normalised density of continuous pixels; its floor is the targets' own binary
  entropy, 13.8 nats per held-out digit) or ``"gaussian"`` (decoder outputs the
  mean, fixed standard deviation ``sigma``: a true density, used by the exact-likelihood test).
* the Gaussian-latent estimators (:func:`gaussian_kl`, :func:`log_weights`, :func:`elbo_iwae`):
  the ELBO and the importance-weighted bound of Burda et al. (2016),
  ``log p(x) >= IWAE_k = E log (1/k) sum_i p(x, z_i) / q(z_i|x) >= ELBO = IWAE_1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fid

Likelihood = Literal["bernoulli", "gaussian"]
Arch = Literal["dense", "conv"]
_LOG_2PI = math.log(2.0 * math.pi)


def conv_out(n: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a convolution: floor((n + 2p - k) / s) + 1."""
    return (n + 2 * padding - kernel_size) // stride + 1


def deconv_out(n: int, kernel_size: int, stride: int, padding: int,
               output_padding: int = 0) -> int:
    """Output length of a transposed convolution: s (n - 1) - 2p + k + output_padding."""
    return stride * (n - 1) - 2 * padding + kernel_size + output_padding


def check_round_trip(size: int, stages: int, kernel_size: int, stride: int, padding: int,
                     output_padding: int = 0, dim: str = "height") -> int:
    """The encoder's last spatial size, after checking that `stages` convolutions shrink `size`
    to >= 1 and that as many transposed convolutions grow it back to exactly `size`."""
    for name, v, lo in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                        ("padding", padding, 0), ("output_padding", output_padding, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if output_padding >= stride:
        raise ValueError(f"output_padding must be smaller than stride ({stride}), "
                         f"got {output_padding}")
    args = (f"kernel_size={kernel_size}, stride={stride}, padding={padding}, "
            f"output_padding={output_padding}")
    down = [size]
    for _ in range(stages):
        down.append(conv_out(down[-1], kernel_size, stride, padding))
        if down[-1] < 1:
            raise ValueError(f"image {dim} {size} with {args}: the encoder's sizes "
                             f"{' -> '.join(map(str, down))} vanish after {len(down) - 1} of "
                             f"{stages} stages (floor((n + 2p - k)/s) + 1); use fewer channels "
                             f"stages, a larger image_shape or a smaller kernel_size")
    up = [down[-1]]
    for _ in range(stages):
        up.append(deconv_out(up[-1], kernel_size, stride, padding, output_padding))
    if up[-1] != size:
        raise ValueError(f"image {dim} {size} with {args} cannot round-trip: the encoder maps "
                         f"{' -> '.join(map(str, down))} (floor((n + 2p - k)/s) + 1) but the "
                         f"decoder maps {' -> '.join(map(str, up))} (s(n - 1) - 2p + k + "
                         f"output_padding), not back to {size}; change kernel_size, padding or "
                         f"output_padding (k=4, s=2, p=1 halves and doubles exactly)")
    return down[-1]


@dataclass
class LatentConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W)
    latent_dim: int = 8
    arch: Arch = "dense"
    hidden: tuple[int, ...] = (256, 256)  # dense: widths of the encoder (decoder mirrors them)
    channels: tuple[int, ...] = (32, 64)  # conv: channels of each stride stage
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    output_padding: int = 0
    likelihood: Likelihood = "bernoulli"
    sigma: float = 0.1  # gaussian likelihood: the fixed pixel standard deviation
    fd_samples: int = 1000  # generated images per FD-digits evaluation

    def __post_init__(self) -> None:
        # JSON checkpoints turn tuples into lists.
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, "
                             f"got {self.image_shape}")
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be an int >= 1, got {self.latent_dim!r}")
        if self.arch not in ("dense", "conv"):
            raise ValueError(f"arch must be 'dense' or 'conv', got {self.arch!r}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', "
                             f"got {self.likelihood!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite float > 0, got {self.sigma!r}")
        if not isinstance(self.fd_samples, int) or self.fd_samples < 2:
            raise ValueError(f"fd_samples must be an int >= 2, got {self.fd_samples!r}")
        if self.arch == "conv":
            if not self.channels or any(c < 1 for c in self.channels):
                raise ValueError(f"channels must be a non-empty tuple of ints >= 1, "
                                 f"got {self.channels}")
            for dim, n in (("height", self.image_shape[1]), ("width", self.image_shape[2])):
                check_round_trip(n, len(self.channels), self.kernel_size, self.stride,
                                 self.padding, self.output_padding, dim)

    def bottom(self) -> tuple[int, int]:
        """The conv encoder's last spatial size (h, w)."""
        args = (len(self.channels), self.kernel_size, self.stride, self.padding,
                self.output_padding)
        return (check_round_trip(self.image_shape[1], *args, dim="height"),
                check_round_trip(self.image_shape[2], *args, dim="width"))


def mlp(sizes: list[int], slope: float = 0.0) -> nn.Sequential:
    """Linear layers between consecutive `sizes`, ReLU (LeakyReLU if slope) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope) if slope else nn.ReLU())
    return nn.Sequential(*layers)


def build_encoder(c: LatentConfig, out: int) -> nn.Sequential:
    """Images (B, C, H, W) -> (B, out). Dense: an MLP through ``hidden``; conv: stride stages
    Conv(k, s, p) + LeakyReLU(0.2) through ``channels``, flattened into one linear layer."""
    ch, h, w = c.image_shape
    if c.arch == "dense":
        return nn.Sequential(nn.Flatten(), *mlp([ch * h * w, *c.hidden, out]))
    layers: list[nn.Module] = []
    for a, b in zip((ch, *c.channels), c.channels, strict=False):
        layers += [nn.Conv2d(a, b, c.kernel_size, c.stride, c.padding), nn.LeakyReLU(0.2)]
    bh, bw = c.bottom()
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c.channels[-1] * bh * bw, out))


def build_decoder(c: LatentConfig) -> nn.Sequential:
    """Latents (B, latent_dim) -> pixel logits or means (B, C, H, W): the mirror of the encoder
    (conv: one linear layer to the bottom grid, then ConvTranspose(k, s, p, output_padding)
    stages back to the image, LeakyReLU(0.2) between, none after the last)."""
    ch, h, w = c.image_shape
    if c.arch == "dense":
        return nn.Sequential(*mlp([c.latent_dim, *reversed(c.hidden), ch * h * w]),
                             nn.Unflatten(1, c.image_shape))
    bh, bw = c.bottom()
    rev = list(reversed(c.channels))
    layers: list[nn.Module] = [nn.Linear(c.latent_dim, rev[0] * bh * bw), nn.LeakyReLU(0.2),
                               nn.Unflatten(1, (rev[0], bh, bw))]
    outs = [*rev[1:], ch]
    for i, (a, b) in enumerate(zip(rev, outs, strict=True)):
        layers.append(nn.ConvTranspose2d(a, b, c.kernel_size, c.stride, c.padding,
                                         c.output_padding))
        if i < len(outs) - 1:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def log_likelihood(out: Tensor, x: Tensor, c: LatentConfig) -> Tensor:
    """log p(x|z) summed over pixels, from decoder outputs `out` (logits or means), shape
    (..., C, H, W) broadcast against x -> (...)."""
    if c.likelihood == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none")
    else:
        ll = -0.5 * ((x - out) / c.sigma).square() - math.log(c.sigma) - 0.5 * _LOG_2PI
    return ll.flatten(-3).sum(-1)


def pixel_mean(out: Tensor, c: LatentConfig) -> Tensor:
    """The decoder's mean image, shown in [0, 1]."""
    return torch.sigmoid(out) if c.likelihood == "bernoulli" else out.clamp(0.0, 1.0)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: -1/2 sum(1 + logvar - mu^2 - e^logvar)."""
    return -0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(-1)


def log_normal(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dim (standard normal by default)."""
    if mu is None or logvar is None:
        return -0.5 * (z.square() + _LOG_2PI).sum(-1)
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def log_weights(x: Tensor, mu: Tensor, logvar: Tensor, decode, c: LatentConfig, k: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """k importance samples z ~ q(z|x) per image: returns (log w, log p(x|z)), each (k, B), with
    log w = log p(x|z) + log p(z) - log q(z|x). `decode` maps (N, latent) to decoder outputs."""
    eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype, generator=generator)
    z = mu + eps * torch.exp(0.5 * logvar)
    out = decode(z.reshape(-1, mu.shape[-1])).reshape(k, len(x), *x.shape[1:])
    ll = log_likelihood(out, x, c)
    return ll + log_normal(z) - log_normal(z, mu, logvar), ll


def elbo_iwae(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """(ELBO, IWAE_k) per image from (k, B) log weights: mean_i log w_i and
    logsumexp_i log w_i - log k. The IWAE estimate is >= the ELBO estimate sample by sample
    (Jensen), and its expectation rises towards log p(x) as k grows."""
    k = log_w.shape[0]
    return log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(k)


def fd_of_samples(model: nn.Module, x: Tensor) -> float:
    """FD-digits (genfast.models.fid) of ``fd_samples`` model samples against images x."""
    return fid.fd_digits(model.sample(model.config.fd_samples), x)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def randn(shape: tuple[int, ...], device: torch.device,
          generator: torch.Generator | None = None) -> Tensor:
    """Standard normal draws on `device`, taken from `generator` on its own device (so a CPU
    generator seeds the same samples for a model on any device)."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)

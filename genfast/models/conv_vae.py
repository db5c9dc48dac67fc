"""Convolutional VAE: the Gaussian-latent VAE of genfast.models.vae with convolutional nets, in
the manner of AntixK/PyTorch-VAE's vanilla_vae (strided Conv blocks down, ConvTranspose blocks
up), scaled to the embedded 8x8 digits.

Encoder: Conv2d(k=4, s=2, p=1) + LeakyReLU(0.2) per entry of ``channels`` (1x8x8 -> 32x4x4 ->
64x2x2), flattened into a linear (mu, logvar) head. Decoder: linear to 64x2x2, then
ConvTranspose2d(k=4, s=2, p=1) stages back to 1x8x8 (LeakyReLU between, Bernoulli logits out).
The config checks the sizes before anything is built: each convolution maps n to
floor((n + 2p - k)/s) + 1 and each transposed one maps n to s(n - 1) - 2p + k + output_padding;
if the decoder does not come back to the image size (e.g. k=3, s=2, p=1 on 8x8: 8 -> 4 -> 2 but
2 -> 3 -> 5) the config raises a ValueError naming kernel_size, padding and output_padding.

No BatchNorm (AntixK uses it): with it the held-out bound would depend on batch statistics.
``beta`` is that repository's kld_weight, its most-asked question: on MSE-scaled 64x64 images
a weight of 1 blurs samples, so it uses 0.00025; here the likelihood is a per-pixel Bernoulli
summed over the image, and beta = 1 (the true ELBO) is the default. Held-out figures as in
genfast.models.vae: negative ELBO, negative IWAE bound (k = 64), per-pixel MSE, FD-digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .vae import VAE, VAEConfig


@dataclass
class ConvVAEConfig(VAEConfig):
    arch: str = "conv"
    channels: tuple[int, ...] = (32, 64)


class ConvVAE(VAE):
    config_cls: ClassVar[type] = ConvVAEConfig
    description: ClassVar[str] = "convolutional VAE, conv / deconv blocks (AntixK/PyTorch-VAE)"
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 10000, "batch_size": 100, "lr": 1e-3, "sample_every": 1000,
        "checkpoint_every": 1000}

"""Models built from genfast.nn, and the registry the CLI trains and samples from.

Each registry entry is an ``nn.Module`` class with ``config_cls`` (its config dataclass),
``description``, ``train_defaults`` and the methods genfast.models._trainer documents.
"""

from __future__ import annotations

from torch import nn

from .aae import AAE, AAEConfig
from .autoencoder import Autoencoder, AutoencoderConfig, ConvAutoencoder, ConvAutoencoderConfig
from .cgan import CGAN, CGANConfig
from .char_rnn import CharRNN, CharRNNConfig
from .conv_vae import ConvVAE, ConvVAEConfig
from .dcgan import DCGAN, DCGANConfig
from .gan import GANMLPConfig, VanillaGAN
from .gmm import GaussianMixture, GMMConfig
from .gpt import GPT, GPTConfig
from .gsgan import GSGAN, GSGANConfig
from .gumbel_vae import GumbelVAE, GumbelVAEConfig
from .lda import LatentDirichletAllocation, LDAConfig
from .music_lstm import MusicLSTM, MusicLSTMConfig
from .pggan import PGGAN, PGGANConfig
from .pixelcnn import GatedPixelCNNConfig, GatedPixelCNNModel, PixelCNNConfig, PixelCNNModel
from .sagan import SAGAN, SAGANConfig
from .sngan import SNGAN, SNGANConfig
from .srgan import SRGAN, SRGANConfig
from .unet_nogan import UNetNoGAN, UNetNoGANConfig
from .vae import VAE, VAEConfig
from .wavenet import WaveNetConfig, WaveNetModel
from .wgan_gp import WGANGP, WGANGPConfig

REGISTRY: dict[str, type[nn.Module]] = {
    "gumbel-vae": GumbelVAE,
    "gan": VanillaGAN,
    "cgan": CGAN,
    "dcgan": DCGAN,
    "sngan": SNGAN,
    "sagan": SAGAN,
    "wgan-gp": WGANGP,
    "pggan": PGGAN,
    "autoencoder": Autoencoder,
    "conv-autoencoder": ConvAutoencoder,
    "vae": VAE,
    "conv-vae": ConvVAE,
    "aae": AAE,
    "gmm": GaussianMixture,
    "lda": LatentDirichletAllocation,
    "wavenet": WaveNetModel,
    "pixelcnn": PixelCNNModel,
    "gated-pixelcnn": GatedPixelCNNModel,
    "char-rnn": CharRNN,
    "music-lstm": MusicLSTM,
    "gsgan": GSGAN,
    "unet-nogan": UNetNoGAN,
    "srgan": SRGAN,
    "gpt": GPT,
}


def get(name: str) -> type[nn.Module]:
    """The model class registered as `name`; the error lists every registered name."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = "\n".join(f"  {k:<14} {v.description}" for k, v in sorted(REGISTRY.items()))
        raise KeyError(f"unknown model {name!r}; registered models:\n{known}") from None


__all__ = ["AAE", "VAE", "AAEConfig", "Autoencoder", "AutoencoderConfig", "ConvAutoencoder",
           "ConvAutoencoderConfig", "ConvVAE", "ConvVAEConfig", "VAEConfig",
           "DCGAN", "REGISTRY", "SNGAN", "WGANGP", "DCGANConfig", "GumbelVAE",
           "GumbelVAEConfig", "SNGANConfig", "WGANGPConfig", "get",
           "GMMConfig", "GaussianMixture", "LDAConfig", "LatentDirichletAllocation",
           "WaveNetConfig", "WaveNetModel", "GatedPixelCNNConfig", "GatedPixelCNNModel",
           "PixelCNNConfig", "PixelCNNModel", "GSGAN", "GSGANConfig",
           "CharRNN", "CharRNNConfig", "MusicLSTM", "MusicLSTMConfig", "GPT", "GPTConfig",
           "SAGAN", "SAGANConfig", "PGGAN", "PGGANConfig", "UNetNoGAN", "UNetNoGANConfig",
           "SRGAN", "SRGANConfig", "GANMLPConfig", "VanillaGAN", "CGAN", "CGANConfig"]

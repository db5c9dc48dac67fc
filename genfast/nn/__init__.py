"""Modules: drop-in replacements for torch.nn layers, built on genfast.ops."""

from .attention import CausalSelfAttention, KVCache
from .attention2d import SelfAttention2d
from .causal_conv import CausalConv1d, WaveNet, WaveNetLayer
from .gumbel import GumbelSoftmax, TemperatureSchedule
from .lstm import LSTM, LSTMCell, convert_lstm, revert_lstm
from .lstm_lm import LSTMLanguageModel
from .masked_conv import GatedPixelCNNLayer, MaskedConv2d, PixelCNN
from .spectral_norm import (
    SpectralNorm,
    SpectralNormGroup,
    convert_spectral_norm,
    remove_spectral_norm,
    revert_spectral_norm,
    spectral_norm,
)

__all__ = ["CausalConv1d", "CausalSelfAttention", "GatedPixelCNNLayer", "GumbelSoftmax",
           "KVCache", "LSTM", "LSTMCell",
           "LSTMLanguageModel",
           "MaskedConv2d", "PixelCNN", "SelfAttention2d",
           "SpectralNorm", "SpectralNormGroup",
           "TemperatureSchedule",
           "convert_lstm", "convert_spectral_norm", "revert_lstm",
           "remove_spectral_norm", "revert_spectral_norm",
           "spectral_norm", "WaveNet", "WaveNetLayer"]

"""Modules: drop-in replacements for torch.nn layers, built on genfast.ops."""

from .gumbel import GumbelSoftmax, TemperatureSchedule
from .spectral_norm import (
    SpectralNorm,
    SpectralNormGroup,
    convert_spectral_norm,
    remove_spectral_norm,
    revert_spectral_norm,
    spectral_norm,
)

__all__ = ["GumbelSoftmax", "SpectralNorm", "SpectralNormGroup", "TemperatureSchedule",
           "convert_spectral_norm", "remove_spectral_norm", "revert_spectral_norm",
           "spectral_norm"]

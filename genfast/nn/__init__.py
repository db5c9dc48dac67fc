"""Modules: drop-in replacements for torch.nn layers, built on genfast.ops."""

from .gumbel import GumbelSoftmax, TemperatureSchedule

__all__ = ["GumbelSoftmax", "TemperatureSchedule"]

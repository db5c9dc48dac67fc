"""GumbelSoftmax module and the temperature-annealing schedule of Jang et al. (2017)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.gumbel import gumbel_softmax


class GumbelSoftmax(nn.Module):
    """``genfast.gumbel_softmax`` as a layer. `tau` is a plain attribute a schedule can set.

    In eval mode with ``hard_eval=True`` (default False) it returns the noiseless one-hot of
    the argmax, which categorical VAEs and Gumbel GANs use at test time.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, dim: int = -1,
                 hard_eval: bool = False) -> None:
        super().__init__()
        self.tau, self.hard, self.dim, self.hard_eval = float(tau), hard, dim, hard_eval

    def forward(self, logits: Tensor, *, generator: torch.Generator | None = None,
                seed: int | None = None) -> Tensor:
        if not self.training and self.hard_eval:
            idx = logits.argmax(dim=self.dim, keepdim=True)
            return torch.zeros_like(logits).scatter_(self.dim, idx, 1.0)
        return gumbel_softmax(logits, self.tau, self.hard, dim=self.dim, generator=generator,
                              seed=seed)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, hard={self.hard}, dim={self.dim}"


@dataclass
class TemperatureSchedule:
    """tau(step) = max(end, start * exp(-rate * step)), updated every `every` steps."""

    start: float = 1.0
    end: float = 0.5
    rate: float = 3e-5
    every: int = 1

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.end > 0 and math.isfinite(self.start)):
            raise ValueError(f"start and end must be > 0, got {self.start}, {self.end}")
        if self.rate < 0 or self.every < 1:
            raise ValueError(f"rate must be >= 0 and every >= 1, got {self.rate}, {self.every}")

    def at(self, step: int) -> float:
        step = (step // self.every) * self.every
        return max(self.end, self.start * math.exp(-self.rate * step))

    def apply(self, module: nn.Module, step: int) -> float:
        """Set `tau` on every GumbelSoftmax inside `module`; returns the new temperature."""
        tau = self.at(step)
        for m in module.modules():
            if isinstance(m, GumbelSoftmax):
                m.tau = tau
        return tau

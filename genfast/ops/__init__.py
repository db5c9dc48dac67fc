"""Public functional API of every op family (importing this registers their torch.library ops)."""

from .gradient_penalty import GradientPenalty, gradient_penalty, per_sample_grad_norm
from .gumbel import gumbel_softmax, sample_categorical

__all__ = ["GradientPenalty", "gradient_penalty", "gumbel_softmax", "per_sample_grad_norm",
           "sample_categorical"]

"""Public functional API of every op family (importing this registers their torch.library ops)."""

from .gumbel import gumbel_softmax, sample_categorical

__all__ = ["gumbel_softmax", "sample_categorical"]

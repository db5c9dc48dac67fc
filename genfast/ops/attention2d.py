"""The SAGAN / BigGAN self-attention core on 2-D feature maps, on the fused attention op
(genfast/ops/attention.py): one head, queries are the H*W positions of theta, keys / values the
positions of phi / g, 2x2 max-pooled inside the kernel (BigGAN) or not (SAGAN), no 1/sqrt(d)
scale by default. The module around it (1x1 projections, output conv, gamma residual) is
genfast.nn.SelfAttention2d."""

from __future__ import annotations

from torch import Tensor

from . import _checks
from .attention import attention


def _nchw(name: str, t: object) -> Tensor:
    _checks.tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    return t


def attention2d(theta: Tensor, phi: Tensor, g: Tensor, *, pool: bool = True,
                scale: float = 1.0, backend: str | None = None) -> Tensor:
    """softmax_keys(scale theta^T phi) applied to g, per image: (B, Cv, H, W).

    theta, phi: (B, Cq, H, W); g: (B, Cv, H, W). Query n = position n of theta (row-major);
    with pool, keys / values are phi / g max-pooled 2x2 ((H//2) (W//2) of them, as
    F.max_pool2d(2)), without it all H*W positions. Memory O(H W (Cq + Cv)): the attention map
    is never stored. Differentiable to any order (R1 / WGAN-GP penalties through it)."""
    theta, phi, g = _nchw("theta", theta), _nchw("phi", phi), _nchw("g", g)
    B, Cq, H, W = theta.shape
    if tuple(phi.shape) != (B, Cq, H, W):
        raise ValueError(f"phi must have theta's shape {(B, Cq, H, W)}, got {tuple(phi.shape)}")
    if g.shape[0] != B or tuple(g.shape[2:]) != (H, W):
        raise ValueError(f"g must be (B={B}, Cv, H={H}, W={W}), got {tuple(g.shape)}")
    pool = _checks.boolean("pool", pool)
    if pool and (H < 2 or W < 2):
        raise ValueError(f"pool needs H, W >= 2, got H={H}, W={W}")
    rows = (lambda t: t.flatten(2).transpose(1, 2).unsqueeze(1))  # (B, 1, H*W, C)
    o = attention(rows(theta), rows(phi), rows(g), scale=scale, pool=(H, W) if pool else None,
                  backend=backend)
    return o.squeeze(1).transpose(1, 2).reshape(B, g.shape[1], H, W)

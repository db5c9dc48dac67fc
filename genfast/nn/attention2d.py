"""SelfAttention2d: the SAGAN / BigGAN self-attention layer on genfast's fused attention.

    theta = W_theta x   (C -> C/qk_ratio)     phi = W_phi x   (C -> C/qk_ratio)
    g     = W_g x       (C -> C/v_ratio)      1x1 convs, no bias
    a     = softmax over keys of (scale theta^T phi) times g, with phi and g max-pooled 2x2
            (pool=True, BigGAN) or not (pool=False, SAGAN)
    out   = x + gamma * W_o a                 (W_o: C/v_ratio -> C; gamma a scalar, 0 at init)

The attention core is genfast.attention2d: the (H W) x (H W / 4) map is never stored, so the
layer's memory is O(H W), and its backward is itself differentiable (R1 / WGAN-GP penalties on a
discriminator that contains it). The four convs are spectral-normalised through
genfast.nn.spectral_norm when ``spectral_norm=True`` (BigGAN's default ``which_conv=SNConv2d``).

Checkpoints of BigGAN-PyTorch's ``layers.Attention`` load into it (the same keys theta / phi /
g / o / gamma), see :meth:`SelfAttention2d._load_hook`. heykeetae's SAGAN ``Self_Attn`` is
``qk_ratio=8, v_ratio=1, pool=False`` with an identity ``o`` (it has no output conv).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.attention2d import attention2d as _attention2d
from .spectral_norm import spectral_norm as _spectral_norm

__all__ = ["SelfAttention2d"]

_CONVS = ("theta", "phi", "g", "o")


def _ratio(name: str, value: object, channels: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if channels % value:
        raise ValueError(f"channels ({channels}) must be divisible by {name} ({value})")
    return value


class SelfAttention2d(nn.Module):
    """Self-attention over the H x W positions of a (B, C, H, W) feature map (SAGAN / BigGAN).

    channels: C. qk_ratio: theta / phi have C // qk_ratio channels (8 in SAGAN and BigGAN);
    v_ratio: g has C // v_ratio channels (2 in BigGAN, 1 in SAGAN); both must divide C.
    pool: max-pool phi and g 2x2 (BigGAN; keys M = (H // 2) (W // 2), odd edges dropped as
    F.max_pool2d does; needs H, W >= 2) or attend every position (SAGAN, M = H W).
    spectral_norm: wrap the four 1x1 convs in genfast.nn.spectral_norm.
    scale: multiplies theta^T phi before the softmax (1.0: none, as SAGAN and BigGAN; None:
    1 / sqrt(C // qk_ratio)). backend: of the attention kernel (None: genfast's choice).

    forward(x: (B, C, H, W)) -> (B, C, H, W) = x + gamma * o(attention); gamma is a 0-dim
    parameter initialised to 0, so a fresh layer is the identity (and still gets gradients).
    State dict keys: theta / phi / g / o (torch's spectral-norm parametrization keys when
    spectral_norm=True) and gamma; BigGAN-PyTorch ``Attention`` checkpoints also load.
    """

    def __init__(self, channels: int, *, qk_ratio: int = 8, v_ratio: int = 2, pool: bool = True,
                 spectral_norm: bool = True, scale: float | None = 1.0,
                 backend: str | None = None) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        _ratio("qk_ratio", qk_ratio, channels)
        _ratio("v_ratio", v_ratio, channels)
        for name, flag in (("pool", pool), ("spectral_norm", spectral_norm)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale)):
            raise ValueError(f"scale must be a finite float or None, got {scale!r}")
        self.channels, self.qk_ratio, self.v_ratio = channels, qk_ratio, v_ratio
        self.pool, self.spectral_norm = pool, spectral_norm
        self.scale = None if scale is None else float(scale)
        self.backend = backend
        cq, cv = channels // qk_ratio, channels // v_ratio
        sizes = {"theta": (channels, cq), "phi": (channels, cq), "g": (channels, cv),
                 "o": (cv, channels)}
        for name, (c_in, c_out) in sizes.items():
            conv = nn.Conv2d(c_in, c_out, 1, bias=False)
            setattr(self, name, _spectral_norm(conv) if spectral_norm else conv)
        self.gamma = nn.Parameter(torch.tensor(0.0))
        self.register_load_state_dict_pre_hook(SelfAttention2d._load_hook)

    def extra_repr(self) -> str:
        return (f"{self.channels}, qk_ratio={self.qk_ratio}, v_ratio={self.v_ratio}, "
                f"pool={self.pool}, spectral_norm={self.spectral_norm}, scale={self.scale}")

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be (batch, channels, height, width), got {x.dim()} dims "
                             f"{tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels, the layer was built for "
                             f"{self.channels}")
        if self.pool and (x.shape[2] < 2 or x.shape[3] < 2):
            raise ValueError(f"pool=True needs height and width >= 2 (2x2 max-pooled keys), "
                             f"got {tuple(x.shape[2:])}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        B, C, H, W = x.shape
        cq, cv = C // self.qk_ratio, C // self.v_ratio
        xf = x.flatten(2)  # (B, C, HW)
        # The three projections as one GEMM (each weight still its own, spectral norm
        # included), written position-major (B, HW, 2 Cq + Cv): every slice then has a unit
        # channel stride, the layout the attention kernel reads in place (no transposed copy).
        w = torch.cat([self.theta.weight, self.phi.weight, self.g.weight]).flatten(1)
        y = torch.bmm(xf.transpose(1, 2), w.t().expand(B, -1, -1))
        theta, phi, g = (t.transpose(1, 2).unflatten(2, (H, W)) for t in y.split([cq, cq, cv], 2))
        a = _attention2d(theta, phi, g, pool=self.pool, scale=self.scale, backend=self.backend)
        # x + gamma * o(a) in one call; gamma scales the (C, Cv) weight, not the output.
        wo = (self.gamma * self.o.weight).flatten(1).expand(B, -1, -1)
        return torch.baddbmm(xf, wo, a.flatten(2)).view(B, C, H, W)

    # -- checkpoints --------------------------------------------------------------------------
    @staticmethod
    def _load_hook(module: SelfAttention2d, state_dict: dict, prefix: str, *args) -> None:
        """Maps BigGAN-PyTorch ``Attention`` state into this layer's keys before loading.

        BigGAN's SNConv2d stores the raw weight as ``<conv>.weight`` with its power-iteration
        vector ``u0`` (1, out) and the logged ``sv0`` (plus ``u1``, ``sv1``... for more singular
        values, which never change W / sv0). Its sigma, in eval mode, is one iteration from u0:
        v = normalize(W^T u0), u = normalize(W v), sigma = u^T W v. Storing that v and u as the
        parametrization's ``_v`` / ``_u`` gives exactly that sigma here in eval mode (which
        computes u^T W v from the stored vectors); in training both iterate on from there
        (BigGAN reports u^T W v, this layer ||W^T u|| after a full step: equal once converged).

        * spectral_norm=True: ``weight`` -> ``parametrizations.weight.original``; u / v as
          above, or, from a plain-conv checkpoint (no u0), 15 power iterations on the loaded
          weight from the layer's current vectors (as registration does).
        * spectral_norm=False: a plain-conv checkpoint loads as is; an SN one loads W / sigma,
          the weight BigGAN's layer uses in eval mode.
        A 1-element gamma (SAGAN's ``torch.zeros(1)``) is loaded as the 0-dim parameter.
        """
        key = prefix + "gamma"
        if key in state_dict and state_dict[key].shape == (1,):
            state_dict[key] = state_dict[key].reshape(())
        for name in _CONVS:
            p = prefix + name + "."
            if p + "weight" not in state_dict:
                continue  # this layer's own format (or missing: load_state_dict says so)
            w = state_dict[p + "weight"]
            u0 = state_dict.pop(p + "u0", None)
            extra = re.compile(re.escape(p) + r"(u|sv)\d+")
            for k in [k for k in state_dict if extra.fullmatch(k)]:
                del state_dict[k]
            if u0 is not None:
                u, v, sigma = _biggan_vectors(w, u0)
            if not module.spectral_norm:
                if u0 is not None:
                    state_dict[p + "weight"] = w / sigma
                continue
            if u0 is None:
                sn = getattr(module, name).parametrizations.weight[0]
                u, v = _power_iterate(w, sn._u, sn._v, 15)
            del state_dict[p + "weight"]
            state_dict[p + "parametrizations.weight.original"] = w
            state_dict[p + "parametrizations.weight.0._u"] = u.to(w.dtype)
            state_dict[p + "parametrizations.weight.0._v"] = v.to(w.dtype)


@torch.no_grad()
def _biggan_vectors(w: Tensor, u0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u, v, sigma) of BigGAN's eval-mode power iteration from u0, for the weight w."""
    m = w.reshape(w.shape[0], -1)
    u0 = u0.reshape(-1).to(m.dtype)
    if u0.shape[0] != m.shape[0]:
        raise ValueError(f"BigGAN u0 has {u0.shape[0]} entries, the weight {tuple(w.shape)} "
                         f"needs {m.shape[0]}")
    v = F.normalize(m.t() @ u0, dim=0, eps=1e-12)
    u = F.normalize(m @ v, dim=0, eps=1e-12)
    return u, v, u @ (m @ v)


@torch.no_grad()
def _power_iterate(w: Tensor, u: Tensor, v: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """n iterations of torch's power method (u = normalize(W v), v = normalize(W^T u))."""
    m = w.reshape(w.shape[0], -1)
    u, v = u.to(m.dtype), v.to(m.dtype)
    for _ in range(n):
        u = F.normalize(m @ v, dim=0, eps=1e-12)
        v = F.normalize(m.t() @ u, dim=0, eps=1e-12)
    return u, v

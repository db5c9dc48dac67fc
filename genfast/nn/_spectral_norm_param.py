"""The spectral-norm parametrization module (torch's ``_SpectralNorm``, fused) and the walk
over a model's spectral norms; the public API is genfast.nn.spectral_norm."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as TorchSpectralNorm

from ..backends import BackendError
from ..ops import spectral_norm as ops


class SpectralNorm(nn.Module):
    """The parametrization weight -> weight / sigma(weight) (torch's ``_SpectralNorm``, fused).

    weight: any shape with >= 1 dims, real floating or complex; `dim` is its output dimension
    (0, or 1 for ConvTranspose). Buffers ``_u`` (weight.shape[dim],) and ``_v`` (the other
    dims' product,), in the weight's dtype, as torch's. ``backend`` picks the kernel backend
    (None: genfast's usual choice; complex weights run on the reference).
    """

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        ndim = weight.dim()
        if ndim == 0:
            raise ValueError("spectral norm needs a weight with at least 1 dim, got a scalar")
        self.dim = ops.check_dim(dim, ndim)
        self.n_power_iterations = ops.check_n_iter(n_power_iterations)
        self.eps = ops.check_eps(eps)
        self.backend = backend
        self._pending: Tensor | None = None  # sigma already computed by a SpectralNormGroup
        self._memo: list = [None]  # the kernel runner of ops._layer_runner, kept per layer
        if ndim > 1:
            ops.check_weight(weight)
            h, w = ops.matrix_shape(weight, self.dim)
            # torch's draws, in torch's order: the same seed gives the same vectors.
            u = weight.new_empty(h).normal_(0, 1)
            v = weight.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            self._iterate(weight.detach(), 15)

    @classmethod
    def from_torch(cls, p: TorchSpectralNorm, backend: str | None) -> SpectralNorm:
        """Adopt torch's state: the same buffer tensors, settings and training flag."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.dim, self.eps, self.backend, self._pending = p.dim, p.eps, backend, None
        self._memo = [None]
        self.n_power_iterations = getattr(p, "n_power_iterations", 1)  # unset for 1-D weights
        if hasattr(p, "_u"):
            self.register_buffer("_u", p._u)
            self.register_buffer("_v", p._v)
        return self.train(p.training)

    def to_torch(self) -> TorchSpectralNorm:
        p = TorchSpectralNorm.__new__(TorchSpectralNorm)
        nn.Module.__init__(p)
        p.dim, p.eps = self.dim, self.eps
        if hasattr(self, "_u"):
            p.n_power_iterations = self.n_power_iterations
            p.register_buffer("_u", self._u)
            p.register_buffer("_v", self._v)
        return p.train(self.training)

    def _floor(self, weight: Tensor) -> float:
        return ops.sigma_floor(self.eps, weight.dtype)

    def _iterate(self, weight: Tensor, n_iter: int) -> Tensor:
        """n_iter power iterations on the buffers in place; the floored sigma, no grad."""
        return ops.layer_sigma(weight, self._buffers["_u"], self._buffers["_v"], self.dim,
                               n_iter, self.eps, self.backend, self._memo)

    def _sigma_value(self, weight: Tensor) -> Tensor:
        """The floored sigma, no grad: a group's, or one kernel call (iterating in training)."""
        s = self._pending
        if s is None:
            return self._iterate(weight.detach(),
                                 self.n_power_iterations if self.training else 0)
        if torch.compiler.is_compiling():
            self._pending = None
        else:  # the attribute exists (see __init__): skip nn.Module.__setattr__
            self.__dict__["_pending"] = None
        return s

    def sigma(self, weight: Tensor) -> Tensor:
        """sigma(weight), 0-dim and differentiable; iterates first in training mode."""
        return ops.sigma_node(weight, self._buffers["_u"], self._buffers["_v"],
                              self._sigma_value(weight), self.dim, self._floor(weight))

    def forward(self, weight: Tensor) -> Tensor:
        if weight.dim() == 1:
            # Faster and exact, as torch: the spectral norm of a vector is its 2-norm.
            return F.normalize(weight, dim=0, eps=self.eps)
        if self._pending is None:  # the usual read: kernel and W / sigma in one node
            return ops.layer_normalized(weight, self._buffers["_u"], self._buffers["_v"],
                                        self.dim, self.n_power_iterations if self.training
                                        else 0, self.eps, self.backend, self._memo)
        return ops.normalized(weight, self._buffers["_u"], self._buffers["_v"],
                              self._sigma_value(weight), self.dim, self._floor(weight))

    def right_inverse(self, value: Tensor) -> Tensor:
        return value

    def extra_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps:g}"


def is_spectral(p: nn.Module) -> bool:
    return isinstance(p, (SpectralNorm, TorchSpectralNorm))


def sn_entries(model: nn.Module) -> Iterator[tuple[nn.Module, str, int, nn.Module]]:
    """(module, tensor name, index, parametrization) of every spectral norm in `model`."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                for i, p in enumerate(plist):
                    if is_spectral(p):
                        yield module, name, i, p


def problem(module: nn.Module, name: str, i: int, p: nn.Module, backend: str | None) -> str:
    """Why genfast's SpectralNorm would fail at the first forward where parametrization `p`
    (number i of ``module.<name>``) runs today; '' when it would run. Checked on what the
    kernels and genfast's checks rely on, without running anything."""
    w = module.parametrizations[name].original
    if not isinstance(w, Tensor) or w.dtype not in ops.DTYPES:
        return f"weight dtype {getattr(w, 'dtype', type(w).__name__)} is not supported"
    if w.dim() < 2:
        return ""
    u, v = p._buffers.get("_u"), p._buffers.get("_v")
    if u is None or v is None:
        return "it has no _u / _v buffers (registered on a 1-D tensor)"
    h, n = ops.matrix_shape(w, p.dim)
    for which, x, size in (("_u", u, h), ("_v", v, n)):
        if x.shape != (size,) or x.dtype != w.dtype or x.device != w.device:
            return (f"{which} is {tuple(x.shape)} {x.dtype} on {x.device}, the weight needs "
                    f"({size},) {w.dtype} on {w.device}")
        if x.requires_grad:
            return f"{which} requires grad"
    if w.is_meta:
        return ""
    try:
        ops.resolve(w, backend)
    except (BackendError, ValueError) as e:  # no backend for it, or a bad backend name
        return str(e)
    return ""

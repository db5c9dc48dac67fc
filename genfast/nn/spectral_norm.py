"""Spectral normalization as a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``.

Same parametrization mechanism, same state_dict keys (``parametrizations.weight.original``,
``parametrizations.weight.0._u``, ``parametrizations.weight.0._v``), same semantics: the power
iteration runs in training mode only, u and v change in place without grad and are cloned
before autograd sees them (so D(real), D(fake), one backward works, also under DDP with
broadcast buffers), eval mode reuses the last vectors, 15 warm-up iterations at registration,
1-D weights are normalized exactly. What differs is the machinery:

* one fused kernel call per layer (genfast.ops.spectral_norm) instead of ~8 small ops, or,
  with :class:`SpectralNormGroup`, one call for every layer of a model;
* ``fold=True`` divides the layer's output by sigma instead of materializing W / sigma;
* a zero weight gives a zero output, not NaN (sigma is floored at eps; see genfast.ops).
"""

from __future__ import annotations

import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm

from ..ops import spectral_norm as ops

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d)


class SpectralNorm(nn.Module):
    """The parametrization weight -> weight / sigma(weight) (torch's ``_SpectralNorm``, fused).

    weight: any shape with >= 1 dims; `dim` is its output dimension (0, or 1 for ConvTranspose).
    Buffers ``_u`` (weight.shape[dim],) and ``_v`` (the other dims' product,), in the weight's
    dtype, as torch's. ``backend`` picks the kernel backend (None: genfast's usual choice).
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
    def _from_torch(cls, p: _TorchSpectralNorm, backend: str | None) -> SpectralNorm:
        """Adopt torch's state: the same buffer tensors, settings and training flag."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.dim, self.eps, self.backend, self._pending = p.dim, p.eps, backend, None
        self.n_power_iterations = getattr(p, "n_power_iterations", 1)  # unset for 1-D weights
        if hasattr(p, "_u"):
            self.register_buffer("_u", p._u)
            self.register_buffer("_v", p._v)
        return self.train(p.training)

    def _to_torch(self) -> _TorchSpectralNorm:
        p = _TorchSpectralNorm.__new__(_TorchSpectralNorm)
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
        """n_iter power iterations on the buffers in place; the floored sigma, no grad (the
        kernel call runs under no_grad)."""
        s = ops.power_iteration([weight], [self._buffers["_u"]], [self._buffers["_v"]],
                                [self.dim], n_iter, self.eps, self.backend)
        return ops.floor_sigma(s, self._floor(weight), n_iter > 0)[0]

    def _sigma_value(self, weight: Tensor) -> Tensor:
        """The floored sigma, no grad: a group's, or one kernel call (iterating in training)."""
        s, self._pending = self._pending, None
        if s is None:
            s = self._iterate(weight.detach(), self.n_power_iterations if self.training else 0)
        return s

    def sigma(self, weight: Tensor) -> Tensor:
        """sigma(weight), 0-dim and differentiable; iterates first in training mode."""
        return ops.sigma_node(weight, self._buffers["_u"], self._buffers["_v"],
                              self._sigma_value(weight), self.dim, self._floor(weight))

    def forward(self, weight: Tensor) -> Tensor:
        if weight.dim() == 1:
            # Faster and exact, as torch: the spectral norm of a vector is its 2-norm.
            return F.normalize(weight, dim=0, eps=self.eps)
        return ops.normalized(weight, self._buffers["_u"], self._buffers["_v"],
                              self._sigma_value(weight), self.dim, self._floor(weight))

    def right_inverse(self, value: Tensor) -> Tensor:
        return value

    def extra_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps:g}"


def _sn_entries(model: nn.Module) -> Iterator[tuple[nn.Module, str, int, nn.Module]]:
    """(module, tensor name, index, parametrization) of every spectral norm in `model`."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                for i, p in enumerate(plist):
                    if isinstance(p, (SpectralNorm, _TorchSpectralNorm)):
                        yield module, name, i, p


# --------------------------------------------------------------------------- fold
def _folded_forward(self: nn.Module, input: Tensor, output_size: list[int] | None = None
                    ) -> Tensor:
    """The layer's forward with 1/sigma applied to its output: W / sigma never exists."""
    if not (parametrize.is_parametrized(self, "weight")
            and isinstance(self.parametrizations.weight[0], SpectralNorm)):
        return type(self).forward(self, input, *([output_size] if output_size else []))
    plist = self.parametrizations.weight
    w = plist.original
    s = plist[0].sigma(w)
    if isinstance(self, nn.Linear):
        y = F.linear(input, w)
    elif isinstance(self, nn.modules.conv._ConvTransposeNd):
        nsd = len(self.kernel_size)
        pad = self._output_padding(input, output_size, self.stride, self.padding,
                                   self.kernel_size, nsd, self.dilation)
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nsd - 1]
        y = conv(input, w, None, self.stride, self.padding, pad, self.groups, self.dilation)
    else:
        y = self._conv_forward(input, w, None)
    s = s.to(y.dtype)
    if self.bias is None:
        return y / s
    # Over the channel dim of (N, C, *spatial) or unbatched (C, *spatial) outputs.
    b = self.bias if isinstance(self, nn.Linear) else \
        self.bias.view(-1, *[1] * len(self.kernel_size))
    return torch.addcdiv(b, y, s)


def _fold_problem(module: nn.Module, name: str) -> str:
    """Why `module.<name>` cannot fold (after spectral_norm registered it); '' when it can."""
    if name != "weight" or not isinstance(module, _FOLDABLE):
        return (f"fold=True needs the 'weight' of a Linear, Conv or ConvTranspose layer, got "
                f"{name!r} of {type(module).__name__}")
    plist = module.parametrizations[name]
    if len(plist) != 1 or plist.original.dim() < 2:
        return ("fold=True needs spectral norm to be the weight's only parametrization, got "
                f"{[type(p).__name__ for p in plist]}")
    return ""


def _set_fold(module: nn.Module, name: str, fold: bool) -> None:
    if not fold:
        module.__dict__.pop("forward", None)
        return
    why = _fold_problem(module, name)
    if why:
        raise ValueError(why)
    module.forward = types.MethodType(_folded_forward, module)


def is_folded(module: nn.Module) -> bool:
    fwd = module.__dict__.get("forward")
    return isinstance(fwd, types.MethodType) and fwd.__func__ is _folded_forward


# --------------------------------------------------------------------------- public API
def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None, *, fold: bool = False,
                  backend: str | None = None) -> nn.Module:
    """Spectral-normalize ``module.<name>``: a drop-in for torch's parametrization.

    Same arguments, semantics and state_dict keys as
    ``torch.nn.utils.parametrizations.spectral_norm`` (checkpoints load both ways, strict);
    `dim` defaults to 1 for ConvTranspose layers and 0 otherwise. The power iteration is one
    fused kernel call (float32 accumulation).

    fold: for Linear / Conv / ConvTranspose weights, compute the layer as
    ``layer(x; W) / sigma + bias`` instead of ``layer(x; W / sigma) + bias``: same outputs and
    gradients up to rounding, without materializing W / sigma (cheaper when the weight is
    larger than the output). ``module.weight`` still returns W / sigma when read (and, as in
    torch, reading it in training mode runs a power iteration).

    A zero weight normalizes to 0 (sigma is floored at eps), where torch gives NaN. As in
    torch, u and v then collapse to zero and stay there: re-register after re-initializing.
    Returns the module.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if parametrize.is_parametrized(module, name):
        if any(isinstance(p, (SpectralNorm, _TorchSpectralNorm))
               for p in module.parametrizations[name]):
            raise ValueError(f"{type(module).__name__}.{name} is already spectral-normalized "
                             "(convert_spectral_norm turns torch's into genfast's)")
    elif name not in module._parameters and name not in module._buffers:
        raise ValueError(f"{type(module).__name__} has no parameter or buffer named {name!r} "
                         f"(parameters: {list(module._parameters)})")
    weight = getattr(module, name)
    if not isinstance(weight, Tensor):
        raise ValueError(f"{type(module).__name__}.{name} is {type(weight).__name__}, not a "
                         "tensor")
    if fold and (name != "weight" or not isinstance(module, _FOLDABLE)
                 or parametrize.is_parametrized(module, name)):
        raise ValueError(f"fold=True needs the unparametrized 'weight' of a Linear, Conv or "
                         f"ConvTranspose layer, got {name!r} of {type(module).__name__}")
    if dim is None:
        dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
    sn = SpectralNorm(weight, n_power_iterations, dim, eps, backend=backend)
    parametrize.register_parametrization(module, name, sn)
    _set_fold(module, name, fold)
    return module


def remove_spectral_norm(module: nn.Module, name: str = "weight",
                         leave_parametrized: bool = True) -> nn.Module:
    """Undo :func:`spectral_norm` (and fold) as torch's ``remove_parametrizations`` does."""
    _set_fold(module, name, False)
    return parametrize.remove_parametrizations(module, name, leave_parametrized)


def convert_spectral_norm(model: nn.Module, *, fold: bool = False,
                          backend: str | None = None) -> nn.Module:
    """Turn torch's spectral-norm parametrizations inside `model` into genfast's, in place.

    Parameters (``original``) and the u / v buffers are kept as the same tensor objects, so
    optimizers and state_dicts stay valid; settings and training flags carry over. With
    fold=True, layers that support it (see :func:`spectral_norm`) fold sigma into their output.
    Returns `model`.
    """
    for module, name, i, p in list(_sn_entries(model)):
        if isinstance(p, _TorchSpectralNorm):
            module.parametrizations[name][i] = SpectralNorm._from_torch(p, backend)
        if fold and not _fold_problem(module, name):
            _set_fold(module, name, True)
    return model


def revert_spectral_norm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_spectral_norm`: genfast's parametrizations inside `model`
    become torch's (same tensors, settings and training flags; fold removed). Returns `model`."""
    for module, name, i, p in list(_sn_entries(model)):
        if isinstance(p, SpectralNorm):
            module.parametrizations[name][i] = p._to_torch()
            _set_fold(module, name, False)
    return model


class SpectralNormGroup:
    """One kernel call per step for every genfast spectral norm in `model` (multi-tensor).

    A forward pre-hook on `model` runs the power iteration of all its spectral-normalized
    weights in one call (per dtype/device/settings group), then each layer uses the sigma
    computed for it instead of calling the kernel itself. Semantics are torch's: each forward
    of `model` in training mode is one round of `n_power_iterations` per layer; in eval mode
    the stored vectors are reused. Differences: a layer that a forward skips is updated anyway,
    and a layer called twice in one forward iterates again at its second call (as torch).
    Under DDP, give it the wrapped model (``ddp.module``), so that the buffers DDP broadcasts
    before each forward are what the update starts from.

    ``update()`` runs the call by hand (hook=False; the next forward of each layer then uses
    it); ``remove()`` detaches the hooks. Layers added later are picked up by ``refresh()``.
    """

    def __init__(self, model: nn.Module, *, hook: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.refresh()
        self._handles = [model.register_forward_pre_hook(self._pre_hook),
                         model.register_forward_hook(self._post_hook, always_call=True)
                         ] if hook else []

    def refresh(self) -> None:
        """Collect the genfast spectral norms of the model (weights of >= 2 dims, first in
        their parametrization list: their input is the stored parameter itself)."""
        self._layers = [(module.parametrizations[name], p)
                        for module, name, i, p in _sn_entries(self.model)
                        if isinstance(p, SpectralNorm) and i == 0 and hasattr(p, "_u")]
        self._planned: tuple | None = None

    def __len__(self) -> int:
        return len(self._layers)

    def _pre_hook(self, module, args) -> None:
        self.update()

    def _post_hook(self, module, args, output) -> None:
        # A sigma the forward did not use belongs to this step's weights: drop it before an
        # optimizer step makes it stale.
        self.clear()

    def _plan(self) -> list[tuple]:
        """Layers grouped by what one kernel call shares, for the current training flags."""
        flags = tuple((sn.training, sn.n_power_iterations, sn.eps, sn.backend,
                       plist.original.dtype) for plist, sn in self._layers)
        if self._planned != flags:
            groups: dict[tuple, list] = {}
            for plist, sn in self._layers:
                w = plist.original
                n_iter = sn.n_power_iterations if sn.training else 0
                key = (w.device, w.dtype, n_iter, sn.eps, sn.backend)
                groups.setdefault(key, []).append((plist, sn))
            self._groups = [(items, [sn.dim for _, sn in items], n_iter, eps, backend,
                             ops.sigma_floor(eps, dtype))
                            for (_, dtype, n_iter, eps, backend), items in groups.items()]
            self._planned = flags
        return self._groups

    def update(self) -> None:
        """Power-iterate every layer (training ones; eval ones just get sigma) in one call."""
        compiling = torch.compiler.is_compiling()
        for items, dims, n_iter, eps, backend, floor in self._plan():
            # Fetched every call: .to(), load_state_dict or assignment may replace them.
            ws = [plist.original for plist, _ in items]
            us = [sn._buffers["_u"] for _, sn in items]
            vs = [sn._buffers["_v"] for _, sn in items]
            sigma = ops.power_iteration(ws, us, vs, dims, n_iter, eps, backend)
            sigma = ops.floor_sigma(sigma, floor, n_iter > 0)
            for (_, sn), s in zip(items, sigma.unbind(), strict=True):
                if compiling:
                    sn._pending = s
                else:  # the attribute exists (see __init__): skip nn.Module.__setattr__
                    sn.__dict__["_pending"] = s

    def clear(self) -> None:
        """Forget the sigmas update() computed that no layer has used yet."""
        compiling = torch.compiler.is_compiling()
        for _, sn in self._layers:
            if compiling:
                sn._pending = None
            else:
                sn.__dict__["_pending"] = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

"""Spectral normalization as a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``.

Same parametrization mechanism, same state_dict keys (``parametrizations.weight.original``,
``parametrizations.weight.0._u``, ``parametrizations.weight.0._v``), same semantics: the power
iteration runs in training mode only, u and v change in place without grad and are cloned
before autograd sees them (so D(real), D(fake), one backward works, also under DDP with
broadcast buffers), eval mode reuses the last vectors, 15 warm-up iterations at registration,
1-D weights are normalized exactly, spectral norms stack on one weight, complex weights work,
and so do torch.func (functional_call + grad), torch.compile and torch.export. What differs is
the machinery:

* one fused kernel call per layer (genfast.ops.spectral_norm) instead of ~8 small ops, or,
  with :class:`SpectralNormGroup`, one call for every layer of a model;
* ``fold=True`` divides the layer's output by sigma instead of materializing W / sigma;
* a zero weight gives a zero output, not NaN (sigma is floored at eps; see genfast.ops).

The module is split by role: the parametrization (_spectral_norm_param.py), fold
(_spectral_norm_fold.py) and the multi-tensor group (_spectral_norm_group.py).
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._spectral_norm_fold import FOLDABLE, fold_problem, is_folded, set_fold
from ._spectral_norm_group import SpectralNormGroup
from ._spectral_norm_param import SpectralNorm, TorchSpectralNorm, problem, sn_entries

__all__ = ["SpectralNorm", "SpectralNormGroup", "convert_spectral_norm", "is_folded",
           "remove_spectral_norm", "revert_spectral_norm", "spectral_norm"]


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None, *, fold: bool = False,
                  backend: str | None = None) -> nn.Module:
    """Spectral-normalize ``module.<name>``: a drop-in for torch's parametrization.

    Same arguments, semantics and state_dict keys as
    ``torch.nn.utils.parametrizations.spectral_norm`` (checkpoints load both ways, strict);
    `dim` defaults to 1 for ConvTranspose layers and 0 otherwise. The power iteration is one
    fused kernel call (float32 accumulation). As in torch, a second call on the same tensor
    stacks a second spectral norm on the first (its input is the first one's output), any
    tensor of >= 1 dims can be normalized (1-D exactly), and complex weights iterate with W^H
    (on the reference backend: the kernels are real).

    fold: for Linear / Conv / ConvTranspose weights, compute the layer as
    ``layer(x; W) / sigma + bias`` instead of ``layer(x; W / sigma) + bias``: same outputs and
    gradients up to rounding, without materializing W / sigma (cheaper when the weight is
    larger than the output). ``module.weight`` still returns W / sigma when read (and, as in
    torch, reading it in training mode runs a power iteration). A parametrization registered
    on the weight afterwards turns folding off.

    Where it differs from torch, PyTorch's own tests (tests/test_spectral_norm_upstream.py, a
    port of test/nn/test_parametrization.py) say so:

    * a zero weight normalizes to 0 (sigma is floored at eps) where torch gives NaN; as in
      torch, u and v then collapse to zero and stay there: re-register after re-initializing;
    * float32 results agree with torch's to rounding, not bit for bit: the kernel sums in
      another order and takes sigma = |W^T u|^2 / max(|W^T u|, eps) (the same number) instead
      of a third product u . (W v); torch's own tests compare with assertEqual's float32
      tolerance, which holds;
    * bad arguments raise TypeError / ValueError / IndexError naming them (torch raises
      IndexError or ValueError for some, and accepts n_power_iterations=1.5 until it runs).

    Returns the module.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    stacked = parametrize.is_parametrized(module, name)
    if not stacked and name not in module._parameters and name not in module._buffers:
        raise ValueError(f"{type(module).__name__} has no parameter or buffer named {name!r} "
                         f"(parameters: {list(module._parameters)})")
    weight = getattr(module, name)  # stacked: the output of the parametrizations so far
    if not isinstance(weight, Tensor):
        raise ValueError(f"{type(module).__name__}.{name} is {type(weight).__name__}, not a "
                         "tensor")
    if fold and (name != "weight" or not isinstance(module, FOLDABLE) or stacked):
        raise ValueError(f"fold=True needs the unparametrized 'weight' of a Linear, Conv or "
                         f"ConvTranspose layer, got {name!r} of {type(module).__name__}"
                         + (" (already parametrized)" if stacked else ""))
    if dim is None:
        dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
    sn = SpectralNorm(weight, n_power_iterations, dim, eps, backend=backend)
    parametrize.register_parametrization(module, name, sn)
    set_fold(module, name, fold)
    return module


def remove_spectral_norm(module: nn.Module, name: str = "weight",
                         leave_parametrized: bool = True) -> nn.Module:
    """Undo :func:`spectral_norm` (and fold) as torch's ``remove_parametrizations`` does: every
    parametrization of ``module.<name>`` goes."""
    set_fold(module, name, False)
    return parametrize.remove_parametrizations(module, name, leave_parametrized)


def convert_spectral_norm(model: nn.Module, *, fold: bool = False,
                          backend: str | None = None) -> nn.Module:
    """Turn torch's spectral-norm parametrizations inside `model` into genfast's, in place.

    Parameters (``original``) and the u / v buffers are kept as the same tensor objects, so
    optimizers and state_dicts stay valid; settings and training flags carry over. With
    fold=True, layers that support it (see :func:`spectral_norm`) fold sigma into their output.

    A layer that genfast's spectral norm could not run (a `backend` that cannot take its dtype
    or device, buffers that do not match the weight) is checked up front, left on torch's, and
    named in one UserWarning. Returns `model`.
    """
    left = []
    for module, name, i, p in list(sn_entries(model)):
        if isinstance(p, TorchSpectralNorm):
            why = problem(module, name, i, p, backend)
            if why:
                left.append(f"{_path(model, module)}.{name} [{i}]: {why}")
                continue
            module.parametrizations[name][i] = SpectralNorm.from_torch(p, backend)
        if fold and not fold_problem(module, name):
            set_fold(module, name, True)
    if left:
        warnings.warn(f"convert_spectral_norm left {len(left)} spectral norm(s) on torch's, "
                      "which genfast's could not run: " + "; ".join(left), UserWarning,
                      stacklevel=2)
    return model


def _path(model: nn.Module, module: nn.Module) -> str:
    return next((n or type(model).__name__ for n, m in model.named_modules() if m is module),
                type(module).__name__)


def revert_spectral_norm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_spectral_norm`: genfast's parametrizations inside `model`
    become torch's (same tensors, settings and training flags; fold removed). Returns `model`."""
    for module, name, i, p in list(sn_entries(model)):
        if isinstance(p, SpectralNorm):
            module.parametrizations[name][i] = p.to_torch()
            set_fold(module, name, False)
    return model

"""fold=True of genfast.nn.spectral_norm: a Linear / Conv / ConvTranspose layer computed as
``layer(x; W) / sigma + bias``, so W / sigma is never materialized."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._spectral_norm_param import SpectralNorm

FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d)


def _folds(module: nn.Module) -> bool:
    """Whether the weight's parametrizations are still exactly one genfast spectral norm (a
    parametrization registered after fold=True, by genfast or torch, switches folding off)."""
    if not parametrize.is_parametrized(module, "weight"):
        return False
    plist = module.parametrizations.weight
    return len(plist) == 1 and isinstance(plist[0], SpectralNorm)


def _folded_forward(self: nn.Module, input: Tensor, output_size: list[int] | None = None
                    ) -> Tensor:
    """The layer's forward with 1/sigma applied to its output: W / sigma never exists."""
    if not _folds(self):
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
    # Over the channel dim of (N, C, *spatial) or unbatched (C, *spatial) outputs.
    b = None if self.bias is None else self.bias if isinstance(self, nn.Linear) else \
        self.bias.view(-1, *[1] * len(self.kernel_size))
    if y.dtype == s.dtype:
        return y / s if b is None else torch.addcdiv(b, y, s)
    # y in a lower precision than sigma (autocast, or float16 / bfloat16 weights): dividing by
    # the float32 0-dim sigma scales in float32 (torch reads a 0-dim operand at full precision);
    # sigma rounded to y's dtype would scale the whole output by one rounding error (0.4% in
    # bfloat16), and addcdiv would round it so. The bias follows y's dtype, as in the unfolded
    # layer, whose output autocast gives in its own dtype.
    y = y / s
    return y if b is None else y.add_(b.to(y.dtype))


def fold_problem(module: nn.Module, name: str) -> str:
    """Why `module.<name>` cannot fold (after spectral_norm registered it); '' when it can."""
    if name != "weight" or not isinstance(module, FOLDABLE):
        return (f"fold=True needs the 'weight' of a Linear, Conv or ConvTranspose layer, got "
                f"{name!r} of {type(module).__name__}")
    plist = module.parametrizations[name]
    if len(plist) != 1 or not isinstance(plist[0], SpectralNorm) or plist.original.dim() < 2:
        return ("fold=True needs genfast's spectral norm to be the only parametrization of a "
                "weight of >= 2 dims, got "
                f"{[type(p).__name__ for p in plist]}")
    return ""


def set_fold(module: nn.Module, name: str, fold: bool) -> None:
    if not fold:
        module.__dict__.pop("forward", None)
        return
    why = fold_problem(module, name)
    if why:
        raise ValueError(why)
    module.forward = types.MethodType(_folded_forward, module)


def is_folded(module: nn.Module) -> bool:
    """Whether `module` computes its output with sigma folded in (fold=True, still valid)."""
    fwd = module.__dict__.get("forward")
    return (isinstance(fwd, types.MethodType) and fwd.__func__ is _folded_forward
            and _folds(module))

"""Argument checks and backend routing of the masked_conv public functions (genfast/ops/
masked_conv.py, masked_conv_layer.py): one wording for every error, naming the argument."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .. import backends
from . import _checks
from ._causal_conv_checks import same
from ._masked_conv_ref import Region

MASK_TYPES = ("A", "B")
INT32_MAX = 2**31 - 1
# `auto` on the CPU sends convs with more than this many (input channel, tap) pairs per output
# to the reference (torch's oneDNN on the cropped kernels), where genfast's CPU tiles stop
# winning; measured at 2 threads (genfast/benchmarks/masked_conv.py).
CPU_MAX_REDUCTION = 4096


def pair(name: str, v: object, low: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= low."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return _checks.integer(name, v[0], low), _checks.integer(name, v[1], low)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(v).__name__}")
    n = _checks.integer(name, v, low)
    return n, n


def check_masked(x: Tensor, weight: Tensor, bias: Tensor | None, mask_type: str, stride,
                 padding, color_groups: int) -> tuple[Region, int, int]:
    """Validate a masked_conv2d call; returns (region, Ho, Wo)."""
    _checks.tensor("x", x)
    _checks.tensor("weight", weight)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C_in, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    Cout, Cin, kh, kw = weight.shape
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected (C_out, C_in={x.shape[1]}, kh, kw), got "
                         f"{tuple(weight.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"weight: the mask is defined about the kernel's centre, so kh and kw "
                         f"must be odd, got ({kh}, {kw})")
    if Cin < 1 or Cout < 1:
        raise ValueError(f"weight: C_out and C_in must be >= 1, got {tuple(weight.shape)}")
    G = _checks.integer("color_groups", color_groups, 1)
    if G > min(Cin, Cout):
        raise ValueError(f"color_groups={G} needs at least {G} input and output channels "
                         f"(one per colour), got C_in={Cin}, C_out={Cout}")
    sh, sw = pair("stride", stride, 1)
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be 'same', an int or a pair, got {padding!r}")
        ph, pw = kh // 2, kw // 2
    else:
        ph, pw = pair("padding", padding, 0)
    H, W = x.shape[-2:]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x: the output would be empty: ({H}, {W}) input, ({kh}, {kw}) kernel, "
                         f"padding ({ph}, {pw}), stride ({sh}, {sw}) give ({Ho}, {Wo})")
    same("weight", weight, x, "x")
    check_bias(bias, Cout, x)
    check_sizes(x, Cout, Ho, Wo)
    region = Region(sh, sw, ph, pw, kh // 2, kw // 2, 1 if mask_type == "A" else 2, G)
    return region, Ho, Wo


def check_bias(bias: Tensor | None, Cout: int, x: Tensor, name: str = "bias") -> None:
    if bias is not None:
        _checks.tensor(name, bias)
        if tuple(bias.shape) != (Cout,):
            raise ValueError(f"{name} must have shape ({Cout},), got {tuple(bias.shape)}")
        same(name, bias, x, "x")


def check_sizes(x: Tensor, Cout: int, Ho: int, Wo: int) -> None:
    """The GPU kernels index one image plane with int32 arithmetic."""
    B, Cin, H, W = x.shape
    if max(Cin * H * W, Cout * Ho * Wo) > INT32_MAX:
        raise ValueError(f"x: one image of ({Cin}, {H}, {W}) -> ({Cout}, {Ho}, {Wo}) has more "
                         f"than 2^31-1 elements")


def route(name: str, weight: Tensor, region: Region) -> str:
    """`auto`'s choice, or the reference for CPU convs too big for genfast's CPU tiles."""
    Cin, kh, kw = weight.shape[1:]
    if name == backends.AUTO_PREFIX + "cpu" and Cin * kh * kw > CPU_MAX_REDUCTION:
        return backends.AUTO_PREFIX + "reference"
    return name


def autocast_args(*tensors: Tensor | None) -> list[Tensor | None]:
    """Under CUDA autocast a convolution runs in the autocast dtype (conv2d is on autocast's
    lower-precision list): the same cast keeps genfast a drop-in under AMP."""
    x = tensors[0]
    if x.device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return list(tensors)
    dt = torch.get_autocast_dtype("cuda")
    return [None if t is None else t.to(dt) for t in tensors]

"""Argument checks and backend routing of the causal_conv public functions (genfast/ops/
causal_conv.py, causal_conv_layer.py): one wording for every error, naming the argument."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backends
from . import _checks

ACTIVATIONS = {None: 0, "none": 0, "silu": 1, "swish": 1, "relu": 2, "tanh": 3}
MAX_HISTORY = 2**31 - 1  # (K-1)*dilation must fit the kernels' int32 tile arithmetic
# `auto` on the CPU sends dense convs with more than this many (input channel, tap) pairs per
# output, or more output channels, to the reference (torch's oneDNN convolution): measured at 2
# threads, genfast's one-level register tiles are 1.6x oneDNN's forward at (4, 256->256, 4000,
# K=3) but 0.96x at (2, 1024->1024, 1000, K=3), and its weight gradient falls behind first.
CPU_MAX_REDUCTION, CPU_MAX_OUT = 1024, 1024


def activation_code(activation: str | None) -> int:
    if activation not in ACTIVATIONS:
        names = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation must be one of {names}, got {activation!r}")
    return ACTIVATIONS[activation]


def check_conv(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int, groups: int,
               x_name: str = "x") -> int:
    """Validate a causal conv call; returns P = (K-1)*dilation."""
    _checks.tensor(x_name, x)
    _checks.tensor("weight", weight)
    if x.dim() != 3:
        raise ValueError(f"{x_name} must be 3-D (B, C_in, T), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be 3-D (C_out, C_in/groups, K), got shape "
                         f"{tuple(weight.shape)}")
    groups = _checks.integer("groups", groups, 1)
    dilation = _checks.integer("dilation", dilation, 1)
    C_in, (C_out, Cg, K) = x.shape[1], weight.shape
    if K < 1:
        raise ValueError("weight: kernel size (last dim) must be >= 1, got 0")
    if C_in % groups or C_out % groups:
        raise ValueError(f"groups={groups} must divide C_in={C_in} and C_out={C_out}")
    if Cg != C_in // groups:
        raise ValueError(f"weight: expected (C_out, C_in/groups={C_in // groups}, K), got "
                         f"{tuple(weight.shape)}")
    if (K - 1) * dilation > MAX_HISTORY:
        raise ValueError(f"kernel_size-1 times dilation ({K - 1} * {dilation}) overflows the "
                         f"history length limit {MAX_HISTORY}")
    same("weight", weight, x, x_name)
    if bias is not None:
        _checks.tensor("bias", bias)
        if tuple(bias.shape) != (C_out,):
            raise ValueError(f"bias must have shape ({C_out},), got {tuple(bias.shape)}")
        same("bias", bias, x, x_name)
    return (K - 1) * dilation


def same(name: str, t: Tensor, x: Tensor, x_name: str) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have {x_name}'s dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x_name}'s device {x.device}, got {t.device}")


def route(name: str, weight: Tensor) -> str:
    """`auto`'s choice, or the reference for CPU convs too big for genfast's CPU tiles."""
    C_out, Cg, K = weight.shape
    if name == backends.AUTO_PREFIX + "cpu" and (Cg * K > CPU_MAX_REDUCTION
                                                 or C_out > CPU_MAX_OUT):
        return backends.AUTO_PREFIX + "reference"
    return name


def autocast_args(*tensors: Tensor | None) -> list[Tensor | None]:
    """Under CUDA autocast a convolution runs in the autocast dtype (conv1d is on autocast's
    lower-precision list): the same cast here keeps genfast a drop-in under AMP."""
    x = tensors[0]
    if x.device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return list(tensors)
    dt = torch.get_autocast_dtype("cuda")
    return [None if t is None else t.to(dt) for t in tensors]

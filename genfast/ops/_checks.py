"""Argument validation shared by every op family: one wording for every error, each naming
the argument, what it must be and what it got (DESIGN.md section 4)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ._boundary import FLOATS


def _dtype_names(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def tensor(name: str, x: object, dtypes=FLOATS, min_dim: int = 0) -> Tensor:
    """x must be a Tensor of one of `dtypes` with at least `min_dim` dims."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must be {_dtype_names(dtypes)}, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(x.shape)}")
    return x


def real(name: str, value: object, low: float | None = None, high: float | None = None, *,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool) in [low, high] (or open at either end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or too_low or too_high:
        raise ValueError(f"{name} must be finite{_bounds(low, high, low_open, high_open)}, "
                         f"got {value!r}")
    return v


def positive(name: str, value: object, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with allow_zero)."""
    return real(name, value, 0.0, low_open=not allow_zero)


def integer(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an int{_bounds(low, high, False, False)}, "
                         f"got {value!r}")
    return int(value)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def dim(name: str, value: object, ndim: int, what: str) -> int:
    """A dimension index of a `ndim`-dim tensor called `what`, normalised to [0, ndim)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not -ndim <= value < ndim:
        raise IndexError(f"{name}={value} is out of range for {what} with {ndim} dims "
                         f"(expected [-{ndim}, {ndim - 1}])")
    return int(value) % ndim


def _bounds(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f" and in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" and {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" and {'<' if high_open else '<='} {high}"
    return ""


def autocast_args(*tensors: Tensor | None) -> list[Tensor | None]:
    """The tensors cast to the autocast dtype when autocast is on for their device (CUDA, or the
    CPU's bfloat16), for ops torch runs in that dtype (LSTM, attention: both on autocast's
    lower-precision lists), so genfast stays a drop-in under AMP. On the CPU that dtype then
    goes to the reference backend (the C++ kernels take float32 / float64)."""
    dev = tensors[0].device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return list(tensors)
    dt = torch.get_autocast_dtype(dev)
    return [None if t is None else t.to(dt) for t in tensors]

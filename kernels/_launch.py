"""What every Triton launcher shares: argument checks before a pointer reaches a kernel, the
device guard, block-size choices. Launchers are public (tests call them directly), so they check
what the kernels rely on even though genfast.ops has checked the user's arguments already."""

from __future__ import annotations

import contextlib
import math

import torch
import triton

_INT32_MAX = 2**31 - 1


def device_guard(t: torch.Tensor):
    """Triton launches on the current device: make it t's (a no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _names(dtypes) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def check_rows(name: str, t: object, dtypes, slack: int = 0) -> torch.Tensor:
    """t: a 2-D (rows, n) tensor of `dtypes`, unit column stride, row stride >= 0, and sizes
    whose int32 index arithmetic (plus `slack` columns a chunked loop may overshoot) fits."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {_names(dtypes)}, got {t.dtype}")
    if t.size(1) > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must have column stride 1, got strides {tuple(t.stride())}")
    if t.size(0) > 1 and t.stride(0) < 0:
        raise ValueError(f"{name} must have a row stride >= 0, got {t.stride(0)}")
    if t.size(0) > _INT32_MAX or t.size(1) > _INT32_MAX - slack:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; rows and n must stay below 2**31")
    return t


def check_like(name: str, t: object, shape: tuple[int, ...], dtype: torch.dtype | None,
               device: torch.device, contiguous: bool = True) -> torch.Tensor:
    """t: a tensor of exactly `shape` (and `dtype` unless None) on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if (tuple(t.shape) != tuple(shape) or (dtype is not None and t.dtype != dtype)
            or t.device != device):
        want = f"{dtype} " if dtype is not None else ""
        raise ValueError(f"{name} must be {want}of shape {tuple(shape)} on {device}, got "
                         f"{t.dtype} of shape {tuple(t.shape)} on {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t


def check_seed(seed: object, device: torch.device) -> torch.Tensor:
    """The 1-element int64 seed tensor the Philox helpers read on the device."""
    if (not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1
            or seed.device != device):
        got = (f"{seed.dtype} of shape {tuple(seed.shape)} on {seed.device}"
               if isinstance(seed, torch.Tensor) else type(seed).__name__)
        raise ValueError(f"seed must be a 1-element int64 tensor on {device}, got {got}")
    return seed


def check_positive(name: str, v: float, allow_inf: bool = False) -> float:
    if not (v > 0 and (allow_inf or math.isfinite(v))):
        raise ValueError(f"{name} must be {'> 0' if allow_inf else 'finite and > 0'}, got {v}")
    return v


def check_count(name: str, v: object) -> int:
    """An int >= 0 (iteration counts, table sizes)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    return v


def pow2_block(block: int | None, n: int, cap: int, floor: int = 16) -> int:
    """A power-of-two block: `block` if forced (tests walk the chunked paths with it), else the
    next power of two covering n, between `floor` and `cap`."""
    if block is None:
        return min(cap, max(floor, triton.next_power_of_2(max(n, 1))))
    if block < floor or block & (block - 1):
        raise ValueError(f"block must be a power of two >= {floor}, got {block}")
    return block


def row_stride(t: torch.Tensor) -> int:
    # A single row has no meaningful stride; kernels only use it for rows > 0.
    return t.stride(0) if t.size(0) > 1 else t.size(1)

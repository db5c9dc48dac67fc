"""Helpers of the Triton launcher tests (tests/test_*_triton.py). Import after setting
TRITON_INTERPRET, as those files do: this module imports triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cast_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < numel)
    tl.store(dst_ptr + offs, v.to(dst_ptr.dtype.element_ty), mask=offs < numel)


def triton_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t stored in dtype by Triton's own cast, the one the kernels use: the reference for a
    kernel's low-precision stores. On a GPU it rounds to nearest; the interpreter truncates
    fp32 -> bf16, so its bf16 outputs carry up to one ulp."""
    t = t.contiguous()
    out = torch.empty(t.shape, dtype=dtype)
    _cast_kernel[(1,)](t, out, t.numel(), BLOCK=triton.next_power_of_2(max(t.numel(), 1)))
    return out

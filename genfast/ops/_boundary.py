"""What every op module shares: its math dtype and the way to the compiled and Triton kernels
(the pointer-level C++/CUDA boundary included)."""

from __future__ import annotations

import importlib

import torch

from .. import backends

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels do their math in: float64 for float64 data, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_kernels(stem: str):
    """genfast.kernels.<stem>, imported on first use so triton stays out of import time."""
    return importlib.import_module(f"genfast.kernels.{stem}")


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x as a 2-D view with unit column stride (copies only when the last dim is strided)."""
    return x if x.stride(-1) == 1 or x.size(-1) <= 1 else x.contiguous()


def row_stride(x: torch.Tensor) -> int:
    # A single row has no meaningful stride; the kernels only use it for rows > 0.
    return x.stride(0) if x.size(0) > 1 else x.size(1)


def cpu_module():
    mod, why = backends.extension("_C")
    if mod is None:
        raise backends.BackendError(why)
    return mod


def cuda_module():
    mod, why = backends.extension("_cuda")
    if mod is None:
        raise backends.BackendError(why)
    return mod


def cuda_stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream

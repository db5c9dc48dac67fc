"""What every op module shares on its way to the kernels: dtypes, the 2-D row views, and one
call path per backend kind (the pointer-level C++/CUDA boundary, the Triton launchers).

An op family's compiled-backend wrapper is written once for both extensions:

    def _native_norms(backend, g):          # backend is "cpu" or "cuda"
        g = rows_view(g)
        out = g.new_empty(g.shape[0])
        native(backend, "gp_row_norms", Rows(g), *g.shape, dtype_code(g), out)
        return out

`native` turns tensors into data pointers, `Rows(t)` into (pointer, row stride), `Seed(t)`
into the seed value (CPU) or the seed tensor's pointer (CUDA, so no host sync), appends the
thread count (CPU) or the current stream (CUDA) and runs under the tensor's device guard.
`implementations` then builds the table :func:`genfast.backends.call` dispatches on.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .. import backends

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# The floating dtypes genfast ops take, and the subsets each backend kind runs.
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CPU_FLOATS = (torch.float32, torch.float64)
TRITON_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def standard_dtypes(reference=FLOATS, cpu=CPU_FLOATS, triton=TRITON_FLOATS, cuda=FLOATS):
    """The OpSpec dtypes of a family whose kernels take the usual set on each backend."""
    return {"reference": reference, "cpu": cpu, "triton": triton, "cuda": cuda}


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels do their math in: float64 for float64 data, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dtype_code(t: Tensor) -> int:
    return DTYPE_CODE[t.dtype]


def triton_kernels(stem: str):
    """genfast.kernels.<stem>, imported on first use so triton stays out of import time."""
    return importlib.import_module(f"genfast.kernels.{stem}")


def rows_view(x: Tensor) -> Tensor:
    """x as a 2-D view with unit column stride (copies only when the last dim is strided)."""
    return x if x.stride(-1) == 1 or x.size(-1) <= 1 else x.contiguous()


def row_stride(x: Tensor) -> int:
    # A single row has no meaningful stride; the kernels only use it for rows > 0.
    return x.stride(0) if x.size(0) > 1 else x.size(1)


def empty_rows(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A contiguous output of x's shape and device (x's dtype unless given)."""
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


class Rows(NamedTuple):
    """A 2-D tensor argument that crosses the boundary as (data pointer, row stride)."""

    t: Tensor


class Seed(NamedTuple):
    """A 1-element int64 seed tensor: its value on the CPU, its device pointer on CUDA."""

    t: Tensor


def seed_value(seed: Tensor) -> int:
    """The 64 seed bits as an unsigned int (reads the tensor: CPU seeds only on hot paths)."""
    return int(seed.item()) & 0xFFFFFFFFFFFFFFFF  # item(): any 1-element tensor, one op


def _module(name: str):
    mod, why = backends.extension(name)
    if mod is None:
        raise backends.BackendError(why)
    return mod


def cpu_module():
    return _module("_C")


def cuda_module():
    return _module("_cuda")


def cuda_stream(x: Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream


def _flatten(args, on_cpu: bool) -> list:
    flat = []
    for a in args:  # type() tests, not isinstance: this runs for every argument of every call
        t = type(a)
        if t is Rows:
            flat += [a.t.data_ptr(), row_stride(a.t)]
        elif t is Seed:
            flat.append(seed_value(a.t) if on_cpu else a.t.data_ptr())
        elif t is int or t is float or t is bool:
            flat.append(a)
        elif isinstance(a, Tensor):
            flat.append(a.data_ptr())
        else:
            flat.append(a)
    return flat


def native(backend: str, kernel: str, *args, device: torch.device | None = None) -> None:
    """Call `kernel` of genfast._C ("cpu") or genfast._cuda ("cuda") with `args` converted
    (see the module docstring), then the thread count or the current stream of the device
    (`device`, default: the first tensor argument's)."""
    if backend == "cpu":
        getattr(cpu_module(), kernel)(*_flatten(args, True), torch.get_num_threads())
        return
    if device is None:
        device = next(a.t if isinstance(a, (Rows, Seed)) else a for a in args
                      if isinstance(a, (Rows, Seed, Tensor))).device
    fn = getattr(cuda_module(), kernel)
    with torch.cuda.device(device):
        fn(*_flatten(args, False), torch.cuda.current_stream(device).cuda_stream)


def implementations(op: str, reference: tuple[Callable, ...], native: tuple[Callable, ...],
                    triton: tuple[Callable, ...]) -> None:
    """Register an op family's kernels with genfast.backends.call: `native` functions take the
    backend ("cpu" or "cuda") as their first argument and serve both extensions."""
    backends.implement(op, {
        "reference": reference,
        "cpu": tuple(functools.partial(f, "cpu") for f in native),
        "cuda": tuple(functools.partial(f, "cuda") for f in native),
        "triton": triton,
    })

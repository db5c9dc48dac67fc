"""genfast.info(): versions, build metadata and, per op, which backends run here and why not."""

from __future__ import annotations

import os
import platform

import torch

from . import backends


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def _ext_line(name: str) -> str:
    mod, why = backends.extension(name)
    if mod is None:
        return f"genfast.{name}: not available ({why})"
    meta = ", ".join(f"{k}={v}" for k, v in mod.build_info().items())
    if hasattr(mod, "isa"):  # genfast._C: the SIMD copy its loops run (GENFAST_ISA)
        meta += f", isa={mod.isa()} (supported: {'/'.join(mod.supported_isas())})"
    if hasattr(mod, "openmp_runtime"):  # whose threads its kernels run on (GENFAST_OPENMP)
        meta += f", threads={mod.openmp_runtime() or 'std::thread'}"
    return f"genfast.{name}: {meta}"


def info() -> str:
    """A report of what genfast can do on this machine (also `genfast info`)."""
    from . import __version__

    lines = [
        f"genfast {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"triton {_triton_version()}",
        f"torch CUDA: {torch.version.cuda or 'none'}; GPU: "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "none"),
        f"CPU threads: {torch.get_num_threads()}; TRITON_INTERPRET="
        f"{os.environ.get('TRITON_INTERPRET', '0')}; GENFAST_BACKEND="
        f"{os.environ.get('GENFAST_BACKEND', 'auto')}",
        _ext_line("_C"),
        _ext_line("_cuda"),
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        lines.append(f"backends for float32 {dev} tensors:")
        for op, row in backends.availability(dev).items():
            for b, why in row.items():
                lines.append(f"  {op:<16} {b:<10} {'yes' if not why else 'no: ' + why}")
    return "\n".join(lines)

"""Which backends exist here, and why not: the one place that decides (DESIGN.md section 2).

Backends: ``reference`` (plain PyTorch, always there), ``cpu`` (genfast._C), ``triton``
(genfast.kernels; CUDA tensors on sm_80+, or CPU tensors under TRITON_INTERPRET=1) and
``cuda`` (genfast._cuda). Nothing here touches a GPU, the Triton driver or an extension at
import time: every probe runs on first use and is cached.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
_CHOICES = ("auto", *BACKENDS)


class BackendError(RuntimeError):
    """No backend can serve a request; the message lists every rejected backend and why."""


@functools.cache
def extension(name: str):
    """Import genfast._C or genfast._cuda once; returns (module or None, reason)."""
    try:
        return importlib.import_module(f"genfast.{name}"), ""
    except ImportError as e:  # not built, or built for another Python
        return None, f"genfast.{name} is not built or failed to load ({e})"


@functools.cache
def _triton_import() -> tuple[object | None, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return None, f"triton is not installed ({e})"
    try:
        return importlib.import_module("genfast.kernels"), ""
    except ImportError as e:
        return None, f"genfast.kernels failed to import ({e})"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_reason(device: torch.device) -> str:
    _, why = _triton_import()
    if why:
        return why
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"Triton kernels need sm_80+, this GPU is sm_{major}{minor}"
        return ""
    if device.type == "cpu":
        return "" if triton_interpreting() else "CPU tensors run Triton only under TRITON_INTERPRET=1"
    return f"no Triton backend for {device.type} tensors"


def _device_reason(backend: str, device: torch.device) -> str:
    """Why `backend` cannot run on `device` at all (empty string when it can)."""
    if backend == "reference":
        return ""
    if backend == "cpu":
        if device.type != "cpu":
            return f"needs a CPU tensor, got {device.type}"
        return extension("_C")[1]
    if backend == "cuda":
        if device.type != "cuda":
            return f"needs a CUDA tensor, got {device.type}"
        if torch.version.hip:
            return "ROCm builds are not supported by the CUDA extension"
        return extension("_cuda")[1]
    return _triton_reason(device)


def available(backend: str, device: str = "cpu") -> bool:
    """Whether `backend` can run at all on `device` here (dtypes aside)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return False
    return not _device_reason(backend, dev)


@dataclass(frozen=True)
class OpSpec:
    """How one op family uses the backends: dtypes each one takes, and `auto` priority."""

    name: str
    dtypes: dict[str, tuple[torch.dtype, ...]]
    auto_cpu: tuple[str, ...] = ("cpu", "reference")
    auto_cuda: tuple[str, ...] = ("triton", "cuda", "reference")

    def reason(self, backend: str, x: torch.Tensor, device: torch.device | None = None) -> str:
        """Why `backend` cannot take `x` (on `device`, for meta tensors); '' when it can."""
        why = _device_reason(backend, device or x.device)
        if not why and x.dtype not in self.dtypes.get(backend, ()):
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes.get(backend, ()))
            why = f"dtype {str(x.dtype).removeprefix('torch.')} not supported (takes {names})"
        return why


_OPS: dict[str, OpSpec] = {}
_local = threading.local()
_warned: set[tuple[str, str]] = set()


def register_op(spec: OpSpec) -> OpSpec:
    _OPS[spec.name] = spec
    return spec


def registered_ops() -> dict[str, OpSpec]:
    # Importing genfast.ops registers every op family.
    importlib.import_module("genfast.ops")
    return dict(_OPS)


def _check_choice(name: str, where: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"{where}: backend must be one of {_CHOICES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every genfast op in this scope (this thread) on `name`, e.g. ``"reference"``."""
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(_check_choice(name, "use_backend"))
    try:
        yield
    finally:
        stack.pop()


# Backend choice is plain Python over constants (device, dtype, environment); under
# torch.compile it is evaluated once at trace time and baked into the graph as a constant.
@torch.compiler.assume_constant_result
def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: per call, else the innermost use_backend, else GENFAST_BACKEND."""
    if backend is not None:
        return _check_choice(backend, "backend")
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return _check_choice(os.environ.get("GENFAST_BACKEND", "auto"), "GENFAST_BACKEND")


def resolve(op: str, x: torch.Tensor, backend: str | None = None) -> str:
    """Pick the backend for op `op` on tensor `x`, or raise BackendError with every reason."""
    if backend is not None:
        _check_choice(backend, "backend")
    return _resolve(op, x.device.type, x.device.index, x.dtype, requested_backend(backend))


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str, device_index: int | None, dtype: torch.dtype,
             want: str) -> str:
    spec = _OPS[op]
    x = torch.empty(0, dtype=dtype, device="meta")
    device = torch.device(device_type, device_index)
    if want != "auto":
        why = spec.reason(want, x, device)
        if why:
            raise BackendError(f"genfast.{op}: backend {want!r} cannot run here: {why}")
        return want
    order = spec.auto_cuda if device_type == "cuda" else spec.auto_cpu
    rejected = []
    for name in order:
        why = spec.reason(name, x, device)
        if not why:
            if rejected and name == "reference" and (op, rejected[0]) not in _warned:
                _warned.add((op, rejected[0]))
                warnings.warn(
                    f"genfast.{op}: falling back to the slow reference backend ("
                    + "; ".join(rejected) + ")",
                    stacklevel=4,
                )
            return name
        rejected.append(f"{name}: {why}")
    raise BackendError(f"genfast.{op}: no backend can run this call: " + "; ".join(rejected))


def availability(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Per op, per backend: '' when usable for a `dtype` tensor on `device`, else why not."""
    dev = torch.device(device)
    out = {}
    for name, spec in registered_ops().items():
        row = {}
        for b in BACKENDS:
            if dev.type == "cuda" and not torch.cuda.is_available():
                row[b] = "no CUDA device here"
                continue
            why = _device_reason(b, dev)
            if not why and dtype not in spec.dtypes.get(b, ()):
                why = f"dtype {str(dtype).removeprefix('torch.')} not supported"
            row[b] = why
        out[name] = row
    return out

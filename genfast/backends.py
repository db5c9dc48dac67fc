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
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
_CHOICES = ("auto", *BACKENDS)
# A backend chosen by `auto` travels to the op as "auto:<name>": only such a call may fall back
# at run time; a backend the caller named explicitly raises its own error instead.
AUTO_PREFIX = "auto:"


class BackendError(RuntimeError):
    """No backend can serve a request; the message lists every rejected backend and why."""


class BackendFallbackWarning(UserWarning):
    """`auto` ran an op on a slower backend than the best one for the call (once per cause)."""


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
        import triton
    except ImportError as e:
        return None, f"triton is not installed ({e})"
    # CUDA builds of torch 2.7-2.9 bring Triton 3.3-3.5: `auto` must not pick kernels that
    # cannot compile there (pyproject's floor, tested by .ci/floor).
    version = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
    if version < (3, 6):
        return None, (f"triton {triton.__version__} is older than 3.6, the first to export "
                      "tl.mul(sanitize_overflow=) that the Philox kernels use")
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
        if triton_interpreting():
            return ""
        return "CPU tensors run Triton only under TRITON_INTERPRET=1"
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
        dev = device or x.device
        why = _device_reason(backend, dev) or _failed.get((self.name, backend, dev.type), "")
        if not why and x.dtype not in self.dtypes.get(backend, ()):
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes.get(backend, ()))
            why = f"dtype {str(x.dtype).removeprefix('torch.')} not supported (takes {names})"
        return why


_OPS: dict[str, OpSpec] = {}
# op -> backend -> tuple of kernel entry points (the op's `which`-th kernel is impls[i])
_IMPLS: dict[str, dict[str, tuple]] = {}
# (op, backend, device type) -> why it failed at run time; consulted by every resolution
_failed: dict[tuple[str, str, str], str] = {}
_local = threading.local()
_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()
# Bumped whenever a backend is disabled, so callers that memoize resolutions can notice.
generation = 0


def register_op(spec: OpSpec) -> OpSpec:
    _OPS[spec.name] = spec
    return spec


def implement(op: str, impls: dict[str, tuple]) -> None:
    """Register op `op`'s kernels: backend name -> tuple of callables (one per kernel of the
    family, in a fixed order the op module defines). :func:`call` runs them."""
    missing = set(impls) ^ set(BACKENDS)
    if missing:
        raise ValueError(f"genfast.{op}: implementations must cover {BACKENDS}, "
                         f"got {sorted(impls)}")
    _IMPLS[op] = dict(impls)


def _tensor_in(args) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0]
    return None


def _fatal(e: BaseException) -> bool:
    """Errors that no other backend would avoid: out of memory, an interrupt, or a ValueError /
    IndexError, which genfast raises for arguments the kernels cannot take (a wrong-sized
    buffer): another backend would fail on them too, and the first message is the clear one."""
    return (isinstance(e, (torch.OutOfMemoryError, ValueError, IndexError))
            or not isinstance(e, Exception))


def call(op: str, backend: str, which: int, *args):
    """Run kernel `which` of op `op` on `backend` (a name, or "auto:<name>" from `auto`).

    A backend picked by `auto` that raises (a Triton compile or launch error, a feature the
    installed Triton lacks, a CUDA launch failure) is disabled for this op in this process
    with one warning naming the reason, and the call is retried on the next backend `auto`
    would pick (triton -> cuda -> reference). A backend named explicitly raises instead.
    """
    name = backend.removeprefix(AUTO_PREFIX)
    may_fall = backend.startswith(AUTO_PREFIX)
    while True:
        try:
            return _IMPLS[op][name][which](*args)
        except BaseException as e:
            if not may_fall or name == "reference" or _fatal(e):
                raise
            name = _disable(op, name, e, _tensor_in(args))


def _disable(op: str, name: str, e: BaseException, x: torch.Tensor | None) -> str:
    """Mark `name` failed for `op` on x's device type, warn once, return the next choice."""
    global generation
    if x is None:
        raise RuntimeError(f"genfast.{op}: backend {name!r} failed and the call has no tensor "
                           "to pick a fallback by") from e
    reason = f"failed at run time ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
    with _lock:
        _failed[(op, name, x.device.type)] = reason
        _warned.add((op, f"{name}: {reason}"))  # this warning replaces _resolve's own
        generation += 1
    nxt = _resolve(op, x.device.type, x.device.index, x.dtype, "auto")
    warnings.warn(f"genfast.{op}: backend {name!r} {reason}; disabled for this op in this "
                  f"process, using {nxt!r} from now on", BackendFallbackWarning, stacklevel=3)
    return nxt


def failures() -> dict[tuple[str, str, str], str]:
    """(op, backend, device type) -> why that backend was disabled at run time."""
    return dict(_failed)


def reset_failures() -> None:
    """Re-enable every backend disabled at run time (tests; after fixing the cause)."""
    global generation
    with _lock:
        _failed.clear()
        _warned.clear()
        generation += 1


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


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result without importing torch._dynamo (and with it
    triton) when genfast is imported: this mark is all that decorator sets and all dynamo reads
    when it traces a call (tests/test_backends.py checks that it still is)."""
    fn._dynamo_marked_constant = True
    return fn


# Backend choice is plain Python over constants (device, dtype, environment); under
# torch.compile it is evaluated once at trace time and baked into the graph as a constant.
@_constant_under_compile
def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: per call, else the innermost use_backend, else GENFAST_BACKEND."""
    if backend is not None:
        return _check_choice(backend, "backend")
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return _check_choice(os.environ.get("GENFAST_BACKEND", "auto"), "GENFAST_BACKEND")


def resolve(op: str, x: torch.Tensor, backend: str | None = None) -> str:
    """Pick the backend for op `op` on tensor `x`, or raise BackendError with every reason.

    Returns the backend name when it was asked for by name, and "auto:<name>" when `auto`
    chose it: pass the result on to :func:`call`, which may then fall back at run time.
    """
    if backend is not None:
        _check_choice(backend, "backend")
    want = requested_backend(backend)
    name = _resolve(op, x.device.type, x.device.index, x.dtype, want, generation)
    return AUTO_PREFIX + name if want == "auto" else name


def base_name(backend: str) -> str:
    """The backend name inside a resolution ("auto:cpu" -> "cpu")."""
    return backend.removeprefix(AUTO_PREFIX)


@_constant_under_compile
def _resolve(op: str, device_type: str, device_index: int | None, dtype: torch.dtype,
             want: str, _generation: int = 0) -> str:
    spec = _OPS[op]
    # Only the dtype is read (the device is passed on): no tensor, so no node in exported graphs.
    x = types.SimpleNamespace(dtype=dtype)
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
                    BackendFallbackWarning,
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
            why = _device_reason(b, dev) or _failed.get((name, b, dev.type), "")
            if not why and dtype not in spec.dtypes.get(b, ()):
                why = f"dtype {str(dtype).removeprefix('torch.')} not supported"
            row[b] = why
        out[name] = row
    return out

"""Peak memory of one SAGAN-layer forward+backward (genfast/benchmarks/attention.py's layer).

CPU: torch keeps no allocation statistics for host memory, so the layer runs in a fresh
process and reports how far its peak resident set rose above what it held with the inputs
built (VmHWM after resetting it through /proc/self/clear_refs: the call's own peak, scratch of
the kernels included).
CUDA: the runner's torch.cuda peak allocation, passed through.

    python -m genfast.benchmarks.peak_memory B C H W PROVIDER [DTYPE]   -> prints MB
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys


def sagan_peak_mb(shape: tuple[int, ...], provider: str, device: str, dtype: str,
                  cuda_peak: int | None = None) -> float | None:
    if device.startswith("cuda"):
        return None if cuda_peak is None else cuda_peak / 2**20
    # A fixed mmap threshold: every block above 64 KB is mapped fresh and unmapped on free, so
    # the resident set follows the live tensors (glibc's dynamic threshold would move large
    # blocks onto the heap, whose freed pages stay resident and get reused unseen).
    env = dict(os.environ, OMP_NUM_THREADS=str(os.environ.get("OMP_NUM_THREADS", "2")),
               MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "genfast.benchmarks.peak_memory", *map(str, shape), provider,
           dtype]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                             check=True).stdout
        return float(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Start a fresh high-water mark at the current resident set (Linux: writing 5 to
    /proc/self/clear_refs resets VmHWM); returns the level peaks are measured from. Elsewhere
    ru_maxrss, which an earlier peak (imports) can hide."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return _peak_mb()


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str]) -> None:
    import torch

    from .attention import MAT, SDPA, _layer

    B, C, H, W = map(int, argv[:4])
    provider, dtype = argv[4], getattr(torch, argv[5] if len(argv) > 5 else "float32")
    core, backend = {MAT: ("bmm", None), SDPA: ("sdpa", None)}.get(
        provider, ("genfast", provider.removeprefix("genfast:")))
    layer = _layer(C, core, backend, dtype, "cpu")
    x = torch.randn(B, C, H, W, dtype=dtype, requires_grad=True)
    w = torch.randn(B, C, H, W, dtype=dtype)
    torch.autograd.grad((layer(x[:1, :, :2, :2]) * w[:1, :, :2, :2]).sum(), x)  # lazy inits
    base = _reset_peak()
    torch.autograd.grad((layer(x) * w).sum(), [x, *layer.parameters()])
    print(f"{_peak_mb() - base:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])

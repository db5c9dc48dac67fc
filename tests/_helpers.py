"""Helpers every op family's tests share: one tolerance table per dtype, the memory layouts
every kernel must take (DESIGN.md section 5), the low-precision rule, and the backends to run.

Import as ``from _helpers import ...`` (pytest puts tests/ on sys.path for files in it)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from genfast import backends

# Error allowed against a reference computed in the same dtype (fp32 accumulation everywhere
# but float64): a few ulps of the dtype, atol for results near zero. Liger-Kernel keeps one
# such table; per-test overrides say why they differ.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}
LOW = (torch.float16, torch.bfloat16)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype | None = None,
                 msg: str = "") -> None:
    """torch.testing.assert_close with the table's tolerance for `dtype` (default got's)."""
    tol = TOL[dtype or got.dtype]
    torch.testing.assert_close(got, want.to(got.dtype), **tol, msg=lambda m: f"{msg}\n{m}")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_low_precision(got: torch.Tensor, ref32: torch.Tensor, ref_low: torch.Tensor,
                         atol: float = 1e-3) -> None:
    """The flash-attention rule for fp16/bf16: the kernel's error against the fp32 reference is
    at most twice the error of the reference run in the same low precision (plus atol)."""
    bound = 2 * max_err(ref_low, ref32) + atol
    err = max_err(got, ref32)
    assert err <= bound, f"error {err:.3g} > 2 x reference's own {bound - atol:.3g} + {atol}"


def layouts(x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """x's values in every 2-D layout a kernel must read correctly: contiguous, rows padded
    (row stride > n), column stride != 1 (a transposed copy's view), a misaligned base pointer
    (storage offset of one element), and, for one row repeated, row stride 0."""
    rows, n = x.shape
    yield "contiguous", x
    wide = torch.zeros(rows, n + 5, dtype=x.dtype, device=x.device)
    wide[:, 2:2 + n] = x
    yield "row stride > n", wide[:, 2:2 + n]
    yield "column stride != 1", x.t().contiguous().t()
    flat = torch.zeros(rows * n + 1, dtype=x.dtype, device=x.device)
    flat[1:] = x.reshape(-1)
    yield "misaligned", flat[1:].view(rows, n)
    yield "row stride 0", x[:1].expand(rows, n)


def fast_backends(op: str, device: str = "cpu") -> list[str]:
    """The non-reference backends that run `op` here (Triton under the interpreter on CPU)."""
    spec = backends.registered_ops()[op]
    probe = torch.empty(0, device=device)
    return [b for b in backends.BACKENDS
            if b != "reference" and not spec.reason(b, probe, torch.device(device))]


def dtypes_of(op: str, backend: str) -> tuple[torch.dtype, ...]:
    return backends.registered_ops()[op].dtypes[backend]


def gradcheck_dtype(backend: str) -> torch.dtype:
    """float64 where the backend takes it, else float32 (gradcheck then needs looser eps)."""
    return torch.float32 if backend == "triton" else torch.float64


requires_triton = pytest.mark.skipif(
    not backends.available("triton"), reason="Triton kernels need TRITON_INTERPRET=1 on the CPU"
)


def hostile_rows(n: int, rows: int = 6) -> torch.Tensor:
    """(rows >= 6, n) logits whose first five rows each hit a case of the row preprocessing
    every Gumbel kernel defines (ops/gumbel.py): no finite logit, +inf entries, impossible
    columns, huge magnitudes, a NaN; the rest are ordinary."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(rows, n, generator=g) * 3
    x[0, :] = -math.inf  # no finite logit: uniform
    x[1, n // 2] = math.inf  # mass on the +inf entries
    x[1, n - 1] = math.inf
    x[2, ::2] = -math.inf  # some columns impossible
    x[3] *= 1e30  # huge logits
    x[4, n // 3] = math.nan  # NaN row
    return x


@pytest.fixture
def single_thread():
    """One torch thread for tiny ops: a second thread only adds barrier waits, which a busy
    machine stretches to milliseconds per op (gradcheck runs thousands)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

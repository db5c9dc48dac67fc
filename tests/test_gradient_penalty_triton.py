"""The Triton gradient-penalty kernels (kernels/gradient_penalty.py) against the contract of
csrc/cpu/gradient_penalty.h, on the CPU under the Triton interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
import torch

pytest.importorskip("triton")


from _triton_helpers import triton_cast  # noqa: E402

from genfast.kernels import gradient_penalty as K  # noqa: E402

pytestmark = pytest.mark.triton

# (rows, d, block): block=None picks the tile; a small block forces the chunked norm loop with a
# partial last chunk (300 = 4 * 64 + 44); 70 rows of 3 span several row tiles.
CASES = [(1, 1, None), (5, 1, None), (1, 7, None), (5, 7, None), (5, 300, None), (5, 300, 64),
         (70, 3, None), (3, 33, 16)]  # fmt: skip
IDS = [f"{r}x{d}" + ("-chunked" if b else "") for r, d, b in CASES]


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as a view with row stride d + 5 and a column offset (never copied)."""
    rows, d = x.shape
    base = torch.full((rows, d + 5), 3.0, dtype=x.dtype)
    view = base[:, 2 : d + 2]
    view.copy_(x)
    return view


def data(rows, d, dtype=torch.float32, seed=0):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("rows,d,block", CASES, ids=IDS)
def test_row_norms(rows, d, block):
    g = data(rows, d, seed=rows * 1000 + d)
    out = torch.full((rows,), -1.0)
    assert K.row_norms(strided(g), out, block=block) is out
    ref = torch.linalg.vector_norm(g.double(), dim=1).float()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rows,d,block", CASES, ids=IDS)
def test_scale_rows(rows, d, block):
    g = data(rows, d, seed=rows * 1000 + d)
    scale = data(1, rows, seed=7)[0]
    out = torch.full((rows, d), -1.0)
    assert K.scale_rows(strided(g), scale, out, block=block) is out
    assert torch.equal(out, scale[:, None] * g)  # one fp32 product: bit-exact


def test_zero_rows_and_one_row():
    g = data(4, 9)
    g[1] = 0.0
    out = torch.empty(4)
    K.row_norms(g, out)
    assert out[1].item() == 0.0
    one = torch.empty(1)
    K.row_norms(g[2:3], one)  # a single row: its stride is never used
    assert one.item() == pytest.approx(g[2].double().norm().item(), rel=1e-6)


def test_empty_inputs():
    K.row_norms(torch.empty(0, 5), torch.empty(0))
    out = torch.full((3,), -1.0)
    K.row_norms(torch.empty(3, 0), out)
    assert torch.equal(out, torch.zeros(3))  # the norm of nothing is 0
    K.scale_rows(torch.empty(3, 0), torch.ones(3), torch.empty(3, 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision(dtype):
    g = (data(5, 300, seed=11) * 4).to(dtype)
    scale = data(1, 5, seed=12)[0].to(dtype)

    def check(got, ref32):
        # flash-attention rule: at most 2x the error of the reference stored in this dtype
        ref_err = (triton_cast(ref32, dtype).float() - ref32).abs().max()
        assert got.dtype == dtype
        assert (got.float() - ref32).abs().max() <= 2 * ref_err + 1e-6

    norms = torch.empty(5, dtype=dtype)
    check(K.row_norms(strided(g), norms, block=64), torch.linalg.vector_norm(g.float(), dim=1))
    out = torch.empty(5, 300, dtype=dtype)
    check(K.scale_rows(strided(g), scale, out), scale.float()[:, None] * g.float())


def test_float64():
    g = data(5, 300).double()
    out = torch.empty(5, dtype=torch.float64)
    K.row_norms(strided(g), out, block=64)
    torch.testing.assert_close(out, torch.linalg.vector_norm(g, dim=1), rtol=1e-14, atol=0)


def test_bad_arguments_raise_clear_errors():
    g = torch.randn(4, 6)
    with pytest.raises(TypeError, match="g must be float32, float16, bfloat16 or float64"):
        K.row_norms(g.int(), torch.empty(4))
    with pytest.raises(ValueError, match="column stride 1"):
        K.row_norms(torch.randn(6, 4).t(), torch.empty(4))
    with pytest.raises(ValueError, match="g must be 2-D"):
        K.row_norms(torch.randn(4), torch.empty(4))
    with pytest.raises(ValueError, match=r"out must be torch.float32 of shape \(4,\)"):
        K.row_norms(g, torch.empty(3))
    with pytest.raises(ValueError, match="scale must be torch.float32"):
        K.scale_rows(g, torch.ones(4, dtype=torch.float64), torch.empty(4, 6))
    with pytest.raises(ValueError, match="out must be contiguous"):
        K.scale_rows(g, torch.ones(4), torch.empty(6, 4).t())
    with pytest.raises(ValueError, match="block must be a power of two"):
        K.row_norms(g, torch.empty(4), block=24)

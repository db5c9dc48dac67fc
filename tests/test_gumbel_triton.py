"""The Triton Gumbel-Softmax kernels (kernels/gumbel.py) against the contract of
genfast/ops/gumbel.py, on each of their paths: one row a program, several short rows packed into
one program (odd row counts, so the last pack is partial), and long rows walked in chunks.

Runs on the CPU under the Triton interpreter; the reference below is built from the contract
text and genfast.random (the Philox oracle), independently of the kernels (it reduces whole rows
where they pack rows into tiles or go chunk by chunk).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch
from _helpers import hostile_rows, layouts

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from _triton_helpers import triton_cast  # noqa: E402

from genfast import random as grandom  # noqa: E402
from genfast.kernels import gumbel as K  # noqa: E402
from genfast.kernels._philox import gumbel as philox_gumbel  # noqa: E402
from genfast.kernels._philox import philox_tile, seed_key, uniform  # noqa: E402

pytestmark = pytest.mark.triton
# The hostile rows include a NaN row; numpy, under the interpreter, warns about the NaN arithmetic
# that the GPU performs silently.
nan_row_warnings = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:All-NaN slice:RuntimeWarning"
)

INF = float("inf")
CPU = torch.device("cpu")
SEEDS = (0, 1234567, 2**64 - 5, 0xDEADBEEFCAFEBABE)  # the last two are negative as int64
ROWS = 7  # odd: with 4 rows a program, the second pack holds 3 rows and one padding row
# (n, block, rows_per_program): rows that fit one block run one a program (1) or packed (4, or
# None: tile_config's choice); a small block forces the chunked path, with a partial last chunk
# (of 1 and of 13 columns), one row a program or a pack of rows walked together.
PATHS = [(1, None, 1), (3, None, 4), (7, None, None), (33, None, 1), (33, None, 4),
         (129, None, 2), (129, 64, 1), (45, 16, 1), (45, 16, 4)]
PATH_IDS = ["1-row", "3-packed", "7-auto", "33-row", "33-packed", "129-packed", "129-chunked",
            "45-chunked", "45-chunked-packed"]


# ----------------------------------------------------------------------------- reference


def ref_centered(x: torch.Tensor) -> torch.Tensor:
    """x' - m' (row preprocessing of the contract), float32."""
    m = x.max(dim=1, keepdim=True).values  # propagates NaN, as the contract wants
    xc = torch.where(m == INF, torch.where(x == INF, 0.0, -INF), x - m)
    return torch.where(m == -INF, 0.0, xc)


def ref_noise(seed: int, x: torch.Tensor) -> torch.Tensor:
    return grandom.gumbel(seed, x.shape[0], x.shape[1])


def ref_fwd(x: torch.Tensor, seed: int, inv_tau: float, hard: bool) -> torch.Tensor:
    x = x.float()
    a = ref_centered(x) + ref_noise(seed, x)
    if hard:
        y = torch.nn.functional.one_hot(a.argmax(dim=1), x.shape[1]).float()  # first argmax
        return torch.where(x.isnan().any(dim=1, keepdim=True), math.nan, y)
    e = torch.exp((a - a.max(dim=1, keepdim=True).values) * inv_tau)
    return e / e.sum(dim=1, keepdim=True)


def ref_bwd(dy: torch.Tensor, y: torch.Tensor, inv_tau: float) -> torch.Tensor:
    dy, y = dy.float(), y.float()
    return y * (dy - (dy * y).sum(dim=1, keepdim=True)) * inv_tau


# ----------------------------------------------------------------------------- helpers


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as a view with row stride > n and a column offset (no copy is allowed)."""
    return dict(layouts(x))["row stride > n"]


def seed_t(seed: int) -> torch.Tensor:
    return grandom.make_seed(CPU, seed=seed)


def fwd(x, seed, inv_tau, hard, block=None, rows_per_program=None):
    out = torch.empty(x.shape, dtype=x.dtype)
    return K.gumbel_softmax_fwd(x, seed_t(seed), inv_tau, hard, out, block=block,
                                rows_per_program=rows_per_program)


def bwd(dy, src, seed, inv_tau, recompute, block=None, rows_per_program=None):
    out = torch.empty(src.shape, dtype=src.dtype)
    return K.gumbel_softmax_bwd(dy, src, seed_t(seed), inv_tau, recompute, out, block=block,
                                rows_per_program=rows_per_program)




# ----------------------------------------------------------------------------- the stream


@triton.jit
def _stream_kernel(seed_ptr, w_ptr, u_ptr, g_ptr, n, row_start, R: tl.constexpr,
                   BLOCK: tl.constexpr):
    rows = row_start + tl.arange(0, R).to(tl.int64)
    k0, k1 = seed_key(seed_ptr)
    for col0 in range(0, n, BLOCK):
        cols = col0 + tl.arange(0, BLOCK)
        w = philox_tile(k0, k1, rows, col0, BLOCK)
        off = tl.arange(0, R)[:, None] * n + cols[None, :]
        mask = (cols < n)[None, :]
        tl.store(w_ptr + off, w.to(tl.int64), mask=mask)
        tl.store(u_ptr + off, uniform(w), mask=mask)
        tl.store(g_ptr + off, philox_gumbel(w), mask=mask)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("row_start", [0, 2**32 + 3])  # the second exercises hi32(row) != 0
@pytest.mark.parametrize("tile_rows", [1, 4])  # one row a tile, and a packed tile of rows
def test_philox_stream_is_bit_exact(seed, row_start, tile_rows):
    rows, n = tile_rows, 37
    w = torch.empty(rows, n, dtype=torch.int64)
    u = torch.empty(rows, n)
    g = torch.empty(rows, n)
    _stream_kernel[(1,)](seed_t(seed), w, u, g, n, row_start, R=rows, BLOCK=16)

    r = torch.arange(row_start, row_start + rows)[:, None].expand(rows, n)
    c = torch.arange(n)[None, :].expand(rows, n)
    words = grandom.philox4x32(
        [c >> 2, r & 0xFFFFFFFF, r >> 32, torch.zeros_like(r)], grandom.seed_key(seed)
    )
    ref_w = torch.stack(words, -1).gather(-1, (c & 3)[..., None])[..., 0]
    ref_u = grandom.uniform(seed, rows, n, row_start=row_start)
    assert torch.equal(w, ref_w)
    assert torch.equal(u, ref_u)
    torch.testing.assert_close(g, -torch.log(-torch.log(ref_u)), rtol=2e-7, atol=5e-7)


# ----------------------------------------------------------------------------- dispatch by shape


def test_tile_config_packs_short_rows_and_chunks_long_ones():
    # Host-side sizes alone pick the tile: no program per 10-class row, one row per long row.
    assert K.tile_config(1000, 10)[:3] == (128, 16, True)
    assert K.tile_config(3, 10)[:3] == (4, 16, True)  # never more rows a program than exist
    assert K.tile_config(64, 1000)[:3] == (2, 1024, True)
    assert K.tile_config(64, 5000)[:3] == (1, 8192, True)
    assert K.tile_config(64, 20000)[:3] == (1, K.CHUNK, False)
    assert K.tile_config(8, 100, block=16, rows_per_program=2)[:3] == (2, 16, False)
    with pytest.raises(ValueError, match="power of two"):
        K.tile_config(8, 100, rows_per_program=3)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("n,block,rp", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_fwd_matches_reference(n, block, rp, hard):
    x = torch.randn(ROWS, n, generator=torch.Generator().manual_seed(n)) * 2
    y = fwd(strided(x), 2**64 - 5, 1 / 0.7, hard, block, rp)
    ref = ref_fwd(x, 2**64 - 5, 1 / 0.7, hard)
    if hard:
        assert torch.equal(y, ref)  # exact one-hot at the reference's index
    else:
        torch.testing.assert_close(y, ref, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(y.sum(1), torch.ones(ROWS))


@nan_row_warnings
@pytest.mark.parametrize("n,block,rp", [(7, None, 1), (7, None, 4), (33, 16, 1)],
                         ids=["7-row", "7-packed", "33-chunked"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("inv_tau", [1.0, 1e4], ids=["tau1", "tau1e-4"])
def test_fwd_hostile_rows(n, block, rp, hard, inv_tau):
    x = hostile_rows(n)
    y = fwd(x, 99, inv_tau, hard, block, rp)
    ref = ref_fwd(x, 99, inv_tau, hard)
    # At tau = 1e-4 a one-ulp difference between two libraries' logs in g moves an exponent by
    # ~1e-3, so only the large-tau comparison can be tight.
    atol = 1e-6 if inv_tau == 1.0 else 1e-2
    torch.testing.assert_close(y, ref, rtol=2e-5, atol=atol, equal_nan=True)
    assert y[4].isnan().all()  # NaN logit: NaN row
    assert not y[[0, 1, 2, 3, 5]].isnan().any()
    assert (y[1] > 0).sum() <= 2 and y[1, [n // 2, n - 1]].sum() == pytest.approx(1.0)
    assert (y[2, ::2] == 0).all()


# ----------------------------------------------------------------------------- backward


@pytest.mark.parametrize("n,block,rp", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("recompute", [False, True], ids=["saved-y", "recompute"])
def test_bwd_matches_reference(n, block, rp, recompute):
    gen = torch.Generator().manual_seed(1000 + n)
    x = torch.randn(ROWS, n, generator=gen)
    dy = torch.randn(ROWS, n, generator=gen)
    y = ref_fwd(x, 5, 2.0, hard=False)
    dx = bwd(strided(dy), strided(x if recompute else y), 5, 2.0, recompute, block, rp)
    torch.testing.assert_close(dx, ref_bwd(dy, y, 2.0), rtol=1e-4, atol=1e-6)


@nan_row_warnings
@pytest.mark.parametrize("block,rp", [(None, 1), (None, 4), (16, 1)],
                         ids=["row", "packed", "chunked"])
def test_bwd_recompute_hostile_rows(block, rp):
    x = hostile_rows(33)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    dx = bwd(dy, x, 11, 3.0, True, block, rp)
    ref = ref_bwd(dy, ref_fwd(x, 11, 3.0, hard=False), 3.0)
    torch.testing.assert_close(dx, ref, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert dx[4].isnan().all() and not dx[[0, 1, 2, 3, 5]].isnan().any()


def test_bwd_formula_is_the_gradient_of_the_soft_forward():
    x = torch.randn(3, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dy = torch.randn(3, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g = ref_noise(8, x).double()
    xr = x.clone().requires_grad_()
    (torch.softmax((xr + g) * 1.5, dim=1) * dy).sum().backward()
    dx = bwd(dy.float(), x.float(), 8, 1.5, True)
    torch.testing.assert_close(dx.double(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_every_layout_the_launchers_take(hard):
    x = torch.randn(5, 19, generator=torch.Generator().manual_seed(19))
    dy = torch.randn(5, 19, generator=torch.Generator().manual_seed(20))
    for name, view in layouts(x):
        if name == "column stride != 1":  # the ops copy such views; the launchers refuse them
            with pytest.raises(ValueError, match="column stride 1"):
                fwd(view, 8, 1.5, hard)
            continue
        ref = ref_fwd(view.contiguous(), 8, 1.5, hard)
        torch.testing.assert_close(fwd(view, 8, 1.5, hard, rows_per_program=4), ref,
                                   rtol=2e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(bwd(dy, view, 8, 1.5, True), ref_bwd(dy, ref_fwd(
            view.contiguous(), 8, 1.5, False), 1.5), rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize(
    "dtype,n,block",
    [(torch.float16, 33, None), (torch.bfloat16, 33, None), (torch.bfloat16, 129, 64)],
    ids=["fp16-packed", "bf16-packed", "bf16-chunked"],
)
def test_low_precision(dtype, n, block):
    gen = torch.Generator().manual_seed(12)
    x = (torch.randn(3, n, generator=gen) * 2).to(dtype)
    dy = torch.randn(3, n, generator=gen).to(dtype)

    def check(got, ref32):
        # flash-attention rule: at most 2x the error of the reference stored in the same dtype
        ref_err = (triton_cast(ref32, dtype).float() - ref32).abs().max()
        assert got.dtype == dtype
        assert (got.float() - ref32).abs().max() <= 2 * ref_err + 1e-6

    y32 = ref_fwd(x, 3, 1.25, hard=False)
    y_lp = y32.to(dtype)
    check(fwd(strided(x), 3, 1.25, False, block), y32)
    check(bwd(dy, x, 3, 1.25, True, block), ref_bwd(dy, y32, 1.25))
    check(bwd(dy, y_lp, 3, 1.25, False, block), ref_bwd(dy, y_lp, 1.25))
    assert torch.equal(fwd(x, 3, 1.25, True, block), ref_fwd(x, 3, 1.25, True).to(dtype))


# ----------------------------------------------------------------------------- arguments


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 8)
    out = torch.empty(2, 8)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        K.gumbel_softmax_fwd(x.double(), seed_t(1), 1.0, False, out.double())
    with pytest.raises(ValueError, match="column stride 1"):
        K.gumbel_softmax_fwd(torch.randn(8, 2).t(), seed_t(1), 1.0, False, out)
    with pytest.raises(ValueError, match="seed must be a 1-element int64 tensor"):
        K.gumbel_softmax_fwd(x, torch.tensor([1]).int(), 1.0, False, out)
    with pytest.raises(ValueError, match="inv_tau must be finite and > 0"):
        K.gumbel_softmax_fwd(x, seed_t(1), INF, False, out)
    with pytest.raises(ValueError, match="out must be torch.float32 of shape"):
        K.gumbel_softmax_fwd(x, seed_t(1), 1.0, False, torch.empty(2, 7))
    with pytest.raises(ValueError, match="dy must be of shape"):
        K.gumbel_softmax_bwd(x[:1], x, seed_t(1), 1.0, False, out)
    with pytest.raises(ValueError, match="block must be a power of two"):
        K.gumbel_softmax_fwd(x, seed_t(1), 1.0, False, out, block=24)

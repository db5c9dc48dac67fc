"""The Triton Gumbel kernels (kernels/gumbel.py) against the contract of genfast/ops/gumbel.py.

Runs on the CPU under the Triton interpreter; the reference below is built from the contract
text and genfast.random (the Philox oracle), independently of the kernels' algorithms (it sorts
where the kernels bisect, and reduces whole rows where they go chunk by chunk).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from genfast.kernels import gumbel as K  # noqa: E402
from genfast.kernels._philox import gumbel as philox_gumbel  # noqa: E402
from genfast.kernels._philox import philox_words, seed_key, uniform  # noqa: E402

from genfast import random as grandom  # noqa: E402

pytestmark = pytest.mark.triton
# The hostile rows include a NaN row; numpy, under the interpreter, warns about the NaN arithmetic
# that the GPU performs silently.
nan_row_warnings = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:All-NaN slice:RuntimeWarning"
)

INF = float("inf")
CPU = torch.device("cpu")
SEEDS = (0, 1234567, 2**64 - 5, 0xDEADBEEFCAFEBABE)  # the last two are negative as int64
# (n, block): block=None is the one-block path; a small block forces the chunked path, with a
# partial last chunk (of 1 and of 13 columns).
SIZES = [(1, None), (3, None), (7, None), (33, None), (129, None), (129, 64), (45, 16)]
SIZE_IDS = ["1", "3", "7", "33", "129", "129-chunked", "45-chunked"]


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


def ref_kept(s: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The kept set K of the contract, by sorting and walking (bool, (R, n))."""
    n = s.shape[1]
    keep = torch.ones_like(s, dtype=torch.bool)
    if 0 < top_k < n:
        keep = s >= s.topk(top_k, dim=1).values[:, -1:]
    if top_p < 1:
        p = torch.softmax(torch.where(keep, s, -INF), dim=1)
        for r in range(s.shape[0]):
            order = torch.argsort(s[r], descending=True, stable=True)
            order = order[keep[r, order]]
            reached = torch.nonzero(torch.cumsum(p[r, order], 0) >= top_p)
            if len(reached):
                keep[r] &= s[r] >= s[r, order[reached[0, 0]]]
    return keep


def ref_sample(x: torch.Tensor, seed: int, inv_temp: float, top_k: int, top_p: float):
    x = x.float()
    xc = ref_centered(x)
    if math.isinf(inv_temp):
        return xc.argmax(dim=1)
    s = xc * inv_temp
    keep = ref_kept(s, top_k, top_p)
    return torch.where(keep, s + ref_noise(seed, x), -INF).argmax(dim=1)


# ----------------------------------------------------------------------------- helpers


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values as a view with row stride > n and a column offset (no copy is allowed)."""
    rows, n = x.shape
    base = torch.full((2 * rows, n + 3), 7.0, dtype=x.dtype)
    view = base[::2, 1 : n + 1]
    view.copy_(x)
    assert view.stride() == (2 * (n + 3), 1)
    return view


def seed_t(seed: int) -> torch.Tensor:
    return grandom.make_seed(CPU, seed=seed)


def fwd(x, seed, inv_tau, hard, block=None):
    out = torch.empty(x.shape, dtype=x.dtype)
    return K.gumbel_softmax_fwd(x, seed_t(seed), inv_tau, hard, out, block=block)


def bwd(dy, src, seed, inv_tau, recompute, block=None):
    out = torch.empty(src.shape, dtype=src.dtype)
    return K.gumbel_softmax_bwd(dy, src, seed_t(seed), inv_tau, recompute, out, block=block)


def sample(x, seed, inv_temp, top_k=0, top_p=1.0, block=None):
    out = torch.empty(x.shape[0], dtype=torch.int64)
    return K.sample_categorical(x, seed_t(seed), inv_temp, top_k, top_p, out, block=block)


def hostile_rows(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(6, n, generator=g) * 3
    x[0, :] = -INF  # no finite logit: uniform
    x[1, n // 2] = INF  # mass on the +inf entries
    x[1, n - 1] = INF
    x[2, ::2] = -INF  # some columns impossible
    x[3] *= 1e30  # huge logits
    x[4, n // 3] = math.nan  # NaN row
    return x


# ----------------------------------------------------------------------------- the stream


@triton.jit
def _stream_kernel(seed_ptr, w_ptr, u_ptr, g_ptr, n, row_start, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) + row_start
    k0, k1 = seed_key(seed_ptr)
    for col0 in range(0, n, BLOCK):
        cols = col0 + tl.arange(0, BLOCK)
        w = philox_words(k0, k1, row, col0, BLOCK)
        off = tl.program_id(0) * n + cols
        tl.store(w_ptr + off, w.to(tl.int64), mask=cols < n)
        tl.store(u_ptr + off, uniform(w), mask=cols < n)
        tl.store(g_ptr + off, philox_gumbel(w), mask=cols < n)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("row_start", [0, 2**32 + 3])  # the second exercises hi32(row) != 0
def test_philox_stream_is_bit_exact(seed, row_start):
    rows, n = 3, 37
    w = torch.empty(rows, n, dtype=torch.int64)
    u = torch.empty(rows, n)
    g = torch.empty(rows, n)
    _stream_kernel[(rows,)](seed_t(seed), w, u, g, n, row_start, BLOCK=16)

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


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("n,block", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_fwd_matches_reference(n, block, hard):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n)) * 2
    y = fwd(strided(x), 2**64 - 5, 1 / 0.7, hard, block)
    ref = ref_fwd(x, 2**64 - 5, 1 / 0.7, hard)
    if hard:
        assert torch.equal(y, ref)  # exact one-hot at the reference's index
    else:
        torch.testing.assert_close(y, ref, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(y.sum(1), torch.ones(3))


@nan_row_warnings
@pytest.mark.parametrize("n,block", [(7, None), (33, 16)], ids=["7", "33-chunked"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("inv_tau", [1.0, 1e4], ids=["tau1", "tau1e-4"])
def test_fwd_hostile_rows(n, block, hard, inv_tau):
    x = hostile_rows(n)
    y = fwd(x, 99, inv_tau, hard, block)
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


@pytest.mark.parametrize("n,block", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("recompute", [False, True], ids=["saved-y", "recompute"])
def test_bwd_matches_reference(n, block, recompute):
    gen = torch.Generator().manual_seed(1000 + n)
    x = torch.randn(3, n, generator=gen)
    dy = torch.randn(3, n, generator=gen)
    y = ref_fwd(x, 5, 2.0, hard=False)
    dx = bwd(strided(dy), strided(x if recompute else y), 5, 2.0, recompute, block)
    torch.testing.assert_close(dx, ref_bwd(dy, y, 2.0), rtol=1e-4, atol=1e-6)


@nan_row_warnings
@pytest.mark.parametrize("block", [None, 16], ids=["single", "chunked"])
def test_bwd_recompute_hostile_rows(block):
    x = hostile_rows(33)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    dx = bwd(dy, x, 11, 3.0, True, block)
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


# ----------------------------------------------------------------------------- sampling


SAMPLERS = {  # (inv_temperature, top_k, top_p)
    "plain": (1.0, 0, 1.0),
    "top_k": (1 / 0.7, 5, 1.0),
    "top_p": (1 / 1.3, 0, 0.8),
    "top_k+top_p": (1.0, 10, 0.5),
    "greedy": (INF, 0, 1.0),
}
# Every size for the cheap samplers; the filters (a bisection each) on one-block and chunked rows.
SAMPLE_CASES = [(n, b, name) for (n, b) in SIZES for name in ("plain", "greedy")] + [
    (n, b, name)
    for (n, b) in [(7, None), (129, None), (45, 16)]
    for name in ("top_k", "top_p", "top_k+top_p")
]


@pytest.mark.parametrize(
    "n,block,name",
    SAMPLE_CASES,
    ids=[f"{name}-{n}{'-chunked' if b else ''}" for n, b, name in SAMPLE_CASES],
)
def test_sample_matches_reference_exactly(n, block, name):
    inv_temp, top_k, top_p = SAMPLERS[name]
    rows = 2 if block else 3  # the chunked path re-reads the row per bisection step: keep it small
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(7 * n)) * 2
    idx = sample(strided(x), 0xDEADBEEFCAFEBABE, inv_temp, top_k, top_p, block)
    assert torch.equal(idx, ref_sample(x, 0xDEADBEEFCAFEBABE, inv_temp, top_k, top_p))


# Logits with three tied 2.0s, one of them in the second 16-column chunk; the -inf columns carry
# no mass, so the kept sets below are those of the ten finite values.
KEPT_LOGITS = {0: 3.0, 1: 2.0, 2: -1.0, 3: 2.0, 6: 0.5, 7: 1.0, 8: -2.0, 9: 0.0, 10: 1.5, 17: 2.0}
KEPT_CASES = {  # (top_k, top_p, K) at inv_temperature 0.5
    "top_k-ties": (3, 1.0, {0, 1, 3, 17}),  # the 3rd largest s is held by three columns: all kept
    "top_p-ties": (0, 0.45, {0, 1, 3, 17}),  # the walk reaches 0.45 at the 2nd of three tied s
    "both": (2, 0.3, {0}),  # top_p over the renormalised top_k set: p(col 0) 0.35 there, 0.23 all
    "top_k=1": (1, 1.0, {0}),
}


@pytest.mark.parametrize(
    "name,block",
    [(name, None) for name in KEPT_CASES] + [("top_p-ties", 16), ("both", 16)],
    ids=list(KEPT_CASES) + ["top_p-ties-chunked", "both-chunked"],
)
def test_kept_sets_keep_ties(name, block):
    top_k, top_p, kept = KEPT_CASES[name]
    logits = torch.full((20,), -INF)
    logits[list(KEPT_LOGITS)] = torch.tensor(list(KEPT_LOGITS.values()))
    x = logits.expand(16, -1).contiguous()  # one row per draw: rows get independent noise
    s = ref_centered(x[:1]) * 0.5
    assert set(torch.nonzero(ref_kept(s, top_k, top_p)[0]).flatten().tolist()) == kept
    idx = sample(x, 1, 0.5, top_k, top_p, block)  # seed 1 draws each of {0, 1, 3, 17}
    assert torch.equal(idx, ref_sample(x, 1, 0.5, top_k, top_p))
    assert set(idx.tolist()) == kept  # never outside K, and every member of K gets drawn


@nan_row_warnings
@pytest.mark.parametrize(
    "name,block",
    # Chunked greedy: the all -inf row and the two +inf columns tie across chunks; first one wins.
    [(name, None) for name in SAMPLERS]
    + [(name, 16) for name in ("plain", "top_k+top_p", "greedy")],
    ids=list(SAMPLERS) + ["plain-chunked", "top_k+top_p-chunked", "greedy-chunked"],
)
def test_sample_hostile_rows(name, block):
    inv_temp, top_k, top_p = SAMPLERS[name]
    n = 33
    x = hostile_rows(n)
    idx = sample(x, 17, inv_temp, top_k, top_p, block)
    ref = ref_sample(x, 17, inv_temp, top_k, top_p)
    ok = [0, 1, 2, 3, 5]  # row 4 holds a NaN: any index in range
    assert torch.equal(idx[ok], ref[ok])
    assert 0 <= idx[4] < n
    assert idx[1] in (n // 2, n - 1)  # only the +inf entries carry mass
    assert idx[2] % 2 == 1  # never a -inf column


# ----------------------------------------------------------------------------- low precision


@triton.jit
def _cast_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < numel)
    tl.store(dst_ptr + offs, v.to(dst_ptr.dtype.element_ty), mask=offs < numel)


def triton_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t stored in dtype by Triton's own cast, the one the kernels use. On a GPU it rounds to
    nearest; the interpreter truncates fp32 -> bf16, so its bf16 outputs carry up to one ulp."""
    t = t.contiguous()
    out = torch.empty(t.shape, dtype=dtype)
    _cast_kernel[(1,)](t, out, t.numel(), BLOCK=triton.next_power_of_2(t.numel()))
    return out


@pytest.mark.parametrize(
    "dtype,n,block",
    [(torch.float16, 33, None), (torch.bfloat16, 33, None), (torch.bfloat16, 129, 64)],
    ids=["fp16", "bf16", "bf16-chunked"],
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
    assert torch.equal(sample(x, 3, 1.0, 5, 0.9, block), ref_sample(x, 3, 1.0, 5, 0.9))


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
    with pytest.raises(ValueError, match="out must be torch.int64"):
        K.sample_categorical(x, seed_t(1), 1.0, 0, 1.0, torch.empty(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="block must be a power of two"):
        K.gumbel_softmax_fwd(x, seed_t(1), 1.0, False, out, block=24)

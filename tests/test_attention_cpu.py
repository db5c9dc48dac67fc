"""The C++ CPU attention kernels attention_fwd / attention_bwd (csrc/cpu/attention.cpp,
attention_bwd.cpp), called through the native boundary: against the materialised float64
reference (_attention_ref) over odd sizes, N != M, causal and not, Dk != Dv, tiny and odd head
dims, pooled keys on even and odd grids (ties routed to the first maximum), strided views (a
KV-cache buffer sliced), the decode path (N = 1..4, long M), rows without keys, every SIMD copy,
the same bits for any thread count, and the binding's refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)

from genfast import backends
from genfast.ops._attention_ref import attention_reference, pool_rows, probs
from genfast.ops._boundary import DTYPE_CODE, native

C, _why = backends.extension("_C")
pytestmark = [
    pytest.mark.skipif(C is None or not hasattr(C, "attention_fwd"),
                       reason=f"genfast._C lacks the attention kernels: {_why}"),
    pytest.mark.usefixtures("single_thread"),
]
ISAS = ["avx512", "avx2", "sse2", "scalar"]
INF = float("inf")


def _keys(Sk, pool):
    return (pool[0] // 2) * (pool[1] // 2) if pool else Sk


def kfwd(q, k, v, causal=False, scale=None, pool=None, save=True):
    """The native forward on views as given (unit last stride, any other strides)."""
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.shape[2], v.shape[3]
    scale = Dk ** -0.5 if scale is None else scale
    o = q.new_full((B, Hh, N, Dv), 7.0)
    lse = q.new_full((B, Hh, N), 7.0) if save else None
    ph, pw = pool or (0, 0)
    native("cpu", "attention_fwd", q, k, v, o, 0 if lse is None else lse, B, Hh, N,
           _keys(Sk, pool), Sk, Dk, Dv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], ph,
           pw, causal, float(scale), DTYPE_CODE[q.dtype])
    return o, lse


def kbwd(q, k, v, o, lse, do, causal=False, scale=None, pool=None):
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.shape[2], v.shape[3]
    scale = Dk ** -0.5 if scale is None else scale
    dq, dk, dv = (torch.full_like(t, 7.0) for t in (q, k, v))
    ph, pw = pool or (0, 0)
    native("cpu", "attention_bwd", q, k, v, o, lse, do, dq, dk, dv, B, Hh, N, _keys(Sk, pool),
           Sk, Dk, Dv, ph, pw, causal, float(scale), DTYPE_CODE[q.dtype])
    return dq, dk, dv


def reference(q, k, v, do, causal, scale, pool):
    """(o, lse, dq, dk, dv) of the materialised reference, in float64."""
    q, k, v, do = (t.detach().double() for t in (q, k, v, do))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    o = attention_reference(qr, kr, vr, causal, scale, pool)
    o.backward(do)
    lse = probs(q, pool_rows(k, pool) if pool else k, causal, scale)[1]
    return o.detach(), lse, qr.grad, kr.grad, vr.grad


def _check(q, k, v, causal, scale, pool, what, tol=None):
    do = torch.randn(*q.shape[:3], v.shape[3], dtype=q.dtype)
    o, lse = kfwd(q, k, v, causal, scale, pool)
    dq, dk, dv = kbwd(q.contiguous(), k.contiguous(), v.contiguous(), o, lse, do, causal, scale,
                      pool)
    ref = reference(q, k, v, do, causal, scale, pool)
    tol = tol or (1e-10 if q.dtype == torch.float64 else 3e-4)
    for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, dq, dk, dv), ref,
                               strict=True):
        assert not got.isnan().any(), f"{what}: {name} has NaN"
        fin = want.isfinite()
        assert torch.equal(got.isinf(), ~fin), f"{what}: {name} infinities differ"
        err = (got.double()[fin] - want[fin]).abs().max().item() if fin.any() else 0.0
        scale_ = 1.0 + want[fin].abs().max().item() if fin.any() else 1.0
        assert err <= tol * scale_, f"{what}: {name} off by {err:.3g}"


GRID = [  # N, M (or the pooled grid), Dk, Dv, causal
    (1, 1, 8, 8, False), (7, 7, 8, 32, True), (33, 129, 16, 8, False), (129, 33, 64, 64, True),
    (129, 7, 1, 3, True), (7, 33, 100, 16, True), (65, 129, 16, 100, False),
    (33, (8, 8), 8, 32, False), (17, (7, 9), 16, 8, False), (40, (9, 8), 1, 3, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,M,Dk,Dv,causal", GRID)
def test_natives_match_reference(N, M, Dk, Dv, causal, dtype):
    torch.manual_seed(N * 7 + Dk)
    pool = M if isinstance(M, tuple) else None
    Sk = M[0] * M[1] if pool else M
    q = torch.randn(2, 3, N, Dk, dtype=dtype)
    k, v = torch.randn(2, 3, Sk, Dk, dtype=dtype), torch.randn(2, 3, Sk, Dv, dtype=dtype)
    for scale in (None, 1.0):
        _check(q, k, v, causal, scale, pool, f"{(N, M, Dk, Dv, causal, scale)}")


@pytest.mark.parametrize("isa", ISAS)
def test_every_simd_copy(isa):
    if isa not in C.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    before = C.isa()
    try:
        C.set_isa(isa)
        torch.manual_seed(1)
        for dtype in (torch.float64, torch.float32):
            for N, M, Dk, Dv, causal, pool in [(70, 130, 24, 40, True, None),
                                               (37, 600, 8, 32, False, None),
                                               (2, 700, 16, 24, True, None),
                                               (33, 99, 8, 32, False, (9, 11))]:
                Sk = pool[0] * pool[1] if pool else M
                q = torch.randn(1, 2, N, Dk, dtype=dtype)
                k = torch.randn(1, 2, Sk, Dk, dtype=dtype)
                v = torch.randn(1, 2, Sk, Dv, dtype=dtype)
                _check(q, k, v, causal, None, pool, f"{isa} {(N, M, Dk, Dv, causal, pool)}")
    finally:
        C.set_isa(before)


def test_strided_views_kv_cache():
    # q from a (B, N, Hh, D) projection viewed as (B, Hh, N, D); k / v the first L rows of a
    # preallocated cache: the kernel reads them in place, equal to contiguous copies.
    # N = 3: the few-row path (scores as dot products on k in place); N = 70: the tiled one.
    torch.manual_seed(2)
    B, Hh, D, Tmax, L = 2, 3, 20, 300, 211
    kc, vc = torch.randn(B, Hh, Tmax, D), torch.randn(B, Hh, Tmax, 2 * D)
    k, v = kc[:, :, :L], vc[:, :, :L, D // 2:D // 2 + 24]
    for N in (3, 70):
        q = torch.randn(B, N, Hh, D).transpose(1, 2)
        for causal in (False, True):
            o, lse = kfwd(q, k, v, causal)
            oc, lc = kfwd(q.contiguous(), k.contiguous(), v.contiguous(), causal)
            assert torch.equal(o, oc) and torch.equal(lse, lc)
            _check(q.double(), k.double(), v.double(), causal, None, None, f"strided {N}")


@pytest.mark.parametrize("N", [1, 2, 4, 10])  # 10: tiled scores, keys still split
def test_decode_matches_full_causal(N):
    # The decode path (few rows, long M, keys split in parts merged afterwards) equals the last
    # N rows of the full causal attention, and the reference.
    torch.manual_seed(3 + N)
    M = 1000
    q, k, v = torch.randn(1, 2, M, 32), torch.randn(1, 2, M, 32), torch.randn(1, 2, M, 48)
    full, lse_full = kfwd(q, k, v, True)
    o, lse = kfwd(q[:, :, -N:], k, v, True)
    assert (o - full[:, :, -N:]).abs().max() < 1e-5
    assert (lse - lse_full[:, :, -N:]).abs().max() < 1e-5
    _check(q[:, :, -N:].double(), k.double(), v.double(), True, None, None, f"decode {N}")
    _check(q[:, :, :N].double(), k.double(), v.double(), False, 0.3, None, f"decode {N} full")
    o2, lse2 = kfwd(q[:, :, -N:], k, v, True, save=False)
    assert torch.equal(o2, o)


def test_rows_without_keys():
    # Causal with N > M: the first N - M rows see nothing (o = 0, lse = -inf, zero gradients);
    # M = 0: every row. No NaN anywhere.
    torch.manual_seed(4)
    for dtype in (torch.float64, torch.float32):
        q, k, v = (torch.randn(1, 2, n, 8, dtype=dtype) for n in (70, 5, 5))
        _check(q, k, v, True, None, None, "N > M causal")
        o, lse = kfwd(q, k, v, True)
        assert (o[:, :, :65] == 0).all() and (lse[:, :, :65] == -INF).all()
        e = torch.empty(1, 2, 0, 8, dtype=dtype)
        o, lse = kfwd(q, e, e, False)
        assert (o == 0).all() and (lse == -INF).all()
        dq, dk, dv = kbwd(q, e, e, o, lse, torch.randn_like(o))
        assert (dq == 0).all() and dk.numel() == 0


def test_pooled_ties_route_to_first_max():
    # Integer-valued keys make ties in most windows: each pooled gradient must land on the
    # first maximum in window order, every other row of the grid (odd edges too) 0.
    torch.manual_seed(5)
    for grid in ((6, 6), (7, 5)):
        Sk = grid[0] * grid[1]
        q = torch.randn(1, 1, 9, 4, dtype=torch.float64)
        k = torch.randint(0, 2, (1, 1, Sk, 4)).double()
        v = torch.randint(0, 2, (1, 1, Sk, 6)).double()
        _check(q, k, v, False, 1.0, grid, f"ties {grid}")
        o, lse = kfwd(q, k, v, False, 1.0, grid)
        _, dk, _ = kbwd(q, k, v, o, lse, torch.randn_like(o), False, 1.0, grid)
        _, idx = pool_rows(k, grid, indices=True)
        hit = torch.zeros(Sk, 4, dtype=torch.bool)
        hit.scatter_(0, idx[0, 0], True)
        assert (dk[0, 0][~hit] == 0).all()


def test_same_bits_for_any_thread_count():
    # Shapes past the single-thread cut-off: the forward's row chunks, the decode's key parts
    # and the backward's key chunks (B * Hh small) are fixed by the shape, not the threads.
    torch.manual_seed(6)
    cases = [((1, 2, 200, 16), (1, 2, 300, 16), (1, 2, 300, 24), True, None),
             ((1, 1, 3, 32), (1, 1, 2000, 32), (1, 1, 2000, 32), True, None),
             ((2, 1, 100, 8), (2, 1, 256, 8), (2, 1, 256, 32), False, (16, 16))]
    for qs, ks, vs, causal, pool in cases:
        q, k, v = torch.randn(qs), torch.randn(ks), torch.randn(vs)
        do = torch.randn(*qs[:3], vs[3])
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            o, lse = kfwd(q, k, v, causal, None, pool)
            outs.append((o, lse, *kbwd(q, k, v, o, lse, do, causal, None, pool)))
        torch.set_num_threads(1)
        for other in outs[1:]:
            for a, b in zip(outs[0], other, strict=True):
                assert torch.equal(a, b)


def test_binding_refuses_bad_sizes():
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 16, 8), torch.randn(1, 1, 16, 8)
    o, lse = torch.empty(1, 1, 4, 8), torch.empty(1, 1, 4)
    st = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    with pytest.raises(ValueError, match="do not match pool"):  # M != Sk without pooling
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                        1, 1, 4, 20, 16, 8, 8, *st, 0, 0, False, 1.0, 0, 1)
    with pytest.raises(ValueError, match="do not match pool"):  # pooled grid of the wrong size
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                        1, 1, 4, 4, 16, 8, 8, *st, 4, 5, False, 1.0, 0, 1)
    with pytest.raises(ValueError, match="do not match pool"):  # pooled and causal
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                        1, 1, 4, 4, 16, 8, 8, *st, 4, 4, True, 1.0, 0, 1)
    with pytest.raises(ValueError, match="negative size"):
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                        1, 1, -4, 16, 16, 8, 8, *st, 0, 0, False, 1.0, 0, 1)
    with pytest.raises(ValueError, match="o: null data pointer"):
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), 0, lse.data_ptr(),
                        1, 1, 4, 16, 16, 8, 8, *st, 0, 0, False, 1.0, 0, 1)
    with pytest.raises(ValueError, match="dtype code"):
        C.attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                        1, 1, 4, 16, 16, 8, 8, *st, 0, 0, False, 1.0, 2, 1)
    with pytest.raises(ValueError, match="lse: null data pointer"):
        C.attention_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), 0,
                        o.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), 1, 1, 4, 16, 16,
                        8, 8, 0, 0, False, 1.0, 0, 1)


def test_matches_torch_sagan_core():
    # The SAGAN / BigGAN core as those layers write it (max_pool2d of phi and g, bmm, softmax,
    # bmm, no scale), float32, against the pooled kernel on the unpooled rows.
    torch.manual_seed(7)
    B, H, W, Ck, Cv = 2, 10, 12, 8, 32
    theta, phi, g = torch.randn(B, Ck, H, W), torch.randn(B, Ck, H, W), torch.randn(B, Cv, H, W)
    a = torch.softmax(torch.bmm(theta.flatten(2).transpose(1, 2),
                                F.max_pool2d(phi, 2).flatten(2)), -1)
    want = torch.bmm(F.max_pool2d(g, 2).flatten(2), a.transpose(1, 2))  # (B, Cv, HW)
    rows = (lambda t: t.flatten(2).transpose(1, 2).unsqueeze(1).contiguous())  # (B,1,HW,C)
    o, _ = kfwd(rows(theta), rows(phi), rows(g), False, 1.0, (H, W))
    assert (o[:, 0].transpose(1, 2) - want).abs().max() < 1e-5

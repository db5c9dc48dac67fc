"""attention op family: every backend against an independent materialised float64 attention
(and SDPA where the semantics coincide), first-order gradients, autograd to any order (the
kernels' double backward; the reference from the third order), pooled keys, empty rows, strided
views, torch.library / compile / export integration, bad input. Beside it:
test_attention_cpu.py / _bwd2_cpu.py (C++ specifics), test_attention_triton.py /
_bwd2_triton.py (the launchers), test_attention_memory.py (peak memory),
test_attention*_nn.py (the modules)."""

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import fast_backends, gradcheck_dtype, single_thread  # noqa: F401 (fixture)

import genfast
from genfast.ops import attention as A

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("attention")
ALL = ["reference", *FAST]


def _randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def naive(q, k, v, causal=False, scale=None, pool=None):
    """Attention written out in float64, loop-free but independent of genfast's reference."""
    q, k, v = q.double(), k.double(), v.double()
    if pool is not None:
        hs, ws = pool
        B, Hh, _, _ = k.shape

        def p2(t):
            g = t.reshape(B * Hh, hs, ws, -1).permute(0, 3, 1, 2)
            return F.max_pool2d(g, 2).flatten(2).transpose(1, 2).reshape(B, Hh, -1, t.shape[-1])
        k, v = p2(k), p2(v)
    N, M = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal:
        keep = torch.ones(N, M, dtype=torch.bool).tril(M - N)
        s = s.masked_fill(~keep, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no key: 0
    return p @ v


# (B, Hh, N, M, Dk, Dv, causal, pool); the interpreter gets a thinner slice
GRID = [
    (1, 1, 1, 1, 1, 1, False, None),
    (2, 3, 7, 7, 8, 8, True, None),
    (1, 2, 5, 9, 16, 8, True, None),  # N < M: the decode / chunked-prefill alignment
    (2, 1, 9, 4, 8, 3, True, None),  # N > M: five rows see no key
    (1, 2, 33, 17, 3, 5, False, None),
    (2, 1, 20, 20, 8, 32, False, (4, 5)),  # pooled 4x5 grid -> 2x2 keys
    (1, 1, 35, 35, 4, 6, False, (5, 7)),  # odd grid: the last row and column dropped
    (1, 1, 129, 65, 64, 40, True, None),
]


def _grid(backend):
    return GRID[:6] if backend == "triton" else GRID


def _dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def _inputs(B, Hh, N, M, Dk, Dv, dtype, seed=0):
    return (_randn(B, Hh, N, Dk, dtype=dtype, seed=seed), _randn(B, Hh, M, Dk, dtype=dtype,
            seed=seed + 1), _randn(B, Hh, M, Dv, dtype=dtype, seed=seed + 2))


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("backend", ALL)
def test_forward_and_grads_match_naive(backend):
    dt = _dtype(backend)
    for B, Hh, N, M, Dk, Dv, causal, pool in _grid(backend):
        q, k, v = (t.requires_grad_() for t in _inputs(B, Hh, N, M, Dk, Dv, dt))
        scale = 1.0 if pool else None
        o = genfast.attention(q, k, v, causal=causal, scale=scale, pool=pool, backend=backend)
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        want = naive(qd, kd, vd, causal, scale, pool)
        torch.testing.assert_close(o.double(), want, **_tol(dt))
        go = _randn(*o.shape, dtype=dt, seed=7)
        got = torch.autograd.grad(o, (q, k, v), go)
        ref = torch.autograd.grad(want, (qd, kd, vd), go.double())
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(g.double(), r, **_tol(dt))
            assert torch.isfinite(g).all()


@pytest.mark.parametrize("backend", ALL)
def test_matches_sdpa(backend):
    q, k, v = _inputs(2, 2, 12, 12, 8, 8, _dtype(backend))
    for causal in (False, True):
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        got = genfast.attention(q, k, v, causal=causal, backend=backend)
        torch.testing.assert_close(got, want, **_tol(q.dtype))


@pytest.mark.parametrize("backend", ALL)
def test_strided_views_and_ranks(backend):
    """A KV cache's prefix view, transposed q (nanoGPT's head split), 3-D and 2-D inputs."""
    dt = _dtype(backend)
    cache_k = _randn(2, 3, 40, 8, dtype=dt, seed=1)
    cache_v = _randn(2, 3, 40, 6, dtype=dt, seed=2)
    q = _randn(2, 5, 3, 8, dtype=dt, seed=3).transpose(1, 2)  # (B, Hh, N, Dk), strided
    k, v = cache_k[:, :, :17], cache_v[:, :, :17]
    got = genfast.attention(q, k, v, causal=True, backend=backend)
    torch.testing.assert_close(got.double(), naive(q, k, v, True), **_tol(dt))
    q3, k3, v3 = q[0], k[0], v[0]
    got3 = genfast.attention(q3, k3, v3, backend=backend)
    torch.testing.assert_close(got3.double(), naive(q3[None], k3[None], v3[None])[0], **_tol(dt))
    got2 = genfast.attention(q3[1], k3[1], v3[1], backend=backend)
    torch.testing.assert_close(got2.double(), naive(q3[None, 1:2], k3[None, 1:2],
                                                    v3[None, 1:2])[0, 0], **_tol(dt))


@pytest.mark.parametrize("backend", ALL)
def test_empty_rows_and_empty_keys(backend):
    """No key visible (N > M causal, or M == 0): o = 0 and zero, finite gradients."""
    dt = _dtype(backend)
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 6, 2, 4, 3, dt))
    o = genfast.attention(q, k, v, causal=True, backend=backend)
    assert (o[:, :, :4] == 0).all() and torch.isfinite(o).all()
    dq, = torch.autograd.grad(o.sum(), q)
    assert (dq[:, :, :4] == 0).all() and torch.isfinite(dq).all()
    q0, k0, v0 = _inputs(1, 1, 3, 0, 4, 3, dt)
    assert (genfast.attention(q0, k0, v0, backend=backend) == 0).all()
    assert genfast.attention(q[:, :, :0], k, v, backend=backend).shape == (1, 2, 0, 3)


@pytest.mark.parametrize("backend", ALL)
def test_double_backward_matches_reference(backend):
    """The kernels' double backward (what an R1 / WGAN-GP penalty through attention runs),
    against the reference in float64; in float32 the flash-attention rule: at most twice the
    float32 reference's own error (plus a hair), since second-order sums amplify rounding."""
    dt = _dtype(backend)
    for B, Hh, N, M, Dk, Dv, causal, pool in _grid(backend)[1:6]:
        base = _inputs(B, Hh, N, M, Dk, Dv, torch.float64)
        scale = 1.0 if pool else None
        res = {}
        for be, d in ((backend, dt), ("reference", dt), ("reference", torch.float64)):
            q, k, v = (t.to(d).requires_grad_() for t in base)
            o = genfast.attention(q, k, v, causal=causal, scale=scale, pool=pool, backend=be)
            g = torch.autograd.grad((o * o).sum(), (q, k, v), create_graph=True)
            pen = sum((x * x).sum() for x in g)
            res[be, d] = torch.autograd.grad(pen, (q, k, v))
        for got, lo, want in zip(res[backend, dt], res["reference", dt],
                                 res["reference", torch.float64], strict=True):
            if dt == torch.float64:
                torch.testing.assert_close(got, want, **_tol(dt))
                continue
            err, own = (got.double() - want).abs().max(), (lo.double() - want).abs().max()
            assert err <= 2 * own + 1e-5 * want.abs().max(), (backend, causal, pool, err, own)


@pytest.mark.parametrize("backend", [b for b in ALL if gradcheck_dtype(b) == torch.float64])
def test_gradcheck_gradgradcheck(backend):
    for causal, pool, shape in ((False, None, (1, 2, 5, 7, 3, 4)),
                                (True, None, (2, 1, 7, 5, 3, 2)),
                                (False, (4, 4), (1, 1, 16, 16, 2, 3))):
        q, k, v = (t.requires_grad_() for t in _inputs(*shape, torch.float64, seed=3))
        def f(q, k, v, causal=causal, pool=pool):
            return genfast.attention(q, k, v, causal=causal, pool=pool, backend=backend)
        assert torch.autograd.gradcheck(f, (q, k, v))
        assert torch.autograd.gradgradcheck(f, (q, k, v))


@pytest.mark.parametrize("backend", [b for b in ALL if gradcheck_dtype(b) == torch.float64])
def test_third_order(backend):
    """gradgradcheck of the double backward: every order exists."""
    q, k, v = (t.requires_grad_() for t in _inputs(1, 1, 4, 5, 2, 3, torch.float64, seed=5))

    def first(q, k, v):
        o = genfast.attention(q, k, v, causal=True, backend=backend)
        return torch.autograd.grad((o * o).sum(), (q, k, v), create_graph=True)
    assert torch.autograd.gradgradcheck(first, (q, k, v))


@pytest.mark.parametrize("backend", ALL)
def test_attention2d_is_the_sagan_core(backend):
    dt = _dtype(backend)
    theta, phi = _randn(2, 4, 6, 5, dtype=dt, seed=1), _randn(2, 4, 6, 5, dtype=dt, seed=2)
    g = _randn(2, 7, 6, 5, dtype=dt, seed=3)
    for pool in (True, False):
        got = genfast.attention2d(theta, phi, g, pool=pool, backend=backend)
        p, gg = phi.double(), g.double()
        if pool:
            p, gg = F.max_pool2d(p, 2), F.max_pool2d(gg, 2)
        beta = torch.softmax(theta.double().flatten(2).transpose(1, 2) @ p.flatten(2), -1)
        want = (gg.flatten(2) @ beta.transpose(1, 2)).view(2, 7, 6, 5)
        torch.testing.assert_close(got.double(), want, **_tol(dt))


def test_opcheck():
    q, k, v = (t.float() for t in _inputs(1, 2, 5, 6, 4, 3, torch.float32))
    be = genfast.backends.resolve("attention", q)
    o, lse = A.attention_fwd_op(q, k, v, True, 0.5, 0, 0, True, be)
    torch.library.opcheck(A.attention_fwd_op, (q, k, v, True, 0.5, 0, 0, True, be))
    torch.library.opcheck(A.attention_bwd_op, (q, k, v, o, lse, torch.randn_like(o), True, 0.5,
                                               0, 0, be))
    torch.library.opcheck(A.attention_bwd2_op, (q, k, v, o, lse, torch.randn_like(o),
                                                torch.randn_like(q), None, torch.randn_like(v),
                                                True, 0.5, be))


def test_compile_fullgraph_and_export():
    q, k, v = _inputs(2, 2, 6, 6, 4, 4, torch.float32)
    f = (lambda q, k, v: genfast.attention(q, k, v, causal=True))
    want = f(q, k, v)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), want)

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return genfast.attention(q, k, v, causal=True)
    ep = torch.export.export(M(), (q, k, v))
    torch.testing.assert_close(ep.module()(q, k, v), want)


def test_bad_input():
    q, k, v = _inputs(1, 1, 4, 4, 3, 2, torch.float32)
    with pytest.raises(TypeError, match="q must be"):
        genfast.attention(q.long(), k, v)
    with pytest.raises(ValueError, match="k's last dim"):
        genfast.attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="v must have as many rows"):
        genfast.attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="dtype"):
        genfast.attention(q, k.double(), v)
    with pytest.raises(ValueError, match="as many dims"):
        genfast.attention(q, k[0], v)
    with pytest.raises(ValueError, match="batch and head"):
        genfast.attention(q, k.expand(2, 1, 4, 3), v.expand(2, 1, 4, 2))
    with pytest.raises(ValueError, match="pool=.*rows"):
        genfast.attention(q, k, v, pool=(3, 3))
    with pytest.raises(ValueError, match="not with causal"):
        genfast.attention(q, k, v, pool=(2, 2), causal=True)
    with pytest.raises(ValueError, match="scale must be finite"):
        genfast.attention(q, k, v, scale=math.nan)
    with pytest.raises(ValueError, match="g must be"):
        genfast.attention2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4),
                            torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="pool needs"):
        genfast.attention2d(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4),
                            torch.zeros(1, 3, 1, 4))


@pytest.mark.skipif(not FAST, reason="no kernel backend here")
def test_head_dim_limit():
    """Past the kernels' tile limit: an explicit backend refuses, auto warns and runs the
    reference."""
    q, k, v = _inputs(1, 1, 2, 3, 300, 2, torch.float32)
    with pytest.raises(ValueError, match="head dims up to"):
        genfast.attention(q, k, v, backend=FAST[0])
    with pytest.warns(genfast.backends.BackendFallbackWarning, match="exceed"):
        got = genfast.attention(q, k, v)
    torch.testing.assert_close(got.double(), naive(q, k, v))


def test_cpu_autocast_runs_in_bfloat16_like_sdpa():
    """SDPA is on the CPU autocast list: under it genfast returns bfloat16 too (through the
    reference: the C++ kernels take float32 / float64), with SDPA's values."""
    q, k, v = _inputs(1, 2, 6, 6, 8, 8, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = genfast.attention(q, k, v, causal=True, backend="reference")
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_attention_step_is_the_causal_decode():
    """The inference entry CausalSelfAttention decodes with: the same result as
    genfast.attention(causal=True) on cache views, and genfast.attention itself (autograd
    included) when a gradient is wanted."""
    cache_k, cache_v = _randn(2, 3, 40, 8, seed=1), _randn(2, 3, 40, 8, seed=2)
    q = _randn(2, 3, 2, 8, seed=3)
    k, v = cache_k[:, :, :25], cache_v[:, :, :25]
    with torch.no_grad():
        got = A.attention_step(q, k, v, scale=0.3)
    torch.testing.assert_close(got, genfast.attention(q, k, v, causal=True, scale=0.3))
    qg = q.clone().requires_grad_()
    out = A.attention_step(qg, k, v, scale=0.3)
    assert out.grad_fn is not None
    torch.testing.assert_close(out.detach(), got)

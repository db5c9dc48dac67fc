"""The C++ CPU double backward of fused attention, attention_bwd2 (csrc/cpu/attention_bwd2.cpp):
the native against torch autograd of a materialised float64 attention (the gradients of
<gq, dq> + <gk, dk> + <gv, dv> w.r.t. q, k, v, dout, with (dq, dk, dv) from create_graph) over
odd sizes, N != M both ways, causal (bottom-right) and not, Dk != Dv, each cotangent absent in
turn, rows that see no key, every SIMD copy in float32, the same bits for any thread count,
and the binding's refusals."""

from __future__ import annotations

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends
from genfast.ops._boundary import DTYPE_CODE, native

C, _why = backends.extension("_C")
pytestmark = [
    pytest.mark.skipif(C is None or not hasattr(C, "attention_bwd2"),
                       reason=f"genfast._C lacks attention_bwd2: {_why}"),
    pytest.mark.usefixtures("single_thread"),
]
ISAS = ["avx512", "avx2", "sse2", "scalar"]
NAMES = ("gq", "gk", "gv")


def _probs(q, k, causal, scale):
    """Materialised P (rows without a key: P = 0, no NaN in any derivative) and lse."""
    N, M = q.shape[-2], k.shape[-2]
    s = scale * q @ k.transpose(-1, -2)
    i = torch.arange(N).unsqueeze(1)
    vis = (torch.arange(M).unsqueeze(0) <= i + (M - N)) if causal else torch.ones(N, M, dtype=bool)
    empty = ~vis.any(-1, keepdim=True)
    s = s.masked_fill(~vis, float("-inf")).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse).masked_fill(empty, 0.0)
    return p, lse.squeeze(-1).masked_fill(empty.squeeze(-1), float("-inf"))


def reference(q, k, v, dout, gq, gk, gv, causal, scale):
    """(Gq, Gk, Gv, Gdout) by double autograd of the float64 materialised attention."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, dout)]
    qq, kk, vv, dd = leaves
    p, _ = _probs(qq, kk, causal, scale)
    o = p @ vv
    grads = torch.autograd.grad(o, (qq, kk, vv), dd, create_graph=True)
    pairs = zip(grads, (gq, gk, gv), strict=True)
    total = sum((g * c.double()).sum() for g, c in pairs if c is not None)
    if not isinstance(total, torch.Tensor) or not total.requires_grad:
        return tuple(torch.zeros_like(t) for t in leaves)
    got = torch.autograd.grad(total, leaves, allow_unused=True)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(got, leaves, strict=True))


def kernel(q, k, v, o, lse, dout, gq, gk, gv, causal, scale):
    """The native as the header states it; outputs start as NaN, so each must be written."""
    B, Hh, N, Dk = q.shape
    M, Dv = k.shape[2], v.shape[3]
    outs = [torch.full_like(t, float("nan")) for t in (q, k, v, dout)]
    opt = (lambda t: 0 if t is None else t)
    native("cpu", "attention_bwd2", q, k, v, o, lse, dout, opt(gq), opt(gk), opt(gv), *outs,
           B, Hh, N, M, Dk, Dv, causal, scale, DTYPE_CODE[q.dtype])
    return tuple(outs)


def case(B, Hh, N, M, Dk, Dv, causal, dtype=torch.float64, absent=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (lambda *s: torch.randn(*s, generator=g, dtype=torch.float64))
    q, k, v = r(B, Hh, N, Dk), r(B, Hh, M, Dk), r(B, Hh, M, Dv)
    dout = r(B, Hh, N, Dv)
    cot = {"gq": r(B, Hh, N, Dk), "gk": r(B, Hh, M, Dk), "gv": r(B, Hh, M, Dv)}
    gq, gk, gv = (None if n in absent else cot[n] for n in NAMES)
    scale = Dk ** -0.5
    p, lse = _probs(q, k, causal, scale)
    o = p @ v
    cast = (lambda t: None if t is None else t.to(dtype).contiguous())
    args = [cast(t) for t in (q, k, v, o, lse, dout, gq, gk, gv)]
    want = reference(q, k, v, dout, gq, gk, gv, causal, scale)
    return args, want, scale


def check(args, want, scale, causal, tol, label=""):
    got = kernel(*args, causal, scale)
    for name, a, b in zip(("Gq", "Gk", "Gv", "Gdout"), got, want, strict=True):
        assert torch.isfinite(a).all(), f"{label} {name} not finite"
        err = (a.double() - b).abs().max().item() if a.numel() else 0.0
        ref = b.abs().max().item() if b.numel() else 0.0
        assert err <= tol * max(ref, 1.0), f"{label} {name}: err {err:.3g} (max |ref| {ref:.3g})"
    return got


SHAPES = [  # B, Hh, N, M, Dk, Dv
    (1, 1, 1, 1, 1, 1),
    (2, 1, 7, 33, 8, 32),
    (1, 2, 33, 7, 8, 32),
    (1, 1, 65, 33, 64, 8),
    (1, 1, 33, 65, 1, 8),
    (2, 2, 65, 65, 8, 8),
    (1, 1, 7, 130, 64, 64),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_against_double_autograd(shape, causal):
    args, want, scale = case(*shape, causal, seed=sum(shape))
    check(args, want, scale, causal, 1e-11, f"{shape} causal={causal}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("absent", [("gq",), ("gk",), ("gv",), ("gq", "gk"), ("gq", "gv"),
                                    ("gk", "gv"), NAMES], ids=lambda a: "-".join(a))
def test_absent_cotangents_are_zeros(absent, causal):
    args, want, scale = case(2, 1, 33, 65, 8, 32, causal, absent=absent, seed=7)
    got = check(args, want, scale, causal, 1e-11, f"absent={absent}")
    if set(absent) >= {"gq", "gk"}:  # X = 0: nothing reaches v
        assert not got[2].any()


@pytest.mark.parametrize("N,M", [(65, 33), (9, 0), (0, 9)])
def test_rows_without_keys_get_zero_gradients(N, M):
    args, want, scale = case(1, 2, N, M, 8, 16, True, seed=3)
    got = check(args, want, scale, True, 1e-11, f"N={N} M={M}")
    empty = max(N - M, 0)  # causal: rows 0 .. N-M-1 see no key
    assert not got[0][:, :, :empty].any() and not got[3][:, :, :empty].any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("causal", [False, True])
def test_float32_on_every_simd_copy(isa, causal):
    if isa not in C.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    before = C.isa()
    try:
        C.set_isa(isa)
        for shape in [(2, 1, 33, 65, 8, 32), (1, 2, 65, 7, 64, 8)]:
            args, want, scale = case(*shape, causal, dtype=torch.float32, seed=5)
            check(args, want, scale, causal, 2e-4, f"{isa} {shape}")
    finally:
        C.set_isa(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_bits_for_any_thread_count(dtype):
    args, _, scale = case(2, 3, 130, 97, 16, 24, True, dtype=dtype, seed=11)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(kernel(*args, True, scale))
    torch.set_num_threads(1)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("N,M,causal", [(5, 3, True), (3, 6, True), (4, 4, False)])
def test_gradgradcheck_of_the_public_op_runs_this_kernel(N, M, causal, monkeypatch):
    calls = []
    kernel_fn = C.attention_bwd2

    def spy(*args):
        calls.append(args)
        return kernel_fn(*args)

    monkeypatch.setattr(C, "attention_bwd2", spy)
    g = torch.Generator().manual_seed(N * 10 + M)
    q = torch.randn(1, 2, N, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, M, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, M, 5, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v):
        return genfast.attention(q, k, v, causal=causal, backend="cpu")

    assert torch.autograd.gradgradcheck(fn, (q, k, v))
    assert calls, "the double backward did not reach genfast._C.attention_bwd2"


def test_binding_refuses_what_could_write_out_of_bounds():
    args, _, scale = case(1, 1, 4, 5, 8, 8, False, dtype=torch.float32)
    q, k, v, o, lse, dout, gq, gk, gv = args
    outs = [torch.empty_like(t) for t in (q, k, v, dout)]
    ptr = [t.data_ptr() for t in (q, k, v, o, lse, dout, gq, gk, gv, *outs)]
    tail = [1, 1, 4, 5, 8, 8, False, scale]
    with pytest.raises(ValueError, match="dtype code 2 not supported"):
        C.attention_bwd2(*ptr, *tail, 2, 1)
    with pytest.raises(ValueError, match="attention_bwd2: negative size"):
        C.attention_bwd2(*ptr, 1, 1, -4, 5, 8, 8, False, scale, 0, 1)
    for i, name in [(1, "k"), (4, "lse"), (11, "Gv")]:
        bad = list(ptr)
        bad[i] = 0
        with pytest.raises(ValueError, match=f"attention_bwd2: {name}: null data pointer"):
            C.attention_bwd2(*bad, *tail, 0, 1)

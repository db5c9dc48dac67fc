"""The Triton double backward of attention (kernels/attention_bwd2.py) on the CPU under the
Triton interpreter.

Oracle: torch autograd through a materialised float64 attention written here (the design's
math: bottom-right causal mask, rows without keys give o = 0 and lse = -inf): the gradients of
<gq, dQ> + <gk, dK> + <gv, dV> w.r.t. (q, k, v, dO), with (dQ, dK, dV) from
torch.autograd.grad(create_graph=True). The kernel gets o and lse from the same oracle. Also
checked against the committed reference kernel (genfast/ops/_attention_ref.py ref_bwd2) and end
to end: torch.autograd.grad twice through genfast.attention(backend="triton")."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
import torch

pytest.importorskip("triton")

import genfast  # noqa: E402
from genfast.kernels import attention_bwd2 as K  # noqa: E402
from genfast.ops._attention_ref import attention_reference, ref_bwd2, ref_fwd  # noqa: E402

pytestmark = pytest.mark.triton
TOL32 = dict(rtol=2e-5, atol=2e-5)


def oracle_fwd(q, k, v, causal, scale):
    """(o, lse) of materialised attention; differentiable, no NaN for rows without keys."""
    N, M = q.shape[-2], k.shape[-2]
    s = scale * q @ k.transpose(-1, -2)
    if causal:
        keep = torch.arange(M)[None, :] <= torch.arange(N)[:, None] + (M - N)
        s = s.masked_fill(~keep, float("-inf"))
    # The softmax is shift invariant, so a detached row max changes no gradient.
    m = s.amax(-1, keepdim=True).detach() if M else s.new_zeros(*s.shape[:-1], 1)
    m = torch.where(torch.isfinite(m), m, 0)
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    p = e / torch.where(den > 0, den, 1)
    lse = torch.where(den > 0, den.log() + m, float("-inf")).squeeze(-1)
    return p @ v, lse


def make(B, Hh, N, M, Dk, Dv, given, seed=0, dtype=torch.float32):
    """Inputs rounded to `dtype`, held in float64: (q, k, v, dout, [gq, gk, gv] or None)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype).double()

    q, k, v, dout = r(B, Hh, N, Dk), r(B, Hh, M, Dk), r(B, Hh, M, Dv), r(B, Hh, N, Dv)
    cots = [r(B, Hh, N, Dk), r(B, Hh, M, Dk), r(B, Hh, M, Dv)]
    return q, k, v, dout, [c if on else None for c, on in zip(cots, given, strict=True)]


def oracle_bwd2(q, k, v, dout, cots, causal, scale):
    """(o, lse) and (Gq, Gk, Gv, Gdout) in float64."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v, dout)]
    o, lse = oracle_fwd(*leaves[:3], causal, scale)
    firsts = torch.autograd.grad(o, leaves[:3], leaves[3], create_graph=True)
    loss = sum((d * c).sum() for d, c in zip(firsts, cots, strict=True) if c is not None)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, leaves, strict=True)]
    return o.detach(), lse.detach(), grads


def run_kernel(q, k, v, o, lse, dout, cots, causal, scale, dtype=torch.float32, block=None):
    def cast(t):
        return None if t is None else t.to(dtype).contiguous()

    # 7.0 everywhere: every output element must be written.
    outs = [torch.full(t.shape, 7.0, dtype=dtype) for t in (q, k, v, dout)]
    K.bwd2(cast(q), cast(k), cast(v), cast(o), lse.float().contiguous(), cast(dout),
           *[cast(c) for c in cots], *outs, causal, scale, block=block)
    return outs


def check(B, Hh, N, M, Dk, Dv, causal, given, scale=None, block=None, seed=0, tol=TOL32):
    scale = Dk ** -0.5 if scale is None else scale
    q, k, v, dout, cots = make(B, Hh, N, M, Dk, Dv, given, seed)
    o, lse, want = oracle_bwd2(q, k, v, dout, cots, causal, scale)
    got = run_kernel(q, k, v, o, lse, dout, cots, causal, scale, block=block)
    for name, gt, wt in zip(("Gq", "Gk", "Gv", "Gdout"), got, want, strict=True):
        torch.testing.assert_close(gt, wt.float(), **tol, msg=lambda m, n=name: f"{n}: {m}")
    return got, want


# (B, Hh, N, M, Dk, Dv, causal, (gq, gk, gv) given, block). block 16 walks several query and
# key tiles (33 = 2 * 16 + 1) and the causal loop bounds of both sweeps; N > M under causal
# leaves the first N - M rows without keys.
CASES = [
    (1, 1, 1, 1, 1, 1, False, (1, 1, 1), None),
    (1, 1, 1, 7, 3, 2, True, (1, 1, 1), None),
    (1, 2, 7, 33, 8, 5, True, (1, 1, 1), 16),
    (1, 2, 33, 7, 5, 8, True, (1, 1, 1), 16),
    (2, 1, 33, 33, 16, 3, False, (1, 1, 1), 16),
    (1, 2, 33, 17, 7, 16, False, (1, 1, 1), 16),
    (1, 2, 33, 33, 4, 8, True, (1, 1, 1), None),
    (1, 2, 7, 33, 4, 8, False, (0, 1, 1), 16),
    (1, 2, 33, 7, 4, 8, True, (1, 0, 1), 16),
    (1, 2, 33, 17, 4, 8, True, (1, 1, 0), 16),
    (1, 2, 17, 33, 6, 3, True, (0, 0, 1), 16),
    (1, 2, 33, 17, 6, 3, False, (1, 0, 0), 16),
    (1, 2, 17, 33, 6, 3, True, (0, 1, 0), 16),
]
IDS = [f"B{c[0]}H{c[1]}-N{c[2]}-M{c[3]}-dk{c[4]}dv{c[5]}" + ("-causal" if c[6] else "")
       + "-" + "".join(n for n, on in zip(("q", "k", "v"), c[7], strict=True) if on)
       + (f"-block{c[8]}" if c[8] else "") for c in CASES]


@pytest.mark.parametrize("B,Hh,N,M,Dk,Dv,causal,given,block", CASES, ids=IDS)
def test_matches_autograd_oracle(B, Hh, N, M, Dk, Dv, causal, given, block):
    got, want = check(B, Hh, N, M, Dk, Dv, causal, given, block=block)
    if N > 1 or M > 1:
        # The oracle is not trivially zero, so the comparison above could fail.
        assert max(w.abs().max().item() for w in want) > 1e-3


def test_rows_without_keys_contribute_nothing():
    # Causal N > M: query rows 0 .. N-M-1 see no key (lse = -inf). Their Gq / Gdout rows are
    # exactly 0, and the rest matches the oracle, which has no such rows at all.
    N, M = 21, 5
    got, _ = check(1, 2, N, M, 8, 8, True, (1, 1, 1), block=16)
    gq, gdout = got[0], got[3]
    assert torch.equal(gq[:, :, : N - M], torch.zeros_like(gq[:, :, : N - M]))
    assert torch.equal(gdout[:, :, : N - M], torch.zeros_like(gdout[:, :, : N - M]))
    q, k, v, dout, cots = make(1, 2, N, M, 8, 8, (1, 1, 1))
    tail = slice(N - M, N)
    cots[0] = cots[0][:, :, tail]
    _, _, want = oracle_bwd2(q[:, :, tail], k, v, dout[:, :, tail], cots, True, 8 ** -0.5)
    torch.testing.assert_close(got[1], want[1].float(), **TOL32)
    torch.testing.assert_close(got[2], want[2].float(), **TOL32)


@pytest.mark.parametrize("N,M,given", [(5, 0, (1, 1, 1)), (0, 6, (1, 1, 1)), (5, 6, (0, 0, 0))],
                         ids=["no-keys", "no-queries", "no-cotangents"])
def test_empty_products_write_zeros(N, M, given):
    q, k, v, dout, cots = make(2, 1, N, M, 4, 3, given)
    o = torch.zeros_like(dout)
    lse = torch.full((2, 1, N), float("-inf")) if M == 0 else oracle_fwd(q, k, v, False, 0.5)[1]
    for out in run_kernel(q, k, v, o, lse, dout, cots, False, 0.5):
        assert torch.equal(out, torch.zeros_like(out))


def test_wide_head_dims_and_unit_scale():
    # Dk 40 and Dv 130 pad to 64 and 256 (the widest tiles); scale 1.0 is SAGAN's, with larger
    # logits than 1/sqrt(Dk). Logits near 40 carry fp32 rounding of ~4e-6 into P, and X (as
    # large) amplifies it: the tolerance follows the conditioning, not the kernel.
    tol = dict(rtol=1e-4, atol=2e-4)
    check(1, 1, 9, 12, 40, 130, False, (1, 1, 1), scale=1.0 / 4, tol=tol)
    check(1, 1, 12, 9, 40, 130, True, (1, 1, 1), scale=1.0, tol=tol)


def test_block_size_does_not_change_the_result_much():
    # The default tiles (16 for fp32) and forced 64-tiles (one per slice): another summation
    # order only.
    q, k, v, dout, cots = make(1, 2, 40, 35, 8, 8, (1, 1, 1), seed=5)
    o, lse, _ = oracle_bwd2(q, k, v, dout, cots, True, 0.3)
    a = run_kernel(q, k, v, o, lse, dout, cots, True, 0.3)
    b = run_kernel(q, k, v, o, lse, dout, cots, True, 0.3, block=64)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL32)


def test_float16():
    # fp16 storage, fp32 accumulation; P and the gradient tiles enter tl.dot in fp16 (as the
    # GPU does). bf16 is left to the GPU rows: the interpreter's tl.dot multiplies bf16 bit
    # patterns.
    dt = torch.float16
    q, k, v, dout, cots = make(1, 2, 33, 17, 8, 12, (1, 1, 1), seed=3, dtype=dt)
    o, lse, want = oracle_bwd2(q, k, v, dout, cots, True, 8 ** -0.5)
    o = o.to(dt).double()
    got = run_kernel(q, k, v, o, lse, dout, cots, True, 8 ** -0.5, dtype=dt, block=16)
    for gt, wt in zip(got, want, strict=True):
        assert gt.dtype == dt
        err = (gt.double() - wt).abs().max() / wt.abs().max()
        assert err < 3e-3, err


@pytest.mark.parametrize("causal,given", [(True, (1, 1, 1)), (False, (0, 1, 1))],
                         ids=["causal-qkv", "kv"])
def test_matches_reference_kernel(causal, given):
    # The reference backend's bwd2 (explicit formulas), with its own o and lse (float64).
    q, k, v, dout, cots = make(2, 1, 19, 11, 6, 9, given, seed=7)
    o, lse = ref_fwd(q, k, v, causal, 0.4, None, True)
    want = ref_bwd2(q, k, v, o, lse, dout, *cots, causal, 0.4)
    got = run_kernel(q, k, v, o, lse, dout, cots, causal, 0.4, block=16)
    for gt, wt in zip(got, want, strict=True):
        torch.testing.assert_close(gt, wt.float(), **TOL32)


# (genfast.attention kwargs, N, rows of k / v, penalty): "all" differentiates <c, dq> +
# <c, dk> + <c, dv>; "r1" is |dq|^2 alone (an R1 / WGAN-GP penalty through the attention
# input: no dk / dv cotangent reaches bwd2). pooled: SAGAN's 2x2-pooled keys, scale 1.
E2E = [(dict(causal=True), 13, 9, "all"), (dict(causal=True), 5, 19, "r1"),
       (dict(causal=False, scale=1.0, pool=(5, 6)), 9, 30, "all")]


@pytest.mark.parametrize("kw,N,Sk,penalty", E2E, ids=["causal-N>M", "causal-N<M-r1", "pooled"])
def test_double_backward_through_genfast_attention(kw, N, Sk, penalty, monkeypatch):
    calls = []
    launch = K.bwd2
    monkeypatch.setattr(K, "bwd2", lambda *a, **kw: calls.append(a[6:9]) or launch(*a, **kw))
    g = torch.Generator().manual_seed(11)
    base = [torch.randn(*s, generator=g) for s in ((1, 2, N, 8), (1, 2, Sk, 8), (1, 2, Sk, 5),
                                                  (1, 2, N, 5))]
    cots = [torch.randn(*s, generator=g) for s in ((1, 2, N, 8), (1, 2, Sk, 8), (1, 2, Sk, 5))]

    def second_order(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in base]
        o = fn(*leaves[:3])
        firsts = torch.autograd.grad(o, leaves[:3], leaves[3], create_graph=True)
        if penalty == "r1":
            loss = firsts[0].square().sum()
        else:
            loss = sum((f * c.to(dtype)).sum() for f, c in zip(firsts, cots, strict=True))
        return firsts, torch.autograd.grad(loss, leaves)

    got1, got2 = second_order(lambda q, k, v: genfast.attention(q, k, v, backend="triton", **kw),
                              torch.float32)
    want1, want2 = second_order(
        lambda q, k, v: attention_reference(q, k, v, kw["causal"], kw.get("scale"),
                                            kw.get("pool")), torch.float64)
    for gt, wt in zip(got1 + got2, want1 + want2, strict=True):
        torch.testing.assert_close(gt, wt.float(), rtol=5e-5, atol=5e-5)
    assert max(w.abs().max().item() for w in want2) > 1e-3
    # The second order ran on this launcher, once (with gq: the loss has a dq cotangent).
    assert len(calls) == 1 and calls[0][0] is not None


def _args(**over):
    B, Hh, N, M, Dk, Dv = 1, 2, 5, 6, 4, 3
    a = dict(q=torch.zeros(B, Hh, N, Dk), k=torch.zeros(B, Hh, M, Dk), v=torch.zeros(B, Hh, M, Dv),
             o=torch.zeros(B, Hh, N, Dv), lse=torch.zeros(B, Hh, N), dout=torch.zeros(B, Hh, N, Dv),
             gq=torch.zeros(B, Hh, N, Dk), gk=None, gv=torch.zeros(B, Hh, M, Dv),
             Gq=torch.zeros(B, Hh, N, Dk), Gk=torch.zeros(B, Hh, M, Dk),
             Gv=torch.zeros(B, Hh, M, Dv), Gdout=torch.zeros(B, Hh, N, Dv), causal=False,
             scale=0.5)
    a.update(over)
    return a


@pytest.mark.parametrize("over,err,match", [
    (dict(q=torch.zeros(2, 5, 4)), ValueError, "q must be 4-D"),
    (dict(q=torch.zeros(1, 2, 5, 4, dtype=torch.float64)), TypeError, "q must be float32"),
    (dict(k=torch.zeros(1, 2, 6, 5)), ValueError, "k must be"),
    (dict(v=torch.zeros(1, 2, 7, 3)), ValueError, "v must be"),
    (dict(lse=torch.zeros(1, 2, 5, dtype=torch.float64)), ValueError, "lse must be"),
    (dict(gk=torch.zeros(1, 2, 6, 5)), ValueError, "gk must be"),
    (dict(dout=torch.zeros(1, 2, 3, 5).transpose(-1, -2)), ValueError, "dout must be contig"),
    (dict(Gv=torch.zeros(1, 2, 6, 3, dtype=torch.float16)), ValueError, "Gv must be"),
    (dict(scale=float("nan")), ValueError, "scale must be"),
], ids=["q-3d", "q-float64", "k-dim", "v-rows", "lse-dtype", "gk-shape", "dout-strides",
        "Gv-dtype", "scale-nan"])
def test_bad_input_names_the_argument(over, err, match):
    with pytest.raises(err, match=match):
        K.bwd2(**_args(**over))


def test_bad_head_dim_and_block():
    with pytest.raises(ValueError, match=r"Dv must be in \[1, 256\]"):
        K.bwd2(**_args(v=torch.zeros(1, 2, 6, 257), o=torch.zeros(1, 2, 5, 257),
                       dout=torch.zeros(1, 2, 5, 257), gv=None, Gv=torch.zeros(1, 2, 6, 257),
                       Gdout=torch.zeros(1, 2, 5, 257)))
    with pytest.raises(ValueError, match="block must be a power of two"):
        K.bwd2(**_args(), block=24)

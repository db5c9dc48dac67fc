"""The Triton attention kernels (kernels/attention.py: forward with the decode split-K path and
pooled keys, first-order backward) against the contract of genfast/ops/attention.py, on the CPU
under the Triton interpreter.

Oracle: the materialised reference (genfast/ops/_attention_ref.py ref_fwd / ref_bwd) run in
float64, and torch autograd of attention_reference for the end-to-end gradients. Tiles are
16 x 16 under the interpreter, so N, M = 17..40 walk several query and key blocks, the causal
band and the masked tails; `block` forces BM != BN."""

import itertools
import math
import os
import subprocess
import sys
from types import SimpleNamespace

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
import torch

pytest.importorskip("triton")

import genfast  # noqa: E402
from genfast.kernels import attention as K  # noqa: E402
from genfast.ops._attention_ref import attention_reference, ref_bwd, ref_fwd  # noqa: E402

pytestmark = pytest.mark.triton
TOL = dict(rtol=2e-5, atol=2e-5)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run(q, k, v, dout, causal, scale, pool=None, block=None, splits=None):
    """(o, lse, dq, dk, dv) from the launchers; outputs start as 7s so unwritten entries show."""
    B, Hh, N, _ = q.shape
    o, lse = torch.full((B, Hh, N, v.shape[3]), 7.0), torch.full((B, Hh, N), 7.0)
    K.fwd(q, k, v, o, lse, causal, scale, pool, block=block, splits=splits)
    dq, dk, dv = (torch.full(t.shape, 7.0) for t in (q, k, v))
    c = (lambda t: t.contiguous())
    K.bwd(c(q), c(k), c(v), o, lse, dout, dq, dk, dv, causal, scale, pool, block=block)
    return o, lse, dq, dk, dv


def check(q, k, v, causal, scale, pool=None, block=None, splits=None, seed=9):
    B, Hh, N, _ = q.shape
    dout = randn(B, Hh, N, v.shape[3], seed=seed)
    got = run(q, k, v, dout, causal, scale, pool, block, splits)
    d = (lambda t: t.double())
    wo, wl = ref_fwd(d(q), d(k), d(v), causal, scale, pool, True)
    want = (wo, wl) + ref_bwd(d(q), d(k), d(v), wo, wl, d(dout), causal, scale, pool)
    for name, g, w in zip(("o", "lse", "dq", "dk", "dv"), got, want, strict=True):
        torch.testing.assert_close(g, w.float(), **TOL, msg=lambda m, n=name: f"{n}: {m}")
    return got


# (B, Hh, N, M, Dk, Dv, causal, block). N < M, N > M (causal rows without keys), N = M, odd
# sizes across 16-row tiles, head dims 1..256 padded to powers of two, BM != BN both ways (the
# GPU tables pair tiles 4:1, as 64 x 16 and 16 x 64 here).
CASES = [
    (1, 2, 1, 1, 8, 8, False, None),
    (1, 1, 7, 33, 8, 16, True, None),
    (2, 1, 33, 7, 16, 40, True, None),
    (1, 1, 33, 33, 40, 8, True, None),
    (1, 2, 33, 17, 16, 16, False, (32, 16)),
    (1, 1, 17, 40, 16, 8, True, (16, 32)),
    (1, 1, 40, 17, 8, 16, True, (32, 16)),
    (1, 1, 70, 50, 16, 16, True, (64, 16)),
    (1, 1, 50, 70, 8, 8, True, (16, 64)),
    (1, 1, 7, 9, 3, 1, True, None),
    (1, 1, 5, 6, 256, 200, False, None),
]
IDS = [f"B{c[0]}H{c[1]}-N{c[2]}-M{c[3]}-Dk{c[4]}-Dv{c[5]}" + ("-causal" if c[6] else "")
       + (f"-block{c[7][0]}x{c[7][1]}" if c[7] else "") for c in CASES]


@pytest.mark.parametrize("B,Hh,N,M,Dk,Dv,causal,block", CASES, ids=IDS)
def test_matches_reference(B, Hh, N, M, Dk, Dv, causal, block):
    q, k, v = randn(B, Hh, N, Dk, seed=1), randn(B, Hh, M, Dk, seed=2), randn(B, Hh, M, Dv, seed=3)
    o, lse, *_ = check(q, k, v, causal, 1 / math.sqrt(Dk), block=block)
    if causal and N > M:  # the first N - M rows see no key: 0 output, -inf lse, 0 gradients
        assert torch.all(o[:, :, : N - M] == 0) and torch.all(lse[:, :, : N - M] == -math.inf)
    o2 = torch.empty_like(o)
    K.fwd(q, k, v, o2, None, causal, 1 / math.sqrt(Dk), None, block=block)
    assert torch.equal(o2, o)  # nothing saved: the same output


def test_no_keys_and_no_queries():
    q, k, v = randn(1, 2, 5, 8, seed=1), torch.empty(1, 2, 0, 8), torch.empty(1, 2, 0, 4)
    o, lse, dq, dk, dv = check(q, k, v, False, 0.5)
    assert torch.all(o == 0) and torch.all(lse == -math.inf) and torch.all(dq == 0)
    # N = 0: nothing reads k / v, their gradients are zeros.
    q = torch.empty(1, 1, 0, 8)
    k, v = randn(1, 1, 6, 8, seed=2), randn(1, 1, 6, 4, seed=3)
    *_, dk, dv = check(q, k, v, True, 0.5)
    assert torch.all(dk == 0) and torch.all(dv == 0)


@pytest.mark.parametrize("pool", [(4, 6), (5, 7), (3, 2)], ids=str)
def test_pooled_keys(pool):
    # Even and odd grids (odd edges dropped and given zero gradients), a single key.
    Hs, Ws = pool
    q = randn(2, 1, 9, 8, seed=1)
    k, v = randn(2, 1, Hs * Ws, 8, seed=2), randn(2, 1, Hs * Ws, 24, seed=3)
    check(q, k, v, False, 1.0, pool=pool)


def test_pooled_ties_go_to_the_first_maximum():
    # Integer-valued keys / values tie often inside a window: the gradient goes to the first
    # maximum in (0,0), (0,1), (1,0), (1,1) order, as torch's max_pool2d on the CPU.
    g = torch.Generator().manual_seed(4)
    q = randn(1, 2, 6, 4, seed=1)
    k = torch.randint(0, 2, (1, 2, 36, 4), generator=g).float()
    v = torch.randint(0, 2, (1, 2, 36, 16), generator=g).float()
    *_, dk, dv = check(q, k, v, False, 1.0, pool=(6, 6))
    win = dk.reshape(1, 2, 3, 2, 3, 2, 4).permute(0, 1, 2, 4, 6, 3, 5).reshape(-1, 4)
    assert torch.all((win != 0).sum(1) <= 1)  # one routed position per window and channel
    k0 = k.reshape(1, 2, 3, 2, 3, 2, 4).permute(0, 1, 2, 4, 6, 3, 5).reshape(-1, 4)
    first = (k0 == k0.max(1, keepdim=True).values).float().argmax(1)
    hit = win != 0
    assert torch.equal(hit.float().argmax(1)[hit.any(1)], first[hit.any(1)])


def test_strided_kv_cache_views():
    # q in (B, T, Hh, D) layout, k / v views of a longer (B, Hh, Tmax, D) cache: the same bits
    # as contiguous copies.
    B, Hh, N, L, Tmax, D = 2, 3, 5, 21, 32, 16
    q = randn(B, N, Hh, D, seed=1).transpose(1, 2)
    kc, vc = randn(B, Hh, Tmax, D, seed=2), randn(B, Hh, Tmax, 8, seed=3)
    k, v = kc[:, :, :L], vc[:, :, :L]
    assert not (q.is_contiguous() or k.is_contiguous())
    got = check(q, k, v, True, 0.25)
    c = (lambda t: t.contiguous())
    want = run(c(q), c(k), c(v), randn(B, Hh, N, 8, seed=9), True, 0.25)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


# (N, M, causal, splits): N = 1..3 queries over long keys take the split-K path on their own
# (None) or forced; N = 16, M = 20 causal gives row 0 an empty second split.
DECODE = [(1, 130, True, None), (2, 130, False, None), (3, 97, True, 5), (16, 20, True, 2)]


@pytest.mark.parametrize("N,M,causal,splits", DECODE, ids=[str(c) for c in DECODE])
def test_decode_splits(N, M, causal, splits):
    q, k, v = randn(1, 2, N, 16, seed=1), randn(1, 2, M, 16, seed=2), randn(1, 2, M, 8, seed=3)
    if splits is None:  # the launcher's own choice splits these keys (16-key tiles here)
        assert K._decode_splits(q, 2, M, 16) > 1
    outs = []
    for sp in (splits, 1):
        o, lse = torch.empty(1, 2, N, 8), torch.empty(1, 2, N)
        K.fwd(q, k, v, o, lse, causal, 0.25, None, splits=sp)
        outs.append((o, lse))
    wo, wl = ref_fwd(q.double(), k.double(), v.double(), causal, 0.25, None, True)
    for o, lse in outs:
        torch.testing.assert_close(o, wo.float(), **TOL)
        torch.testing.assert_close(lse, wl.float(), **TOL)
    o, _ = outs[0]
    o2 = torch.empty_like(o)
    K.fwd(q, k, v, o2, None, causal, 0.25, None, splits=splits)
    assert torch.equal(o2, o)  # lse not asked for: the combine still merges by it


def test_backward_is_deterministic():
    q, k, v = randn(1, 2, 33, 16, seed=1), randn(1, 2, 40, 16, seed=2), randn(1, 2, 40, 8, seed=3)
    dout = randn(1, 2, 33, 8, seed=4)
    a, b = run(q, k, v, dout, True, 0.3), run(q, k, v, dout, True, 0.3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("smem", [101376, 166912, 232448], ids=["sm86", "A100", "H100"])
def test_gpu_tiles_fit_shared_memory(monkeypatch, smem):
    # The GPU tile tables (no GPU here: a stand-in q reports CUDA) shrink to the device's
    # shared memory for every dtype, head dim and pooling, and stay powers of two >= 16.
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: SimpleNamespace(shared_memory_per_block_optin=smem))
    for dt in K.DTYPES:
        es = torch.empty(0, dtype=dt).element_size()
        q = SimpleNamespace(is_cuda=True, dtype=dt, device=None)
        for bd, pool in itertools.product((16, 32, 64, 128, 256), (1, 4)):
            kv = 2 * bd * es
            # (table, walked tile, raw copies a stage, owned tile, its bytes a row)
            for table, walk, copies, own, own_row in ((K._FWD, 1, pool, 0, bd * es),
                                                      (K._DQ, 1, pool, 0, kv),
                                                      (K._DKDV, 0, 1, 1, kv)):
                cfg = K._config(table, q, bd, None)
                want = list(cfg)
                got = K._fit(q, cfg, walk, kv, cfg[own] * own_row, copies)
                streamed = got[3] * copies if got[3] > 1 else 1
                assert streamed * got[walk] * kv + got[own] * own_row <= smem - 2048, (dt, bd)
                assert all(t >= 16 and not t & (t - 1) for t in got[:2]) and got[3] >= 1
                if smem == 232448 and pool == 1:  # the tables were checked as they are on H100
                    assert got == want, (dt, bd, got, want)


def test_bad_arguments_name_the_argument():
    q, k, v = torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 6, 8), torch.zeros(1, 1, 6, 4)
    o, lse = torch.empty(1, 1, 4, 4), torch.empty(1, 1, 4)
    with pytest.raises(ValueError, match="head dim Dk"):
        K.fwd(torch.zeros(1, 1, 4, 300), torch.zeros(1, 1, 6, 300), v, o, lse, False, 1.0, None)
    with pytest.raises(ValueError, match="unit last stride"):
        K.fwd(q, torch.zeros(1, 1, 8, 6).transpose(2, 3), v, o, lse, False, 1.0, None)
    with pytest.raises(TypeError, match="v must be"):
        K.fwd(q, k, v.double(), o, lse, False, 1.0, None)
    with pytest.raises(ValueError, match="pool_hw"):
        K.fwd(q, k, v, o, lse, False, 1.0, (2, 2))
    with pytest.raises(ValueError, match="lse must be"):
        K.fwd(q, k, v, o, torch.empty(1, 1, 5), False, 1.0, None)
    with pytest.raises(ValueError, match="block"):
        K.fwd(q, k, v, o, lse, False, 1.0, None, block=(16, 24))
    with pytest.raises(ValueError, match="dk must be"):
        K.bwd(q, k, v, o, lse, o, torch.empty_like(q), torch.empty(1, 1, 5, 8),
              torch.empty_like(v), False, 1.0, None)


# Compiles every kernel (each constexpr branch: causal, pooled, no lse, fp16 / fp32 dots) for
# an sm_80 GPU without one. The interpreter runs the Python semantics only and lets through what
# the compiler rejects (a plain float global read in a kernel passed here and failed to compile).
_COMPILE_FOR_GPU = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from genfast.kernels import attention as A

def compile_for(fn, ptrs, consts):
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if "scale" in n else "i32")
           for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 80, 32),
                   options=dict(num_warps=4, num_stages=2))

h, f = "*fp16", "*fp32"
tiles = dict(BM=16, BN=16, BDK=16, BDV=16)
grads = dict(q_ptr=h, k_ptr=h, v_ptr=h, do_ptr=h, lse_ptr=f, dl_ptr=f)
for causal, pool in ((True, False), (False, True)):
    compile_for(A._fwd_kernel, dict(q_ptr=h, k_ptr=h, v_ptr=h, o_ptr=h, lse_ptr=f),
                dict(CAUSAL=causal, POOL=pool, HAS_LSE=True, PREC="tf32", **tiles))
    compile_for(A._dkdv_kernel, dict(grads, dk_ptr=h, dv_ptr=h),
                dict(CAUSAL=causal, POOL=pool, PREC="tf32", **tiles))
    compile_for(A._dq_kernel, dict(grads, dq_ptr=h),
                dict(CAUSAL=causal, POOL=pool, PREC="tf32", **tiles))
compile_for(A._fwd_kernel, dict(q_ptr=f, k_ptr=f, v_ptr=f, o_ptr=f, lse_ptr=f),
            dict(CAUSAL=True, POOL=False, HAS_LSE=False, PREC="ieee", **tiles))
compile_for(A._combine_kernel, dict(po_ptr=f, plse_ptr=f, o_ptr=h, lse_ptr=f),
            dict(HAS_LSE=True, BM=16, BDV=16))
compile_for(A._bwd_pre_kernel, dict(o_ptr=h, do_ptr=h, delta_ptr=f), dict(BR=16, BDV=16))
"""


def test_kernels_compile_for_a_gpu():
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


# ----------------------------------------------------------------------------- end to end


E2E = [(dict(causal=True), 13, 13, None), (dict(causal=True), 5, 19, None),
       (dict(causal=False, scale=1.0, pool=(5, 6)), 9, 30, None),
       (dict(causal=False), 7, 11, "3d")]


@pytest.mark.parametrize("kw,N,Sk,shape", E2E, ids=["causal", "causal-N<M", "pooled", "3d"])
def test_genfast_attention_triton_backend(kw, N, Sk, shape):
    # genfast.attention(backend="triton") routes through the op, the dispatch and these
    # launchers: output and first-order gradients equal the reference's autograd.
    q, k, v = randn(2, 2, N, 8, seed=1), randn(2, 2, Sk, 8, seed=2), randn(2, 2, Sk, 12, seed=3)
    if shape == "3d":
        q, k, v = (t[0] for t in (q, k, v))
    g = randn(*q.shape[:-1], 12, seed=4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = genfast.attention(*leaves, backend="triton", **kw)
    grads = torch.autograd.grad(o, leaves, g)
    wleaves = [t.double().requires_grad_() for t in (q, k, v)]
    w4 = [t if t.dim() == 4 else t[None] for t in wleaves]
    wo = attention_reference(*w4, kw["causal"], kw.get("scale"), kw.get("pool"))
    wo = wo.reshape(*q.shape[:-1], 12)
    wgrads = torch.autograd.grad(wo, wleaves, g.double())
    torch.testing.assert_close(o, wo.float(), **TOL)
    for x, y in zip(grads, wgrads, strict=True):
        torch.testing.assert_close(x, y.float(), **TOL)

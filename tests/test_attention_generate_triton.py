"""The Triton GPT sampling loop (kernels/attention_generate.py) against the attention_generate
contract (/work/notes/gen10-design.md), on the CPU under the Triton interpreter.

Oracles: GPTNet.generate(use_cache=True) itself (float32, same seed and keep: the tokens must be
equal), and a teacher-forced float64 oracle that makes that equality a checked claim rather than
luck: under the contract, the cache at draw p holds tokens [c0, p) at positions 0.. (c0: the
last (re)fill's first token), so the logits of draw p are the plain causal forward of the float64
net on tokens[:, c0:p]; every draw's margin (the gap that float32 rounding would have to close
to flip it) must be safe, and the draw of those logits must be the kernel's token."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import copy  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from genfast import random as grandom  # noqa: E402
from genfast.kernels import attention_generate as K  # noqa: E402
from genfast.models._gpt_net import GPTNet  # noqa: E402
from genfast.ops import attention_generate as AG  # noqa: E402
from genfast.ops.sample import ref_draw  # noqa: E402

pytestmark = pytest.mark.triton
MARGIN = 1e-4  # float32 logits in another summation order move by ~1e-6


def make_net(L=2, V=11, C=16, Hh=2, T=8, bias=True, seed=0):
    """A small GPTNet with weights large enough that the logits (std ~1) depend on the context."""
    torch.manual_seed(seed)
    net = GPTNet(V, T, L, Hh, C, bias=bias).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def pack(net, dtype=torch.float32):
    """pack_gpt's weights (the contract's layout) as `dtype`, and meta as a list."""
    pk = AG.pack_gpt(net)
    return pk.weights.to(dtype), pk.meta.tolist()


def window_starts(start, N, T, keep):
    """c0 of every draw p: the first token of the cache when p is drawn (the contract's rule)."""
    out, clen = {}, 0
    for p in range(start, N):
        if p == start:
            c0 = max(0, p - T)
        elif clen == T:
            c0 = p - keep
        out[p], clen = c0, p - c0
    return out


def margins(x, rows, seed, inv_temp, top_k, top_p):
    """How far logits x (R, V) may move before a draw could flip: the two best kept perturbed
    scores' gap, the top_k boundary gap, the top_p boundary's mass gap."""
    V = x.shape[1]
    if math.isinf(inv_temp):
        top = x.topk(2, 1).values
        return top[:, 0] - top[:, 1]
    s = (x - x.amax(1, keepdim=True)) * inv_temp
    srt = s.sort(1, descending=True).values
    keep = torch.ones_like(s, dtype=torch.bool)
    margin = torch.full((s.shape[0],), math.inf, dtype=torch.float64)
    if 0 < top_k < V:
        keep = s >= srt[:, top_k - 1:top_k]
        margin = srt[:, top_k - 1] - srt[:, top_k]
    if top_p < 1:
        p = torch.softmax(torch.where(keep, s, -math.inf), 1).sort(1, descending=True).values
        margin = torch.minimum(margin, (p.cumsum(1) - top_p).abs().amin(1))
        keep &= s >= srt.gather(1, (p.cumsum(1) < top_p).sum(1, keepdim=True).clamp(max=V - 1))
    g = grandom.gumbel(seed, rows, V, dtype=torch.float64)
    top = torch.where(keep, s + g, -math.inf).topk(2, 1).values
    return torch.minimum(margin, top[:, 0] - top[:, 1])


def check_oracle(net64, tokens, start, keep, seed, inv_temp, top_k, top_p):
    """Every draw p >= start is the float64 teacher-forced draw, with a safe margin."""
    B, N = tokens.shape
    for p, c0 in window_starts(start, N, net64.block_size, keep).items():
        with torch.no_grad():
            x = net64(tokens[:, c0:p])[:, -1]
        rows = p * B + torch.arange(B)
        safe = margins(x, rows, seed, inv_temp, top_k, top_p) > MARGIN
        assert bool(safe.all()), f"near-tie at p={p}: pick another seed"
        want = ref_draw(x, grandom.gumbel(seed, rows, x.shape[1], dtype=torch.float64), inv_temp,
                        top_k, top_p)
        assert torch.equal(tokens[:, p], want), (p, tokens[:, p], want)


def run(w, meta, prime, n, seed, inv_temp=1.0, top_k=0, top_p=1.0, keep=None, **kw):
    L, V, C, Hh, T = meta
    B, Tp = prime.shape
    tokens = torch.zeros(B, Tp + n, dtype=torch.int64)
    tokens[:, :Tp] = prime
    kc = torch.full((L, B, Hh, T, C // Hh), float("nan"))  # contents on entry: unspecified
    vc = torch.full_like(kc, float("nan"))
    scratch = torch.full((B, K.scratch_width(meta)), float("nan"))
    seed_t = grandom.make_seed(torch.device("cpu"), seed=seed)
    return K.generate(w, meta, tokens, kc, vc, scratch, Tp, T // 2 if keep is None else keep,
                      seed_t, inv_temp, top_k, top_p, **kw)


CASES = {  # name: (net kwargs, (B, Tp, n), temperature, top_k, top_p, keep, generate kwargs)
    # Past the block: fills 3, appends to 6, then refills with the last 3.
    "refill-bias": ({"T": 6}, (2, 3, 8), 1.0, None, None, 3, {"streams_per_program": 2}),
    # A prime longer than the block (cut to its last 6), greedy, keep = 1, no biases; one
    # program per stream (the default tiling below 64 streams).
    "long-prime-greedy": ({"L": 1, "T": 6, "bias": False, "seed": 1}, (2, 9, 4), 0.0, None,
                          None, 1, {}),
    "top_k-top_p": ({"L": 1, "seed": 2, "Hh": 4}, (3, 2, 6), 0.8, 5, 0.9, None,
                    {"streams_per_program": 4}),
    # keep = T: every draw past the block refills the whole block.
    "keep-T": ({"L": 1, "T": 4, "seed": 3}, (1, 2, 5), 1.3, None, None, 4, {}),
    # 16 streams a program (tl.dot GEMVs, 14 dead rows); blocks of 16: C = 20, V = 19, 3C, 4C
    # in two or more chunks (the last masked), D = 5 padded to 8, two key blocks past 16.
    "dot-chunked": ({"L": 1, "V": 19, "C": 20, "Hh": 4, "T": 17, "seed": 6}, (2, 15, 3), 1.0,
                    None, 0.95, 9, {"streams_per_program": 16, "block": 16}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_equal_gptnet_generate_and_the_float64_oracle(name):
    kw, (B, Tp, n), temp, top_k, top_p, keep, gen = CASES[name]
    net = make_net(**kw)
    w, meta = pack(net)
    prime = torch.randint(0, meta[1], (B, Tp), generator=torch.Generator().manual_seed(5))
    inv_temp = math.inf if temp == 0 else 1 / temp
    T = meta[4]
    keep_ = T // 2 if keep is None else keep
    got = run(w, meta, prime, n, 17, inv_temp, top_k or 0, top_p or 1.0, keep, **gen)
    assert torch.equal(got[:, :Tp], prime)
    if temp:
        assert len(set(got[:, Tp:].flatten().tolist())) > 2  # the draws are not stuck
    check_oracle(copy.deepcopy(net).double(), got, Tp, keep_, 17, inv_temp, top_k or 0,
                 top_p or 1.0)
    want = net.generate(prime, n, temperature=temp, top_k=top_k, top_p=top_p, seed=17,
                        use_cache=True, keep=keep, native=False)
    assert torch.equal(got, want)


def test_start_equal_to_n_or_no_stream_draws_nothing():
    w, meta = pack(make_net(L=1, seed=6))
    prime = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(run(w, meta, prime.clone(), 0, 3), prime)
    assert run(w, meta, prime[:0], 3, 3).shape == (0, 8)


def test_bfloat16_weights_compute_in_float32():
    net = make_net(L=1, seed=8)
    w, meta = pack(net, torch.bfloat16)
    got = run(w, meta, torch.tensor([[1, 2], [3, 4]]), 8, 9, keep=2,
              streams_per_program=2)
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():  # the oracle reads the same bf16 values
        for prm in net64.parameters():
            prm.copy_(prm.to(torch.bfloat16).double())
    check_oracle(net64, got, 2, 2, 9, 1.0, 0, 1.0)


def test_packed_size_matches_the_contract():
    for kw in ({}, {"L": 1, "V": 7, "C": 12, "Hh": 3, "T": 5, "bias": False}):
        w, meta = pack(make_net(**kw))
        assert K.packed_size(meta) == w.numel()
        assert K.scratch_width(meta) == AG.workspaces(AG.pack_gpt(make_net(**kw)), 1)[2].shape[1]


def test_public_api_on_triton_equals_the_reference_backend():
    # The op wiring (genfast/ops/attention_generate.py -> this launcher) end to end, past the
    # block (refills) with top_k; the draws' margins are checked by the oracle tests above.
    pk = AG.pack_gpt(make_net(L=1, T=4, seed=10))
    prime = torch.tensor([[1, 4, 7], [6, 0, 2]])
    kw = dict(temperature=0.9, top_k=6, seed=31, keep=2)
    got = AG.attention_generate(pk, prime, 4, backend="triton", **kw)
    assert torch.equal(got, AG.attention_generate(pk, prime, 4, backend="reference", **kw))


def test_bad_arguments_raise_clear_errors():
    w, meta = pack(make_net(L=1))
    L, V, C, Hh, T = meta
    seed = grandom.make_seed(torch.device("cpu"), seed=1)
    tok = torch.zeros(1, 4, dtype=torch.int64)
    kc = torch.zeros(L, 1, Hh, T, C // Hh)
    sc = torch.zeros(1, K.scratch_width(meta))
    args = dict(w=w, meta=meta, tok=tok, kc=kc, vc=kc.clone(), sc=sc, start=1, keep=4, seed=seed,
                inv_temp=1.0, top_k=0, top_p=1.0)

    def gen(**over):
        a = {**args, **over}
        kw = {k: a.pop(k) for k in ("streams_per_program", "block") if k in a}
        return K.generate(*a.values(), **kw)

    bad = [
        (dict(meta=meta[:4]), r"meta must be a list of 5 ints"),
        (dict(meta=[1, 11, 16, 0, 8]), r"L, V, C, Hh, T >= 1"),
        (dict(meta=[1, 11, 16, 3, 8]), "multiple of the head count"),
        (dict(w=w[1:]), "weights must be"),
        (dict(w=w.double()), "float64: the cpu or reference backend"),
        (dict(tok=tok.int()), "tokens must be"),
        (dict(kc=kc[:, :, :1]), "kcache must be"),
        (dict(vc=kc.double()), "vcache must be"),
        (dict(sc=sc[:, 1:]), "scratch must be"),
        (dict(start=0), r"start must be an int in \[1, N = 4\]"),
        (dict(start=5), r"start must be an int in \[1, N = 4\]"),
        (dict(keep=0), r"keep must be an int in \[1, block_size T = 8\]"),
        (dict(keep=9), r"keep must be an int in \[1, block_size T = 8\]"),
        (dict(seed=seed.int()), "seed must be"),
        (dict(top_p=0.0), "top_p must be > 0"),
        (dict(top_k=-1), "top_k must be an int >= 0"),
        (dict(inv_temp=0.0), "inv_temperature must be > 0"),
        (dict(streams_per_program=3), "streams_per_program must be a power of two"),
        (dict(block=8), "block must be a power of two >= 16"),
        (dict(tok=torch.tensor([[11, 0, 0, 0]])), r"tokens\[:, :start\] must hold tokens"),
    ]
    for over, msg in bad:
        with pytest.raises(ValueError, match=msg):
            gen(**over)
    w2, meta2 = pack(make_net(L=1, V=1100, C=4, Hh=1, T=2))
    with pytest.raises(ValueError, match="vocabulary must stay <= 1024"):
        gen(w=w2, meta=meta2, kc=torch.zeros(1, 1, 1, 2, 4), vc=torch.zeros(1, 1, 1, 2, 4),
            sc=torch.zeros(1, K.scratch_width(meta2)), keep=1)
    # Nothing to draw (start = N) or no stream: the tokens come back untouched.
    full = torch.full((1, 4), 3, dtype=torch.int64)
    assert gen(tok=full, start=4) is full and bool((full == 3).all())


# Compiles the kernel for an sm_80 GPU without one (the interpreter lets through what the GPU
# compiler rejects: a plain float global read in a kernel passed it and failed to compile here):
# the GEMV (bfloat16 weights, top_k + top_p draw) and tl.dot (float32, greedy) paths.
_COMPILE_FOR_GPU = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from genfast.kernels import attention_generate as K

fn = K._generate_kernel
floats = ("sm_scale", "inv_temp", "top_p", "scale")
for wt, sb, greedy in (("bf16", 1, False), ("fp32", 16, True)):
    ptrs = dict(w_ptr="*" + wt, tok_ptr="*i64", kc_ptr="*fp32", vc_ptr="*fp32", s_ptr="*fp32",
                seed_ptr="*i64")
    consts = dict(GREEDY=greedy, TOP_K=not greedy, TOP_P=not greedy, SB=sb, JB=32, KB=32,
                  TB=8, HP=8, DP=64, VP=128, DOT=sb >= 16)
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32")
           for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 80, 32),
                   options=dict(num_warps=8 if sb >= 16 else 4, num_stages=1))
"""


def test_kernel_compiles_for_a_gpu():
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

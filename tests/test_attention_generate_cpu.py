"""The C++ CPU GPT sampling loop (genfast._C.attention_generate) called directly: float64 tokens
equal the Python loop over the modules (GPTNet.generate, KV caches, use_cache=True) across
refills, long primes, given tokens past the prime, every sampler filter, odd sizes and 1 / 2 / 3
heads; float32 equals the teacher-forced float64 forward plus the sampler wherever the draw is
not a near-tie, on every SIMD copy; thread-count independence; workspaces full of NaN are never
read; bad meta / start / keep / tokens raise before anything is written."""

import copy
import math

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends, random
from genfast.models._gpt_net import GPTNet
from genfast.ops import attention_generate as AG
from genfast.ops._boundary import Seed, dtype_code, native

C_, _why = backends.extension("_C")
pytestmark = [
    pytest.mark.skipif(C_ is None or not hasattr(C_, "attention_generate"),
                       reason=f"genfast._C lacks attention_generate: {_why}"),
    pytest.mark.usefixtures("single_thread"),
]


def _net(V=13, T=8, L=2, Hh=2, C=12, bias=True, dtype=torch.float64, seed=0):
    """A GPTNet with a scaled head (peaked draws, ties unlikely) and non-zero biases."""
    torch.manual_seed(seed)
    net = GPTNet(V, T, L, Hh, C, bias=bias).to(dtype).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(4.0)  # tied: the embedding grows too
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return net


def _native(pack, tokens, start, keep, seed, temperature=1.0, top_k=None, top_p=None):
    """One direct kernel call on a copy of tokens; workspaces full of NaN (contents on entry are
    unspecified, so none may be read before it is written)."""
    tokens = tokens.clone()
    kc, vc, scratch = (t.fill_(math.nan) for t in AG.workspaces(pack, tokens.shape[0]))
    inv_temp = math.inf if temperature == 0 else 1.0 / temperature
    k = 0 if top_k is None or top_k >= pack.vocab else top_k
    native("cpu", "attention_generate", pack.weights, pack.meta, pack.meta.numel(), tokens, kc,
           vc, scratch, tokens.shape[0], tokens.shape[1], start, keep,
           Seed(random.make_seed(torch.device("cpu"), seed)), inv_temp, k,
           1.0 if top_p is None else top_p, dtype_code(pack.weights))
    return tokens


def _prime(V, B, Tp, seed=1):
    return torch.randint(0, V, (B, Tp), generator=torch.Generator().manual_seed(seed))


CASES = {  # name: (net kwargs, batch, prime length, n, keep, sampler filters)
    "b1-refills-keep-half": ({"T": 8}, 1, 1, 30, 4, {}),
    "b3-top_k-3-heads-odd-C": ({"Hh": 3, "C": 15, "T": 7, "V": 11}, 3, 2, 20, 3, {"top_k": 4}),
    "top_p-temp-no-bias": ({"bias": False, "V": 20, "T": 9}, 2, 3, 18, 5,
                           {"top_p": 0.8, "temperature": 0.8}),
    "greedy-1-head-3-layers": ({"Hh": 1, "C": 10, "L": 3, "T": 6}, 2, 1, 16, 2,
                               {"temperature": 0.0}),
    "keep-1": ({"T": 6}, 2, 2, 14, 1, {"temperature": 1.5}),
    "keep-T": ({"T": 6}, 1, 1, 14, 6, {}),
    "prime-longer-than-block": ({"T": 8}, 3, 21, 10, 3, {"top_p": 0.9}),
    # over 32 cached positions: whole float64 score blocks, and refills of 40 positions (three
    # prefill passes of 16 rows per stream, passes that span two streams at B=3)
    "long-block-D5": ({"Hh": 2, "C": 10, "T": 45, "V": 9}, 3, 3, 60, 40, {"top_k": 5}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp64_equals_the_python_loop_over_the_modules(case):
    kw, B, Tp, n, keep, filt = CASES[case]
    net = _net(**kw)
    prime = _prime(net.vocab_size, B, Tp)
    want = net.generate(prime, n, seed=7, keep=keep, native=False, **filt)
    tokens = torch.cat([prime, torch.full((B, n), -1)], 1)  # drawn slots hold junk
    got = _native(genfast.pack_gpt(net), tokens, Tp, keep, 7, **filt)
    assert torch.equal(got, want)
    if filt.get("temperature") != 0.0:
        assert len(set(got[:, Tp:].flatten().tolist())) > 1  # the draws vary


def test_given_tokens_past_start_and_start_equal_to_n():
    """Tokens before start are read (and kept), tokens from start on are drawn: the result is
    the module loop from the prime tokens[:, :start]; start = N draws nothing."""
    net = _net(T=8)
    tokens = _prime(13, 2, 12, seed=3)
    got = _native(genfast.pack_gpt(net), tokens, 5, 4, 9, top_k=6)
    assert torch.equal(got, net.generate(tokens[:, :5], 7, seed=9, keep=4, top_k=6, native=False))
    assert torch.equal(_native(genfast.pack_gpt(net), tokens, 12, 4, 9), tokens)


def _fp32_check(net32, tokens, seed, Tp, temperature):
    """Equal to the teacher-forced float64 draw wherever the top-two gap of s + g exceeds 1e-3
    (no refill: tokens fit the block)."""
    B, N = tokens.shape
    net64 = copy.deepcopy(net32).double()
    with torch.no_grad():
        logits = net64(tokens[:, :-1])
    V = logits.shape[-1]
    rows = torch.cat([logits.new_zeros(B, 1, V), logits], 1).transpose(0, 1).reshape(-1, V)
    want = genfast.sample_categorical(rows, temperature, seed=seed, backend="reference")
    s = (rows - rows.amax(1, keepdim=True)) / temperature
    top2 = (s + random.gumbel(seed, *rows.shape)).topk(2, dim=1).values
    close = ((top2[:, 0] - top2[:, 1]) <= 1e-3).view(N, B)[Tp:].reshape(-1)
    got = tokens.t()[Tp:].reshape(-1)
    want = want.view(N, B)[Tp:].reshape(-1)
    assert close.float().mean() < 0.02  # the guard excuses a near-tie, not a whole run
    assert torch.equal(got[~close], want[~close])


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2", "scalar"])
def test_fp32_margin_guarded_on_every_simd_copy(isa):
    if isa not in C_.supported_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    # C = 3 * 24: 72 outputs, a whole and a partial GEMV block; 70 positions: a whole float32
    # score block and a tail; D = 24 (pv rows in fours), V = 37.
    net = _net(V=37, T=72, L=2, Hh=3, C=72, dtype=torch.float32)
    prime = _prime(37, 3, 4, seed=2)
    before = C_.isa()
    C_.set_isa(isa)
    try:
        tokens = _native(genfast.pack_gpt(net), torch.cat([prime, prime.new_zeros(3, 66)], 1), 4,
                         36, 21, temperature=0.8)
    finally:
        C_.set_isa(before)
    _fp32_check(net, tokens, 21, 4, 0.8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_identical(dtype):
    net = _net(V=21, T=12, L=2, Hh=4, C=32, dtype=dtype)
    pack = genfast.pack_gpt(net)
    tokens = torch.cat([_prime(21, 5, 3, seed=6), torch.zeros(5, 37, dtype=torch.int64)], 1)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _native(pack, tokens, 3, 5, 2, top_p=0.9)
        torch.set_num_threads(2)
        two = _native(pack, tokens, 3, 5, 2, top_p=0.9)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_bad_meta_sizes_start_keep_and_tokens_raise_before_writing():
    pack = genfast.pack_gpt(_net())  # L 2, V 13, C 12, Hh 2, T 8
    kc, vc, scratch = AG.workspaces(pack, 2)
    good = torch.tensor([[1, 2, 0, 0], [3, 4, 0, 0]])

    def call(meta=pack.meta, tokens=good, start=2, keep=4, meta_len=None, dtype=1):
        native("cpu", "attention_generate", pack.weights, meta,
               meta.numel() if meta_len is None else meta_len, tokens, kc, vc, scratch,
               tokens.shape[0], tokens.shape[1], start, keep, Seed(torch.tensor([5])), 1.0, 0,
               1.0, dtype)

    bad = {
        r"C \(12\) must be a multiple of Hh \(5\)": {"meta": torch.tensor([2, 13, 12, 5, 8])},
        "meta has a size out of range": {"meta": torch.tensor([0, 13, 12, 2, 8])},
        "meta must hold 5 entries": {"meta_len": 4},
        r"start must be in \[1, N\]": {"start": 0},
        r"keep must be in \[1, T\]": {"keep": 9},
        r"tokens\[1, 0\] must be in \[0, V\)": {"tokens": torch.tensor([[1, 2, 0, 0],
                                                                         [13, 4, 0, 0]])},
        r"tokens\[0, 1\] must be in \[0, V\)": {"tokens": torch.tensor([[1, -1, 0, 0],
                                                                         [3, 4, 0, 0]])},
        "dtype code 2": {"dtype": 2},
    }
    for msg, kw in bad.items():
        tokens = kw.pop("tokens", good).clone()
        before = tokens.clone()
        with pytest.raises(ValueError, match=msg):
            call(tokens=tokens, **kw)
        assert torch.equal(tokens, before), msg  # nothing drawn
    with pytest.raises(ValueError, match="start must be in"):
        call(start=5)
    call(tokens=good.clone(), start=2, keep=1)  # the good call runs

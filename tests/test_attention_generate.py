"""The native GPT sampling loop (genfast.attention_generate, GPTNet.generate): the exactness test
(the teacher-forced forward plus genfast.sample_categorical, rows ordered (position, stream),
draws the same tokens under the same seed while the context fits the block), equality with the
Python loop over the modules (GPTNet.generate with its KV caches) across cache refills and long
primes, native against the reference, thread-count independence, the op registration, compile,
and bad input. The Triton kernel has its own file (tests/test_attention_generate_triton.py)."""

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)
from torch import nn

import genfast
from genfast import backends, random
from genfast.models._gpt_net import GPTNet
from genfast.ops import attention_generate as AG

C_, _why = backends.extension("_C")
HAS_CPU = C_ is not None and hasattr(C_, "attention_generate")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"genfast._C lacks attention_generate: {_why}")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]
pytestmark = pytest.mark.usefixtures("single_thread")


def _net(V=13, T=8, L=2, Hh=2, C=12, bias=True, dtype=torch.float64, seed=0):
    """A GPTNet whose head is scaled so draws are far from uniform (and ties unlikely)."""
    torch.manual_seed(seed)
    net = GPTNet(V, T, L, Hh, C, bias=bias).to(dtype).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(4.0)  # tied: the embedding grows too
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return net


def _teacher(net, tokens, seed, **filt):
    """The draws the contract promises: teacher-forced logits of tokens[:, :-1] as rows
    (position, stream), position 0's rows zeros (never drawn), one sample_categorical call."""
    B, N = tokens.shape
    with torch.no_grad():
        logits = net(tokens[:, :-1])
    V = logits.shape[-1]
    rows = torch.cat([logits.new_zeros(B, 1, V), logits], 1).transpose(0, 1).reshape(-1, V)
    return genfast.sample_categorical(rows, seed=seed, backend="reference", **filt).view(N, B).t()


CASES = {  # name: (net kwargs, batch, prime length, n, sampler filters); Tp + n <= T
    "plain": ({}, 1, 1, 7, {}),
    "b3-top_k": ({"T": 12}, 3, 2, 10, {"top_k": 3}),
    "top_p-temp-no-bias": ({"bias": False, "V": 20}, 2, 3, 5, {"top_p": 0.8,
                                                               "temperature": 0.8}),
    "greedy-3-layers": ({"L": 3}, 3, 1, 7, {"temperature": 0.0}),
    "1-head-V70": ({"Hh": 1, "V": 70, "C": 10}, 2, 2, 6, {}),
    "3-heads-hot": ({"Hh": 3, "C": 9, "T": 10}, 4, 1, 9, {"temperature": 3.0}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_tokens_equal_teacher_forced_forward_plus_sampler_fp64(backend, case):
    kw, B, Tp, n, filt = CASES[case]
    net = _net(**kw)
    pack = genfast.pack_gpt(net)
    prime = torch.randint(0, pack.vocab, (B, Tp), generator=torch.Generator().manual_seed(2))
    tokens = genfast.attention_generate(pack, prime, n, seed=11, backend=backend, **filt)
    assert tokens.shape == (B, Tp + n) and tokens.dtype == torch.int64
    assert torch.equal(tokens[:, :Tp], prime)
    if filt.get("temperature") != 0.0:  # draws must vary
        assert len(set(tokens[:, Tp:].flatten().tolist())) > 1
    assert torch.equal(tokens[:, Tp:], _teacher(net, tokens, 11, **filt)[:, Tp:])


LOOPS = {  # name: (net kwargs, batch, prime length, n, keep, filters): past the block
    "refills-keep-half": ({"T": 8}, 2, 1, 30, None, {}),
    "refills-keep-1": ({"T": 6}, 1, 2, 20, 1, {"top_k": 4}),
    "refills-keep-T": ({"T": 6}, 2, 1, 20, 6, {"temperature": 0.7}),
    "prime-longer-than-block": ({"T": 8}, 3, 13, 12, 3, {"top_p": 0.9}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(LOOPS))
def test_equals_the_python_loop_over_the_modules_past_the_block(backend, case):
    kw, B, Tp, n, keep, filt = LOOPS[case]
    net = _net(**kw)
    prime = torch.randint(0, net.vocab_size, (B, Tp), generator=torch.Generator().manual_seed(4))
    want = net.generate(prime, n, seed=3, keep=keep, **filt)
    got = genfast.attention_generate(genfast.pack_gpt(net), prime, n, seed=3, keep=keep,
                                     backend=backend, **filt)
    assert torch.equal(got, want)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_equals_reference(dtype):
    net = _net(V=17, T=16, L=2, Hh=2, C=16, dtype=dtype)
    pack = genfast.pack_gpt(net)
    prime = torch.randint(0, 17, (3, 2), generator=torch.Generator().manual_seed(5))
    ref = genfast.attention_generate(pack, prime, 40, seed=9, keep=5, backend="reference")
    cpu = genfast.attention_generate(pack, prime, 40, seed=9, keep=5, backend="cpu")
    # float32: rounding may flip a near-tie, after which the streams part ways; compare the
    # prefix up to the first difference and require it to be long.
    same = (ref == cpu).all(0)
    first = int((~same).nonzero()[0]) if not bool(same.all()) else same.numel()
    assert first >= (same.numel() if dtype == torch.float64 else 20)


@needs_cpu
def test_one_and_two_threads_identical():
    net = _net(V=21, T=16, L=2, Hh=4, C=32, dtype=torch.float32)
    pack = genfast.pack_gpt(net)
    prime = torch.randint(0, 21, (5, 3), generator=torch.Generator().manual_seed(6))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = genfast.attention_generate(pack, prime, 30, seed=2, backend="cpu")
        torch.set_num_threads(2)
        two = genfast.attention_generate(pack, prime, 30, seed=2, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_gptnet_generate_runs_the_op():
    """GPTNet.generate (use_cache=True) is the native loop; the module loop is still there."""
    net = _net(T=8)
    prime = torch.tensor([[1, 2], [3, 4]])
    a = net.generate(prime, 20, seed=1, top_k=5)
    b = net.generate(prime, 20, seed=1, top_k=5, native=False)
    assert torch.equal(a, b)


def test_seed_none_follows_torch_manual_seed():
    pack = genfast.pack_gpt(_net())
    prime = torch.tensor([[1]])
    torch.manual_seed(8)
    a = genfast.attention_generate(pack, prime, 6)
    torch.manual_seed(8)
    b = genfast.attention_generate(pack, prime, 6)
    assert torch.equal(a, b)


def test_registered_and_opcheck():
    assert "attention_generate" in backends.registered_ops()
    pack = genfast.pack_gpt(_net())
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    kc, vc, scratch = AG.workspaces(pack, 2)
    args = (pack.weights, pack.meta, tokens, kc, vc, scratch, 2, 4,
            random.make_seed(torch.device("cpu"), 3), 1.0, 0, 1.0, "reference")
    torch.library.opcheck(AG.attention_generate_op, args)


def test_compile_fullgraph_draws_what_eager_draws():
    """The whole loop is one opaque op to torch.compile: no graph break, the eager draw."""
    pack = genfast.pack_gpt(_net())
    prime = torch.tensor([[1], [2]])
    f = torch.compile(lambda p, x: genfast.attention_generate(p, x, 9, seed=5, top_k=4),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(pack, prime), genfast.attention_generate(pack, prime, 9, seed=5,
                                                                          top_k=4),
                               rtol=0, atol=0)


BAD = {  # name: (attention_generate kwargs, exception, message fragment)
    "prime dtype": ({"prime": torch.zeros(2, 1)}, TypeError, "prime must be int64"),
    "prime dims": ({"prime": torch.zeros(3, dtype=torch.int64)}, ValueError, "prime must be 2-D"),
    "prime empty": ({"prime": torch.zeros(2, 0, dtype=torch.int64)}, ValueError,
                    "prime must be 2-D"),
    "prime values": ({"prime": torch.tensor([[13]])}, ValueError, "prime must hold tokens"),
    "n": ({"n": -1}, ValueError, "n must be"),
    "keep 0": ({"keep": 0}, ValueError, "keep must be"),
    "keep > T": ({"keep": 9}, ValueError, "keep must be"),
    "temperature": ({"temperature": -1.0}, ValueError, "temperature"),
    "top_k": ({"top_k": 0}, ValueError, "top_k"),
    "top_p": ({"top_p": 1.5}, ValueError, "top_p"),
    "backend": ({"backend": "tpu"}, ValueError, "backend"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_name_themselves(case):
    kwargs, exc, msg = BAD[case]
    args = {"pack": genfast.pack_gpt(_net()), "prime": torch.tensor([[1, 2]]), "n": 3, **kwargs}
    with pytest.raises(exc, match=msg):
        genfast.attention_generate(args.pop("pack"), args.pop("prime"), args.pop("n"), **args)


def test_bad_pack_arguments():
    with pytest.raises(TypeError, match="pack must be a GPTPack"):
        genfast.attention_generate(object(), torch.tensor([[1]]), 2)
    with pytest.raises(TypeError, match="transformer / lm_head"):
        genfast.pack_gpt(nn.Linear(3, 3))
    net = _net()
    net.transformer.h[1].ln_2.eps = 1e-6
    with pytest.raises(ValueError, match=r"transformer.h\[1\].ln_2.eps"):
        genfast.pack_gpt(net)
    net = _net()
    net.transformer.h[0].mlp.gelu = nn.GELU(approximate="tanh")
    with pytest.raises(ValueError, match="exact erf"):
        genfast.pack_gpt(net)
    net = _net()
    net.transformer.h[0].attn.c_proj.bias = nn.Parameter(torch.zeros(12))  # float32, not 64
    with pytest.raises(ValueError, match=r"c_proj.bias must be"):
        genfast.pack_gpt(net)


@needs_cpu
def test_native_rejects_bad_meta_and_tokens():
    pack = genfast.pack_gpt(_net())
    kc, vc, scratch = AG.workspaces(pack, 1)
    seed = random.make_seed(torch.device("cpu"), 0)

    def call(meta, tokens, start=1, keep=4):
        AG._native_generate("cpu", pack.weights, meta, tokens, kc, vc, scratch, start, keep,
                            seed, 1.0, 0, 1.0)

    with pytest.raises(ValueError):
        call(torch.tensor([2, 13, 12, 5, 8]), torch.zeros(1, 4, dtype=torch.int64))  # C % Hh
    with pytest.raises(ValueError):
        call(pack.meta, torch.full((1, 4), 13, dtype=torch.int64))  # a token out of range
    with pytest.raises(ValueError):
        call(pack.meta, torch.zeros(1, 4, dtype=torch.int64), start=0)
    with pytest.raises(ValueError):
        call(pack.meta, torch.zeros(1, 4, dtype=torch.int64), keep=9)

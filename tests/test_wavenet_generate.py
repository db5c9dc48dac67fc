"""Whole-network WaveNet generation (genfast.wavenet_generate): the exactness test of the
generator (DESIGN.md section 8: a teacher-forced full forward plus the same sampler yields the
same tokens under the same seed), chunking and state continuation, thread-count independence,
the native loop against the torch reference loop, every SIMD copy in float32, and bad input."""

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends, random
from genfast.ops import causal_conv_generate as CG

C, _why = backends.extension("_C")
HAS_CPU = C is not None and hasattr(C, "wavenet_generate")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"genfast._C lacks wavenet_generate: {_why}")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]
pytestmark = pytest.mark.usefixtures("single_thread")
DEFAULT_DIL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) * 2


def _model(R=6, G=8, S=10, E=12, A=16, K=2, dil=(1, 2, 4, 1), kind="embedding",
           dtype=torch.float64, seed=0, scale=0.5, biases=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    def b(n):
        return r(n) if biases else None

    H = G // 2
    layers = [dict(w_dil=r(G, R, K), b_dil=b(G), w_res=r(R, H, 1), b_res=b(R), w_skip=r(S, H),
                   b_skip=b(S), dilation=d) for d in dil]
    head = (r(E, S) / S**0.5, b(E), r(A, E), b(A))
    if kind == "embedding":
        return CG.pack_wavenet(input_weight=r(A, R), layers=layers, head=head)
    return CG.pack_wavenet(input_weight=r(R, 1, 1), input_bias=b(R), input_kind="scalar",
                           layers=layers, head=head)


def _conds(pack, B, n, which, seed=1):
    g = torch.Generator().manual_seed(seed)
    L, G, dt = len(pack.dilations), pack.gate, pack.weights.dtype
    gc = torch.randn(B, L, G, generator=g, dtype=torch.float64).to(dt) if "g" in which else None
    lc = torch.randn(B, n, L, G, generator=g, dtype=torch.float64).to(dt) if "l" in which else None
    return gc, lc


def _teacher_logits(pack, tokens, gcond=None, lcond=None):
    """Rows (step, stream) of the teacher-forced logits of [A // 2, tokens[:, :-1]]."""
    B, n = tokens.shape
    inp = torch.cat([torch.full((B, 1), pack.classes // 2), tokens[:, :-1]], 1)
    logits = CG.wavenet_forward_packed(pack, inp, gcond, lcond)
    return logits.permute(2, 0, 1).reshape(n * B, pack.classes)


def _teacher(pack, tokens, seed, gcond=None, lcond=None, **filt):
    rows = _teacher_logits(pack, tokens, gcond, lcond)
    draw = genfast.sample_categorical(rows, seed=seed, backend="reference", **filt)
    return draw.reshape(tokens.shape[1], tokens.shape[0]).t()


CASES = {  # name: (model kwargs, batch, conditioning, sampler filters)
    "plain": ({}, 1, "", {}),
    "top_k-b3": ({}, 3, "", {"top_k": 3}),
    "top_p-global": ({}, 3, "g", {"top_p": 0.8}),
    "temp0.7-local": ({}, 1, "l", {"temperature": 0.7}),
    "K3-both-b3": ({"K": 3, "dil": (1, 3, 2, 5, 1)}, 3, "gl", {}),
    "scalar-top_k-top_p": ({"kind": "scalar", "R": 4}, 3, "g", {"top_k": 5, "top_p": 0.9}),
    "scalar-K3-greedy": ({"kind": "scalar", "K": 3, "dil": (2, 1, 4, 8, 1, 2)}, 1, "l",
                         {"temperature": 0.0}),
    "no-biases-R8": ({"R": 8, "G": 12, "biases": False}, 2, "", {"temperature": 1.3}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_tokens_equal_teacher_forced_forward_plus_sampler_fp64(backend, case):
    model, B, which, filt = CASES[case]
    pack = _model(**model)
    n = 240
    gc, lc = _conds(pack, B, n, which)
    tokens, state = genfast.wavenet_generate(pack, n, batch=B, gcond=gc, lcond=lc, seed=11,
                                             backend=backend, **filt)
    assert tokens.shape == (B, n) and tokens.dtype == torch.int64
    if filt.get("temperature") != 0.0:  # greedy settles on a cycle; draws must vary
        assert len(set(tokens.flatten().tolist())) > 2
    assert torch.equal(tokens, _teacher(pack, tokens, 11, gc, lc, **filt))
    assert state.pos[:, 0].tolist() == [n] * B and torch.equal(state.pos[:, 1], tokens[:, -1])


@needs_cpu
def test_default_config_short_run_fp64():
    pack = _model(R=32, G=64, S=128, E=128, A=256, dil=DEFAULT_DIL, scale=0.2)
    assert pack.receptive_field == 2047 and pack.ring_size == 2 * 1023 * 32
    tokens, _ = genfast.wavenet_generate(pack, 40, batch=2, seed=3, top_k=50, backend="cpu")
    assert torch.equal(tokens, _teacher(pack, tokens, 3, top_k=50))


def _fp32_check(pack, tokens, seed, temperature=1.0):
    """Equal to the teacher-forced draw wherever the top-two gap of s + g exceeds 1e-4."""
    rows = _teacher_logits(pack, tokens)
    want = genfast.sample_categorical(rows, temperature, seed=seed, backend="reference")
    s = (rows - rows.amax(1, keepdim=True)) / temperature
    top2 = (s + random.gumbel(seed, *rows.shape)).topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) <= 1e-4
    got = tokens.t().reshape(-1)
    assert close.float().mean() < 0.01  # the guard excuses a near-tie, not a whole run
    assert torch.equal(got[~close], want[~close])


@needs_cpu
@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2", "scalar"])
def test_fp32_margin_guarded_on_every_simd_copy(isa):
    if isa not in C.supported_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    pack = _model(R=8, G=16, S=16, E=16, A=32, K=3, dil=(1, 2, 4, 8, 1), dtype=torch.float32)
    before = C.isa()
    C.set_isa(isa)
    try:
        tokens, _ = genfast.wavenet_generate(pack, 300, batch=2, seed=21, temperature=0.8,
                                             backend="cpu")
    finally:
        C.set_isa(before)
    _fp32_check(pack, tokens, 21, temperature=0.8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_and_continued_equal_one_shot(backend):
    pack = _model(K=3, dil=(1, 4, 2, 1))
    gc, lc = _conds(pack, 2, 100, "gl")
    one, s1 = genfast.wavenet_generate(pack, 100, batch=2, gcond=gc, lcond=lc, seed=4,
                                       top_p=0.9, backend=backend)
    chunked, s2 = genfast.wavenet_generate(pack, 100, batch=2, gcond=gc, lcond=lc, seed=4,
                                           top_p=0.9, backend=backend, chunk=17)
    assert torch.equal(one, chunked)
    assert torch.equal(s1.pos, s2.pos) and torch.equal(s1.rings, s2.rings)
    first, st = genfast.wavenet_generate(pack, 61, batch=2, gcond=gc, lcond=lc[:, :61], seed=4,
                                         top_p=0.9, backend=backend)
    rest, st = genfast.wavenet_generate(pack, 39, state=st, gcond=gc, lcond=lc[:, 61:], seed=4,
                                        top_p=0.9, backend=backend)
    assert torch.equal(torch.cat([first, rest], 1), one) and torch.equal(st.rings, s1.rings)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_identical(dtype):
    pack = _model(R=8, G=16, S=16, E=16, A=32, dtype=dtype)
    gc, _ = _conds(pack, 5, 0, "g")
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out.append(genfast.wavenet_generate(pack, 150, batch=5, gcond=gc, seed=9, top_k=7,
                                            backend="cpu"))
    torch.set_num_threads(1)
    (t1, s1), (t2, s2) = out
    assert torch.equal(t1, t2) and torch.equal(s1.rings, s2.rings) and torch.equal(s1.pos, s2.pos)


@needs_cpu
def test_native_equals_reference_loop_fp64():
    pack = _model(K=3, dil=(1, 2, 3, 1, 2), kind="scalar")
    gc, lc = _conds(pack, 3, 150, "gl")
    got, sg = genfast.wavenet_generate(pack, 150, batch=3, gcond=gc, lcond=lc, seed=2,
                                       top_k=6, backend="cpu")
    want, sw = genfast.wavenet_generate(pack, 150, batch=3, gcond=gc, lcond=lc, seed=2,
                                        top_k=6, backend="reference")
    assert torch.equal(got, want) and torch.equal(sg.pos, sw.pos)
    torch.testing.assert_close(sg.rings, sw.rings, rtol=1e-12, atol=1e-12)


@needs_cpu
def test_streams_at_different_positions():
    pack = _model(K=3, dil=(1, 2, 5, 1))
    parts = [genfast.wavenet_generate(pack, n, seed=n, backend="reference")[1] for n in (7, 3, 0)]
    out = []
    for backend in ("cpu", "reference"):
        st = CG.GenerateState(torch.cat([s.rings for s in parts]),
                              torch.cat([s.pos for s in parts]))
        out.append(genfast.wavenet_generate(pack, 60, state=st, seed=5, backend=backend))
    (got, sg), (want, sw) = out
    assert torch.equal(got, want) and sg.pos[:, 0].tolist() == [67, 63, 60]
    torch.testing.assert_close(sg.rings, sw.rings, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edges_no_steps_and_kernel_size_one(backend):
    pack = _model(K=1, dil=(1, 1))
    assert pack.ring_size == 0
    empty, st = genfast.wavenet_generate(pack, 0, batch=2, seed=1, backend=backend)
    assert empty.shape == (2, 0) and st.pos.tolist() == [[0, 8], [0, 8]]
    tokens, _ = genfast.wavenet_generate(pack, 50, batch=2, seed=1, backend=backend)
    assert torch.equal(tokens, _teacher(pack, tokens, 1))


def test_registered_and_opcheck():
    assert "causal_conv_generate" in backends.registered_ops()
    pack = _model()
    st = CG.new_state(pack, 2)
    args = (pack.weights, pack.meta, None, None, st.rings, st.pos, 5,
            random.make_seed(torch.device("cpu"), 3), 1.0, 0, 1.0, "reference")
    torch.library.opcheck(CG.wavenet_generate_op, args)


BAD = {  # name: (wavenet_generate kwargs, exception, message fragment)
    "n": ({"n": -1}, ValueError, "n must be an int and >= 0"),
    "chunk": ({"chunk": 0}, ValueError, "chunk must be an int and >= 1"),
    "gcond shape": ({"gcond": torch.zeros(2, 4, 7, dtype=torch.float64)}, ValueError,
                    "gcond must have shape (2, 4, 8)"),
    "lcond shape": ({"lcond": torch.zeros(2, 5, 4, 8, dtype=torch.float64)}, ValueError,
                    "lcond must have shape (2, 3, 4, 8)"),
    "gcond dtype": ({"gcond": torch.zeros(2, 4, 8)}, TypeError, "gcond must be float64"),
    "temperature": ({"temperature": -1.0}, ValueError, "temperature must be finite and >= 0"),
    "top_k": ({"top_k": 0}, ValueError, "top_k must be an int and >= 1"),
    "top_p": ({"top_p": 0.0}, ValueError, "top_p must be finite and in (0.0, 1.0]"),
    "backend": ({"backend": "fast"}, ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_name_themselves(case):
    kw, exc, msg = BAD[case]
    pack = _model()
    args = dict(n=3, batch=2) | kw
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        genfast.wavenet_generate(pack, **args)


def test_bad_state_and_pack():
    pack = _model()
    with pytest.raises(TypeError, match="pack must be a WaveNetPack"):
        genfast.wavenet_generate("model", 3)
    st = CG.new_state(pack, 2)
    with pytest.raises(ValueError, match=r"state.rings must have shape \(3, "):
        genfast.wavenet_generate(pack, 3, batch=3, state=st)
    bad = CG.GenerateState(st.rings, torch.tensor([[0, 8], [0, 16]]))
    with pytest.raises(ValueError, match=r"state.pos must hold \(steps >= 0, previous token"):
        genfast.wavenet_generate(pack, 3, state=bad)
    strided = CG.GenerateState(torch.zeros(pack.ring_size, 2, dtype=torch.float64).t(), st.pos)
    with pytest.raises(ValueError, match="must be contiguous"):
        genfast.wavenet_generate(pack, 3, state=strided)


def test_bad_pack_arguments():
    r = torch.randn
    lay = dict(w_dil=r(8, 6, 2), b_dil=None, w_res=r(6, 4), b_res=None, w_skip=r(10, 4),
               b_skip=None, dilation=2)
    head = (r(12, 10), None, r(16, 12), None)
    emb = r(16, 6)
    CG.pack_wavenet(input_weight=emb, layers=[lay], head=head)  # the valid baseline
    with pytest.raises(ValueError, match=r"layers\[1\]\['w_res'\] must have shape \(6, 4\)"):
        CG.pack_wavenet(input_weight=emb, layers=[lay, lay | {"w_res": r(6, 5)}], head=head)
    with pytest.raises(ValueError, match=r"layers\[0\]\['dilation'\] must be an int and >= 1"):
        CG.pack_wavenet(input_weight=emb, layers=[lay | {"dilation": 0}], head=head)
    with pytest.raises(ValueError, match="even number of gate channels"):
        CG.pack_wavenet(input_weight=emb, layers=[lay | {"w_dil": r(7, 6, 2)}], head=head)
    with pytest.raises(ValueError, match=r"input_weight must have shape \(16, 6\)"):
        CG.pack_wavenet(input_weight=r(15, 6), layers=[lay], head=head)
    with pytest.raises(ValueError, match="input_kind must be"):
        CG.pack_wavenet(input_weight=emb, input_kind="mu-law", layers=[lay], head=head)
    with pytest.raises(TypeError, match=r"head\[0\] must be float32 on cpu"):
        CG.pack_wavenet(input_weight=emb, layers=[lay], head=(head[0].double(), *head[1:]))

"""Whole-network gated PixelCNN generation (genfast.pixelcnn_generate): the exactness test of the
generator (a teacher-forced full forward plus the same sampler, rows ordered (pixel, image),
yields the same images under the same seed), completion from `start`, a literal naive loop,
thread-count independence, every SIMD copy in float32, the op registration and bad input."""

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends, random
from genfast.ops import masked_conv_generate as MG

C_, _why = backends.extension("_C")
HAS_CPU = C_ is not None and hasattr(C_, "pixelcnn_generate")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"genfast._C lacks pixelcnn_generate: {_why}")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]
pytestmark = pytest.mark.usefixtures("single_thread")


def _layers(L, C, k, r, biases=True):
    c = k // 2

    def b(n):
        return r(n) if biases else None

    return [dict(v_weight=r(2 * C, C, c + 1, k) / (C * (c + 1) * k) ** 0.5 * 2, v_bias=b(2 * C),
                 h_weight=r(2 * C, C, 1, c + 1) / (C * (c + 1)) ** 0.5 * 2, h_bias=b(2 * C),
                 link_weight=r(2 * C, 2 * C, 1, 1) / (2 * C) ** 0.5, link_bias=b(2 * C),
                 res_weight=r(C, C, 1, 1) / C**0.5, res_bias=b(C)) for _ in range(L)]


def _model(L=3, A=7, C=4, E=6, k=3, dtype=torch.float64, seed=0, biases=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return MG.pack_pixelcnn(embedding=r(A, C), layers=_layers(L, C, k, r, biases),
                            out1_weight=r(E, C, 1, 1), out1_bias=r(E) if biases else None,
                            out2_weight=r(A, E, 1, 1) / E**0.5 * 3,
                            out2_bias=r(A) if biases else None)


def _cond(pack, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, pack.layers, 2 * pack.channels, generator=g,
                       dtype=torch.float64).to(pack.weights.dtype)


def _teacher(pack, tokens, seed, cond=None, **filt):
    """The draws of genfast.sample_categorical on the teacher-forced logits, rows (pixel, image)."""
    B, H, W = tokens.shape
    logits = MG.pixelcnn_forward_packed(pack, tokens, cond)
    rows = logits.permute(2, 3, 0, 1).reshape(H * W * B, pack.classes)
    draw = genfast.sample_categorical(rows, seed=seed, backend="reference", **filt)
    return draw.view(H * W, B).t().reshape(B, H, W)


CASES = {  # name: (model kwargs, batch, height, width, cond, sampler filters)
    "plain": ({}, 1, 5, 4, False, {}),
    "top_k-b3-k5-odd": ({"k": 5}, 3, 5, 7, False, {"top_k": 3}),
    "top_p-cond-b3": ({}, 3, 4, 5, True, {"top_p": 0.8}),
    "temp0.7-cond-k5": ({"k": 5, "L": 2}, 1, 7, 3, True, {"temperature": 0.7}),
    "greedy-b3": ({}, 3, 3, 5, True, {"temperature": 0.0}),
    "no-biases-top_k-top_p": ({"biases": False}, 2, 5, 5, False, {"top_k": 4, "top_p": 0.9}),
    "wide-C20-E40-A70": ({"C": 20, "E": 40, "A": 70, "L": 2}, 3, 3, 5, True, {}),
    "one-column-k5": ({"k": 5}, 2, 6, 1, True, {}),
    "one-row-k5": ({"k": 5}, 2, 1, 9, False, {}),
    "k1-no-context-hot": ({"k": 1, "L": 2}, 2, 3, 3, False, {"temperature": 3.0}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_images_equal_teacher_forced_forward_plus_sampler_fp64(backend, case):
    model, B, H, W, with_cond, filt = CASES[case]
    pack = _model(**model)
    cond = _cond(pack, B) if with_cond else None
    tokens = genfast.pixelcnn_generate(pack, B, height=H, width=W, cond_bias=cond, seed=11,
                                       backend=backend, **filt)
    assert tokens.shape == (B, H, W) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < pack.classes
    if filt.get("temperature") != 0.0 and H * W > 4:  # draws must vary
        assert len(set(tokens.flatten().tolist())) > 1
    assert torch.equal(tokens, _teacher(pack, tokens, 11, cond, **filt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", [1, 5, 9, 15])
def test_completion_keeps_the_prefix_and_samples_the_rest(backend, start):
    pack = _model(k=5)
    B, H, W = 3, 4, 5
    cond = _cond(pack, B)
    given = torch.randint(0, pack.classes, (B, H, W), generator=torch.Generator().manual_seed(3))
    before = given.clone()
    out = genfast.pixelcnn_generate(pack, tokens=given, cond_bias=cond, start=start, seed=4,
                                    top_k=5, backend=backend)
    assert torch.equal(given, before)  # the input is not modified
    flat, want = out.view(B, -1), _teacher(pack, out, 4, cond, top_k=5).view(B, -1)
    assert torch.equal(flat[:, :start], before.view(B, -1)[:, :start])
    assert torch.equal(flat[:, start:], want[:, start:])
    whole = genfast.pixelcnn_generate(pack, tokens=given, start=H * W, backend=backend)
    assert torch.equal(whole, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_a_literal_naive_loop(backend):
    """Independent of the sampler's code: full forward per pixel, argmax of logits + Gumbel."""
    pack = _model(L=2, k=3)
    B, H, W, seed = 2, 3, 4, 7
    cond = _cond(pack, B)
    noise = random.gumbel(seed, H * W * B, pack.classes, dtype=torch.float64).view(H, W, B, -1)
    want = torch.zeros(B, H, W, dtype=torch.int64)
    for i in range(H):
        for j in range(W):
            logits = MG.pixelcnn_forward_packed(pack, want, cond)[:, :, i, j]
            want[:, i, j] = (logits + noise[i, j]).argmax(1)
    got = genfast.pixelcnn_generate(pack, B, height=H, width=W, cond_bias=cond, seed=seed,
                                    backend=backend)
    assert torch.equal(got, want)
    naive = MG.naive_generate(pack, torch.zeros_like(want), cond, 0, seed, 1.0, 0, 1.0)
    assert torch.equal(naive, want)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [1, 4])
def test_layer0_by_products_and_by_table_lookup(B, dtype):
    """The C++ kernel runs layer 0 from per-call token tables when 4A <= B*H*W (here B = 4),
    else by products like every other layer (B = 1): both are the contract's network."""
    pack = _model(L=2, A=16, C=8, E=8, k=5, dtype=dtype)
    cond = _cond(pack, B)
    got = genfast.pixelcnn_generate(pack, B, height=4, width=4, cond_bias=cond, seed=3,
                                    backend="cpu")
    if dtype == torch.float64:
        assert torch.equal(got, _teacher(pack, got, 3, cond))
    else:
        _fp32_check(pack, got, 3, cond=cond)


@needs_cpu
def test_native_equals_reference_loop_fp64():
    pack = _model(L=4, C=12, E=16, A=40, k=5)
    cond = _cond(pack, 3)
    kw = dict(height=6, width=7, cond_bias=cond, seed=2, top_p=0.95)
    got = genfast.pixelcnn_generate(pack, 3, backend="cpu", **kw)
    assert torch.equal(got, genfast.pixelcnn_generate(pack, 3, backend="reference", **kw))


def _fp32_check(pack, tokens, seed, temperature=1.0, cond=None):
    """Equal to the teacher-forced draw wherever the top-two gap of s + g exceeds 1e-4."""
    B, H, W = tokens.shape
    logits = MG.pixelcnn_forward_packed(pack, tokens, cond)
    rows = logits.permute(2, 3, 0, 1).reshape(H * W * B, pack.classes)
    want = genfast.sample_categorical(rows, temperature, seed=seed, backend="reference")
    s = (rows - rows.amax(1, keepdim=True)) / temperature
    top2 = (s + random.gumbel(seed, *rows.shape)).topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) <= 1e-4
    got = tokens.view(B, H * W).t().reshape(-1)
    assert close.float().mean() < 0.01  # the guard excuses a near-tie, not a whole run
    assert torch.equal(got[~close], want[~close])


@needs_cpu
@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2", "scalar"])
def test_fp32_margin_guarded_on_every_simd_copy(isa):
    if isa not in C_.supported_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    # 2 output blocks; 4A <= B*H*W: layer 0 by table lookup (csrc/cpu/masked_conv_generate.cpp)
    pack = _model(L=3, C=36, E=16, A=50, k=5, dtype=torch.float32)
    before = C_.isa()
    C_.set_isa(isa)
    try:
        tokens = genfast.pixelcnn_generate(pack, 3, height=8, width=9, seed=21, temperature=0.8,
                                           backend="cpu")
    finally:
        C_.set_isa(before)
    _fp32_check(pack, tokens, 21, temperature=0.8)


def test_reference_fp32_margin_guarded():
    pack = _model(L=2, C=8, E=16, A=32, k=3, dtype=torch.float32)
    tokens = genfast.pixelcnn_generate(pack, 2, height=5, width=6, seed=5, backend="reference")
    _fp32_check(pack, tokens, 5)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_identical(dtype):
    pack = _model(L=3, C=8, E=16, A=32, k=5, dtype=dtype)
    cond = _cond(pack, 5)
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out.append(genfast.pixelcnn_generate(pack, 5, height=6, width=7, cond_bias=cond, seed=9,
                                             top_k=7, backend="cpu"))
    torch.set_num_threads(1)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_none_follows_torch_manual_seed(backend):
    pack = _model()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(genfast.pixelcnn_generate(pack, 2, height=4, width=4, backend=backend))
    assert torch.equal(runs[0], runs[1])


def test_registered_and_opcheck():
    assert "masked_conv_generate" in backends.registered_ops()
    pack = _model()
    tokens = torch.zeros(2, 3, 4, dtype=torch.int64)
    args = (pack.weights, pack.meta, _cond(pack, 2), tokens, 2,
            random.make_seed(torch.device("cpu"), 3), 1.0, 0, 1.0, "reference")
    torch.library.opcheck(MG.masked_conv_generate_op, args)


BAD = {  # name: (pixelcnn_generate kwargs, exception, message fragment)
    "n": ({"n": 0}, ValueError, "n must be an int and >= 1"),
    "height": ({"height": 0}, ValueError, "height must be an int and >= 1"),
    "no width": ({"width": None}, ValueError, "height and width are required"),
    "start no tokens": ({"start": 2}, ValueError, "start must be 0 when tokens is not given"),
    "start range": ({"tokens": torch.zeros(2, 3, 4, dtype=torch.int64), "start": 13},
                    ValueError, "start must be an int and in [0, 12]"),
    "tokens dtype": ({"tokens": torch.zeros(2, 3, 4)}, TypeError, "tokens must be int64"),
    "tokens dims": ({"tokens": torch.zeros(2, 12, dtype=torch.int64)}, ValueError,
                    "tokens must be 3-D"),
    "tokens vs n": ({"tokens": torch.zeros(3, 3, 4, dtype=torch.int64)}, ValueError,
                    "n must match tokens.shape"),
    "tokens range": ({"tokens": torch.full((2, 3, 4), 7), "start": 1}, ValueError,
                     "tokens must be in [0, 7) at the pixels p < start"),
    "cond shape": ({"cond_bias": torch.zeros(2, 3, 7, dtype=torch.float64)}, ValueError,
                   "cond_bias must have shape (2, 3, 8)"),
    "cond dtype": ({"cond_bias": torch.zeros(2, 3, 8)}, TypeError, "cond_bias must be float64"),
    "temperature": ({"temperature": -1.0}, ValueError, "temperature must be finite and >= 0"),
    "top_k": ({"top_k": 0}, ValueError, "top_k must be an int and >= 1"),
    "top_p": ({"top_p": 1.5}, ValueError, "top_p must be finite and in (0.0, 1.0]"),
    "backend": ({"backend": "fast"}, ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_name_themselves(case):
    kw, exc, msg = BAD[case]
    pack = _model()
    args = dict(n=2, height=3, width=4) | kw
    if "tokens" in kw:
        args = {key: v for key, v in args.items() if key not in ("height", "width")}
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        genfast.pixelcnn_generate(pack, **args)


def test_bad_pack_arguments():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    lay = _layers(1, 4, 3, r)[0]
    kw = dict(embedding=r(7, 4), layers=[lay, lay], out1_weight=r(6, 4, 1, 1), out1_bias=None,
              out2_weight=r(7, 6, 1, 1), out2_bias=None)
    pack = MG.pack_pixelcnn(**kw)  # the valid baseline; 1x1 convs may also be matrices
    assert pack.meta.tolist() == [2, 7, 4, 6, 3]
    assert torch.equal(MG.pack_pixelcnn(**kw | {"out1_weight": kw["out1_weight"][:, :, 0, 0]})
                       .weights, pack.weights)
    with pytest.raises(TypeError, match="pack must be a PixelCNNPack"):
        genfast.pixelcnn_generate("model", 1, height=2, width=2)
    bad = {
        r"layers\[1\]\['h_weight'\] must have shape \(8, 4, 2\)": {
            "layers": [lay, lay | {"h_weight": r(8, 4, 1, 3)}]},
        r"layers\[0\]\['v_weight'\] must be \(2C, C, c\+1, k\) with k odd": {
            "layers": [lay | {"v_weight": r(8, 4, 2, 4)}]},
        r"layers\[1\]\['res_weight'\] is required": {"layers": [lay, lay | {"res_weight": None}]},
        r"layers\[0\] has unknown keys \['gate'\]": {"layers": [lay | {"gate": r(2)}]},
        "layers must be a non-empty sequence": {"layers": []},
        r"out2_weight must have shape \(7, 6\)": {"out2_weight": r(7, 5)},
        r"embedding must be 2-D": {"embedding": r(7, 4, 1)},
    }
    for msg, change in bad.items():
        with pytest.raises(ValueError, match=msg):
            MG.pack_pixelcnn(**kw | change)
    with pytest.raises(TypeError, match=r"out1_bias must be float32 on cpu"):
        MG.pack_pixelcnn(**kw | {"out1_bias": r(6).double()})


@needs_cpu
def test_native_rejects_bad_meta_and_tokens():
    pack = _model()
    tokens = torch.full((1, 2, 2), 9)
    seed = 0
    base = (pack.weights.data_ptr(), pack.meta.data_ptr(), 5, 0, tokens.data_ptr(), 1, 2, 2)
    with pytest.raises(ValueError, match="tokens\\[0\\] must be in \\[0, A\\)"):
        C_.pixelcnn_generate(*base, 1, seed, 1.0, 0, 1.0, 1, 1)
    bad_meta = torch.tensor([3, 7, 4, 6, 4])
    with pytest.raises(ValueError, match="k odd"):
        C_.pixelcnn_generate(pack.weights.data_ptr(), bad_meta.data_ptr(), 5, 0,
                             tokens.data_ptr(), 1, 2, 2, 0, seed, 1.0, 0, 1.0, 1, 1)
    with pytest.raises(ValueError, match="start must be in"):
        C_.pixelcnn_generate(*base, 5, seed, 1.0, 0, 1.0, 1, 1)


def test_compile_fullgraph():
    """The whole generation is one opaque op to torch.compile: no graph break, the eager draw."""
    pack = _model()
    f = torch.compile(lambda p: genfast.pixelcnn_generate(p, 2, height=3, width=4, seed=5),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(pack), genfast.pixelcnn_generate(pack, 2, height=3, width=4,
                                                                  seed=5), rtol=0, atol=0)

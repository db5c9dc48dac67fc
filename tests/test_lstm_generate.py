"""The native LSTM sampling loop (genfast.lstm_generate, genfast.nn.LSTMLanguageModel): the
exactness test (the teacher-forced module forward plus genfast.sample_categorical, rows ordered
(position, stream), draws the same tokens under the same seed), the step-by-step and naive loops
over the torch modules, continuation from a returned state, priming, one-hot input, thread-count
independence, every SIMD copy in float32, compile, the op registration and bad input."""

import pytest
import torch
from _helpers import single_thread  # noqa: F401 (a fixture, used by pytestmark)
from torch import nn

import genfast
from genfast import backends, random
from genfast.ops import lstm_generate as LG

C_, _why = backends.extension("_C")
HAS_CPU = C_ is not None and hasattr(C_, "lstm_generate")
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"genfast._C lacks lstm_generate: {_why}")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]
pytestmark = pytest.mark.usefixtures("single_thread")


def _model(V=11, E=5, H=7, L=2, dtype=torch.float64, bias=True, batch_first=True, seed=0):
    """(embedding or None, torch nn.LSTM, head) with a head scaled so draws are not uniform."""
    torch.manual_seed(seed)
    emb = nn.Embedding(V, E).to(dtype) if E else None
    lstm = nn.LSTM(E or V, H, L, bias=bias, batch_first=batch_first).to(dtype)
    head = nn.Linear(H, V, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.mul_(4.0)
        for name, p in lstm.named_parameters():
            p.mul_(2.0 if "weight" in name else 1.0)
    return emb, lstm, head


def _state(L, B, H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(L, B, H, generator=g, dtype=torch.float64).to(dtype) * 0.5
                 for _ in range(2))


def _logits(emb, lstm, head, tokens, state=None):
    """The teacher-forced module forward on tokens (B, T): logits (B, T, V)."""
    V = head.out_features
    with torch.no_grad():
        x = emb(tokens) if emb is not None else nn.functional.one_hot(tokens, V).to(
            head.weight.dtype)
        if not lstm.batch_first:
            return head(lstm(x.transpose(0, 1), state)[0]).transpose(0, 1)
        return head(lstm(x, state)[0])


def _rows(logits):
    """(B, N-1, V) logits of positions 1 .. N-1 as the (N*B, V) rows of the contract, rows
    ordered (position, stream); the rows of position 0 are never drawn from (zeros)."""
    B, T, V = logits.shape
    return torch.cat([logits.new_zeros(B, 1, V), logits], 1).transpose(0, 1).reshape(-1, V)


def _teacher(model, tokens, seed, state=None, **filt):
    B, N = tokens.shape
    rows = _rows(_logits(*model, tokens[:, :-1], state))
    return genfast.sample_categorical(rows, seed=seed, backend="reference", **filt).view(N, B).t()


CASES = {  # name: (model kwargs, batch, prime length, n, with state, sampler filters)
    "plain": ({}, 1, 1, 20, False, {}),
    "b3-top_k-state": ({}, 3, 2, 15, True, {"top_k": 3}),
    "top_p-temp": ({"V": 30, "H": 20}, 2, 3, 12, True, {"top_p": 0.8, "temperature": 0.8}),
    "greedy-3-layers": ({"L": 3}, 3, 1, 10, True, {"temperature": 0.0}),
    "one-hot": ({"E": 0, "V": 9}, 2, 2, 12, False, {}),
    "no-bias-time-major": ({"bias": False, "batch_first": False}, 2, 1, 12, True,
                           {"top_k": 4, "top_p": 0.9}),
    "H33-two-blocks-V70": ({"V": 70, "E": 8, "H": 33, "L": 2}, 5, 2, 8, True, {}),
    "hot-1-layer": ({"L": 1, "H": 16}, 2, 1, 12, False, {"temperature": 3.0}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_tokens_equal_teacher_forced_forward_plus_sampler_fp64(backend, case):
    kw, B, Tp, n, with_state, filt = CASES[case]
    model = _model(**kw)
    pack = LG.pack_lstm(*model)
    state = _state(pack.layers, B, pack.hidden, torch.float64) if with_state else None
    prime = torch.randint(0, pack.vocab, (B, Tp), generator=torch.Generator().manual_seed(2))
    tokens, (h, c) = genfast.lstm_generate(pack, prime, n, state=state, seed=11, backend=backend,
                                           **filt)
    assert tokens.shape == (B, Tp + n) and tokens.dtype == torch.int64
    assert torch.equal(tokens[:, :Tp], prime)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < pack.vocab
    if filt.get("temperature") != 0.0:  # draws must vary
        assert len(set(tokens[:, Tp:].flatten().tolist())) > 1
    assert torch.equal(tokens[:, Tp:], _teacher(model, tokens, 11, state, **filt)[:, Tp:])
    # The returned state is the one before the last token: the module's after tokens[:, :-1].
    emb, lstm, head = model
    x = tokens[:, :-1] if lstm.batch_first else tokens[:, :-1].t()
    xin = emb(x) if emb is not None else nn.functional.one_hot(x, pack.vocab).double()
    with torch.no_grad():
        _, (hw, cw) = lstm(xin, state)
    torch.testing.assert_close(h, hw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, cw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_step_by_step_and_naive_module_loops(backend):
    model = _model(V=13, E=4, H=9, L=2)
    pack = LG.pack_lstm(*model)
    prime = torch.tensor([[3, 1, 4], [1, 5, 9]])
    draw = LG.contract_sampler(7, 0, 1 / 0.9, 5, 1.0)
    want, (hw, cw) = LG.module_generate(*model, prime, 10, draw)
    got, (h, c) = genfast.lstm_generate(pack, prime, 10, seed=7, temperature=0.9, top_k=5,
                                        backend=backend)
    assert torch.equal(got, want)
    torch.testing.assert_close((h, c), (hw, cw), rtol=1e-12, atol=1e-12)
    assert torch.equal(LG.naive_generate(*model, prime, 10, draw), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_continuation_from_the_returned_state_equals_one_long_call(backend):
    pack = LG.pack_lstm(*_model(L=3))
    prime = torch.tensor([[2], [7], [0]])
    kw = dict(seed=5, top_p=0.95, backend=backend)
    whole, (hw, cw) = genfast.lstm_generate(pack, prime, 20, **kw)
    first, state = genfast.lstm_generate(pack, prime, 8, **kw)
    assert torch.equal(first, whole[:, :9])
    rest, (h, c) = genfast.lstm_generate(pack, first[:, -1:], 12, state=state, offset=8, **kw)
    assert torch.equal(rest, whole[:, 8:])
    torch.testing.assert_close((h, c), (hw, cw), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_priming_only_advances_the_state(backend):
    model = _model()
    pack = LG.pack_lstm(*model)
    prime = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(4))
    before = prime.clone()
    tokens, (h, c) = genfast.lstm_generate(pack, prime, 0, seed=1, backend=backend)
    assert torch.equal(tokens, before) and torch.equal(prime, before)  # prime is not modified
    with torch.no_grad():
        _, (hw, cw) = model[1](model[0](prime[:, :-1]))
    torch.testing.assert_close((h, c), (hw, cw), rtol=1e-12, atol=1e-12)
    one, (h1, c1) = genfast.lstm_generate(pack, prime[:, :1], 0, backend=backend)
    assert torch.equal(one, prime[:, :1])
    assert not h1.any() and not c1.any()  # nothing fed: the zero state


@needs_cpu
def test_native_equals_reference_loop_fp64():
    pack = LG.pack_lstm(*_model(V=40, E=12, H=24, L=3))
    prime = torch.randint(0, 40, (4, 3), generator=torch.Generator().manual_seed(0))
    state = _state(3, 4, 24, torch.float64)
    kw = dict(state=state, seed=2, top_p=0.9, top_k=20, offset=3)
    got = genfast.lstm_generate(pack, prime, 25, backend="cpu", **kw)
    want = genfast.lstm_generate(pack, prime, 25, backend="reference", **kw)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


def _fp32_check(model, tokens, seed, Tp, temperature=1.0):
    """Equal to the teacher-forced draw wherever the top-two gap of s + g exceeds 1e-3."""
    B, N = tokens.shape
    rows = _rows(_logits(*model, tokens[:, :-1]))
    want = genfast.sample_categorical(rows, temperature, seed=seed, backend="reference")
    s = (rows - rows.amax(1, keepdim=True)) / temperature
    top2 = (s + random.gumbel(seed, *rows.shape)).topk(2, dim=1).values
    close = ((top2[:, 0] - top2[:, 1]) <= 1e-3).view(N, B)[Tp:].reshape(-1)
    got = tokens.t()[Tp:].reshape(-1)
    want = want.view(N, B)[Tp:].reshape(-1)
    assert close.float().mean() < 0.02  # the guard excuses a near-tie, not a whole run
    assert torch.equal(got[~close], want[~close])


@needs_cpu
@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2", "scalar"])
def test_fp32_margin_guarded_on_every_simd_copy(isa):
    if isa not in C_.supported_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    model = _model(V=50, E=16, H=40, L=2, dtype=torch.float32)  # 3 gate blocks of 16 units
    pack = LG.pack_lstm(*model)
    prime = torch.randint(0, 50, (5, 2), generator=torch.Generator().manual_seed(1))
    before = C_.isa()
    C_.set_isa(isa)
    try:
        tokens, _ = genfast.lstm_generate(pack, prime, 40, seed=21, temperature=0.8,
                                          backend="cpu")
    finally:
        C_.set_isa(before)
    _fp32_check(model, tokens, 21, 2, temperature=0.8)


def test_reference_fp32_margin_guarded():
    model = _model(V=32, E=8, H=16, L=2, dtype=torch.float32)
    tokens, _ = genfast.lstm_generate(LG.pack_lstm(*model), torch.zeros(3, 1, dtype=torch.int64),
                                      30, seed=5, backend="reference")
    _fp32_check(model, tokens, 5, 1)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_identical(dtype):
    pack = LG.pack_lstm(*_model(V=32, E=8, H=40, L=2, dtype=dtype))
    prime = torch.randint(0, 32, (7, 2), generator=torch.Generator().manual_seed(3))
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out.append(genfast.lstm_generate(pack, prime, 60, seed=9, top_k=7, backend="cpu"))
    torch.set_num_threads(1)
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1][0], out[1][1][0]) and torch.equal(out[0][1][1], out[1][1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_none_follows_torch_manual_seed(backend):
    pack = LG.pack_lstm(*_model())
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(genfast.lstm_generate(pack, torch.zeros(2, 1, dtype=torch.int64), 8,
                                          backend=backend)[0])
    assert torch.equal(runs[0], runs[1])


def test_registered_and_opcheck():
    assert "lstm_generate" in backends.registered_ops()
    pack = LG.pack_lstm(*_model())
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    h, c = _state(2, 2, 7, torch.float64)
    args = (pack.weights, pack.meta, tokens, h, c, 2, 0,
            random.make_seed(torch.device("cpu"), 3), 1.0, 0, 1.0, "reference")
    torch.library.opcheck(LG.lstm_generate_op, args)


def test_compile_fullgraph_draws_what_eager_draws():
    """The whole loop is one opaque op to torch.compile: no graph break, the eager draw."""
    pack = LG.pack_lstm(*_model())
    prime = torch.tensor([[1], [2]])
    f = torch.compile(lambda p, x: genfast.lstm_generate(p, x, 9, seed=5, top_k=4),
                      fullgraph=True, backend="aot_eager")
    got, want = f(pack, prime), genfast.lstm_generate(pack, prime, 9, seed=5, top_k=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


BAD = {  # name: (lstm_generate kwargs, exception, message fragment)
    "prime dtype": ({"prime": torch.zeros(2, 1)}, TypeError, "prime must be int64"),
    "prime dims": ({"prime": torch.zeros(3, dtype=torch.int64)}, ValueError, "prime must be 2-D"),
    "prime empty": ({"prime": torch.zeros(2, 0, dtype=torch.int64)}, ValueError,
                    "with time >= 1"),
    "prime range": ({"prime": torch.full((2, 1), 11)}, ValueError,
                    "prime must hold tokens in [0, 11)"),
    "n": ({"n": -1}, ValueError, "n must be an int and >= 0"),
    "offset": ({"offset": -2}, ValueError, "offset must be an int and >= 0"),
    "state type": ({"state": torch.zeros(2, 2, 7)}, TypeError, "state must be None or a pair"),
    "state shape": ({"state": (torch.zeros(2, 3, 7, dtype=torch.float64),) * 2}, ValueError,
                    "state[0] (h) must have shape (layers, batch, hidden) = (2, 2, 7)"),
    "state dtype": ({"state": (torch.zeros(2, 2, 7),) * 2}, TypeError,
                    "state[0] (h) must be float64"),
    "temperature": ({"temperature": -1.0}, ValueError, "temperature must be finite and >= 0"),
    "top_k": ({"top_k": 0}, ValueError, "top_k must be an int and >= 1"),
    "top_p": ({"top_p": 0.0}, ValueError, "top_p must be finite and in (0.0, 1.0]"),
    "backend": ({"backend": "fast"}, ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_name_themselves(case):
    kw, exc, msg = BAD[case]
    pack = LG.pack_lstm(*_model())
    args = dict(prime=torch.zeros(2, 1, dtype=torch.int64), n=3) | kw
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        genfast.lstm_generate(pack, **args)


def test_bad_pack_arguments():
    emb, lstm, head = _model(dtype=torch.float32)
    pack = LG.pack_lstm(emb, lstm, head)
    assert pack.meta.tolist() == [2, 11, 7] and pack.weights.numel() == sum(
        torch.Size(s).numel() for s in LG.packed_sizes([2, 11, 7]))
    assert torch.equal(LG.pack_lstm(emb.weight, lstm, head).weights, pack.weights)
    with pytest.raises(TypeError, match="pack must be an LSTMPack"):
        genfast.lstm_generate("model", torch.zeros(1, 1, dtype=torch.int64), 2)
    bad = {
        "lstm must be unidirectional": (emb, nn.LSTM(5, 7, bidirectional=True), head),
        "lstm must have proj_size 0": (emb, nn.LSTM(5, 7, proj_size=3), head),
        r"lstm.input_size must be 5 \(the embedding dim\)": (emb, nn.LSTM(6, 7), head),
        r"lstm.input_size must be 11 \(the vocabulary: one-hot input\)": (None, lstm, head),
        "head must map hidden_size 7": (emb, lstm, nn.Linear(8, 11)),
        r"embedding must be \(V=11, E\)": (nn.Embedding(10, 5), lstm, head),
        "embedding must not use max_norm": (nn.Embedding(11, 5, max_norm=1.0), lstm, head),
    }
    for msg, args in bad.items():
        with pytest.raises(ValueError, match=msg):
            LG.pack_lstm(*args)
    with pytest.raises(TypeError, match="lstm must be an nn.LSTM"):
        LG.pack_lstm(emb, nn.GRU(5, 7), head)
    with pytest.raises(TypeError, match=r"lstm.bias_ih_l0 must be float32 on cpu like head.weight"):
        LG.pack_lstm(emb, _model(dtype=torch.float64)[1], head)


@needs_cpu
def test_native_rejects_bad_meta_and_tokens():
    pack = LG.pack_lstm(*_model())
    tokens = torch.tensor([[3, 11, 0]])
    h, c = _state(2, 1, 7, torch.float64)
    ptrs = (tokens.data_ptr(), h.data_ptr(), c.data_ptr())
    base = (pack.weights.data_ptr(), pack.meta.data_ptr(), 3, *ptrs, 1, 3)
    with pytest.raises(ValueError, match=r"tokens\[0, 1\] must be in \[0, V\)"):
        C_.lstm_generate(*base, 3, 0, 0, 1.0, 0, 1.0, 1, 1)
    bad_meta = torch.tensor([0, 11, 7])
    with pytest.raises(ValueError, match="L >= 1"):
        C_.lstm_generate(pack.weights.data_ptr(), bad_meta.data_ptr(), 3, *ptrs, 1, 3, 1, 0, 0,
                         1.0, 0, 1.0, 1, 1)
    with pytest.raises(ValueError, match="start must be in"):
        C_.lstm_generate(*base, 0, 0, 0, 1.0, 0, 1.0, 1, 1)


def test_language_model_forward_generate_and_pack_cache():
    torch.manual_seed(0)
    lm = genfast.nn.LSTMLanguageModel(12, 6, 10, 2, dtype=torch.float64)
    tokens = torch.randint(0, 12, (3, 5))
    logits, (h, c) = lm(tokens)
    assert logits.shape == (3, 5, 12) and h.shape == c.shape == (2, 3, 10)
    out, state = lm.generate(tokens[:, :2], 9, seed=3, top_k=6)
    rows = _rows(lm(out[:, :-1])[0])
    want = genfast.sample_categorical(rows, seed=3, top_k=6, backend="reference").view(11, 3).t()
    assert torch.equal(out[:, 2:], want[:, 2:])
    one, _ = lm.generate(tokens[0, :2], 9, seed=3, top_k=6)  # unbatched
    assert one.shape == (11,)
    pack = lm.pack()
    assert lm.pack() is pack
    with torch.no_grad():
        lm.head.bias.add_(1.0)  # an in-place change bumps the version: the pack is rebuilt
    assert lm.pack() is not pack
    onehot = genfast.nn.LSTMLanguageModel(7, 0, 5, 1, dtype=torch.float64)
    out, _ = onehot.generate(torch.tensor([[1], [2]]), 6, seed=1)
    rows = _rows(onehot(out[:, :-1])[0])
    want = genfast.sample_categorical(rows, seed=1, backend="reference").view(7, 2).t()
    assert torch.equal(out[:, 1:], want[:, 1:])

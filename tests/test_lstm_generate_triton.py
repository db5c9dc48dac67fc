"""The Triton LSTM sampling loop (kernels/lstm_generate.py) against the contract of
genfast/ops/lstm_generate.py, on the CPU under the Triton interpreter.

Oracle: the teacher-forced float64 loop over the generated tokens (the packed weights upcast)
and the contract's draw (contract_sampler: the `sample` family's reference draw, noise rows
(offset + p)*B + b) of its logits. Teacher forcing conditions every step on the generated tokens
themselves, so a draw that float32 rounding flips does not cascade: every draw with a safe
margin must match. Also: the public API against the reference backend (and the C++ one where it
is built), both GEMV paths and the chunked loops, continuation calls, given tokens, the state."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch

pytest.importorskip("triton")

from genfast import backends  # noqa: E402
from genfast import random as grandom  # noqa: E402
from genfast.kernels import lstm_generate as K  # noqa: E402
from genfast.ops import lstm_generate as LG  # noqa: E402
from genfast.ops._lstm_generate_ref import contract_sampler, unpack  # noqa: E402

pytestmark = pytest.mark.triton
MARGIN = 1e-4  # float32 logits in another summation order move by ~1e-6


def packed(L=2, V=7, H=5, seed=0, scale=0.6, dtype=torch.float32):
    """A random packed model (layout of the contract), its head scaled up so draws vary."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(s, generator=g, dtype=torch.float64) * scale
             for s in LG.packed_sizes([L, V, H])]
    parts[-2] = parts[-2] * 3
    return torch.cat([p.reshape(-1) for p in parts]).to(dtype), [L, V, H]


def state(L, B, H, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(L, B, H, generator=g) * 0.5).to(dtype) for _ in range(2))


def teacher(w, meta, tokens, h, c):
    """float64 logits (N-1, B, V) after each fed token p-1 (p = 1 .. N-1), and the state before
    token N-1, on the given tokens."""
    tab, w_hh0, layers, w_out, b_out = unpack(w.double(), meta)
    hs, cs = list(h.double().unbind(0)), list(c.double().unbind(0))

    def cell(G, cl):
        i, f, g, o = G.chunk(4, 1)
        cl = torch.sigmoid(f) * cl + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cl), cl

    out = []
    for p in range(1, tokens.shape[1]):
        hs[0], cs[0] = cell(tab[tokens[:, p - 1]] + hs[0] @ w_hh0.T, cs[0])
        for li, (w_ih, w_hh, b) in enumerate(layers, start=1):
            hs[li], cs[li] = cell(hs[li - 1] @ w_ih.T + b + hs[li] @ w_hh.T, cs[li])
        out.append(hs[-1] @ w_out.T + b_out)
    return torch.stack(out), torch.stack(hs), torch.stack(cs)


def margins(logits, rows, seed, inv_temp, top_k, top_p):
    """How far float32 logits (R, V) may move before a draw could flip: the gap between the two
    best perturbed kept scores, the top_k boundary gap, the top_p boundary's mass gap."""
    V = logits.shape[1]
    if math.isinf(inv_temp):
        top = logits.topk(2, 1).values
        return top[:, 0] - top[:, 1]
    s = (logits - logits.amax(1, keepdim=True)) * inv_temp
    srt = s.sort(1, descending=True).values
    keep = torch.ones_like(s, dtype=torch.bool)
    margin = torch.full((s.shape[0],), math.inf, dtype=torch.float64)
    if 0 < top_k < V:
        keep = s >= srt[:, top_k - 1:top_k]
        margin = srt[:, top_k - 1] - srt[:, top_k]
    if top_p < 1:
        p = torch.softmax(torch.where(keep, s, -math.inf), 1).sort(1, descending=True).values
        cum = p.cumsum(1)
        at = (cum < top_p).sum(1, keepdim=True).clamp(max=V - 1)
        keep &= s >= srt.gather(1, at)
        margin = torch.minimum(margin, (cum - top_p).abs().amin(1))
    g = grandom.gumbel(seed, rows, V, dtype=torch.float64)
    top = torch.where(keep, s + g, -math.inf).topk(2, 1).values
    return torch.minimum(margin, top[:, 0] - top[:, 1])


def check(w, meta, tokens, h0, c0, seed, inv_temp=1.0, top_k=0, top_p=1.0, start=1, offset=0):
    """Tokens p >= start equal the oracle's draws wherever the margin is safe; returns the
    oracle's final state."""
    B, N = tokens.shape
    logits, hT, cT = teacher(w, meta, tokens, h0, c0)
    draw = contract_sampler(seed, offset, inv_temp, top_k, top_p)
    for p in range(max(start, 1), N):
        want = draw(logits[p - 1], p)
        rows = (offset + p) * B + torch.arange(B)
        safe = margins(logits[p - 1], rows, seed, inv_temp, top_k, top_p) > MARGIN
        assert safe.float().mean() >= 0.5, f"too many near-ties at p={p}: pick another seed"
        assert torch.equal(tokens[safe, p], want[safe]), (p, tokens[:, p], want)
    return hT, cT


def run(w, meta, tokens, h, c, seed, inv_temp=1.0, top_k=0, top_p=1.0, start=1, offset=0,
        **kw):
    seed_t = grandom.make_seed(torch.device("cpu"), seed=seed)
    return K.generate(w, meta, tokens, h, c, start, offset, seed_t, inv_temp, top_k, top_p, **kw)


def first_tokens(B, N, V, seed):
    t = torch.zeros(B, N, dtype=torch.int64)
    t[:, 0] = torch.randint(0, V, (B,), generator=torch.Generator().manual_seed(seed))
    return t


CASES = {  # name: (model kwargs, (B, N), (inv_temp, top_k, top_p), offset, generate kwargs)
    "L2-plain": ({}, (3, 6), (1.0, 0, 1.0), 0, {}),
    "L1-top_k-top_p-offset": ({"L": 1, "V": 9, "H": 8, "seed": 1}, (2, 6), (1 / 0.8, 5, 0.9),
                              3, {}),
    "L2-greedy": ({"H": 4, "seed": 2}, (2, 5), (math.inf, 0, 1.0), 0, {}),
    # 16 streams a program: the tl.dot GEMVs, 13 of the 16 rows dead.
    "L2-dot": ({"H": 6, "seed": 3}, (3, 5), (1.0, 0, 0.8), 1, {"streams_per_program": 16}),
    # H = 20 in blocks of 16: two hidden-unit blocks and two column chunks, the second masked.
    "L2-H20-chunked": ({"H": 20, "seed": 4, "scale": 0.4}, (2, 4), (1.0, 3, 1.0), 0,
                       {"block": 16}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_and_state_equal_the_teacher_forced_oracle(name):
    kw, (B, N), (inv_temp, top_k, top_p), offset, gen = CASES[name]
    w, meta = packed(**kw)
    L, V, H = meta
    h0, c0 = state(L, B, H, 5)
    h, c = h0.clone(), c0.clone()
    tokens = run(w, meta, first_tokens(B, N, V, 6), h, c, 17, inv_temp, top_k, top_p,
                 offset=offset, **gen)
    assert tokens.min() >= 0 and tokens.max() < V
    if not math.isinf(inv_temp):
        assert len(set(tokens[:, 1:].flatten().tolist())) > 1  # the draws are not stuck
    hT, cT = check(w, meta, tokens, h0, c0, 17, inv_temp, top_k, top_p, offset=offset)
    torch.testing.assert_close(h, hT.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, cT.float(), rtol=1e-5, atol=1e-5)


def test_given_tokens_are_kept_and_condition_the_draws():
    w, meta = packed(seed=7)
    B, N, start = 2, 7, 4
    given = torch.randint(0, meta[1], (B, N), generator=torch.Generator().manual_seed(8))
    h, c = state(2, B, 5, 9)
    h0, c0 = h.clone(), c.clone()
    tokens = run(w, meta, given.clone(), h, c, 23, start=start)
    assert torch.equal(tokens[:, :start], given[:, :start])
    check(w, meta, tokens, h0, c0, 23, start=start)
    # start = N: no draw, only the state advances (over tokens 0 .. N-2).
    h2, c2 = h0.clone(), c0.clone()
    assert torch.equal(run(w, meta, given.clone(), h2, c2, 23, start=N), given)
    _, hT, cT = teacher(w, meta, given, h0, c0)
    torch.testing.assert_close(h2, hT.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c2, cT.float(), rtol=1e-5, atol=1e-5)


def test_a_continuation_call_draws_what_one_long_call_draws():
    # The float32 state goes out to h, c and back in exactly: the same arithmetic either way.
    w, meta = packed(L=2, V=8, H=6, seed=10)
    B, N, cut = 2, 8, 5
    h, c = state(2, B, 6, 11)
    long = run(w, meta, first_tokens(B, N, 8, 12), h.clone(), c.clone(), 29, 1.3)
    h1, c1 = h.clone(), c.clone()
    head = run(w, meta, first_tokens(B, cut, 8, 12), h1, c1, 29, 1.3)
    tail = torch.zeros(B, N - cut + 1, dtype=torch.int64)
    tail[:, 0] = head[:, -1]
    run(w, meta, tail, h1, c1, 29, 1.3, offset=cut - 1)
    assert torch.equal(torch.cat([head, tail[:, 1:]], 1), long)


def test_public_api_on_triton_equals_the_reference_and_cpu_backends():
    # The op wiring (genfast/ops/lstm_generate.py -> this launcher) end to end. The other
    # backends run float32 in another order and condition on their own draws: streams agree up
    # to their first unsafe draw (the oracle's margin, on the Triton tokens).
    w, meta = packed(L=2, V=7, H=6, seed=13)
    pack = LG.LSTMPack(w, torch.tensor(meta), *meta)
    prime = torch.tensor([[1, 4], [6, 0], [3, 3]])
    h0, c0 = state(2, 3, 6, 14)
    got, (h, c) = LG.lstm_generate(pack, prime, 5, state=(h0, c0), temperature=0.9, top_k=5,
                                        seed=31, backend="triton")
    assert torch.equal(got[:, :2], prime)
    ext, _ = backends.extension("_C")
    others = ["reference"] + (["cpu"] if hasattr(ext, "lstm_generate") else [])
    logits, _, _ = teacher(w, meta, got, h0, c0)
    for name in others:
        ref, (rh, rc) = LG.lstm_generate(pack, prime, 5, state=(h0, c0), temperature=0.9,
                                              top_k=5, seed=31, backend=name)
        exact = True
        for b in range(3):
            for p in range(2, 7):
                rows = torch.tensor([p * 3 + b])
                safe = margins(logits[p - 1, b:b + 1], rows, 31, 1 / 0.9, 5, 1.0) > MARGIN
                if not bool(safe):
                    exact = False
                    break
                assert got[b, p] == ref[b, p], (name, b, p)
        if exact:  # every draw agreed: the states were computed on the same tokens
            torch.testing.assert_close(h, rh, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-5)


def test_bfloat16_weights_and_state_compute_in_float32():
    w, meta = packed(L=2, V=7, H=5, seed=15, dtype=torch.bfloat16)
    h, c = state(2, 2, 5, 16, torch.bfloat16)
    h0, c0 = h.clone(), c.clone()
    tokens = run(w, meta, first_tokens(2, 5, 7, 17), h, c, 5)
    hT, cT = check(w, meta, tokens, h0, c0, 5)  # the oracle upcasts the same bf16 values
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), hT.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(c.float(), cT.float(), rtol=1e-2, atol=1e-2)


def test_packed_size_matches_the_contract():
    for meta in ([1, 7, 5], [3, 9, 4]):
        assert K.packed_size(meta) == sum(math.prod(s) for s in LG.packed_sizes(meta))


def test_bad_arguments_raise_clear_errors():
    w, meta = packed()
    seed = grandom.make_seed(torch.device("cpu"), seed=1)
    tok = torch.zeros(1, 3, dtype=torch.int64)
    h, c = state(2, 1, 5, 1)

    def gen(*args, **kw):
        a = dict(zip(("w", "meta", "tok", "h", "c", "start", "offset"), args, strict=False))
        return K.generate(a.get("w", w), a.get("meta", meta), a.get("tok", tok), a.get("h", h),
                          a.get("c", c), a.get("start", 1), a.get("offset", 0), seed,
                          kw.get("inv_temp", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0),
                          **{k: v for k, v in kw.items() if k in ("streams_per_program", "block")})

    with pytest.raises(ValueError, match=r"meta must be a list of 3 ints"):
        gen(w, meta[:2])
    with pytest.raises(ValueError, match="L, V, H >= 1"):
        gen(w, [0, 7, 5])
    with pytest.raises(ValueError, match="weights must be"):
        gen(w[1:])
    with pytest.raises(ValueError, match="tokens must be"):
        gen(w, meta, tok.int())
    with pytest.raises(ValueError, match="h must be"):
        gen(w, meta, tok, h[:1])
    with pytest.raises(ValueError, match="c must be"):
        gen(w, meta, tok, h, c.double())
    with pytest.raises(ValueError, match=r"start must be an int in \[1, N = 3\]"):
        gen(w, meta, tok, h, c, 0)
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        gen(w, meta, tok, h, c, 1, -1)
    with pytest.raises(ValueError, match="top_p must be > 0"):
        gen(top_p=0.0)
    with pytest.raises(ValueError, match="inv_temperature must be > 0"):
        gen(inv_temp=0.0)
    with pytest.raises(ValueError, match="streams_per_program must be a power of two"):
        gen(streams_per_program=3)
    with pytest.raises(ValueError, match="block must be a power of two >= 16"):
        gen(block=8)
    big, big_meta = packed(L=1, V=1100, H=1)
    with pytest.raises(ValueError, match="vocabulary must stay <= 1024"):
        gen(big, big_meta, tok, *state(1, 1, 1, 2))
    # Nothing to do: one token (no step) or no stream; tokens and state untouched.
    one = torch.full((1, 1), 3, dtype=torch.int64)
    h1, c1 = h.clone(), c.clone()
    assert K.generate(w, meta, one, h1, c1, 1, 0, seed, 1.0, 0, 1.0) is one
    assert torch.equal(h1, h) and torch.equal(c1, c) and int(one) == 3

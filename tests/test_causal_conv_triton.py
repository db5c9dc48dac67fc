"""The Triton causal-conv kernels (kernels/causal_conv.py, causal_conv_layer.py,
causal_conv_generate.py) against the contracts of genfast/ops/causal_conv.py,
causal_conv_layer.py and causal_conv_generate.py, on the CPU under the Triton interpreter.

Oracles are plain torch: F.conv1d on [h | x] and its autograd for the conv, the layer's formulas
with autograd for its backward, and a torch loop of the generation contract whose draws are the
`sample` family's reference sampler (rows p*B + b of one sample_categorical call)."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _triton_helpers import triton_cast  # noqa: E402

from genfast import random as grandom  # noqa: E402
from genfast.kernels import causal_conv as C  # noqa: E402
from genfast.kernels import causal_conv_generate as CG  # noqa: E402
from genfast.kernels import causal_conv_layer as CL  # noqa: E402
from genfast.ops.sample import _ref_sample  # noqa: E402

pytestmark = pytest.mark.triton
TOL32 = dict(rtol=1e-5, atol=2e-5)
ACTS = [lambda u: u, F.silu, F.relu, torch.tanh]


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def padded(x, h, P):
    return torch.cat([h, x], -1) if h is not None else F.pad(x, (P, 0))


# ----------------------------------------------------------------------------- conv

# (Cin, Cout, groups, K, dilation, T, act, with_h, block). C=8 and grouped/depthwise shapes take
# the elementwise body, >= 16 channels a group the tl.dot body; a forced block walks several
# channel and time tiles (and two input-channel blocks at Cin=48); T=9 < P=28 reads h only.
CONV = [
    (8, 8, 1, 1, 1, 7, 0, False, None),
    (8, 12, 4, 2, 1, 9, 1, True, None),
    (8, 8, 8, 3, 2, 13, 2, True, None),
    (8, 8, 8, 5, 7, 33, 3, True, None),
    (4, 4, 4, 5, 7, 9, 0, True, None),
    (8, 4, 1, 2, 7, 11, 1, False, (2, 16)),
    (6, 6, 6, 4, 2, 35, 1, True, (4, 16)),
    (32, 48, 1, 2, 1, 21, 1, True, None),
    (32, 32, 2, 3, 7, 37, 0, True, (16, 16)),
    (64, 32, 2, 1, 2, 7, 2, False, None),
    (48, 32, 1, 5, 2, 19, 3, True, (16, 16)),
]
CONV_IDS = [f"{ci}-{co}-g{g}-K{k}-d{d}-T{t}" + ("-tiles" if blk else "")
            for ci, co, g, k, d, t, _, _, blk in CONV]


def conv_data(cin, cout, groups, K, d, T, B=2, seed=0):
    P = (K - 1) * d
    return (randn(B, cin, T, seed=seed), randn(B, cin, P, seed=seed + 1),
            randn(cout, cin // groups, K, seed=seed + 2, scale=0.5), randn(cout, seed=seed + 3))


@pytest.mark.parametrize("cin,cout,groups,K,d,T,act,with_h,block", CONV, ids=CONV_IDS)
def test_forward_and_backward_match_torch(cin, cout, groups, K, d, T, act, with_h, block):
    x, h, w, b = conv_data(cin, cout, groups, K, d, T)
    P = (K - 1) * d
    h = h if with_h else None
    y = C.fwd(x, h, w, b, torch.empty(2, cout, T), d, groups, act, block=block)
    want = ACTS[act](F.conv1d(padded(x, h, P), w, b, dilation=d, groups=groups))
    torch.testing.assert_close(y, want, **TOL32)

    xt = padded(x, h, P).requires_grad_()
    wt = w.clone().requires_grad_()
    g = randn(2, cout, T, seed=9)
    dxt, dw = torch.autograd.grad(F.conv1d(xt, wt, dilation=d, groups=groups), (xt, wt), g)
    got = C.bwd_input(g, w, torch.empty(2, cin, P + T), d, groups, True, block=block)
    torch.testing.assert_close(got, dxt, **TOL32)
    got = C.bwd_input(g, w, torch.empty(2, cin, T), d, groups, False, block=block)
    torch.testing.assert_close(got, dxt[..., P:], **TOL32)
    got = C.bwd_weight(g, x, h, torch.empty_like(w), d, groups, block=block)
    torch.testing.assert_close(got, dw, **TOL32)


@pytest.mark.parametrize("groups,block", [(1, (16, 16)), (8, (2, 16))], ids=["dot", "elem"])
def test_weight_gradient_time_splits(groups, block):
    # Partials of 16 and 32 times (3 and 2 splits with a ragged last one) sum to the same dw.
    cin = cout = 16 if groups == 1 else 8
    x, h, w, _ = conv_data(cin, cout, groups, 3, 2, 41, B=3, seed=4)
    g = randn(3, cout, 41, seed=5)
    wt = w.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.conv1d(padded(x, h, 4), wt, dilation=2, groups=groups), wt, g)
    for t_split in (16, 32):
        got = C.bwd_weight(g, x, h, torch.empty_like(w), 2, groups, block=block, t_split=t_split)
        torch.testing.assert_close(got, want, **TOL32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cin,groups", [(32, 1), (8, 8)], ids=["dot", "depthwise"])
def test_low_precision(dtype, cin, groups):
    if dtype == torch.bfloat16 and groups == 1:
        pytest.skip("the interpreter's tl.dot multiplies bf16 bit patterns (GPU rows cover it)")
    x, h, w, b = [t.to(dtype) for t in conv_data(cin, cin, groups, 3, 2, 21)]
    y = C.fwd(x, h, w, b, torch.empty(2, cin, 21, dtype=dtype), 2, groups, 1)
    u = F.conv1d(padded(x, h, 4).float(), w.float(), b.float(), dilation=2, groups=groups)
    want = triton_cast(F.silu(u), dtype).float()
    # fp32 accumulation and one rounding: within an ulp or two of the rounded fp32 result.
    torch.testing.assert_close(y.float(), want, rtol=2 ** -7 if dtype == torch.bfloat16
                               else 2 ** -10, atol=1e-2)


# ----------------------------------------------------------------------------- update

# (Cin, Cout, groups, K, d, S - P, chunk lengths, block): a chunk longer than S writes only its
# last S; the forced block splits the channels over 3 programs and steps / slots into 16-chunks.
UPDATE = [
    (6, 6, 6, 4, 1, 0, [1, 1, 3, 1, 5, 1], None),
    (8, 12, 4, 3, 2, 2, [2, 1, 9, 1], None),
    (4, 4, 1, 1, 1, 0, [3, 1], None),
    (16, 16, 1, 2, 7, 3, [1, 12, 2], None),
    (6, 6, 6, 4, 1, 14, [20, 1], (2, 16)),
]


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "shift"])
@pytest.mark.parametrize("cin,cout,groups,K,d,extra,chunks,block", UPDATE,
                         ids=[f"g{u[2]}-K{u[3]}-d{u[4]}" + ("-chunks" if u[7] else "")
                              for u in UPDATE])
def test_update_chain_equals_forward(ring, cin, cout, groups, K, d, extra, chunks, block):
    N = sum(chunks)
    x, _, w, b = conv_data(cin, cout, groups, K, d, N, seed=7)
    want = F.relu(F.conv1d(F.pad(x, ((K - 1) * d, 0)), w, b, dilation=d, groups=groups))
    state = torch.zeros(2, cin, (K - 1) * d + extra)
    seqlens = torch.zeros(2, dtype=torch.int64)
    t = 0
    for L in chunks:
        y = C.update(x[..., t:t + L].contiguous(), state, w, b, seqlens if ring else None,
                     torch.empty(2, cout, L), d, groups, 2, block=block)
        torch.testing.assert_close(y, want[..., t:t + L], **TOL32)
        t += L
        seqlens += L


def test_update_streams_at_different_positions():
    # Stream b has consumed n_b steps; its ring holds positions n_b - S .. n_b - 1 at p mod S.
    K, d, S, L = 3, 2, 7, 3
    x, _, w, b = conv_data(4, 4, 4, K, d, 20, seed=8)
    n = [5, 11]
    state = torch.zeros(2, 4, S)
    for bi, nb in enumerate(n):
        for p in range(max(0, nb - S), nb):
            state[bi, :, p % S] = x[bi, :, p]
    x_new = torch.stack([x[bi, :, nb:nb + L] for bi, nb in enumerate(n)])
    y = C.update(x_new, state, w, b, torch.tensor(n), torch.empty(2, 4, L), d, 4, 0)
    full = F.conv1d(F.pad(x, (4, 0)), w, b, dilation=d, groups=4)
    for bi, nb in enumerate(n):
        torch.testing.assert_close(y[bi], full[bi, :, nb:nb + L], **TOL32)
        for p in range(nb + L - S, nb + L):  # the ring now ends at position n_b + L - 1
            assert torch.equal(state[bi, :, p % S], x[bi, :, p])


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "shift"])
def test_update_continues_from_a_final_state(ring):
    # fwd's final state x~[..., T:T+P] is a ring with S = P and seqlens 0, and a shift state.
    K, d, T1, L = 3, 3, 10, 4
    x, _, w, b = conv_data(8, 8, 8, K, d, T1 + L, seed=9)
    P = (K - 1) * d
    state = padded(x[..., :T1], None, P)[..., T1:T1 + P].contiguous()
    y = C.update(x[..., T1:].contiguous(), state, w, b,
                 torch.zeros(2, dtype=torch.int64) if ring else None, torch.empty(2, 8, L), d,
                 8, 0)
    want = F.conv1d(F.pad(x, (P, 0)), w, b, dilation=d, groups=8)[..., T1:]
    torch.testing.assert_close(y, want, **TOL32)


# ----------------------------------------------------------------------------- fused layer


def layer_ref(x, h, cond, skip, wd, bd, wr, br, ws, bs, d):
    a = F.conv1d(padded(x, h, (wd.shape[2] - 1) * d), wd, bd, dilation=d)
    a = a + cond if cond is not None else a
    f, q = a.chunk(2, 1)
    z = torch.tanh(f) * torch.sigmoid(q)
    xo = x + torch.einsum("rh,bht->brt", wr, z) + (br[:, None] if br is not None else 0)
    so = torch.einsum("sh,bht->bst", ws, z) + (bs[:, None] if bs is not None else 0)
    return xo, so + skip if skip is not None else so


# (B, R, G, S, T, K, d, cond, with skip/biases/history). T=70 spans two time tiles; G=260
# (H=130 > MAX_H) takes the composed path.
LAYER = [
    (2, 4, 8, 6, 7, 2, 2, "global", True),
    (1, 5, 6, 3, 9, 3, 1, "local", False),
    (2, 20, 36, 70, 70, 2, 3, None, True),
    (1, 4, 260, 4, 5, 2, 1, "local", True),
]


@pytest.mark.parametrize("B,R,G,S,T,K,d,cond,full", LAYER,
                         ids=["global", "local-nobias", "tiles", "composed"])
def test_layer_forward_and_backward(B, R, G, S, T, K, d, cond, full):
    H, P = G // 2, (K - 1) * d
    x, h = randn(B, R, T, seed=1), randn(B, R, P, seed=2) if full else None
    wd, wr, ws = randn(G, R, K, seed=3, scale=0.5), randn(R, H, seed=4), randn(S, H, seed=5)
    bd, br, bs = [randn(n, seed=6 + n) if full else None for n in (G, R, S)]
    c = {"global": randn(B, G, 1, seed=9), "local": randn(B, G, T, seed=9), None: None}[cond]
    skip = randn(B, S, T, seed=10) if full else None
    xo, so = CL.layer_fwd(x, h, c, skip, wd, bd, wr, br, ws, bs, torch.empty(B, R, T),
                          torch.empty(B, S, T), d)
    want_x, want_s = layer_ref(x, h, c, skip, wd, bd, wr, br, ws, bs, d)
    torch.testing.assert_close(xo, want_x, **TOL32)
    torch.testing.assert_close(so, want_s, **TOL32)

    a = F.conv1d(padded(x, h, P), wd, bd, dilation=d) + (c if c is not None else 0)
    a = a.requires_grad_()
    wr_t, ws_t = wr.clone().requires_grad_(), ws.clone().requires_grad_()
    f, q = a.chunk(2, 1)
    z = torch.tanh(f) * torch.sigmoid(q)
    outs = torch.einsum("rh,bht->brt", wr_t, z), torch.einsum("sh,bht->bst", ws_t, z)
    gx, gs = randn(B, R, T, seed=11), randn(B, S, T, seed=12)
    want = torch.autograd.grad(outs, (a, wr_t, ws_t), (gx, gs))
    got = CL.layer_bwd(x, h, c, wd, bd, wr, ws, gx, gs, torch.empty(B, G, T),
                       torch.empty(R, H), torch.empty(S, H), d)
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_, w_, **TOL32)


def test_layer_half_precision():
    # fp16 operands enter every dot in fp16 (z rounded once to fp16 before the 1x1 products).
    B, R, G, S, T = 1, 16, 32, 16, 19
    x, h = randn(B, R, T, seed=1), randn(B, R, 1, seed=2)
    wd = randn(G, R, 2, seed=3, scale=0.3)
    wr, ws = randn(R, 16, seed=4, scale=0.3), randn(S, 16, seed=5, scale=0.3)
    args = [t.half() for t in (x, h, wd, wr, ws)]
    xo, so = CL.layer_fwd(args[0], args[1], None, None, args[2], None, args[3], None, args[4],
                          None, torch.empty(B, R, T, dtype=torch.half),
                          torch.empty(B, S, T, dtype=torch.half), 1)
    want_x, want_s = layer_ref(*[t.float() for t in args[:2]], None, None, args[2].float(), None,
                               args[3].float(), None, args[4].float(), None, 1)
    torch.testing.assert_close(xo.float(), want_x, rtol=2e-3, atol=4e-3)
    torch.testing.assert_close(so.float(), want_s, rtol=2e-3, atol=4e-3)


# ----------------------------------------------------------------------------- generation

A_, R_, G_, S_, E_ = 20, 4, 8, 6, 10  # a 2-layer model with R=4


def unpack(weights, meta):
    L, A, R, G, S, E, K, kind = meta[:8]
    H, off, parts = G // 2, 0, []
    shapes = [(A, R)] if kind == 0 else [(R,), (R,)]
    for _ in range(L):
        shapes += [(G, R, K), (G,), (R, H), (R,), (S, H), (S,)]
    for shape in shapes + [(E, S), (E,), (A, E), (A,)]:
        parts.append(weights[off:off + math.prod(shape)].view(shape))
        off += math.prod(shape)
    assert off == weights.numel()
    return parts


def draw(logits, row, seed, inv_temp, top_k, top_p):
    """The sample family's draw for `row` of a (*, A) call, and its margin: the gap between the
    best and second-best perturbed kept score (how far the float32 logits may move first)."""
    A = logits.shape[0]
    rows = torch.cat([logits.new_zeros(row, A), logits[None]])
    idx = int(_ref_sample(rows, seed, inv_temp, top_k, top_p)[row])
    if math.isinf(inv_temp):
        a = logits
    else:
        s = (logits - logits.max()) * inv_temp
        keep = s >= s.topk(top_k).values[-1] if 0 < top_k < A else torch.ones(A, dtype=bool)
        if top_p < 1:
            sk = torch.where(keep, s, -math.inf).sort(descending=True).values
            at = int((torch.softmax(sk, 0).cumsum(0) < top_p).sum())
            keep &= s >= sk[min(at, A - 1)]
        u = grandom.uniform(int(seed), 1, A, row_start=row)[0]
        a = torch.where(keep, s - torch.log(-torch.log(u)), -math.inf)
    top = a.topk(2).values
    assert int(a.argmax()) == idx
    return idx, float(top[0] - top[1])


def torch_generate(weights, meta, gcond, lcond, rings, pos, n, seed, inv_temp, top_k, top_p):
    """The generation contract as a plain torch loop: (tokens (B, n), margins (B, n))."""
    L, A, R, G, S, E, K, kind = meta[:8]
    H, B, parts = G // 2, pos.shape[0], unpack(weights, meta)
    inp, parts = (parts[:1], parts[1:]) if kind == 0 else (parts[:2], parts[2:])
    views, off = [], 0
    for d in meta[8:]:
        views.append(rings[:, off:off + (K - 1) * d * R].view(B, (K - 1) * d, R))
        off += (K - 1) * d * R
    tokens = torch.empty(B, n, dtype=torch.int64)
    margins = torch.empty(B, n)
    ar = torch.arange(B)
    for i in range(n):
        p, tok = pos[:, 0] + i, pos[:, 1]
        if kind == 0:
            x = inp[0][tok]
        else:
            x = inp[0] * (2 * tok.float() / (A - 1) - 1)[:, None] + inp[1]
        skip = torch.zeros(B, S)
        for li, d in enumerate(meta[8:]):
            wd, bd, wr, br, ws, bs = parts[6 * li:6 * li + 6]
            a = bd + x @ wd[:, :, K - 1].T
            for k in range(K - 1):
                a = a + views[li][ar, (p - (K - 1 - k) * d) % ((K - 1) * d)] @ wd[:, :, k].T
            a = a + (gcond[:, li] if gcond is not None else 0)
            a = a + (lcond[:, i, li] if lcond is not None else 0)
            if K > 1:
                views[li][ar, p % ((K - 1) * d)] = x
            z = torch.tanh(a[:, :H]) * torch.sigmoid(a[:, H:])
            x, skip = x + z @ wr.T + br, skip + z @ ws.T + bs
        w1, b1, w2, b2 = parts[6 * L:]
        logits = torch.relu(torch.relu(skip) @ w1.T + b1) @ w2.T + b2
        for b in range(B):
            tokens[b, i], margins[b, i] = draw(logits[b], int(p[b]) * B + b, seed, inv_temp,
                                               top_k, top_p)
        pos[:, 1] = tokens[:, i]
    pos[:, 0] += n
    return tokens, margins


def model(kind, K, dils, seed=0):
    meta = [len(dils), A_, R_, G_, S_, E_, K, kind] + dils
    return randn(CG.packed_size(meta), seed=seed, scale=0.8), meta


def fresh_state(meta, B):
    ring_len = sum((meta[6] - 1) * d * R_ for d in meta[8:])
    return torch.zeros(B, ring_len), torch.tensor([[0, A_ // 2]] * B)


GEN = {  # (input kind, K, dilations, (inv_temp, top_k, top_p), cond)
    "embedding-plain-gc": (0, 2, [1, 2], (1.0, 0, 1.0), "global"),
    "scalar-topk-topp-lc": (1, 3, [2, 1], (1 / 0.7, 5, 0.9), "local"),
    "embedding-greedy": (0, 2, [2, 1], (math.inf, 0, 1.0), None),
}


@pytest.mark.parametrize("name", list(GEN))
def test_generation_matches_the_torch_loop(name):
    kind, K, dils, (inv_temp, top_k, top_p), cond = GEN[name]
    weights, meta = model(kind, K, dils)
    B, n = 2, 8
    gcond = randn(B, 2, G_, seed=3, scale=0.3) if cond == "global" else None
    lcond = randn(B, n, 2, G_, seed=4, scale=0.3) if cond == "local" else None
    seed = grandom.make_seed(torch.device("cpu"), seed=1234)
    rings, pos = fresh_state(meta, B)
    tokens = CG.generate(weights, meta, gcond, lcond, rings, pos,
                         torch.empty(B, n, dtype=torch.int64), seed, inv_temp, top_k, top_p)
    ref_rings, ref_pos = fresh_state(meta, B)
    want, margin = torch_generate(weights, meta, gcond, lcond, ref_rings, ref_pos, n, seed,
                                  inv_temp, top_k, top_p)
    # float32 sums in another order move the logits by ~1e-6: tokens must agree exactly up to
    # the first draw whose margin is below 1e-4 (after it, a flip may legitimately cascade).
    clear = int((margin > 1e-4).all(0).int().cumprod(0).sum())
    assert clear >= n // 2, f"only {clear} clear steps: pick another seed"
    assert torch.equal(tokens[:, :clear], want[:, :clear])
    if clear == n:
        assert torch.equal(pos, ref_pos)
        torch.testing.assert_close(rings, ref_rings, **TOL32)
    if not math.isinf(inv_temp):
        assert len(set(want.flatten().tolist())) > 2  # the draws are not stuck on one class


def test_chunked_generation_equals_one_call():
    weights, meta = model(0, 3, [1, 3], seed=5)
    B, n = 2, 4
    lcond = randn(B, n, 2, G_, seed=6, scale=0.3)
    seed = grandom.make_seed(torch.device("cpu"), seed=99)
    rings, pos = fresh_state(meta, B)
    one = CG.generate(weights, meta, None, lcond, rings, pos,
                      torch.empty(B, n, dtype=torch.int64), seed, 1.0, 4, 1.0)
    rings2, pos2 = fresh_state(meta, B)
    parts = [CG.generate(weights, meta, None, lcond[:, i:i + 2].contiguous(), rings2, pos2,
                         torch.empty(B, 2, dtype=torch.int64), seed, 1.0, 4, 1.0)
             for i in (0, 2)]
    assert torch.equal(torch.cat(parts, 1), one)
    assert torch.equal(rings2, rings) and torch.equal(pos2, pos)
    assert pos[0].tolist() == [n, one[0, -1].item()]


def test_public_generate_on_triton_equals_the_reference_backend():
    # The op wiring (genfast/ops/causal_conv_generate.py -> this launcher) end to end.
    from genfast.ops.causal_conv_generate import pack_wavenet, wavenet_generate

    g = torch.Generator().manual_seed(3)
    layers = [dict(w_dil=torch.randn(8, 4, 2, generator=g), b_dil=torch.randn(8, generator=g),
                   w_res=torch.randn(4, 4, generator=g), b_res=None,
                   w_skip=torch.randn(6, 4, generator=g), b_skip=torch.randn(6, generator=g),
                   dilation=d) for d in (1, 2)]
    head = (torch.randn(10, 6, generator=g), torch.randn(10, generator=g),
            torch.randn(A_, 10, generator=g), torch.randn(A_, generator=g))
    pack = pack_wavenet(input_weight=torch.randn(A_, 4, generator=g), layers=layers, head=head)
    got, state = wavenet_generate(pack, 6, batch=2, seed=21, top_p=0.8, backend="triton")
    want, ref_state = wavenet_generate(pack, 6, batch=2, seed=21, top_p=0.8,
                                       backend="reference")
    assert torch.equal(got, want) and torch.equal(state.pos, ref_state.pos)
    torch.testing.assert_close(state.rings, ref_state.rings, **TOL32)


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clear_errors():
    x, h, w, b = conv_data(8, 8, 1, 3, 1, 5)
    with pytest.raises(ValueError, match=r"y must be torch.float32 of shape \(2, 8, 5\)"):
        C.fwd(x, h, w, b, torch.empty(2, 8, 4), 1, 1, 0)
    with pytest.raises(ValueError, match="w: expected"):
        C.fwd(x, None, w[:, :4].contiguous(), b, torch.empty(2, 8, 5), 1, 1, 0)
    with pytest.raises(ValueError, match="act must be one of"):
        C.fwd(x, None, w, b, torch.empty(2, 8, 5), 1, 1, 7)
    with pytest.raises(ValueError, match=r"h must be .* \(2, 8, 2\)"):
        C.fwd(x, h[..., :1].contiguous(), w, b, torch.empty(2, 8, 5), 1, 1, 0)
    with pytest.raises(ValueError, match=r"state must be \(B=2, Cin=8, S >= P=2\)"):
        C.update(x, torch.zeros(2, 8, 1), w, b, None, torch.empty(2, 8, 5), 1, 1, 0)
    with pytest.raises(ValueError, match="seqlens must be torch.int64"):
        C.update(x, torch.zeros(2, 8, 2), w, b, torch.zeros(2, dtype=torch.int32),
                 torch.empty(2, 8, 5), 1, 1, 0)
    with pytest.raises(ValueError, match="w_res must be"):
        CL.layer_fwd(x, None, None, None, torch.zeros(4, 8, 2), None, torch.zeros(8, 3), None,
                     torch.zeros(3, 2), None, torch.empty_like(x), torch.empty(2, 3, 5), 1)
    weights, meta = model(0, 2, [1, 2])
    rings, pos = fresh_state(meta, 1)
    seed = grandom.make_seed(torch.device("cpu"), seed=1)
    tokens = torch.empty(1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="meta must hold 8 sizes and L=2 dilations"):
        CG.generate(weights, meta[:-1], None, None, rings, pos, tokens, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="weights must be"):
        CG.generate(weights[1:], meta, None, None, rings, pos, tokens, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="rings must be"):
        CG.generate(weights, meta, None, None, rings[:, 1:], pos, tokens, seed, 1.0, 0, 1.0)

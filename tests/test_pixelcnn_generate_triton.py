"""The Triton gated PixelCNN generator (kernels/masked_conv_generate.py) against the contract of
genfast/ops/masked_conv_generate.py, on the CPU under the Triton interpreter.

Oracle: the teacher-forced forward (pixelcnn_forward_packed, in float64) of the generated images
and the `sample` family's reference draw of its logits, rows ordered (pixel, image), under the
same seed. Teacher forcing conditions every pixel on the generated tokens themselves, so a draw
that float32 rounding flips does not cascade: every pixel whose draw has a safe margin must
match. Also: the committed reference generator (the cached torch loop) through the public API,
completion from `start`, and bad input."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch

pytest.importorskip("triton")

import genfast  # noqa: E402
from genfast import random as grandom  # noqa: E402
from genfast.kernels import masked_conv_generate as K  # noqa: E402
from genfast.ops import masked_conv_generate as MG  # noqa: E402

pytestmark = pytest.mark.triton
MARGIN = 1e-4  # float32 logits in another summation order move by ~1e-6


def model(L=2, A=8, C=4, E=6, k=3, seed=0, scale=0.7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    c = k // 2
    layers = [dict(v_weight=r(2 * C, C, c + 1, k), v_bias=r(2 * C),
                   h_weight=r(2 * C, C, 1, c + 1), h_bias=r(2 * C), link_weight=r(2 * C, 2 * C),
                   link_bias=r(2 * C), res_weight=r(C, C), res_bias=r(C)) for _ in range(L)]
    return MG.pack_pixelcnn(embedding=r(A, C) * 2, layers=layers, out1_weight=r(E, C),
                            out1_bias=r(E), out2_weight=r(A, E) * 2, out2_bias=r(A))


def as64(pack):
    return MG.PixelCNNPack(pack.weights.double(), pack.meta, pack.layers, pack.classes,
                           pack.channels, pack.hidden, pack.kernel_size)


def teacher(pack, tokens, cond, seed, inv_temp, top_k, top_p):
    """(draws (B, H, W), margins (B, H, W)): the reference draw from the float64 teacher-forced
    logits, and how far float32 logits may move before a draw could flip (the gap between the
    two best perturbed kept scores, the top_k boundary gap, the top_p boundary's mass gap)."""
    B, H, W = tokens.shape
    A = pack.classes
    logits = MG.pixelcnn_forward_packed(as64(pack), tokens,
                                        None if cond is None else cond.double())
    rows = logits.permute(2, 3, 0, 1).reshape(H * W * B, A)
    temperature = 0.0 if math.isinf(inv_temp) else 1.0 / inv_temp
    want = genfast.sample_categorical(rows, temperature, top_k=top_k or None,
                                      top_p=top_p if top_p < 1 else None, seed=seed,
                                      backend="reference")
    if math.isinf(inv_temp):
        top = rows.topk(2, 1).values
        margin = top[:, 0] - top[:, 1]
    else:
        s = (rows - rows.amax(1, keepdim=True)) * inv_temp
        srt = s.sort(1, descending=True).values
        keep = torch.ones_like(s, dtype=torch.bool)
        margin = torch.full((rows.shape[0],), math.inf, dtype=torch.float64)
        if 0 < top_k < A:
            keep = s >= srt[:, top_k - 1:top_k]
            margin = srt[:, top_k - 1] - srt[:, top_k]
        if top_p < 1:
            p = torch.softmax(torch.where(keep, s, -math.inf), 1).sort(1, descending=True).values
            cum = p.cumsum(1)
            at = (cum < top_p).sum(1, keepdim=True).clamp(max=A - 1)
            keep &= s >= srt.gather(1, at)
            margin = torch.minimum(margin, (cum - top_p).abs().amin(1))
        g = grandom.gumbel(seed, *rows.shape, dtype=torch.float64)
        top = torch.where(keep, s + g, -math.inf).topk(2, 1).values
        margin = torch.minimum(margin, top[:, 0] - top[:, 1])
    unrows = lambda t: t.reshape(H, W, B).permute(2, 0, 1)  # noqa: E731
    return unrows(want), unrows(margin)


def check(pack, tokens, cond, seed, inv_temp, top_k, top_p, start=0):
    want, margin = teacher(pack, tokens, cond, seed, inv_temp, top_k, top_p)
    B, H, W = tokens.shape
    sampled = (torch.arange(H * W) >= start).view(1, H, W).expand(B, H, W)
    safe = sampled & (margin > MARGIN)
    assert safe.sum() >= 0.9 * sampled.sum(), "too many near-ties: pick another seed"
    assert torch.equal(tokens[safe], want[safe])


def run(pack, tokens, cond, seed, inv_temp=1.0, top_k=0, top_p=1.0, start=0, chunk=None):
    seed_t = grandom.make_seed(torch.device("cpu"), seed=seed)
    return K.generate(pack.weights, pack.meta.tolist(), cond, tokens, start, seed_t, inv_temp,
                      top_k, top_p, chunk=chunk)


CASES = {  # name: (model kwargs, (B, H, W), conditioned, (inv_temp, top_k, top_p), chunk)
    "k3-cond": ({}, (2, 3, 4), True, (1.0, 0, 1.0), None),
    "k5-C6-top_k-top_p": ({"C": 6, "k": 5, "A": 12, "seed": 1}, (1, 4, 5), False,
                          (1 / 0.8, 5, 0.9), None),
    "k1-L3-greedy": ({"k": 1, "L": 3, "seed": 2}, (2, 2, 3), True, (math.inf, 0, 1.0), None),
    # C = 20 and E = 36 in chunks of 16: the GEMVs' column loops take 2 and 3 steps.
    "C20-E36-chunked": ({"C": 20, "E": 36, "A": 10, "seed": 9, "scale": 0.4}, (1, 2, 3), True,
                        (1.0, 0, 1.0), 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tokens_equal_teacher_forced_draws(name):
    kw, (B, H, W), conditioned, (inv_temp, top_k, top_p), chunk = CASES[name]
    pack = model(**kw)
    cond = (torch.randn(B, pack.layers, 2 * pack.channels,
                        generator=torch.Generator().manual_seed(5)) if conditioned else None)
    tokens = run(pack, torch.zeros(B, H, W, dtype=torch.int64), cond, 17, inv_temp, top_k, top_p,
                 chunk=chunk)
    assert tokens.min() >= 0 and tokens.max() < pack.classes
    if not math.isinf(inv_temp):
        assert len(set(tokens.flatten().tolist())) > 2  # the draws are not stuck on one class
    check(pack, tokens, cond, 17, inv_temp, top_k, top_p)


def test_completion_keeps_the_given_pixels_and_conditions_on_them():
    pack = model(seed=3)
    B, H, W, start = 2, 3, 4, 6
    given = torch.randint(0, pack.classes, (B, H, W), generator=torch.Generator().manual_seed(4))
    tokens = run(pack, given.clone(), None, 23, start=start)
    flat, flat_given = tokens.view(B, -1), given.view(B, -1)
    assert torch.equal(flat[:, :start], flat_given[:, :start])
    check(pack, tokens, None, 23, 1.0, 0, 1.0, start=start)


def test_public_api_on_triton_equals_the_reference_backend():
    # The op wiring (genfast/ops/masked_conv_generate.py -> this launcher) end to end; the
    # reference backend is the cached torch loop, float32 in another order: compared where the
    # draw's margin is safe, as against the oracle.
    pack = model(C=5, A=10, seed=6)
    cond = torch.randn(2, 2, 10, generator=torch.Generator().manual_seed(7)) * 0.5
    got = genfast.pixelcnn_generate(pack, 2, height=3, width=3, cond_bias=cond, seed=31,
                                    top_k=6, backend="triton")
    ref = genfast.pixelcnn_generate(pack, 2, height=3, width=3, cond_bias=cond, seed=31,
                                    top_k=6, backend="reference")
    _, margin = teacher(pack, got, cond, 31, 1.0, 6, 1.0)
    safe = margin > MARGIN
    assert safe.float().mean() >= 0.9
    # Images agree up to their first unsafe draw (the reference conditions on its own draws).
    for b in range(2):
        unsafe = (~safe[b]).view(-1).nonzero()
        upto = int(unsafe[0]) if len(unsafe) else 9
        assert torch.equal(got[b].view(-1)[:upto], ref[b].view(-1)[:upto])


def test_bfloat16_weights_compute_in_float32():
    pack = model(seed=8, dtype=torch.bfloat16)
    tokens = run(pack, torch.zeros(1, 3, 3, dtype=torch.int64), None, 5)
    check(pack, tokens, None, 5, 1.0, 0, 1.0)  # the oracle upcasts the same bf16 weights


def test_workspace_formula_and_packed_size_match_the_contract():
    pack = model(L=3, C=6, k=5, A=9, E=7)
    meta = pack.meta.tolist()
    assert K.packed_size(meta) == pack.weights.numel()
    # rings L (c+1) rows, hrows L-1 rows, links L rows of 2C and V's row of 2C, of W columns;
    # the head's C + E.
    assert K.workspace_size(meta, 11) == 11 * 6 * (3 * 3 + 2 + 3 * 2 + 2) + 6 + 7


def test_bad_arguments_raise_clear_errors():
    pack = model()
    w, meta = pack.weights, pack.meta.tolist()
    seed = grandom.make_seed(torch.device("cpu"), seed=1)
    tok = torch.zeros(1, 2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"meta must be a list of 5 ints"):
        K.generate(w, meta[:4], None, tok, 0, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="odd k"):
        K.generate(w, meta[:4] + [4], None, tok, 0, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="weights must be"):
        K.generate(w[1:], meta, None, tok, 0, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="tokens must be"):
        K.generate(w, meta, None, tok.int(), 0, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="cond must be"):
        K.generate(w, meta, torch.zeros(1, 2, 7), tok, 0, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"start must be an int in \[0, H\*W = 4\]"):
        K.generate(w, meta, None, tok, 5, seed, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="top_p must be > 0"):
        K.generate(w, meta, None, tok, 0, seed, 1.0, 0, 0.0)
    assert K.generate(w, meta, None, tok, 4, seed, 1.0, 0, 1.0) is tok  # nothing to sample

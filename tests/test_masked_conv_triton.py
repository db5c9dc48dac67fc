"""The Triton region-convolution kernels (kernels/masked_conv.py) against the contract of
genfast/ops/masked_conv.py, on the CPU under the Triton interpreter.

Oracles: F.conv2d(x, w * region_mask(...)) on an explicitly padded x and its autograd (the
contract's definition), and the committed reference (genfast/ops/_masked_conv_ref.py) for the
public op's first and second derivatives."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import genfast  # noqa: E402
from genfast.kernels import masked_conv as K  # noqa: E402
from genfast.ops._masked_conv_ref import (  # noqa: E402
    Region,
    ref_bwd_input,
    ref_bwd_weight,
    ref_fwd,
    region_mask,
)

pytestmark = pytest.mark.triton
TOL32 = dict(rtol=1e-5, atol=3e-5)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def out_size(H, W, kh, kw, g: Region):
    # Symmetric padding as nn.Conv2d: the bottom / right pads equal the top / left ones.
    return (H + 2 * g.pt - kh) // g.sh + 1, (W + 2 * g.pl - kw) // g.sw + 1


def mask_of(w, g: Region):
    Cout, Cin, kh, kw = w.shape
    return region_mask(Cout, Cin, kh, kw, g.rows, g.cols, g.center, g.groups)


def oracle(x, w, b, g: Region, Ho, Wo):
    """conv2d(x, w * mask) with top/left padding (pt, pl), cropped or padded to (Ho, Wo)."""
    H, W = x.shape[-2:]
    kh, kw = w.shape[-2:]
    bottom = max(0, (Ho - 1) * g.sh + kh - H - g.pt)
    right = max(0, (Wo - 1) * g.sw + kw - W - g.pl)
    xp = F.pad(x, (g.pl, right, g.pt, bottom))
    return F.conv2d(xp, w * mask_of(w, g), b, stride=(g.sh, g.sw))[..., :Ho, :Wo]


def oracle_grads(x, w, g_out, g: Region, Ho, Wo):
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    return torch.autograd.grad(oracle(xt, wt, None, g, Ho, Wo), (xt, wt), g_out)


def mask_a(kh, kw, pad=None, stride=(1, 1), G=1):
    pt, pl = pad if pad is not None else (kh // 2, kw // 2)
    return Region(*stride, pt, pl, kh // 2, kw // 2, 1, G)


def mask_b(kh, kw, pad=None, stride=(1, 1), G=1):
    return mask_a(kh, kw, pad, stride, G)._replace(center=2)


def vertical(c, A):
    return Region(1, 1, c, c, c if A else c + 1, 0, 0, 1)


def horizontal(c, A):
    return Region(1, 1, 0, c, 0, c if A else c + 1, 0, 1)


# (B, Cin, Cout, H, W, kh, kw, region, block). Small channel counts take the broadcast-and-sum
# body, >= 16 on both sides the tl.dot body; forced blocks walk several channel tiles,
# reduction blocks and pixel tiles (a 5x7 or 7x9 plane in 16-pixel tiles).
CASES = [
    ("A3", 2, 3, 5, 7, 9, 3, 3, mask_a(3, 3), None),
    ("B3-G3", 2, 6, 6, 7, 5, 3, 3, mask_b(3, 3, G=3), None),
    ("A5-G3-s2", 2, 6, 9, 9, 7, 5, 5, mask_a(5, 5, stride=(2, 2), G=3), None),
    ("B5-s21-pad0", 1, 4, 3, 9, 11, 5, 5, mask_b(5, 5, (0, 0), (2, 1)), None),
    ("B3-pad3", 2, 3, 4, 5, 7, 3, 3, mask_b(3, 3, (3, 1)), None),
    ("A1x3", 2, 5, 4, 3, 9, 1, 3, mask_a(1, 3), None),
    ("B3x1-G3", 2, 3, 3, 7, 5, 3, 1, mask_b(3, 1, G=3), None),
    ("A7-G3", 1, 3, 6, 9, 9, 7, 7, mask_a(7, 7, G=3), None),
    ("1x1", 2, 6, 5, 5, 7, 1, 1, Region(1, 1, 0, 0, 1, 0, 0, 1), None),
    ("B3-1ch", 2, 1, 1, 5, 7, 3, 3, mask_b(3, 3), None),
    ("vertB", 2, 4, 8, 7, 9, 2, 3, vertical(1, False), None),
    ("vertA-c2", 1, 4, 8, 7, 9, 3, 5, vertical(2, True), None),
    ("horizB", 2, 4, 8, 5, 9, 1, 2, horizontal(1, False), None),
    ("horizA-c2", 1, 4, 8, 5, 9, 1, 3, horizontal(2, True), None),
    ("dot-B3-G3", 1, 18, 20, 7, 9, 3, 3, mask_b(3, 3, G=3), (16, 16, 16)),
    ("dot-A5-G3-s2", 1, 24, 18, 9, 7, 5, 5, mask_a(5, 5, stride=(2, 2), G=3), (16, 16, 16)),
    ("dot-vertB", 1, 16, 32, 5, 7, 2, 3, vertical(1, False), None),
    ("elem-tiles", 1, 5, 6, 5, 7, 3, 3, mask_a(3, 3, G=3), (4, 2, 16)),
]


@pytest.mark.parametrize("B,Cin,Cout,H,W,kh,kw,g,block", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_matches_masked_conv2d_oracle(B, Cin, Cout, H, W, kh, kw, g, block):
    Ho, Wo = out_size(H, W, kh, kw, g)
    x, w, b = randn(B, Cin, H, W, seed=1), randn(Cout, Cin, kh, kw, seed=2), randn(Cout, seed=3)
    gy = randn(B, Cout, Ho, Wo, seed=4)
    want = oracle(x, w, b, g, Ho, Wo)
    y = K.fwd(x, w, b, torch.empty(B, Cout, Ho, Wo), g, block=block)
    torch.testing.assert_close(y, want, **TOL32)
    torch.testing.assert_close(y, ref_fwd(x, w, b, g, Ho, Wo), **TOL32)

    dx_want, dw_want = oracle_grads(x, w, gy, g, Ho, Wo)
    dx = K.bwd_input(gy, w, torch.empty(B, Cin, H, W), g, block=block)
    torch.testing.assert_close(dx, dx_want, **TOL32)
    torch.testing.assert_close(dx, ref_bwd_input(gy, w, H, W, g), **TOL32)
    dw = K.bwd_weight(gy, x, torch.full_like(w, float("nan")), g, block=block)
    torch.testing.assert_close(dw, dw_want, **TOL32)
    torch.testing.assert_close(dw, ref_bwd_weight(gy, x, kh, kw, g), **TOL32)
    assert torch.equal(dw[mask_of(w, g) == 0], torch.zeros(int((mask_of(w, g) == 0).sum())))


@pytest.mark.parametrize("name", ["B5-G3", "vertA"])
def test_masked_taps_are_never_read(name):
    # NaN in every unread weight tap: a kernel that multiplied them by 0 would output NaN.
    g = mask_b(5, 5, G=3) if name == "B5-G3" else vertical(1, True)
    kh, kw = (5, 5) if name == "B5-G3" else (2, 3)
    x, w = randn(1, 6, 7, 7, seed=5), randn(6, 6, kh, kw, seed=6)
    m = mask_of(w, g)
    w_nan = torch.where(m == 1, w, torch.full_like(w, float("nan")))
    Ho, Wo = out_size(7, 7, kh, kw, g)
    y = K.fwd(x, w_nan, None, torch.empty(1, 6, Ho, Wo), g)
    torch.testing.assert_close(y, oracle(x, w, None, g, Ho, Wo), **TOL32)
    gy = randn(1, 6, Ho, Wo, seed=7)
    dx = K.bwd_input(gy, w_nan, torch.empty(1, 6, 7, 7), g)
    torch.testing.assert_close(dx, oracle_grads(x, w, gy, g, Ho, Wo)[0], **TOL32)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_accumulate_adds_into_the_output(bias):
    g = mask_b(3, 3, G=3)
    x, w = randn(2, 6, 5, 7, seed=8), randn(9, 6, 3, 3, seed=9)
    b = randn(9, seed=10) if bias else None
    y0 = randn(2, 9, 5, 7, seed=11)
    y = K.fwd(x, w, b, y0.clone(), g, True)
    torch.testing.assert_close(y, y0 + oracle(x, w, b, g, 5, 7), **TOL32)
    y = K.fwd(x, w, b, y0.clone(), g, False)
    torch.testing.assert_close(y, oracle(x, w, b, g, 5, 7), **TOL32)


def test_output_size_is_the_callers():
    # Ho, Wo smaller than the symmetric-padding size: outputs past the image are simply absent.
    g = mask_a(3, 3, stride=(2, 1))
    x, w = randn(2, 4, 9, 8, seed=12), randn(5, 4, 3, 3, seed=13)
    y = K.fwd(x, w, None, torch.empty(2, 5, 3, 6), g)
    torch.testing.assert_close(y, oracle(x, w, None, g, 3, 6), **TOL32)
    gy = randn(2, 5, 3, 6, seed=14)
    dx_want, dw_want = oracle_grads(x, w, gy, g, 3, 6)
    torch.testing.assert_close(K.bwd_input(gy, w, torch.empty(2, 4, 9, 8), g), dx_want, **TOL32)
    torch.testing.assert_close(K.bwd_weight(gy, x, torch.empty_like(w), g), dw_want, **TOL32)


@pytest.mark.parametrize("dot", [True, False], ids=["dot", "elem"])
def test_weight_gradient_splits_are_deterministic(dot):
    # Partials of 16, 32 and 48 flattened pixels (ragged last splits, crossing images) sum to
    # the same dw; one split size gives the same bits on every run.
    C = 16 if dot else 6
    g = mask_b(3, 3, G=3)
    x, w = randn(2, C, 5, 7, seed=15), randn(C, C, 3, 3, seed=16)
    gy = randn(2, C, 5, 7, seed=17)
    want = oracle_grads(x, w, gy, g, 5, 7)[1]
    block = (16, 16, 16) if dot else (8, 4, 16)
    first = K.bwd_weight(gy, x, torch.empty_like(w), g, block=block, p_split=32)
    for p_split in (16, 32, 48):
        got = K.bwd_weight(gy, x, torch.empty_like(w), g, block=block, p_split=p_split)
        torch.testing.assert_close(got, want, **TOL32)
    assert torch.equal(K.bwd_weight(gy, x, torch.empty_like(w), g, block=block, p_split=32),
                       first)


def test_empty_batch():
    g = mask_b(3, 3)
    w = randn(4, 3, 3, 3)
    dw = K.bwd_weight(torch.empty(0, 4, 5, 5), torch.empty(0, 3, 5, 5), torch.ones_like(w), g)
    assert torch.equal(dw, torch.zeros_like(w))
    assert K.fwd(torch.empty(0, 3, 5, 5), w, None, torch.empty(0, 4, 5, 5), g).shape[0] == 0


def test_float16_within_twice_the_reference_rounding():
    g = mask_b(3, 3, G=3)
    x, w, b = [t.half() for t in (randn(2, 16, 5, 7, seed=18), randn(16, 16, 3, 3, seed=19,
                                                                    scale=0.3),
                                  randn(16, seed=20))]
    ref32 = oracle(x.float(), w.float(), b.float(), g, 5, 7)
    ref_err = (ref_fwd(x, w, b, g, 5, 7).float() - ref32).abs().max()
    y = K.fwd(x, w, b, torch.empty(2, 16, 5, 7, dtype=torch.float16), g)
    assert y.dtype == torch.float16
    # flash-attention rule: at most 2x the error of the reference stored in this dtype
    assert (y.float() - ref32).abs().max() <= 2 * ref_err + 1e-6


def test_launchers_reject_bad_arguments():
    g = mask_b(3, 3)
    x, w = randn(1, 3, 5, 5), randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="w must be"):
        K.fwd(x, randn(4, 2, 3, 3), None, torch.empty(1, 4, 5, 5), g)
    with pytest.raises(ValueError, match="y must be"):
        K.fwd(x, w, None, torch.empty(1, 5, 5, 5), g)
    with pytest.raises(ValueError, match="region"):
        K.fwd(x, w, None, torch.empty(1, 4, 5, 5), g._replace(rows=4))
    with pytest.raises(ValueError, match="x must be contiguous"):
        K.fwd(x.transpose(2, 3), w, None, torch.empty(1, 4, 5, 5), g)
    with pytest.raises(ValueError, match="dx must be"):
        K.bwd_input(torch.empty(1, 4, 5, 5), w, torch.empty(1, 3, 5, 5, dtype=torch.float16), g)
    with pytest.raises(ValueError, match="p_split"):
        K.bwd_weight(torch.empty(1, 4, 5, 5), x, torch.empty_like(w), g, block=(4, 4, 16),
                     p_split=24)


@pytest.mark.parametrize("mask_type,stride,G", [("A", 1, 3), ("B", (2, 1), 1)])
def test_public_op_derivatives_match_the_reference(mask_type, stride, G):
    # The autograd wiring on the triton backend: first and second derivatives (create_graph)
    # equal the reference backend's, bias included.
    x, w, b = randn(2, 6, 5, 7, seed=21), randn(6, 6, 3, 3, seed=22), randn(6, seed=23)

    def derivs(backend):
        xt, wt, bt = (t.clone().requires_grad_() for t in (x, w, b))
        y = genfast.masked_conv2d(xt, wt, bt, mask_type=mask_type, stride=stride,
                                  color_groups=G, backend=backend)
        gy = randn(*y.shape, seed=24)
        dx, dw, db = torch.autograd.grad(y, (xt, wt, bt), gy, create_graph=True)
        second = torch.autograd.grad((dx * dx).sum() + (dw * dw).sum() + (db * db).sum(),
                                     (xt, wt, bt), allow_unused=True)
        return (y, dx, dw, db), second

    (got1, got2), (want1, want2) = derivs("triton"), derivs("reference")
    for got, want in zip(got1 + got2, want1 + want2, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

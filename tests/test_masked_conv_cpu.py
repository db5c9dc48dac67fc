"""The C++ CPU kernels of the region convolution (csrc/cpu/masked_conv.cpp), beyond the
all-backend grid of test_masked_conv.py: the same bits for any thread count, every SIMD copy,
shapes big enough for several tiles and runs, the gated stacks' regions, strides, colour groups,
accumulation into an output, and masked taps that are never read.

The oracle is conv2d(x, w * region_mask) on explicitly padded inputs (the contract's formula);
the reference backend (torch's convs on the cropped kernels) serves the larger shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, max_err, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends
from genfast.ops.masked_conv import Region, region_conv2d, region_conv2d_into, region_mask

C, _why = backends.extension("_C")
pytestmark = [
    pytest.mark.skipif(C is None or not hasattr(C, "masked_conv2d_fwd"),
                       reason=f"genfast._C lacks the masked_conv kernels: {_why}"),
    pytest.mark.usefixtures("single_thread"),
]
ISAS = ["avx512", "avx2", "sse2", "scalar"]
# float32 sums of a few hundred products: a little looser than the table's few ulps.
F32 = dict(rtol=1e-4, atol=1e-4)


def _tol(dtype):
    return TOL[torch.float64] if dtype == torch.float64 else F32


def _oracle(x, w, b, g: Region, Ho, Wo):
    """The contract's formula: conv2d of the masked weight on x zero-padded (or cropped) so
    that output (i, j) reads x[i*sh - pt + r, j*sw - pl + s]."""
    Cout, Cin, kh, kw = w.shape
    m = region_mask(Cout, Cin, kh, kw, g.rows, g.cols, g.center, g.groups, x.dtype)
    H, W = x.shape[-2:]
    hn, wn = (Ho - 1) * g.sh + kh, (Wo - 1) * g.sw + kw
    xp = F.pad(x, (g.pl, max(wn - W - g.pl, 0), g.pt, max(hn - H - g.pt, 0)))[..., :hn, :wn]
    return F.conv2d(xp, w * m, b, stride=(g.sh, g.sw)), m


def _inputs(B, Cin, Cout, H, W, kh, kw, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, Cin, H, W, generator=gen, dtype=dtype)
    w = torch.randn(Cout, Cin, kh, kw, generator=gen, dtype=dtype) / (Cin * kh * kw) ** 0.5
    b = torch.randn(Cout, generator=gen, dtype=dtype)
    return x, w, b


def _check_all(x, w, b, g: Region, Ho, Wo, msg=""):
    """fwd, dx, dw (and db) of backend "cpu" against the oracle; dw exactly 0 off the region."""
    xo, wo = x.clone().requires_grad_(), w.clone().requires_grad_()
    want, m = _oracle(xo, wo, b, g, Ho, Wo)
    gy = torch.randn_like(want)
    wx, ww = torch.autograd.grad(want, (xo, wo), gy)
    xc, wc = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = region_conv2d(xc, wc, b, g, Ho, Wo, "cpu")
    gx, gw = torch.autograd.grad(got, (xc, wc), gy)
    tol = _tol(x.dtype)
    torch.testing.assert_close(got, want, **tol, msg=lambda s: f"{msg} forward\n{s}")
    torch.testing.assert_close(gx, wx, **tol, msg=lambda s: f"{msg} dx\n{s}")
    torch.testing.assert_close(gw, ww, **tol, msg=lambda s: f"{msg} dw\n{s}")
    assert torch.equal(gw[m == 0], torch.zeros_like(gw[m == 0])), f"{msg}: dw off the region"


@pytest.fixture(params=ISAS)
def isa(request):
    if request.param not in C.supported_isas():
        pytest.skip(f"this CPU cannot run {request.param} (runs {C.supported_isas()})")
    before = C.isa()
    C.set_isa(request.param)
    yield request.param
    C.set_isa(before)


# ------------------------------------------------------------------ thread-count determinism
def test_same_bits_for_any_thread_count():
    x, w, b = _inputs(3, 16, 24, 21, 26, 5, 5, torch.float32, seed=1)
    g = Region(1, 1, 2, 2, 2, 2, 2, 1)
    gy = torch.randn(3, 24, 21, 26, generator=torch.Generator().manual_seed(2))
    runs = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        y = region_conv2d(x, w, b, g, 21, 26, "cpu")
        dx = genfast.ops.masked_conv.conv_bwd_input(gy, w, 21, 26, list(g), "cpu")
        dw = genfast.ops.masked_conv.conv_bwd_weight(gy, x, 5, 5, list(g), "cpu")
        runs.append((y, dx, dw))
    for n, run in zip((2, 3), runs[1:], strict=True):
        for name, a, ref in zip(("fwd", "bwd_input", "bwd_weight"), run, runs[0], strict=True):
            assert torch.equal(a, ref), f"{name}: {n} threads differ from 1"


# ------------------------------------------------------------------ every SIMD copy
# Widths and heights leave tails after every vector width and tile; 3 colour groups make the
# anchor tap's channel range differ between output blocks; 70 and 130 output channels take
# bwd_weight's widest tiles (and a partial last one).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    (2, 9, 12, 7, 33, 5, 5, Region(1, 1, 2, 2, 2, 2, 1, 3)),
    (1, 6, 5, 11, 17, 3, 3, Region(1, 1, 1, 1, 1, 1, 2, 3)),
    (2, 4, 6, 9, 10, 3, 5, Region(2, 1, 1, 2, 1, 2, 2, 1)),
    (2, 5, 70, 6, 9, 3, 3, Region(1, 1, 1, 1, 1, 1, 2, 3)),
    (1, 9, 130, 5, 7, 5, 5, Region(1, 1, 2, 2, 2, 2, 1, 3)),
])
def test_every_isa_copy(isa, dtype, case):
    B, Cin, Cout, H, W, kh, kw, g = case
    Ho, Wo = (H + 2 * g.pt - kh) // g.sh + 1, (W + 2 * g.pl - kw) // g.sw + 1
    x, w, b = _inputs(B, Cin, Cout, H, W, kh, kw, dtype, seed=3)
    _check_all(x, w, b, g, Ho, Wo, msg=f"{isa} {dtype}")


# ------------------------------------------------------------------ bigger shapes
@pytest.mark.parametrize("mask,Cin,Cout,k,G", [("B", 32, 32, 7, 1), ("A", 24, 48, 5, 3),
                                                ("B", 64, 16, 3, 3)])
def test_big_shapes_match_the_reference(mask, Cin, Cout, k, G):
    # float32 sums of thousands of products: the CPU kernels' error against a float64 run is at
    # most twice the float32 reference's own (plus a few ulps), as DESIGN.md's low-precision rule.
    torch.set_num_threads(2)  # several runs per image and output blocks on both threads
    x, w, b = _inputs(4, Cin, Cout, 28, 28, k, k, torch.float32, seed=4)
    out = {}
    for be, dt in (("reference", torch.float64), ("reference", torch.float32),
                   ("cpu", torch.float32)):
        xb, wb, bb = (t.to(dt).requires_grad_() for t in (x, w, b))
        y = genfast.masked_conv2d(xb, wb, bb, mask_type=mask, color_groups=G, backend=be)
        out[be, dt] = (y, *torch.autograd.grad(y.square().sum(), (xb, wb, bb)))
    exact, ref32 = out["reference", torch.float64], out["reference", torch.float32]
    for i, name in enumerate(("y", "dx", "dw", "db")):
        err = max_err(out["cpu", torch.float32][i], exact[i])
        bound = 2 * max_err(ref32[i], exact[i]) + 1e-5 * exact[i].abs().max().item()
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


# ------------------------------------------------------------------ the gated stacks' regions
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1, 2, 3])
def test_gated_stack_regions(dtype, c):
    C_, H, W, n = 5, 9, 12, 2 * c + 1
    cases = [
        ("vertical B", (c + 1, n), Region(1, 1, c, c, c + 1, 0, 0, 1)),
        ("vertical A", (c + 1, n), Region(1, 1, c, c, c, 0, 0, 1)),
        ("horizontal B", (1, c + 1), Region(1, 1, 0, c, 0, c + 1, 0, 1)),
        ("horizontal A", (1, c + 1), Region(1, 1, 0, c, 0, c, 0, 1)),
        ("1x1", (1, 1), Region(1, 1, 0, 0, 1, 0, 0, 1)),
    ]
    for name, (kh, kw), g in cases:
        x, w, b = _inputs(2, C_, 2 * C_, H, W, kh, kw, dtype, seed=c)
        _check_all(x, w, b, g, H, W, msg=f"{name} c={c}")


# ------------------------------------------------------------------ strides, groups, padding
@pytest.mark.parametrize("mask", ["A", "B"])
@pytest.mark.parametrize("stride,padding", [(2, "same"), ((2, 1), 1), ((1, 3), (2, 0)),
                                            (3, (3, 4))])
@pytest.mark.parametrize("G", [1, 3])
def test_strides_padding_and_colour_groups(mask, stride, padding, G):
    x, w, b = _inputs(2, 6, 9, 13, 11, 5, 3, torch.float64, seed=5)
    g, Ho, Wo = genfast.ops.masked_conv.check_masked(x, w, b, mask, stride, padding, G)
    _check_all(x, w, b, g, Ho, Wo, msg=f"mask {mask} stride {stride} padding {padding} G {G}")


@pytest.mark.parametrize("Ho,Wo", [(3, 4), (12, 15)])
def test_output_size_other_than_same(Ho, Wo):
    # The kernels take any output size: past the input they read zeros, short of it they crop.
    x, w, b = _inputs(2, 5, 7, 8, 9, 5, 5, torch.float64, seed=6)
    _check_all(x, w, b, Region(1, 1, 2, 2, 2, 2, 2, 1), Ho, Wo)


def test_nothing_read_gives_the_bias():
    x, w, b = _inputs(2, 3, 4, 5, 6, 3, 3, torch.float32, seed=7)
    g = Region(1, 1, 1, 1, 0, 0, 1, 1)  # mask A of a 1-row region with G = 1: no tap at all
    _check_all(x, w, b, g, 5, 6)
    y = region_conv2d(x, w, b, g, 5, 6, "cpu")
    assert torch.equal(y, b[:, None, None].expand_as(y))


# ------------------------------------------------------------------ accumulate, unread taps
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_into_adds_in_place(dtype):
    x, w, b = _inputs(2, 6, 10, 9, 14, 3, 5, dtype, seed=8)
    g = Region(1, 1, 1, 2, 1, 2, 2, 1)
    acc0 = torch.randn(2, 10, 9, 14, dtype=dtype)
    want = acc0 + _oracle(x, w, b, g, 9, 14)[0]
    acc = acc0.clone()
    ptr = acc.data_ptr()
    got = region_conv2d_into(acc, x, w, b, g, 9, 14, "cpu")
    assert got.data_ptr() == ptr
    torch.testing.assert_close(got, want, **_tol(dtype))
    no_bias = region_conv2d_into(acc0.clone(), x, w, None, g, 9, 14, "cpu")
    torch.testing.assert_close(no_bias, got - b[:, None, None], **_tol(dtype))


def test_masked_taps_are_never_read():
    x, w, b = _inputs(2, 6, 6, 8, 9, 5, 5, torch.float32, seed=9)
    g = Region(1, 1, 2, 2, 2, 2, 1, 3)
    m = region_mask(6, 6, 5, 5, g.rows, g.cols, g.center, g.groups)
    poisoned = w.masked_fill(m == 0, float("nan"))
    gy = torch.randn(2, 6, 8, 9)
    assert torch.equal(region_conv2d(x, poisoned, b, g, 8, 9, "cpu"),
                       region_conv2d(x, w, b, g, 8, 9, "cpu"))
    dx = genfast.ops.masked_conv.conv_bwd_input
    assert torch.equal(dx(gy, poisoned, 8, 9, list(g), "cpu"), dx(gy, w, 8, 9, list(g), "cpu"))

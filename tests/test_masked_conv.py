"""masked_conv op family: every backend against conv2d(x, W * mask) (the oracle every public
PixelCNN uses) and against the reference, exact causality of the receptive field, zero weight
gradients on masked taps, autograd to any order, torch.library / compile / export integration,
bad input. Beside it: test_masked_conv_cpu.py (C++ specifics), test_masked_conv_triton.py (the
launchers), test_pixelcnn_layer.py (the gated layer), test_pixelcnn_generate*.py (generation),
test_masked_conv_nn.py (the modules)."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, fast_backends, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast.ops import masked_conv as M

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("masked_conv")
ALL = ["reference", *FAST]


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _case(B, Cin, Cout, H, W, kh, kw, dtype=torch.float64, seed=0):
    x = _randn(B, Cin, H, W, dtype=dtype, seed=seed)
    w = _randn(Cout, Cin, kh, kw, dtype=dtype, seed=seed + 1) / (Cin * kh * kw) ** .5
    b = _randn(Cout, dtype=dtype, seed=seed + 2)
    return x, w, b


def oracle(x, w, b, mask_type="B", stride=1, padding="same", color_groups=1):
    """The plain-PyTorch way: multiply the kernel by its mask, then F.conv2d."""
    Cout, Cin, kh, kw = w.shape
    mask = M.region_mask(Cout, Cin, kh, kw, kh // 2, kw // 2, 1 if mask_type == "A" else 2,
                         color_groups, w.dtype)
    pad = (kh // 2, kw // 2) if padding == "same" else padding
    return F.conv2d(x, w * mask, b, stride=stride, padding=pad)


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in M.SPEC.dtypes[backend]]


def _grid(backend):
    """Odd H/W, kernel sizes 1/3/5/7 (and rectangular), both masks, colour groups, strides,
    explicit paddings; the interpreter gets a thinner slice."""
    ks = [(1, 1), (3, 3), (5, 5), (7, 7), (3, 5)]
    cases = []
    for i, (kh, kw) in enumerate(ks):
        for mask in "AB":
            for G in (1, 3):
                for stride in (1, 2, (1, 2)):
                    pad = "same" if i % 2 == 0 else (kh // 2 + (i % 3 == 1), kw // 2)
                    cases.append((kh, kw, mask, G, stride, pad))
    return cases[::5] if backend == "triton" else cases


@pytest.mark.parametrize("backend", ALL)
def test_forward_matches_masked_weight_conv2d(backend):
    for dtype in _dtypes(backend):
        for i, (kh, kw, mask, G, stride, pad) in enumerate(_grid(backend)):
            H, W = (7, 9) if i % 2 else (13, 5)
            x, w, b = _case(1 + i % 3, 6, 9, H, W, kh, kw, dtype, seed=i)
            bias = b if i % 2 else None
            got = genfast.masked_conv2d(x, w, bias, mask_type=mask, stride=stride, padding=pad,
                                        color_groups=G, backend=backend)
            want = oracle(x.double(), w.double(), None if bias is None else bias.double(),
                          mask, stride, pad, G)
            torch.testing.assert_close(got, want.to(dtype), **TOL[dtype],
                                       msg=f"k=({kh},{kw}) mask={mask} G={G} s={stride} p={pad}")


@pytest.mark.parametrize("backend", ALL)
def test_backward_matches_masked_weight_conv2d(backend):
    """dx, dw, db equal conv2d(x, W*mask)'s (so dw is 0 on masked taps), float32 and float64."""
    for dtype in _dtypes(backend):
        for i, (kh, kw, mask, G, stride, pad) in enumerate(_grid(backend)[::3]):
            x, w, b = _case(2, 3, 6, 9, 7, kh, kw, dtype, seed=10 + i)
            gy_shape = oracle(x, w, b, mask, stride, pad, G).shape
            gy = _randn(*gy_shape, dtype=dtype, seed=i)
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
            genfast.masked_conv2d(xs, ws, bs, mask_type=mask, stride=stride, padding=pad,
                                  color_groups=G, backend=backend).backward(gy)
            xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
            oracle(xr, wr, br, mask, stride, pad, G).backward(gy.double())
            tol = TOL[dtype] if dtype == torch.float64 else {"rtol": 1e-4, "atol": 2e-5}
            for got, want in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
                torch.testing.assert_close(got, want.to(dtype), **tol)
            mask_t = M.region_mask(6, 3, kh, kw, kh // 2, kw // 2, 1 if mask == "A" else 2, G)
            assert torch.all(ws.grad[mask_t == 0] == 0)


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_inputs(backend):
    x, w, b = _case(2, 4, 5, 9, 11, 5, 5, torch.float32)
    wide = torch.zeros(2, 10, 9, 11)
    wide[:, 3:7] = x
    x_cl = x.contiguous(memory_format=torch.channels_last)
    want = oracle(x, w, b)
    for xv in (wide[:, 3:7], x_cl, x.transpose(2, 3).contiguous().transpose(2, 3)):
        got = genfast.masked_conv2d(xv, w.transpose(2, 3).contiguous().transpose(2, 3), b,
                                    backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_receptive_field_is_exactly_causal(backend):
    """Perturbing pixel (i, j) changes no output at an earlier raster position, and, for mask A,
    not at (i, j) itself; with colour groups, the centre sees only earlier colours."""
    x, w, b = _case(1, 3, 6, 7, 6, 5, 5, _dtypes(backend)[-1])
    for mask in "AB":
        for G in (1, 3):
            y0 = genfast.masked_conv2d(x, w, b, mask_type=mask, color_groups=G, backend=backend)
            for (i, j, c) in ((0, 0, 0), (3, 2, 1), (6, 5, 2), (2, 5, 0)):
                xp = x.clone()
                xp[0, c, i, j] += 1.0
                d = (genfast.masked_conv2d(xp, w, b, mask_type=mask, color_groups=G,
                                           backend=backend) - y0).abs()[0]
                d = d.reshape(6, -1)
                p = i * 6 + j
                assert torch.all(d[:, :p] == 0), (mask, G, i, j)
                # at (i, j): output group o sees input group g(c) iff g(c) < o (A) / <= o (B)
                gin = c * G // 3
                for co in range(6):
                    gout = co * G // 6
                    sees = gin < gout if mask == "A" else gin <= gout
                    if not sees:
                        assert d[co, p] == 0, (mask, G, co, c)
                assert torch.any(d[:, p + 1:] != 0) or p == d.shape[1] - 1


@pytest.mark.parametrize("backend", ALL)
def test_gradcheck_and_gradgradcheck(backend):
    if torch.float64 not in M.SPEC.dtypes[backend]:
        pytest.skip(f"{backend} has no float64")
    for mask, G, stride in (("A", 1, 1), ("B", 3, 2)):
        x, w, b = _case(2, 3, 3, 5, 4, 3, 3, torch.float64, seed=3)
        x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

        def f(x, w, b, mask=mask, stride=stride, G=G):
            return genfast.masked_conv2d(x, w, b, mask_type=mask, stride=stride,
                                         color_groups=G, backend=backend)

        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("backend", ALL)
def test_gradient_penalty_through_a_masked_critic(backend):
    """WGAN-GP's double backward through masked convolutions equals the oracle's."""
    x, w, b = _case(4, 2, 4, 6, 6, 3, 3, torch.float32, seed=5)
    w2 = _randn(1, 4, 3, 3, seed=9) / 6
    w.requires_grad_()

    def critic(v, conv):
        return conv(torch.tanh(conv(v, w, "A")), w2, "B").mean((1, 2, 3))

    def ours(v, ww, mask):
        return genfast.masked_conv2d(v, ww, mask_type=mask, backend=backend)

    def plain(v, ww, mask):
        return oracle(v, ww, None, mask)

    gen = torch.Generator().manual_seed(1)
    gp = genfast.gradient_penalty(lambda v: critic(v, ours), x, x.flip(0), generator=gen)
    (dw,) = torch.autograd.grad(gp.penalty, w)
    gen = torch.Generator().manual_seed(1)
    gp_ref = genfast.gradient_penalty(lambda v: critic(v, plain), x, x.flip(0),
                                      backend="reference", generator=gen)
    (dw_ref,) = torch.autograd.grad(gp_ref.penalty, w)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend):
    x, w, b = _case(2, 3, 6, 5, 7, 3, 3, torch.float32)
    geom = [1, 1, 1, 1, 1, 1, 1, 3]
    g = _randn(2, 6, 5, 7, seed=4)
    torch.library.opcheck(M.masked_conv2d_fwd, (x, w, b, geom, 5, 7, backend))
    torch.library.opcheck(M.masked_conv2d_fwd, (x.requires_grad_(), w, None, geom, 5, 7,
                                                backend))
    torch.library.opcheck(M.masked_conv2d_bwd_input, (g, w, 5, 7, geom, backend))
    torch.library.opcheck(M.masked_conv2d_bwd_weight, (g, x.detach(), 3, 3, geom, backend))


def test_compile_fullgraph_and_export():
    x, w, b = _case(2, 3, 6, 7, 5, 5, 5, torch.float32)
    w.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b):
        return genfast.masked_conv2d(x, w, b, mask_type="A", color_groups=3).square().sum()

    got = f(x, w, b)
    (gw,) = torch.autograd.grad(got, w)
    want = oracle(x, w, b, "A", color_groups=3).square().sum()
    (gw_ref,) = torch.autograd.grad(want, w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gw, gw_ref)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w.detach().clone())
            self.register_buffer("b", b.clone())  # torch 2.7's export refuses closed-over tensors

        def forward(self, x):
            return genfast.masked_conv2d(x, self.w, self.b, stride=2)

    m = Net()
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), oracle(x, m.w, b, stride=2))


def test_bad_input_errors():
    x, w, b = _case(2, 3, 6, 7, 5, 3, 3, torch.float32)
    with pytest.raises(ValueError, match="x must be 4-D"):
        genfast.masked_conv2d(x[0], w)
    with pytest.raises(ValueError, match="C_in=3"):
        genfast.masked_conv2d(x, w[:, :2])
    with pytest.raises(ValueError, match="must be odd"):
        genfast.masked_conv2d(x, w[..., :2])
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        genfast.masked_conv2d(x, w, mask_type="C")
    with pytest.raises(ValueError, match="color_groups=4 needs"):
        genfast.masked_conv2d(x, w, color_groups=4)
    with pytest.raises(ValueError, match="stride must be an int"):
        genfast.masked_conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding must be 'same'"):
        genfast.masked_conv2d(x, w, padding="valid")
    with pytest.raises(ValueError, match="output would be empty"):
        genfast.masked_conv2d(x, _randn(6, 3, 9, 9), padding=0)
    with pytest.raises(ValueError, match="bias must have shape"):
        genfast.masked_conv2d(x, w, b[:3])
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        genfast.masked_conv2d(x, w.double())
    with pytest.raises(TypeError, match="x must be"):
        genfast.masked_conv2d(x.long(), w)


def test_mask_a_1x1_reads_nothing_and_b_is_a_1x1_conv():
    x, w, b = _case(2, 4, 5, 3, 3, 1, 1, torch.float64)
    torch.testing.assert_close(genfast.masked_conv2d(x, w, b, mask_type="A"),
                               b[:, None, None].expand(2, 5, 3, 3))
    torch.testing.assert_close(genfast.masked_conv2d(x, w, b), F.conv2d(x, w, b))


def test_empty_batch():
    x, w, b = _case(0, 3, 4, 5, 5, 3, 3, torch.float32)
    w.requires_grad_()
    y = genfast.masked_conv2d(x, w, b)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_auto_routes_big_cpu_convs_to_torch():
    """Past CPU_MAX_REDUCTION (C_in * kh * kw) oneDNN on the cropped pieces wins: `auto` takes
    the reference there; a backend named explicitly is kept."""
    from genfast.ops import _masked_conv_checks as K

    region = M.Region(1, 1, 1, 1, 1, 1, 2, 1)
    big_cin = K.CPU_MAX_REDUCTION // 9 + 1
    assert M.route("auto:cpu", torch.empty(8, 4, 3, 3), region) == "auto:cpu"
    assert M.route("auto:cpu", torch.empty(8, big_cin, 3, 3), region) == "auto:reference"
    assert M.route("cpu", torch.empty(8, big_cin, 3, 3), region) == "cpu"

"""The fused gated PixelCNN layer (genfast.gated_pixelcnn_layer, op stem masked_conv_layer):
every backend against the oracle (the design's equations on F.conv2d with padded inputs),
forward and backward, for mask A / B, residual on / off, cond on / off, biases None; causality
(and unread taps never read: they hold NaN); the gate kernels alone; the create_graph path
against the kernel backward; gradcheck / gradgradcheck; opcheck; compile; bad input."""

import pytest
import torch
from _helpers import TOL, fast_backends, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends
from genfast.ops import masked_conv_layer as L
from genfast.ops._masked_conv_layer_ref import gated_pixelcnn_layer_reference as oracle

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("masked_conv_layer")
ALL = ["reference", *FAST]
NAMES = ("v", "h", "wv", "bv", "wh", "bh", "wl", "bl", "wr", "br", "cond")
LOW_TOL = {torch.float32: dict(rtol=1e-4, atol=2e-5), torch.float64: TOL[torch.float64]}


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layer(B=2, C=3, H=5, W=6, c=1, dtype=torch.float64, seed=0, bias=True, cond=True,
           nan_taps=None):
    """The layer's tensors; nan_taps ("A" / "B") fills the taps that mask never reads with NaN."""
    k = 2 * c + 1
    t = dict(v=_randn(B, C, H, W, dtype=dtype, seed=seed),
             h=_randn(B, C, H, W, dtype=dtype, seed=seed + 1),
             wv=_randn(2 * C, C, c + 1, k, dtype=dtype, seed=seed + 2) / (C * k) ** .5,
             bv=_randn(2 * C, dtype=dtype, seed=seed + 3) if bias else None,
             wh=_randn(2 * C, C, 1, c + 1, dtype=dtype, seed=seed + 4) / (C * c + C) ** .5,
             bh=_randn(2 * C, dtype=dtype, seed=seed + 5) if bias else None,
             wl=_randn(2 * C, 2 * C, 1, 1, dtype=dtype, seed=seed + 6) / (2 * C) ** .5,
             bl=_randn(2 * C, dtype=dtype, seed=seed + 7) if bias else None,
             wr=_randn(C, C, 1, 1, dtype=dtype, seed=seed + 8) / C ** .5,
             br=_randn(C, dtype=dtype, seed=seed + 9) if bias else None,
             cond=_randn(B, 2 * C, dtype=dtype, seed=seed + 10) if cond else None)
    if nan_taps is not None:
        t["wv"][:, :, c + 1 if nan_taps == "B" else c:] = float("nan")
        t["wh"][:, :, :, c + 1 if nan_taps == "B" else c:] = float("nan")
    return t


def call(t, backend, **kw):
    return genfast.gated_pixelcnn_layer(*(t[k] for k in NAMES), backend=backend, **kw)


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in L.SPEC.dtypes[backend]]


CASES = [dict(mask_type="A"), dict(mask_type="B"), dict(mask_type="B", residual=False),
         dict(mask_type="A", residual=True, cond=False), dict(mask_type="B", bias=False),
         dict(mask_type="B", c=2, H=4, W=7, cond=False, bias=False), dict(mask_type="A", c=3,
                                                                          H=3, W=2, B=1, C=2)]


def _check_against_oracle(backend, dtype, case, seed):
    case = dict(case)
    kw = {k: case.pop(k) for k in ("mask_type", "residual") if k in case}
    nt = _layer(dtype=dtype, seed=seed, nan_taps=kw["mask_type"], **case)
    t = {k: None if v is None else v.clone().requires_grad_() for k, v in nt.items()}
    got = call(t, backend, **kw)
    ref_t = {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}
    want = oracle(*(ref_t[k] for k in NAMES), **kw)
    tol = LOW_TOL[dtype]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.to(dtype), **tol, msg=f"{case} {kw}")
    seeds = [_randn(*o.shape, dtype=dtype, seed=seed + 20 + i) for i, o in enumerate(got)]
    keys = [k for k in NAMES if t[k] is not None]
    g1 = torch.autograd.grad(got, [t[k] for k in keys], seeds)
    g2 = torch.autograd.grad(want, [ref_t[k] for k in keys], [s.double() for s in seeds])
    for k, a, b in zip(keys, g1, g2, strict=True):
        b = torch.nan_to_num(b, nan=0.0)  # the oracle's where() leaves NaN-free zeros; safety
        torch.testing.assert_close(a, b.to(dtype), **tol, msg=f"d{k} {case} {kw}")


@pytest.mark.parametrize("backend", ALL)
def test_forward_and_backward_match_oracle(backend):
    for dtype in _dtypes(backend):
        for i, case in enumerate(CASES if backend != "triton" else CASES[:3]):
            _check_against_oracle(backend, dtype, case, seed=10 * i)


@pytest.mark.skipif("triton" not in FAST, reason="triton is not installed")
@pytest.mark.parametrize(("dtype", "mask_type"), [(torch.float16, "A"), (torch.bfloat16, "B")])
def test_triton_low_precision(dtype, mask_type):
    """fp16 / bf16 data, fp32 math: outputs and gradients within a few units of the dtype's
    rounding of the float64 oracle (relative to each tensor's largest value)."""
    bound = 4 * torch.finfo(dtype).eps
    t = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in _layer(seed=3).items()}
    got = call(t, "triton", mask_type=mask_type)
    r = {k: None if v is None else v.detach().double().requires_grad_() for k, v in t.items()}
    want = oracle(*(r[k] for k in NAMES), mask_type=mask_type)
    seeds = [_randn(*o.shape, seed=5 + i).to(dtype) for i, o in enumerate(got)]
    keys = [k for k in NAMES if t[k] is not None]
    g1 = torch.autograd.grad(got, [t[k] for k in keys], seeds)
    g2 = torch.autograd.grad(want, [r[k] for k in keys], [x.double() for x in seeds])
    for name, a, b in zip(["v_out", "h_out", *keys], [*got, *g1], [*want, *g2], strict=True):
        assert a.dtype == dtype
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err < bound, (name, err)


def _perturb(t, keys, i, j):
    u = {k: (v.clone() if v is not None else None) for k, v in t.items()}
    for k in keys:
        u[k][:, :, i, j] += 1.0
    return u


def _raster_before(H, W, i, j, inclusive):
    p = torch.arange(H * W).reshape(H, W)
    return p <= i * W + j if inclusive else p < i * W + j


def _stack(t, backend, masks):
    """Layers sharing the weights, fed v = h = x (the network's first layer is mask A)."""
    v, h = t["v"], t["v"]
    for m in masks:
        v, h = call({**t, "v": v, "h": h}, backend, mask_type=m)
    return v, h


@pytest.mark.parametrize("backend", ALL[:2])
@pytest.mark.parametrize("masks", ["A", "ABB"])
def test_causality_from_the_image(backend, masks):
    """Fed the image, v' at row i sees rows < i only, h' at (i, j) pixels before (i, j) only
    (not (i, j) itself); the unread taps hold NaN, so any read of one would show."""
    H, W = 6, 7
    t = _layer(H=H, W=W, c=2, nan_taps=masks[-1])
    base = _stack(t, backend, masks)
    assert all(torch.isfinite(o).all() for o in base)
    for i, j in ((2, 3), (0, 0), (5, 6), (3, 0)):
        vo, ho = _stack(_perturb(t, ["v"], i, j), backend, masks)
        rows = torch.arange(H)[:, None].expand(H, W) <= i
        before = _raster_before(H, W, i, j, inclusive=True)
        assert torch.equal(vo[..., rows], base[0][..., rows])
        assert torch.equal(ho[..., before], base[1][..., before])
        if (i, j) != (H - 1, W - 1):  # the test can fail: later pixels do change
            assert not torch.equal(ho[..., ~before], base[1][..., ~before])


@pytest.mark.parametrize("backend", ALL[:2])
def test_causality_mask_b_layer(backend):
    """A mask B layer alone: h at (i, j) reaches h' at (i, j) and later only, never v'; v at
    row i reaches rows >= i of both outputs only."""
    H, W = 5, 6
    t = _layer(H=H, W=W, c=1, nan_taps="B")
    base = call(t, backend, mask_type="B")
    i, j = 2, 3
    vo, ho = call(_perturb(t, ["h"], i, j), backend, mask_type="B")
    assert torch.equal(vo, base[0])
    before = _raster_before(H, W, i, j, inclusive=False)
    assert torch.equal(ho[..., before], base[1][..., before])
    assert not torch.equal(ho[..., i, j], base[1][..., i, j])
    vo, ho = call(_perturb(t, ["v"], i, j), backend, mask_type="B")
    assert torch.equal(vo[..., :i, :], base[0][..., :i, :])
    assert torch.equal(ho[..., :i, :], base[1][..., :i, :])
    assert not torch.equal(vo[..., i, :], base[0][..., i, :])


@pytest.mark.parametrize("backend", ALL)
def test_unread_taps_get_zero_gradient(backend):
    dtype = _dtypes(backend)[-1]
    for m in "AB":
        t = _layer(dtype=dtype, c=2, H=4, W=5)
        ins = {k: t[k].clone().requires_grad_() for k in ("wv", "wh")}
        out = call({**t, **ins}, backend, mask_type=m)
        gv, gh = torch.autograd.grad(sum(o.square().sum() for o in out), [ins["wv"], ins["wh"]])
        r = 3 if m == "B" else 2
        assert torch.count_nonzero(gv[:, :, r:]) == 0 and torch.count_nonzero(gh[:, :, :, r:]) == 0
        assert torch.count_nonzero(gv[:, :, :r]) > 0 and torch.count_nonzero(gh[:, :, :, :r]) > 0


@pytest.mark.parametrize("backend", ALL[:2])
def test_gradient_of_one_output(backend):
    """A loss on one output only: the other's gradient arrives as None (zeros)."""
    t = _layer(c=2, H=4, W=5)
    ins = {k: v.clone().requires_grad_() for k, v in t.items()}
    ref = {k: v.clone().requires_grad_() for k, v in t.items()}
    for i in (0, 1):
        got = call(ins, backend, mask_type="B")[i].square().sum()
        want = oracle(*(ref[k] for k in NAMES), mask_type="B")[i].square().sum()
        g1 = torch.autograd.grad(got, list(ins.values()))
        g2 = torch.autograd.grad(want, list(ref.values()), materialize_grads=True)
        for k, a, b in zip(ins, g1, g2, strict=True):
            torch.testing.assert_close(a, b, **LOW_TOL[torch.float64], msg=f"{i} d{k}")


@pytest.mark.parametrize("backend", FAST)
def test_gate_kernels_match_reference(backend):
    """The gate alone (fwd, bwd written and accumulated, with and without cond) against the
    reference gate, on odd sizes and saturating inputs."""
    for dtype in L.SPEC.dtypes[backend]:
        tol = TOL[dtype] if dtype in (torch.float16, torch.bfloat16) else LOW_TOL[dtype]
        for (B, C, H, W), cond in (((2, 3, 5, 7), True), ((1, 1, 1, 1), False),
                                   ((3, 2, 4, 11), True)):
            u = (_randn(B, 2 * C, H, W, seed=1) * 4).to(dtype)
            u[0, 0, 0, 0], u[-1, -1, -1, -1] = 60.0, -60.0
            cd = _randn(B, 2 * C, seed=2).to(dtype) if cond else None
            d = _randn(B, C, H, W, seed=3).to(dtype)
            got = backends.call("masked_conv_layer", backend, 0, u, cd)
            want = backends.call("masked_conv_layer", "reference", 0, u, cd)
            torch.testing.assert_close(got, want, **tol)
            du = [_randn(B, 2 * C, H, W, seed=4).to(dtype) for _ in range(2)]
            dc = [_randn(B, 2 * C, seed=5).to(dtype) for _ in range(2)]
            for acc in (False, True):
                for be, a, b in ((backend, du[0], dc[0]), ("reference", du[1], dc[1])):
                    backends.call("masked_conv_layer", be, 1, u, cd, d, a, b, acc)
                torch.testing.assert_close(du[0], du[1], **tol)
                torch.testing.assert_close(dc[0], dc[1], **tol)


@pytest.mark.skipif("cpu" not in FAST, reason="the CPU extension is not built")
def test_cpu_gate_does_not_depend_on_threads():
    u, cd, d = _randn(4, 64, 24, 24, seed=1).float(), _randn(4, 64, seed=2).float(), \
        _randn(4, 32, 24, 24, seed=3).float()
    res = []
    for n in (1, 2):
        torch.set_num_threads(n)
        du, dc = torch.empty_like(u), cd.new_empty(cd.shape)
        backends.call("masked_conv_layer", "cpu", 1, u, cd, d, du, dc, False)
        res.append((backends.call("masked_conv_layer", "cpu", 0, u, cd), du, dc))
    torch.set_num_threads(1)
    for a, b in zip(*res, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", [b for b in ALL if torch.float64 in L.SPEC.dtypes[b]])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_gradcheck_gradgradcheck(backend, mask_type):
    t = _layer(B=1, C=2, H=3, W=3)
    keys = [k for k in NAMES if t[k] is not None]

    def f(*vals):
        return call({**t, **dict(zip(keys, vals, strict=True))}, backend, mask_type=mask_type)

    args = [t[k].clone().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("backend", ALL)
def test_create_graph_path_equals_kernel_backward(backend):
    """Under create_graph the backward is differentiable ops; without it the gate and conv
    kernels. Both give the same first-order gradients."""
    dtype = _dtypes(backend)[-1]
    for m in "AB" if backend != "triton" else "B":  # the interpreter is slow
        t = _layer(dtype=dtype, c=2, H=4, W=5)
        ins = {k: v.clone().requires_grad_() for k, v in t.items()}
        out = call(ins, backend, mask_type=m)
        seeds = [_randn(*o.shape, dtype=dtype, seed=i) for i, o in enumerate(out)]
        kernel = torch.autograd.grad(out, list(ins.values()), seeds, retain_graph=True)
        graph = torch.autograd.grad(out, list(ins.values()), seeds, create_graph=True)
        for k, a, b in zip(ins, kernel, graph, strict=True):
            torch.testing.assert_close(a, b.detach(), **LOW_TOL[dtype], msg=k)


@pytest.mark.parametrize("backend", ALL[:2])
def test_opcheck(backend):
    t = _layer(dtype=torch.float32, H=4, W=3)
    conv = "reference" if backend == "reference" else backend
    for m, res in ((True, False), (False, True)):
        args = (*(t[k] for k in NAMES), m, res, backend, conv)
        torch.library.opcheck(L.gated_pixelcnn_layer_op, args)
        _, _, V, Hp = L.gated_pixelcnn_layer_op(*args)
        g = [_randn(*t["v"].shape, dtype=torch.float32, seed=i) for i in (1, 2)]
        for need in ([True] * 9, [False, True, True, False, True, False, True, False, True]):
            torch.library.opcheck(L.gated_pixelcnn_layer_bwd_op, (
                *(t[k] for k in ("v", "h", "wv", "wh", "wl", "wr", "cond")), V, Hp, *g, m, res,
                backend, conv, need))


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_inputs(backend):
    """Channels-last, sliced and transposed-storage inputs give the contiguous call's result."""
    t = _layer(B=2, C=4, H=5, W=7, c=1, dtype=torch.float32, seed=3)
    want = call(t, backend, mask_type="B")
    wide = torch.zeros(2, 9, 5, 7)
    wide[:, 2:6] = t["h"]
    odd = dict(t, v=t["v"].contiguous(memory_format=torch.channels_last), h=wide[:, 2:6],
               wv=t["wv"].transpose(2, 3).contiguous().transpose(2, 3),
               wl=t["wl"].contiguous(memory_format=torch.channels_last),
               cond=t["cond"].t().contiguous().t())
    for got, ref in zip(call(odd, backend, mask_type="B"), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph():
    t = _layer(dtype=torch.float32, H=4, W=5)
    ins = {k: v.clone().requires_grad_() for k, v in t.items()}

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(ins):
        vo, ho = call(ins, None, mask_type="B")
        return vo.square().sum() + ho.sum()

    got = f(ins)
    vo, ho = oracle(*(ins[k] for k in NAMES), mask_type="B")
    want = vo.square().sum() + ho.sum()
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, list(ins.values()))
    g2 = torch.autograd.grad(want, list(ins.values()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_input_errors():
    t = _layer(dtype=torch.float32)

    def bad(exc, match, **change):
        args = {**t, **change}
        kw = {k: args.pop(k) for k in ("mask_type", "residual", "backend") if k in args}
        with pytest.raises(exc, match=match):
            genfast.gated_pixelcnn_layer(*(args[k] for k in NAMES), **kw)

    bad(ValueError, "v must be 4-D", v=t["v"][0])
    bad(ValueError, "h must have v's shape", h=t["h"][:, :, :4])
    bad(TypeError, "h must have v's dtype", h=t["h"].double())
    bad(ValueError, r"v_weight must have shape \(6, 3, 2, 3\)", wv=t["wv"][..., :2])
    bad(ValueError, "v_weight must be 4-D", wv=t["wv"][0])
    bad(ValueError, r"h_weight must have shape \(6, 3, 1, 2\)", wh=t["wh"][:, :2])
    bad(ValueError, "link_weight must have shape", wl=t["wl"][:4])
    bad(ValueError, "res_weight must have shape", wr=t["wr"][..., :0])
    bad(ValueError, r"link_bias must have shape \(6,\)", bl=t["bl"][:5])
    bad(TypeError, "res_bias must have v's dtype", br=t["br"].double())
    bad(ValueError, r"cond must have shape \(2, 6\)", cond=t["cond"][:, :3])
    bad(ValueError, "mask_type must be 'A' or 'B'", mask_type="C")
    bad(TypeError, "residual must be a bool", residual=1)
    bad(TypeError, "v must be a torch.Tensor", v=[1.0])
    bad(TypeError, "v must be", v=t["v"].long())
    with pytest.raises(ValueError, match="backend"):
        call(t, "nope")

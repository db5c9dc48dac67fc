"""causal_conv op family: every backend against the reference (and the reference against
F.conv1d on the left-padded input), causality, state chaining, the decode step in ring and shift
modes, autograd to any order, torch.library / compile / export integration, bad input.
Beside it: test_wavenet_layer.py (the fused layer), test_causal_conv_triton.py (the launchers),
test_wavenet_generate.py (whole-network generation), test_causal_conv_nn.py (the modules)."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, fast_backends, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast.ops import causal_conv as C

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("causal_conv")
ALL = ["reference", *FAST]
ACTS = [None, "silu", "relu", "tanh"]


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _case(B, C_in, C_out, T, K, groups, dtype=torch.float64, seed=0):
    x = _randn(B, C_in, T, dtype=dtype, seed=seed)
    w = _randn(C_out, C_in // groups, K, dtype=dtype, seed=seed + 1) / (C_in // groups * K) ** .5
    b = _randn(C_out, dtype=dtype, seed=seed + 2)
    return x, w, b


def torch_causal(x, w, b, dilation, groups, act=None, h=None):
    """The plain-PyTorch way: left-pad by (K-1)*dilation, then F.conv1d."""
    P = (w.shape[-1] - 1) * dilation
    xt = torch.cat([h, x], -1) if h is not None else F.pad(x, (P, 0))
    return C.ref_activation(F.conv1d(xt, w, b, dilation=dilation, groups=groups),
                            C.ACTIVATIONS[act])


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in C.SPEC.dtypes[backend]]


def _grid(backend):
    """The issue's grid (odd T, K in {1,2,3,5}, dilations {1,2,7,64}, groups {1, 4, C});
    Triton runs under the interpreter here, so it gets a thinner slice of it."""
    Ts, Ks, ds = ((1, 7, 33, 129), (1, 2, 3, 5), (1, 2, 7, 64))
    if backend == "triton":
        Ts, Ks, ds = (7, 33), (1, 2, 5), (1, 7)
    for T in Ts:
        for K in Ks:
            for d in ds:
                for groups in (1, 4, 8):
                    yield T, K, d, groups


@pytest.mark.parametrize("backend", ALL)
def test_forward_matches_padded_conv1d(backend):
    for dtype in _dtypes(backend):
        for i, (T, K, d, groups) in enumerate(_grid(backend)):
            B = 1 + i % 3
            x, w, b = _case(B, 8, 16 if groups != 8 else 8, T, K, groups, dtype, seed=i)
            act = ACTS[i % 4]
            got = genfast.causal_conv1d(x, w, b if i % 2 else None, dilation=d, groups=groups,
                                        activation=act, backend=backend)
            want = torch_causal(x.double(), w.double(), b.double() if i % 2 else None, d,
                                groups, act)
            torch.testing.assert_close(got, want.to(dtype), **TOL[dtype],
                                       msg=f"T={T} K={K} d={d} groups={groups} act={act}")


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_inputs(backend):
    x, w, b = _case(2, 12, 6, 33, 3, 1, torch.float32)
    wide = torch.zeros(2, 20, 33)
    wide[:, 5:17] = x
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # time stride != 1
    want = torch_causal(x, w, b, 2, 1)
    for xv in (wide[:, 5:17], x_t):
        got = genfast.causal_conv1d(xv, w.transpose(0, 1).contiguous().transpose(0, 1), b,
                                    dilation=2, backend=backend)
        torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ALL)
def test_causality_is_exact(backend):
    """Perturbing x[t0:] leaves y[:t0] bit-identical."""
    x, w, b = _case(2, 8, 8, 65, 3, 1, torch.float32)
    y = genfast.causal_conv1d(x, w, b, dilation=7, backend=backend)
    x2 = x.clone()
    x2[..., 40:] += 100 * torch.randn(2, 8, 25)
    y2 = genfast.causal_conv1d(x2, w, b, dilation=7, backend=backend)
    assert torch.equal(y[..., :40], y2[..., :40])
    assert not torch.equal(y[..., 40:], y2[..., 40:])


@pytest.mark.parametrize("backend", ALL)
def test_initial_and_final_state_chain(backend):
    dtype = torch.float64 if torch.float64 in C.SPEC.dtypes[backend] else torch.float32
    x, w, b = _case(3, 4, 6, 50, 3, 2, dtype)
    full = genfast.causal_conv1d(x, w, b, dilation=5, groups=2, backend=backend)
    y1, s1 = genfast.causal_conv1d(x[..., :3], w, b, dilation=5, groups=2, backend=backend,
                                   return_final_state=True)  # T=3 < P=10: state keeps zeros
    assert s1.shape == (3, 4, 10)
    y2, s2 = genfast.causal_conv1d(x[..., 3:], w, b, dilation=5, groups=2, initial_state=s1,
                                   backend=backend, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full, **TOL[dtype])
    assert torch.equal(s2, x[..., -10:])


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("ring", [True, False])
def test_update_equals_full_forward(backend, ring):
    """Steps of 1, 3 and P+5 new inputs, 200 steps in all: outputs equal the full forward, and
    a ring continues from causal_conv1d's final_state."""
    dtype = torch.float64 if torch.float64 in C.SPEC.dtypes[backend] else torch.float32
    K, d, groups = 3, 4, 2
    P = (K - 1) * d
    x, w, b = _case(2, 6, 4, 200, K, groups, dtype)
    full = genfast.causal_conv1d(x, w, b, dilation=d, groups=groups, activation="silu",
                                 backend=backend)
    t0 = 17
    _, st = genfast.causal_conv1d(x[..., :t0], w, b, dilation=d, groups=groups,
                                  return_final_state=True, backend=backend)
    if ring:  # final_state holds positions t0-P .. t0-1; a ring of S slots keeps p at p % S
        S = P + 3
        state = torch.zeros(2, 6, S, dtype=dtype)
        for i in range(P):
            state[..., (t0 - P + i) % S] = st[..., i]
        seq = torch.full((2,), t0, dtype=torch.int64)
    else:
        state = st.clone()
        seq = None
    outs, t, sizes = [], t0, [1, 3, P + 5]
    while t < 200:
        L = min(sizes[len(outs) % 3], 200 - t)
        outs.append(genfast.causal_conv1d_update(x[..., t:t + L], state, w, b, dilation=d,
                                                 groups=groups, activation="silu",
                                                 cache_seqlens=seq, backend=backend))
        if seq is not None:
            seq += L
        t += L
    torch.testing.assert_close(torch.cat(outs, -1), full[..., t0:], **TOL[dtype])


def test_update_one_step_shape_and_final_state_ring():
    x, w, b = _case(2, 4, 4, 10, 2, 4, torch.float64)
    _, st = genfast.causal_conv1d(x[..., :9], w, b, dilation=3, groups=4,
                                  return_final_state=True)
    y = genfast.causal_conv1d_update(x[..., 9], st, w, b, dilation=3, groups=4,
                                     cache_seqlens=torch.zeros(2, dtype=torch.int32))
    assert y.shape == (2, 4)
    full = genfast.causal_conv1d(x, w, b, dilation=3, groups=4)
    torch.testing.assert_close(y, full[..., 9])


@pytest.mark.parametrize("backend", ALL)
def test_backward_matches_torch(backend):
    for dtype in _dtypes(backend):
        for act in ACTS:
            x, w, b = _case(2, 8, 8, 21, 3, 2, dtype)
            h = _randn(2, 8, 4, dtype=dtype, seed=9)
            ins = [t.clone().requires_grad_() for t in (x, w, b, h)]
            refs = [t.double().requires_grad_() for t in (x, w, b, h)]
            y = genfast.causal_conv1d(ins[0], ins[1], ins[2], dilation=2, groups=2,
                                      activation=act, initial_state=ins[3], backend=backend)
            want = torch_causal(refs[0], refs[1], refs[2], 2, 2, act, refs[3])
            gy = _randn(*y.shape, dtype=dtype, seed=5)
            got_g = torch.autograd.grad(y, ins, gy)
            want_g = torch.autograd.grad(want, refs, gy.double())
            for name, g1, g2 in zip("x w b h".split(), got_g, want_g, strict=True):
                torch.testing.assert_close(g1, g2.to(dtype), **TOL[dtype], msg=f"d{name} {act}")


@pytest.mark.parametrize("backend", [b for b in ALL if torch.float64 in C.SPEC.dtypes[b]])
def test_gradcheck_and_gradgradcheck(backend):
    x, w, b = _case(2, 4, 6, 9, 3, 2)
    h = _randn(2, 4, 4, dtype=torch.float64, seed=4)
    args = [t.clone().requires_grad_() for t in (x, w, b, h)]

    def f(x, w, b, h):
        return genfast.causal_conv1d(x, w, b, dilation=2, groups=2, activation="tanh",
                                     initial_state=h, backend=backend)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    # The backward kernels' own backwards (third order through bwd_input / bwd_weight).
    g = _randn(2, 6, 9, dtype=torch.float64, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda g, w: C.conv_bwd_input(g, w, 2, 2, True, backend), (g, args[1]))
    assert torch.autograd.gradcheck(
        lambda g, x, h: C.conv_bwd_weight(g, x, h, 3, 2, 2, backend), (g, args[0], args[3]))


@pytest.mark.parametrize("backend", ALL)
def test_gradient_penalty_through_causal_conv(backend):
    """WGAN-GP on a causal-conv critic: the penalty's gradient needs the double backward."""
    x, w, b = _case(3, 4, 4, 16, 2, 1, torch.float32)
    w = w.clone().requires_grad_()

    def critic(v):
        return genfast.causal_conv1d(v, w, b, dilation=2, activation="silu",
                                     backend=backend).sum((1, 2))

    gp = genfast.gradient_penalty(critic, x, x.flip(0),
                                  generator=torch.Generator().manual_seed(1))
    (dw,) = torch.autograd.grad(gp.penalty, w)

    def critic_ref(v):
        return F.silu(torch_causal(v, w, b, 2, 1)).sum((1, 2))

    gp_ref = genfast.gradient_penalty(critic_ref, x, x.flip(0), backend="reference",
                                      generator=torch.Generator().manual_seed(1))
    (dw_ref,) = torch.autograd.grad(gp_ref.penalty, w)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend):
    x, w, b = _case(2, 4, 4, 11, 3, 2, torch.float32)
    h = _randn(2, 4, 2, seed=3)
    g = _randn(2, 4, 11, seed=4)
    torch.library.opcheck(C.causal_conv1d_fwd, (x, h, w, b, 1, 2, 1, backend))
    torch.library.opcheck(C.causal_conv1d_fwd, (x.requires_grad_(), None, w, None, 1, 2, 0,
                                                backend))
    torch.library.opcheck(C.causal_conv1d_bwd_input, (g, w, 1, 2, True, backend))
    torch.library.opcheck(C.causal_conv1d_bwd_weight, (g, x.detach(), h, 3, 1, 2, backend))
    state = torch.zeros(2, 4, 5)
    torch.library.opcheck(C.causal_conv1d_update_op,
                          (x.detach()[..., :3], state, w, b, torch.tensor([0, 4]), 1, 2, 0,
                           backend))


def test_compile_fullgraph_and_export():
    x, w, b = _case(2, 4, 8, 17, 2, 1, torch.float32)
    w.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b):
        return genfast.causal_conv1d(x, w, b, dilation=3, activation="relu").square().sum()

    got = f(x, w, b)
    (gw,) = torch.autograd.grad(got, w)
    want = torch_causal(x, w, b, 3, 1, "relu").square().sum()
    (gw_ref,) = torch.autograd.grad(want, w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gw, gw_ref)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w.detach().clone())
            self.register_buffer("b", b.clone())  # torch 2.7's export refuses closed-over tensors

        def forward(self, x):
            return genfast.causal_conv1d(x, self.w, self.b, dilation=2)

    m = M()
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), torch_causal(x, m.w, b, 2, 1))


def test_bad_input_errors():
    x, w, b = _case(2, 4, 6, 9, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="C_in/groups=2"):
        genfast.causal_conv1d(x, w[:, :1].repeat(1, 3, 1), dilation=1, groups=2)
    with pytest.raises(ValueError, match="must divide C_in=4"):
        genfast.causal_conv1d(x, w, groups=3)
    with pytest.raises(ValueError, match="overflows"):
        genfast.causal_conv1d(x, w, groups=2, dilation=2**30)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        genfast.causal_conv1d(x, w, groups=2, initial_state=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="x must be 3-D"):
        genfast.causal_conv1d(x[0], w, groups=2)
    with pytest.raises(ValueError, match="bias must have shape"):
        genfast.causal_conv1d(x, w, b[:3], groups=2)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        genfast.causal_conv1d(x, w.double(), groups=2)
    with pytest.raises(ValueError, match="activation must be one of"):
        genfast.causal_conv1d(x, w, groups=2, activation="gelu")
    with pytest.raises(ValueError, match="dilation must be an int"):
        genfast.causal_conv1d(x, w, groups=2, dilation=0)
    with pytest.raises(ValueError, match="state must have shape"):
        genfast.causal_conv1d_update(x[..., :1], torch.zeros(2, 4, 1), w, groups=2)
    with pytest.raises(TypeError, match="cache_seqlens"):
        genfast.causal_conv1d_update(x[..., :1], torch.zeros(2, 4, 2), w, groups=2,
                                     cache_seqlens=torch.zeros(2))
    with pytest.raises(RuntimeError, match="not differentiable"):
        genfast.causal_conv1d_update(x[..., :1], torch.zeros(2, 4, 2), w.requires_grad_(),
                                     groups=2)


def test_empty_and_k1():
    x, w, b = _case(2, 4, 6, 0, 3, 1, torch.float32)
    y, s = genfast.causal_conv1d(x, w, b, dilation=2, return_final_state=True)
    assert y.shape == (2, 6, 0) and torch.equal(s, torch.zeros(2, 4, 4))
    x, w, b = _case(2, 4, 6, 5, 1, 1, torch.float64)
    torch.testing.assert_close(genfast.causal_conv1d(x, w, b), F.conv1d(x, w, b))


def test_auto_routes_big_cpu_convs_to_torch():
    """Past CPU_MAX_REDUCTION (C_in/groups * K) or CPU_MAX_OUT channels oneDNN wins: `auto`
    takes the reference there; a backend named explicitly is kept."""
    small, wide = torch.empty(64, 32, 2), torch.empty(64, 512, 3)
    assert C.route("auto:cpu", small) == "auto:cpu"
    assert C.route("auto:cpu", wide) == "auto:reference"
    assert C.route("auto:cpu", torch.empty(2048, 1, 4)) == "auto:reference"
    assert C.route("cpu", wide) == "cpu"
    x, w, b = _case(1, 520, 4, 9, 2, 1, torch.float32)
    torch.testing.assert_close(genfast.causal_conv1d(x, w, b), torch_causal(x, w, b, 1, 1),
                               rtol=1e-4, atol=1e-5)

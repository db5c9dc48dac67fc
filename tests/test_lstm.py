"""lstm op family: every backend against the reference and against torch.nn.LSTM with the same
weights (projection, reverse, lengths, initial states), the kernels' first-order backward, the
GEMM path's loop, autograd to any order (WGAN-GP through an LSTM critic), torch.library /
compile / export integration, bad input. Beside it: test_lstm_cpu.py (C++ specifics),
test_lstm_triton.py (the launchers), test_lstm_nn.py / test_lstm_upstream.py (the modules),
test_lstm_generate*.py (the sampling loop)."""

import pytest
import torch
from _helpers import fast_backends, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast.ops import _lstm_backends as LB
from genfast.ops import lstm as L
from genfast.ops._lstm_ref import lstm_layer_reference, ref_bwd, ref_fwd

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("lstm")
ALL = ["reference", *FAST]


def _randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _case(T, B, n_in, H, P=0, *, dtype=torch.float64, seed=0, state=True):
    """Inputs of one layer: x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 (weights ~ torch's init)."""
    Pe = P or H
    s = H ** -0.5
    x = _randn(T, B, n_in, dtype=dtype, seed=seed)
    w_ih = _randn(4 * H, n_in, dtype=dtype, seed=seed + 1, scale=s)
    w_hh = _randn(4 * H, Pe, dtype=dtype, seed=seed + 2, scale=s)
    b_ih = _randn(4 * H, dtype=dtype, seed=seed + 3, scale=s)
    b_hh = _randn(4 * H, dtype=dtype, seed=seed + 4, scale=s)
    w_hr = _randn(P, H, dtype=dtype, seed=seed + 5, scale=s) if P else None
    h0 = _randn(B, Pe, dtype=dtype, seed=seed + 6) if state else None
    c0 = _randn(B, H, dtype=dtype, seed=seed + 7) if state else None
    return [x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0]


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in L.SPEC.dtypes[backend]]


# (T, B, I, H, P, reverse, lengths, initial state); the interpreter gets a thinner slice
GRID = [
    (1, 1, 1, 1, 0, False, None, False),
    (4, 3, 5, 6, 0, False, None, True),
    (7, 2, 3, 5, 0, True, None, True),
    (5, 3, 4, 6, 3, False, [5, 2, 0], True),
    (6, 4, 2, 7, 0, True, [6, 1, 3, 6], False),
    (9, 3, 17, 33, 0, False, [9, 9, 4], True),
    (3, 5, 8, 9, 4, True, [3, 1, 2, 0, 3], True),
]


def _grid(backend):
    return GRID[:5] if backend == "triton" else GRID


def _run(backend, args, lengths, reverse):
    lt = None if lengths is None else torch.tensor(lengths)
    return genfast.lstm_layer(*args, lengths=lt, reverse=reverse, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_forward_and_backward_match_the_reference(backend):
    for dtype in _dtypes(backend):
        for i, (T, B, n_in, H, P, rev, lens, state) in enumerate(_grid(backend)):
            args64 = _case(T, B, n_in, H, P, seed=i, state=state)
            args = [None if a is None else a.to(dtype).requires_grad_() for a in args64]
            out = _run(backend, args, lens, rev)
            lt = None if lens is None else torch.tensor(lens)
            ref_args = [None if a is None else a.requires_grad_() for a in args64]
            want = lstm_layer_reference(*ref_args, lt, rev)
            tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(
                rtol=2e-5, atol=2e-5)
            for got, exp in zip(out, want, strict=True):
                torch.testing.assert_close(got.double(), exp, **tol)
            grads = [_randn(*o.shape, seed=50 + k) for k, o in enumerate(want)]
            leaves = [a for a in args if a is not None]
            got_g = torch.autograd.grad(out, leaves, [g.to(dtype) for g in grads])
            want_g = torch.autograd.grad(want, [a for a in ref_args if a is not None], grads)
            for got, exp in zip(got_g, want_g, strict=True):
                torch.testing.assert_close(got.double(), exp, **tol)


@pytest.mark.parametrize("backend", ALL)
def test_equals_torch_lstm_bidirectional_projection_packed(backend):
    """genfast.lstm with the weights of a torch nn.LSTM: 2 layers, bidirectional, proj_size,
    a packed batch (lengths), h0 / c0 given; outputs and every gradient."""
    torch.manual_seed(0)
    dtype = _dtypes(backend)[-1]
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).to(dtype)
    T, B = 6, 3
    x = _randn(T, B, 3, dtype=dtype, seed=1).requires_grad_()
    h0 = _randn(4, B, 2, dtype=dtype, seed=2).requires_grad_()
    c0 = _randn(4, B, 5, dtype=dtype, seed=3).requires_grad_()
    lens = torch.tensor([6, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False)
    yp, (hn, cn) = ref(packed, (h0, c0))
    yp, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, total_length=T)
    yg, (hg, cg) = genfast.lstm(x, (h0, c0), ref._flat_weights, num_layers=2,
                                bidirectional=True, proj_size=2, lengths=lens, backend=backend)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=3e-5, atol=3e-5)
    for got, want in ((yg, yp), (hg, hn), (cg, cn)):
        torch.testing.assert_close(got, want, **tol)
    leaves = [x, h0, c0, *ref._flat_weights]
    g = _randn(*yp.shape, dtype=dtype, seed=4)
    want = torch.autograd.grad((yp * g).sum() + hn.sum() + 2 * cn.sum(), leaves)
    got = torch.autograd.grad((yg * g).sum() + hg.sum() + 2 * cg.sum(), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def _torch_cell_fwd(G, c_state, gates_t, c_t, ht, lengths, t):
    """The GEMM path's cell contract in torch ops (what kernels/lstm.py and the CUDA cell
    implement), to test the loop itself on the CPU."""
    H = c_state.shape[1]
    i, f, g, o = G.to(c_state.dtype).split(H, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_state + i * g
    h = o * c.tanh()
    act = torch.ones(G.shape[0], 1, dtype=torch.bool) if lengths is None else (
        t < lengths)[:, None]
    if gates_t is not None:
        gates_t.copy_(torch.where(act, torch.cat((i, f, g, o), 1).to(gates_t.dtype), gates_t))
        c_t.copy_(torch.where(act, c.to(c_t.dtype), c_t))
    c_state.copy_(torch.where(act, c.to(c_state.dtype), c_state))
    ht.copy_(torch.where(act, h, 0).to(ht.dtype))


def _torch_cell_bwd(dht, dc_state, gates_t, c_t, c_prev, dG, lengths, t):
    H = dc_state.shape[1]
    i, f, g, o = gates_t.split(H, 1)
    tc = c_t.tanh()
    d = dht.to(gates_t.dtype)
    dc = dc_state + d * o * (1 - tc * tc)
    cp = torch.zeros_like(dc) if c_prev is None else c_prev
    grad = torch.cat((dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g * g),
                      d * tc * o * (1 - o)), 1)
    act = torch.ones(dG.shape[0], 1, dtype=torch.bool) if lengths is None else (
        t < lengths)[:, None]
    dG.copy_(torch.where(act, grad, 0).to(dG.dtype))
    dc_state.copy_(torch.where(act, dc * f, dc_state))


@pytest.mark.parametrize("case", GRID)
def test_gemm_path_loop_equals_the_reference_kernels(case):
    """genfast/ops/_lstm_backends.gemm_fwd / gemm_bwd (the Triton and large-batch CUDA path)
    with the cell contract in torch ops equal the reference kernels bit for bit's worth."""
    T, B, n_in, H, P, rev, lens, state = case
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = _case(T, B, n_in, H, P, state=state)
    gx = (x @ w_ih.t() + b_ih + b_hh).contiguous()
    lt = None if lens is None else torch.tensor(lens)
    want = ref_fwd(gx, w_hh, w_hr, h0, c0, lt, rev, True)
    got = LB.gemm_fwd(_torch_cell_fwd, gx, w_hh, w_hr, h0, c0, lt, rev, True)
    act = None if lt is None else L.active_masks(lt, T)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if k in (1, 2) and act is not None:  # gates / c_all are undefined at inactive steps
            a, b = torch.where(act, a, 0), torch.where(act, b, 0)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dy = _randn(*want[0].shape, seed=9)
    dhT, dcT = _randn(B, P or H, seed=10), _randn(B, H, seed=11)
    gates, c_all = want[1], want[2]
    exp = ref_bwd(w_hh, w_hr, c0, lt, gates, c_all, dy, dhT, dcT, P > 0, rev, x.dtype)
    out = LB.gemm_bwd(_torch_cell_bwd, w_hh, w_hr, c0, lt, gates, c_all, dy, dhT, dcT, P > 0,
                      rev, x.dtype)
    for a, b in zip(out, exp, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL)
def test_gradcheck_and_gradgradcheck(backend):
    dtype = torch.float64 if torch.float64 in L.SPEC.dtypes[backend] else None
    if dtype is None:
        pytest.skip(f"{backend} has no float64 (its double backward runs the reference graph)")
    x, w_ih, w_hh, b_ih, _, w_hr, h0, c0 = _case(3, 2, 3, 3, 2, seed=5)
    leaves = [t.requires_grad_() for t in (x, w_ih, w_hh, b_ih, w_hr, h0, c0)]

    def f(x, w_ih, w_hh, b_ih, w_hr, h0, c0):
        return genfast.lstm_layer(x, w_ih, w_hh, b_ih, None, w_hr, h0, c0, reverse=True,
                                  lengths=torch.tensor([3, 2]), backend=backend)

    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


@pytest.mark.parametrize("backend", ALL)
def test_wgan_gp_through_an_lstm_critic(backend):
    """The penalty (||d critic / d x|| - 1)^2 of an LSTM critic, then its gradient on the
    critic's weights: the double backward cuDNN's LSTM refuses; equal to the reference's."""
    dtype = _dtypes(backend)[-1]
    T, B, n_in, H = 5, 3, 4, 6
    x, w_ih, w_hh, b_ih, b_hh, _, _, _ = _case(T, B, n_in, H, dtype=dtype, seed=7)
    head = _randn(H, dtype=dtype, seed=8)
    weights = [w.requires_grad_() for w in (w_ih, w_hh, b_ih, b_hh)]

    def penalty(layer):
        xi = x.clone().requires_grad_()
        y, hT, _ = layer(xi, *weights)
        score = (hT @ head).sum() + y.square().mean()
        (g,) = torch.autograd.grad(score, xi, create_graph=True)
        gp = (g.flatten(1).norm(dim=1) - 1).square().mean()
        return gp, torch.autograd.grad(gp, weights)

    gp, grads = penalty(lambda *a: genfast.lstm_layer(*a, backend=backend))
    gp_ref, grads_ref = penalty(lambda *a: lstm_layer_reference(*a))
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gp, gp_ref, **tol)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend):
    dtype = _dtypes(backend)[-1]
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = _case(3, 2, 3, 4, 2, dtype=dtype)
    lt = torch.tensor([3, 1])
    args = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lt, True, False, backend)
    torch.library.opcheck(L.lstm_layer_op, args)
    saved = L.lstm_layer_op(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lt, True, True, backend)
    y, _, _, gates, c_all = saved
    bwd_args = (x, w_ih, w_hh, w_hr, h0, c0, lt, y, gates, c_all, torch.ones_like(y), None,
                torch.ones_like(c0), True, backend, [True] * 7)
    torch.library.opcheck(L.lstm_layer_bwd_op, bwd_args)


def test_compile_fullgraph_and_export():
    """torch.compile(fullgraph=True) of a 2-layer bidirectional LSTM step with its backward
    (which Dynamo cannot do for nn.LSTM), and torch.export of a module calling genfast.lstm."""
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    weights = list(lstm._flat_weights)

    def run(x):
        y, (h, c) = genfast.lstm(x, None, weights, num_layers=2, bidirectional=True)
        return y.square().sum() + h.sum() + c.sum()

    x = _randn(5, 2, 3, dtype=torch.float32).requires_grad_()
    eager = run(x)
    (g_eager,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-5)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.ParameterList([torch.nn.Parameter(w.detach().clone())
                                             for w in weights])

        def forward(self, x):
            return genfast.lstm(x, None, list(self.w), num_layers=2, bidirectional=True)[0]

    m = M()
    ep = torch.export.export(m, (x.detach(),))
    torch.testing.assert_close(ep.module()(x.detach()), m(x.detach()))


def test_inference_saves_nothing_and_matches_training():
    args = _case(4, 2, 3, 5)
    with torch.no_grad():
        out = L.lstm_layer_op(*args, None, False, False, "reference")
    assert out[3].numel() == 0 and out[4].numel() == 0
    train = genfast.lstm_layer(*[a if a is None else a.requires_grad_() for a in args],
                               backend="reference")
    for a, b in zip(out[:3], train, strict=True):
        torch.testing.assert_close(a, b.detach())


def test_cpu_autocast_runs_in_bfloat16_like_torch():
    """torch's LSTM is on the CPU autocast list: under it genfast returns bfloat16 too (on the
    reference backend; the C++ kernels take float32 / float64) close to torch's."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 6)
    x = torch.randn(5, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = ref(x)
        got, _ = genfast.lstm(x, None, ref._flat_weights, num_layers=1)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.03)


def test_empty_time_and_batch():
    x, w_ih, w_hh, b_ih, b_hh, _, h0, c0 = _case(0, 2, 3, 4)
    y, h, c = genfast.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, None, h0, c0)
    assert y.shape == (0, 2, 4)
    torch.testing.assert_close(h, h0)
    torch.testing.assert_close(c, c0)
    x, w_ih, w_hh, *_ = _case(3, 0, 3, 4, state=False)
    w_ih.requires_grad_()
    y, h, c = genfast.lstm_layer(x, w_ih, w_hh)
    assert y.shape == (3, 0, 4) and h.shape == (0, 4)
    (g,) = torch.autograd.grad(y.sum() + h.sum(), w_ih)
    assert not g.any()


def test_bad_input_names_the_argument():
    x, w_ih, w_hh, b_ih, b_hh, _, h0, c0 = _case(3, 2, 3, 4)
    with pytest.raises(ValueError, match="x must be 3-D"):
        genfast.lstm_layer(x[0], w_ih, w_hh)
    with pytest.raises(ValueError, match="w_ih must have shape"):
        genfast.lstm_layer(x, w_ih[:, :2], w_hh)
    with pytest.raises(ValueError, match="w_hh must be 2-D"):
        genfast.lstm_layer(x, w_ih, w_hh[:7])
    with pytest.raises(ValueError, match="without w_hr"):
        genfast.lstm_layer(x, w_ih, w_hh[:, :3])
    with pytest.raises(ValueError, match="h0 must have shape"):
        genfast.lstm_layer(x, w_ih, w_hh, h0=h0[:1])
    with pytest.raises(ValueError, match="b_ih must be on x's device and of x's dtype"):
        genfast.lstm_layer(x, w_ih, w_hh, b_ih.float())
    with pytest.raises(ValueError, match="lengths must be in"):
        genfast.lstm_layer(x, w_ih, w_hh, lengths=torch.tensor([4, 1]))
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        genfast.lstm_layer(x, w_ih, w_hh, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="reverse must be a bool"):
        genfast.lstm_layer(x, w_ih, w_hh, reverse=1)
    with pytest.raises(ValueError, match="weights must hold 4 tensors"):
        genfast.lstm(x, None, [w_ih, w_hh, b_ih], num_layers=1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        genfast.lstm_cell([1.0], None, w_ih, w_hh)

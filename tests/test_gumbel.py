"""gumbel op family (genfast.gumbel_softmax) through the public API: every backend against the
reference, autograd to any order, torch.func, autocast, torch.library / torch.compile, seeds,
hostile and bad input. Beside it: test_gumbel_triton.py (the launchers under the
interpreter), test_gumbel_upstream.py (PyTorch's own gumbel_softmax tests); the Gumbel-max sampler
is tests/test_sample*.py, which also holds the torch.export test of both ops and the seed test."""

import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, fast_backends, layouts

import genfast
from genfast import backends, random
from genfast.ops import gumbel as G

FAST = fast_backends("gumbel")
ALL = ["reference", *FAST]
F64 = [b for b in ALL if torch.float64 in G.SPEC.dtypes[b]]  # gradcheck and torch.func checks
SHAPES = [(1, 1), (3, 7), (5, 33), (2, 129), (3, 1000)]


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in G.SPEC.dtypes[backend]]


def _logits(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


# ------------------------------------------------------------------ reference semantics
def test_reference_is_softmax_of_logits_plus_philox_gumbel():
    x = _logits((4, 9), torch.float64)
    g = random.gumbel(11, 4, 9, dtype=torch.float64)
    y = genfast.gumbel_softmax(x, tau=0.7, seed=11, backend="reference")
    torch.testing.assert_close(y, torch.softmax((x + g) / 0.7, dim=-1), rtol=1e-12, atol=1e-14)


def test_hard_is_exact_one_hot_with_soft_gradient():
    x = _logits((6, 10), torch.float64).requires_grad_()
    w = torch.randn(6, 10, dtype=torch.float64)
    y_hard = genfast.gumbel_softmax(x, tau=0.5, hard=True, seed=5, backend="reference")
    assert ((y_hard == 0) | (y_hard == 1)).all() and (y_hard.sum(-1) == 1).all()
    (gh,) = torch.autograd.grad((y_hard * w).sum(), x)
    y_soft = genfast.gumbel_softmax(x, tau=0.5, seed=5, backend="reference")
    (gs,) = torch.autograd.grad((y_soft * w).sum(), x)
    torch.testing.assert_close(gh, gs)
    assert torch.equal(y_hard.argmax(-1), y_soft.argmax(-1))


# ------------------------------------------------------------------ backends vs reference
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hard", [False, True])
def test_forward_backward_match_reference(backend, shape, hard):
    for dtype in _dtypes(backend):
        x = _logits(shape, dtype, seed=shape[1])
        w = torch.randn(shape, dtype=dtype)
        outs = {}
        for b in ("reference", backend):
            xb = x.clone().requires_grad_()
            y = genfast.gumbel_softmax(xb, tau=0.8, hard=hard, seed=123, backend=b)
            (gx,) = torch.autograd.grad((y * w).sum(), xb)
            outs[b] = (y, gx)
        torch.testing.assert_close(outs[backend][0], outs["reference"][0], **TOL[dtype])
        torch.testing.assert_close(outs[backend][1], outs["reference"][1], **TOL[dtype])


@pytest.mark.parametrize("backend", ALL)
def test_every_memory_layout(backend):
    x = _logits((5, 19))
    for name, view in layouts(x):
        # Noise follows the row index, not memory: a view draws what its contiguous copy draws.
        want = genfast.gumbel_softmax(view.contiguous(), tau=1.3, seed=4, backend="reference")
        got = genfast.gumbel_softmax(view, tau=1.3, seed=4, backend=backend)
        torch.testing.assert_close(got, want, **TOL[torch.float32], msg=name)


@pytest.mark.parametrize("backend", ALL)
def test_class_dim_anywhere(backend):
    x = _logits((7, 3, 12)).transpose(0, 2)  # classes along dim 2 of a (12, 3, 7) view
    y = genfast.gumbel_softmax(x, tau=1.3, dim=2, seed=4, backend=backend)
    expect = genfast.gumbel_softmax(x.contiguous(), tau=1.3, dim=2, seed=4, backend="reference")
    torch.testing.assert_close(y, expect, **TOL[torch.float32])
    y0 = genfast.gumbel_softmax(x, 0.7, True, 1e-10, 0, seed=2, backend=backend)
    assert torch.equal(y0.sum(0), torch.ones(3, 7))


# ------------------------------------------------------------------ drop-in signature
def test_positional_order_is_torchs():
    ours = list(inspect.signature(genfast.gumbel_softmax).parameters)
    theirs = list(inspect.signature(F.gumbel_softmax).parameters)
    assert ours[: len(theirs)] == theirs
    keyword_only = [p for p in inspect.signature(genfast.gumbel_softmax).parameters.values()
                    if p.kind is p.KEYWORD_ONLY]
    assert [p.name for p in keyword_only] == ["generator", "seed", "backend"]
    x = _logits((4, 6))
    assert torch.equal(genfast.gumbel_softmax(x, 0.5, True, 1e-10, 0, seed=3),
                       genfast.gumbel_softmax(x, tau=0.5, hard=True, dim=0, seed=3))


def test_zero_dim_logits_are_one_class_as_in_torch():
    x = torch.tensor(0.3, requires_grad=True)
    for hard in (False, True):
        y = genfast.gumbel_softmax(x, hard=hard, seed=1)
        assert y.shape == () and y.item() == F.gumbel_softmax(x, hard=hard).item() == 1.0
        (g,) = torch.autograd.grad(y, x)
        assert g.item() == 0.0
    assert genfast.gumbel_softmax(x, dim=0, seed=1).item() == 1.0


def test_eps_is_ignored_and_warns_as_torch_does():
    x = _logits((3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base = genfast.gumbel_softmax(x, 1.0, False, 1e-10, seed=1)
    with pytest.warns(UserWarning, match="`eps` parameter is deprecated") as ours:
        got = genfast.gumbel_softmax(x, 1.0, False, 0.5, seed=1)
    with pytest.warns(UserWarning) as theirs:
        F.gumbel_softmax(x, 1.0, False, 0.5)
    assert str(ours[0].message) == str(theirs[0].message)
    assert torch.equal(got, base)


# ------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", F64)
@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_and_gradgradcheck(backend, hard):
    x = _logits((3, 6), torch.float64).requires_grad_()

    def fn(t):
        return genfast.gumbel_softmax(t, tau=0.7, hard=hard, seed=3, backend=backend)
    if not hard:
        assert torch.autograd.gradcheck(fn, (x,))
    # The hard forward is piecewise constant, so finite differences cannot check its
    # straight-through gradient (test_hard_is_exact_one_hot_with_soft_gradient does); that
    # gradient is smooth in x, so its own derivative is checked numerically here.
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_triple_backward_is_defined():
    x = _logits((2, 5), torch.float64).requires_grad_()
    y = genfast.gumbel_softmax(x, seed=1, backend="reference")
    (g1,) = torch.autograd.grad((y ** 3).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 ** 2).sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sum(), x)
    assert torch.isfinite(g3).all()


@pytest.mark.parametrize("backend", F64)
def test_opcheck(backend):
    x = _logits((3, 9))
    seed = random.make_seed(x.device, seed=5)
    xg = x.clone().requires_grad_()
    for args in ((x, seed, 1.5, False, backend), (xg, seed, 1.5, False, backend),
                 (xg, seed, 0.5, True, backend)):
        torch.library.opcheck(G.gumbel_softmax_fwd, args)
    dy = torch.randn(3, 9)
    y = G.gumbel_softmax_fwd(x, seed, 1.5, False, backend)
    torch.library.opcheck(G.gumbel_softmax_bwd, (dy, y, seed, 1.5, False, backend))
    torch.library.opcheck(G.gumbel_softmax_bwd, (dy.requires_grad_(), xg, seed, 1.5, True,
                                                 backend))


@pytest.mark.parametrize("backend", F64)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(x):
        return (genfast.gumbel_softmax(x, tau=0.5, hard=True, seed=17, backend=backend) * x).sum()

    x = _logits((4, 11)).requires_grad_()
    step(x).backward()
    xe = x.detach().clone().requires_grad_()
    eager = (genfast.gumbel_softmax(xe, tau=0.5, hard=True, seed=17, backend=backend) * xe).sum()
    eager.backward()
    torch.testing.assert_close(step(x.detach()), eager.detach())
    torch.testing.assert_close(x.grad, xe.grad)


# ------------------------------------------------------------------ torch.func
def _soft(backend, hard=False):
    return lambda t: genfast.gumbel_softmax(t, 0.7, hard, seed=1, backend=backend)


@pytest.mark.parametrize("backend", F64)
def test_torch_func_grad_jacobians_and_hessian(backend):
    x = _logits((3, 5), torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    for hard in (False, True):
        f = _soft(backend, hard)
        xr = x.clone().requires_grad_()
        (want,) = torch.autograd.grad((f(xr) * w).sum(), xr)
        torch.testing.assert_close(torch.func.grad(lambda t, f=f: (f(t) * w).sum())(x), want)
    row = _soft(backend)
    jr = torch.func.jacrev(row)(x[0])
    y = row(x[0])
    torch.testing.assert_close(jr, (torch.diag(y) - torch.outer(y, y)) / 0.7)
    torch.testing.assert_close(torch.func.jacfwd(row)(x[0]), jr)  # forward mode: custom jvp
    loss = lambda t: (row(t) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.hessian(loss)(x[0]),
                               torch.autograd.functional.hessian(loss, x[0]))


@pytest.mark.parametrize("backend", F64)
def test_torch_func_vmap(backend):
    x = _logits((4, 3, 6), torch.float64)
    f = _soft(backend)
    per_slice = torch.stack([f(x[i]) for i in range(4)])
    torch.testing.assert_close(torch.func.vmap(f)(x), per_slice)  # each slice: its own call
    grads = torch.func.vmap(torch.func.grad(lambda t: (f(t) ** 2).sum()))(x)
    for i in range(4):
        xi = x[i].clone().requires_grad_()
        (gi,) = torch.autograd.grad((f(xi) ** 2).sum(), xi)
        torch.testing.assert_close(grads[i], gi)
    # No seed: vmap's randomness flag decides, as for any torch random op.
    def no_seed(t):
        return genfast.gumbel_softmax(t, backend=backend)
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(no_seed)(x)
    twins = x[:1].expand_as(x)  # equal slices: equal outputs exactly when the noise is shared
    ys = torch.func.vmap(no_seed, randomness="different")(twins)
    assert not torch.equal(ys[0], ys[1])
    ys = torch.func.vmap(no_seed, randomness="same")(twins)
    assert torch.equal(ys[0], ys[1])


def test_the_documented_torch_func_limits():
    # The torch.library op alone (what torch.compile / export trace) has no torch.func autograd;
    # the public function carries it, in eager mode, with an autograd.Function.
    x = _logits((2, 4))
    seed = random.make_seed(x.device, seed=1)
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda t: G.gumbel_softmax_fwd(t, seed, 1.0, False, "reference").sum())(x)
    loss = lambda t: (_soft("reference")(t) ** 2).sum()  # noqa: E731
    torch._dynamo.reset()
    torch.testing.assert_close(torch.func.grad(torch.compile(loss, backend="aot_eager"))(x),
                               torch.func.grad(loss)(x))
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.compile(torch.func.grad(loss), backend="aot_eager")(x)


# ------------------------------------------------------------------ autocast, seeds
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("hard", [False, True])
def test_cpu_autocast_gives_torchs_dtype(dtype, hard):
    x = _logits((4, 9), dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = genfast.gumbel_softmax(x, 0.5, hard, seed=2, backend="reference")
        theirs = F.gumbel_softmax(x, 0.5, hard)
    assert ours.dtype == theirs.dtype == dtype
    (g,) = torch.autograd.grad(ours.float().sum(), x)
    assert g.dtype == dtype


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_autocast_gives_torchs_dtype(dtype):
    x = torch.randn(4, 9, device="cuda", dtype=dtype)
    with torch.autocast("cuda", dtype=torch.float16):
        assert genfast.gumbel_softmax(x, seed=2).dtype == F.gumbel_softmax(x).dtype


def test_seeds_generators_and_manual_seed():
    x = _logits((8, 20))
    a = genfast.gumbel_softmax(x, seed=1)
    assert torch.equal(a, genfast.gumbel_softmax(x, seed=1))
    assert not torch.equal(a, genfast.gumbel_softmax(x, seed=2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(genfast.gumbel_softmax(x, generator=g1),
                       genfast.gumbel_softmax(x, generator=g2))
    torch.manual_seed(3)
    y1 = genfast.gumbel_softmax(x)
    torch.manual_seed(3)
    assert torch.equal(y1, genfast.gumbel_softmax(x))
    assert torch.equal(genfast.gumbel_softmax(x, seed=2**64 + 1), genfast.gumbel_softmax(x, seed=1))


# ------------------------------------------------------------------ hostile and bad input
@pytest.mark.parametrize("backend", ALL)
def test_hostile_rows_have_defined_results(backend):
    inf = math.inf
    x = torch.tensor([[-inf, -inf, -inf, -inf],
                      [1.0, inf, -2.0, inf],
                      [3e38, -3e38, 1e38, 0.0],
                      [0.0, -inf, 5.0, -inf]])
    g = random.gumbel(9, 4, 4)
    for tau in (1.0, 1e-3, 1e-45):
        y = genfast.gumbel_softmax(x, tau=tau, seed=9, backend=backend)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.sum(-1), torch.ones(4))
        torch.testing.assert_close(y[0], torch.softmax(g[0] / max(tau, 1e-30), -1))  # uniform
        assert y[1, 0] == 0 and y[1, 2] == 0  # +inf entries take all the mass
        assert y[3, 1] == 0 and y[3, 3] == 0
    nan_rows = torch.full((3, 5), math.nan)
    nan_rows[1, :2] = 1.0  # one NaN is enough to poison a row
    for hard in (False, True):
        assert genfast.gumbel_softmax(nan_rows, hard=hard, seed=1, backend=backend).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extremes(dtype):
    fmax = torch.finfo(dtype).max
    x = torch.tensor([[fmax, -fmax, 0.0, fmax], [-fmax, -fmax, -fmax, -fmax]], dtype=dtype)
    y = genfast.gumbel_softmax(x.requires_grad_(), tau=0.1, seed=3, backend="reference")
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_empty_inputs():
    assert genfast.gumbel_softmax(torch.empty(0, 5), seed=1).shape == (0, 5)
    assert genfast.gumbel_softmax(torch.empty(3, 0), seed=1).shape == (3, 0)


@pytest.mark.parametrize("call,err,match", [
    (lambda x: genfast.gumbel_softmax(x, tau=0), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=-1.0), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=math.nan), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=math.inf), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=torch.tensor(1.0)), TypeError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, hard=1), TypeError, "hard"),
    (lambda x: genfast.gumbel_softmax(x.long()), TypeError, "logits"),
    (lambda x: genfast.gumbel_softmax(x[0, 0], dim=1), IndexError, "dim"),
    (lambda x: genfast.gumbel_softmax([1.0, 2.0]), TypeError, "logits"),
    (lambda x: genfast.gumbel_softmax(x, dim=2), IndexError, "dim"),
    (lambda x: genfast.gumbel_softmax(x, 1.0, False, 1e-10, 1.5), TypeError, "dim"),
    (lambda x: genfast.gumbel_softmax(x, seed=1, generator=torch.Generator()), ValueError, "seed"),
    (lambda x: genfast.gumbel_softmax(x, seed="1"), TypeError, "seed"),
    (lambda x: genfast.gumbel_softmax(x, backend="fast"), ValueError, "backend"),
    (lambda x: genfast.gumbel_softmax(x, backend="cuda"), genfast.BackendError, "cuda"),
])
def test_bad_input_gets_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call(torch.randn(3, 4))


def test_backend_selection_scope_env_and_reasons(monkeypatch):
    x = torch.randn(2, 3)
    assert backends.resolve("gumbel", x, "reference") == "reference"
    with genfast.use_backend("reference"):
        assert backends.resolve("gumbel", x) == "reference"
        assert backends.resolve("gumbel", x, "auto") in ("auto:cpu", "auto:reference")
    monkeypatch.setenv("GENFAST_BACKEND", "reference")
    assert backends.resolve("gumbel", x) == "reference"
    monkeypatch.setenv("GENFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="GENFAST_BACKEND"):
        backends.resolve("gumbel", x)
    monkeypatch.delenv("GENFAST_BACKEND")
    with pytest.raises(genfast.BackendError, match="needs a CUDA tensor"):
        backends.resolve("gumbel", x, "cuda")
    if backends.available("cpu"):
        assert backends.resolve("gumbel", x) == "auto:cpu"
        with pytest.raises(genfast.BackendError, match="dtype float16"):
            backends.resolve("gumbel", x.half(), "cpu")
    report = genfast.info()
    assert "gumbel" in report and "torch" in report and "genfast._C" in report


# ------------------------------------------------------------------ module, schedule, learning
def test_module_schedule_and_a_tiny_model_learns():
    torch.manual_seed(0)
    layer = genfast.nn.GumbelSoftmax(tau=1.0, hard=True, dim=1)
    sched = genfast.nn.TemperatureSchedule(start=1.0, end=0.3, rate=0.01)
    logits = torch.zeros(16, 5, requires_grad=True)
    reward = torch.tensor([0.0, 0.1, 1.0, 0.2, 0.0])
    opt = torch.optim.Adam([logits], lr=0.1)
    for step in range(150):
        sched.apply(layer, step)
        loss = -(layer(logits) * reward).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layer.tau == pytest.approx(max(0.3, math.exp(-0.01 * 149)))
    assert (logits.argmax(-1) == 2).all()
    layer.eval()
    layer.hard_eval = True
    assert torch.equal(layer(logits).argmax(-1), logits.argmax(-1))
    with pytest.raises(ValueError, match="start"):
        genfast.nn.TemperatureSchedule(start=0.0)


def test_soft_outputs_are_a_distribution_close_to_f_gumbel_softmax_in_mean():
    x = torch.tensor([1.0, 0.0, -1.0, 2.0]).expand(20000, -1)
    ours = genfast.gumbel_softmax(x, tau=2.0, seed=1).mean(0)
    torch.manual_seed(1)
    theirs = F.gumbel_softmax(x, tau=2.0).mean(0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0.01)

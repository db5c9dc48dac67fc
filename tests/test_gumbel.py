"""gumbel op family through the public API: every backend against the reference, autograd to
second order, torch.library / torch.compile integration, sampler statistics, hostile input."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import genfast
from genfast import backends, random
from genfast.ops import gumbel as G

FAST = [b for b in ("cpu", "triton") if backends.available(b)]
SHAPES = [(1, 1), (3, 7), (5, 33), (2, 129), (3, 1000)]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


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


def test_matches_torch_straight_through_given_the_same_noise():
    x = _logits((5, 8), torch.float64).requires_grad_()
    g = random.gumbel(2, 5, 8, dtype=torch.float64)
    soft = torch.softmax((x + g) / 0.9, -1)
    ref = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0) - soft.detach() + soft
    ours = genfast.gumbel_softmax(x, 0.9, hard=True, seed=2, backend="reference")
    torch.testing.assert_close(ours, ref.detach(), rtol=0, atol=1e-15)


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


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filt", [{}, {"top_k": 3}, {"top_p": 0.6}, {"top_k": 5, "top_p": 0.8},
                                  {"temperature": 0.0}, {"temperature": 2.5}])
def test_sample_indices_match_reference_exactly(backend, shape, filt):
    x = _logits(shape, seed=7)
    ref = genfast.sample_categorical(x, seed=99, backend="reference", **filt)
    got = genfast.sample_categorical(x, seed=99, backend=backend, **filt)
    assert got.dtype == torch.int64 and got.shape == shape[:1]
    assert torch.equal(got, ref)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_non_contiguous_inputs_and_other_dims(backend):
    base = _logits((7, 3, 12))
    x = base.transpose(0, 2)  # classes along dim 2 of a (12, 3, 7) non-contiguous view
    y = genfast.gumbel_softmax(x, tau=1.3, dim=2, seed=4, backend=backend)
    expect = genfast.gumbel_softmax(x.contiguous(), tau=1.3, dim=2, seed=4, backend="reference")
    torch.testing.assert_close(y, expect, **TOL[torch.float32])
    strided = _logits((5, 40))[:, ::3]  # column stride 3
    s = genfast.sample_categorical(strided, seed=8, backend=backend)
    assert torch.equal(s, genfast.sample_categorical(strided.contiguous(), seed=8,
                                                     backend="reference"))
    wide = _logits((6, 50))[:, 5:30]  # row stride 50 > classes 25
    torch.testing.assert_close(genfast.gumbel_softmax(wide, seed=1, backend=backend),
                               genfast.gumbel_softmax(wide.contiguous(), seed=1,
                                                      backend="reference"), **TOL[torch.float32])


# ------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST if b == "cpu"]])
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


@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST if b == "cpu"]])
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
    torch.library.opcheck(G.gumbel_softmax_bwd, (dy, x, seed, 1.5, True, backend))
    torch.library.opcheck(G.sample_categorical_op, (x, seed, 1.0, 3, 0.9, backend))


@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST if b == "cpu"]])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(x):
        y = genfast.gumbel_softmax(x, tau=0.5, hard=True, seed=17, backend=backend)
        idx = genfast.sample_categorical(x, temperature=0.8, top_k=4, seed=18, backend=backend)
        return (y * x).sum(), idx

    x = _logits((4, 11)).requires_grad_()
    loss, idx = step(x)
    loss.backward()
    eager_y = genfast.gumbel_softmax(x.detach(), 0.5, True, seed=17, backend=backend)
    torch.testing.assert_close(loss, (eager_y * x.detach()).sum())
    assert torch.equal(idx, genfast.sample_categorical(x.detach(), temperature=0.8, top_k=4,
                                                       seed=18, backend=backend))
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ statistics
def _chisq_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "sampled a class of probability zero"
    n = counts.sum().item()
    return stats.chisquare(counts[keep].double().numpy(), (probs[keep] * n).double().numpy()).pvalue


@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST if b == "cpu"]])
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.6, None, None),
                                                     (1.0, 3, None), (1.0, None, 0.7),
                                                     (1.4, 4, 0.8)])
def test_sample_frequencies_chi_square(backend, temperature, top_k, top_p):
    logits = torch.tensor([0.2, 0.8, 0.1, -1.0, 1.5, 0.0])
    draws = 20000
    x = logits.expand(draws, -1)
    idx = genfast.sample_categorical(x, temperature, top_k, top_p, seed=2024, backend=backend)
    counts = torch.bincount(idx, minlength=6)
    p = torch.softmax(logits.double() / temperature, -1)
    if top_k is not None:
        p = torch.where(logits >= logits.topk(top_k).values[-1], p, 0)
        p = p / p.sum()
    if top_p is not None:
        sp, order = p.sort(descending=True)
        cut = int((sp.cumsum(0) < top_p).sum()) + 1
        p = torch.zeros_like(p).scatter(0, order[:cut], sp[:cut])
        p = p / p.sum()
    assert _chisq_pvalue(counts, p) > 1e-4


def test_hard_gumbel_softmax_frequencies_match_softmax_over_tau():
    logits = torch.tensor([0.5, -0.3, 1.2, 0.0])
    y = genfast.gumbel_softmax(logits.expand(20000, -1), tau=0.5, hard=True, seed=77)
    # argmax(x + g) does not depend on tau: the classes follow softmax(logits).
    assert _chisq_pvalue(y.sum(0).round().long(), torch.softmax(logits.double(), -1)) > 1e-4


# ------------------------------------------------------------------ seeds
def test_seeds_generators_and_manual_seed():
    x = _logits((8, 20))
    a = genfast.gumbel_softmax(x, seed=1)
    assert torch.equal(a, genfast.gumbel_softmax(x, seed=1))
    assert not torch.equal(a, genfast.gumbel_softmax(x, seed=2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(genfast.gumbel_softmax(x, generator=g1), genfast.gumbel_softmax(x, generator=g2))
    torch.manual_seed(3)
    s1 = genfast.sample_categorical(x)
    torch.manual_seed(3)
    assert torch.equal(s1, genfast.sample_categorical(x))
    assert torch.equal(genfast.gumbel_softmax(x, seed=2**64 + 1), genfast.gumbel_softmax(x, seed=1))


# ------------------------------------------------------------------ hostile input
@pytest.mark.parametrize("backend", ["reference", *FAST])
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
        t = max(tau, 1e-30)
        torch.testing.assert_close(y[0], torch.softmax(g[0] / t, -1))  # uniform row
        assert y[1, 0] == 0 and y[1, 2] == 0  # +inf entries take all the mass
        assert y[3, 1] == 0 and y[3, 3] == 0
    s = genfast.sample_categorical(x, seed=9, backend=backend)
    assert s[1] in (1, 3) and s[3] in (0, 2)
    s_greedy = genfast.sample_categorical(x, temperature=0, backend=backend)
    assert s_greedy.tolist()[1:] == [1, 0, 2]
    nan_rows = torch.full((3, 5), math.nan)
    nan_rows[1, :2] = 1.0  # one NaN is enough to poison a row
    for hard in (False, True):
        assert genfast.gumbel_softmax(nan_rows, hard=hard, seed=1, backend=backend).isnan().all()
    assert ((genfast.sample_categorical(nan_rows, seed=1, backend=backend) >= 0)
            & (genfast.sample_categorical(nan_rows, seed=1, backend=backend) < 5)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extremes(dtype):
    fmax = torch.finfo(dtype).max
    x = torch.tensor([[fmax, -fmax, 0.0, fmax], [-fmax, -fmax, -fmax, -fmax]], dtype=dtype)
    y = genfast.gumbel_softmax(x.requires_grad_(), tau=0.1, seed=3)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_empty_inputs():
    assert genfast.gumbel_softmax(torch.empty(0, 5), seed=1).shape == (0, 5)
    assert genfast.sample_categorical(torch.empty(0, 5), seed=1).shape == (0,)
    assert genfast.gumbel_softmax(torch.empty(3, 0), seed=1).shape == (3, 0)


@pytest.mark.parametrize("call,err,match", [
    (lambda x: genfast.gumbel_softmax(x, tau=0), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=-1.0), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=math.nan), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=math.inf), ValueError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, tau=torch.tensor(1.0)), TypeError, "tau"),
    (lambda x: genfast.gumbel_softmax(x, hard=1), TypeError, "hard"),
    (lambda x: genfast.gumbel_softmax(x.long()), TypeError, "logits"),
    (lambda x: genfast.gumbel_softmax(x[0, 0]), ValueError, "logits"),
    (lambda x: genfast.gumbel_softmax([1.0, 2.0]), TypeError, "logits"),
    (lambda x: genfast.gumbel_softmax(x, dim=2), IndexError, "dim"),
    (lambda x: genfast.gumbel_softmax(x, seed=1, generator=torch.Generator()), ValueError, "seed"),
    (lambda x: genfast.gumbel_softmax(x, seed="1"), TypeError, "seed"),
    (lambda x: genfast.gumbel_softmax(x, backend="fast"), ValueError, "backend"),
    (lambda x: genfast.gumbel_softmax(x, backend="cuda"), genfast.BackendError, "cuda"),
    (lambda x: genfast.sample_categorical(x, top_k=0), ValueError, "top_k"),
    (lambda x: genfast.sample_categorical(x, top_k=2.5), ValueError, "top_k"),
    (lambda x: genfast.sample_categorical(x, top_p=0.0), ValueError, "top_p"),
    (lambda x: genfast.sample_categorical(x, top_p=1.5), ValueError, "top_p"),
    (lambda x: genfast.sample_categorical(x, temperature=-0.1), ValueError, "temperature"),
    (lambda x: genfast.sample_categorical(x[:, :0]), ValueError, "empty"),
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
    layer = genfast.nn.GumbelSoftmax(tau=1.0, hard=True)
    sched = genfast.nn.TemperatureSchedule(start=1.0, end=0.3, rate=0.01)
    logits = torch.zeros(16, 5, requires_grad=True)
    reward = torch.tensor([0.0, 0.1, 1.0, 0.2, 0.0])
    opt = torch.optim.Adam([logits], lr=0.1)
    first = None
    for step in range(150):
        sched.apply(layer, step)
        loss = -(layer(logits) * reward).sum(-1).mean()
        first = loss.item() if first is None else first
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

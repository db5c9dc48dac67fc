"""gradient_penalty op family: the public penalty against plain-torch WGAN-GP / R1 / R2, the norm
and row-scaling ops on every backend against the reference, autograd to any order,
torch.library / torch.compile integration, lazy regularization, drift, bad input. Beside it:
_amp (autocast, GradScaler), _sync (check_finite, no host reads), _export, _critics (genfast
layers in the critic, DDP), _triton (the launchers), _gpu (cuda-marked)."""

import math

import pytest
import torch
from _helpers import TOL, fast_backends, layouts
from torch import nn

import genfast
from genfast.ops import gradient_penalty as G
from genfast.ops.gradient_penalty import gradient_penalty, per_sample_grad_norm

FAST = fast_backends("gradient_penalty")
ALL = ["reference", *FAST]
F64 = [b for b in ALL if torch.float64 in G.SPEC.dtypes[b]]  # gradcheck needs float64
SHAPES = [(1, 1), (3, 7), (5, 33), (2, 129), (7, 1000)]


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in G.SPEC.dtypes[backend]]


def _randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def conv_critic(dtype=torch.float32, act=None):
    torch.manual_seed(0)
    act = act or nn.LeakyReLU(0.2)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), act, nn.Conv2d(4, 8, 3, 2, 1), act,
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 1)).to(dtype)


def mlp_critic(dtype=torch.float32):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Softplus(), nn.Linear(16, 1)).to(dtype)


def _data(shape, dtype=torch.float32):
    return _randn(*shape, dtype=dtype, seed=1), _randn(*shape, dtype=dtype, seed=2)


# ------------------------------------------------------------------ plain torch, the oracle
def plain_penalty(critic, real, fake, kind, weight=10.0, center=1.0, one_sided=False, seed=3):
    """How the papers' code writes it: autograd.grad(create_graph=True) and .norm(2, dim=1)."""
    n = real.shape[0]
    if kind == "wgan-gp":
        eps = torch.rand(n, *([1] * (real.dim() - 1)), dtype=real.dtype,
                         generator=torch.Generator().manual_seed(seed))
        x = eps * real + (1 - eps) * fake
    else:
        x = real if kind == "r1" else fake
    x = x.detach().requires_grad_(True)
    s = critic(x)
    (g,) = torch.autograd.grad(s.sum(), x, create_graph=True)
    norm = g.reshape(n, -1).norm(2, dim=1)
    if kind != "wgan-gp":
        return weight / 2 * norm.square().mean(), norm
    d = (norm - center).clamp(min=0) if one_sided else norm - center
    return weight * d.square().mean(), norm


def _penalty_and_grads(critic, fn):
    critic.zero_grad(set_to_none=True)
    pen = fn()
    pen.backward()
    # No .grad: the last bias never reaches the penalty, biases before a LeakyReLU reach it only
    # through the pruned, identically zero paths. Both compare as zeros.
    return pen.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                          for p in critic.parameters()]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("make,shape", [(conv_critic, (5, 1, 7, 7)), (mlp_critic, (6, 6))])
@pytest.mark.parametrize("kind,opts", [("wgan-gp", {}), ("wgan-gp", {"one_sided": True}),
                                       ("wgan-gp", {"center": 0.0, "weight": 2.5}),
                                       ("r1", {}), ("r2", {"weight": 0.3})])
def test_matches_plain_torch(backend, make, shape, kind, opts):
    dtype = torch.float64 if backend == "reference" else torch.float32
    critic = make(dtype)
    real, fake = _data(shape, dtype)
    ref, ref_grads = _penalty_and_grads(critic, lambda: plain_penalty(critic, real, fake, kind,
                                                                      seed=3, **opts)[0])
    ref_norm = plain_penalty(critic, real, fake, kind, seed=3, **opts)[1]
    out = {}

    def ours():
        out["r"] = gradient_penalty(
            critic, real, fake, kind=kind, generator=torch.Generator().manual_seed(3),
            backend=backend, **opts)
        return out["r"].penalty

    pen, grads = _penalty_and_grads(critic, ours)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pen, ref, **tol)
    torch.testing.assert_close(out["r"].grad_norm, ref_norm.detach(), **tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **tol)
    assert out["r"].grad_norm.requires_grad is False and out["r"].drift is None


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1, inplace=True), nn.Hardtanh(),
                                 nn.ReLU6()])
def test_pruned_zero_paths_are_exact(act):
    """The piecewise-linear activations whose zero second-derivative edges are cut."""
    critic = conv_critic(torch.float64, act)
    real, fake = _data((4, 1, 7, 7), torch.float64)
    ref, ref_grads = _penalty_and_grads(critic, lambda: plain_penalty(critic, real, fake,
                                                                      "wgan-gp")[0])
    pen, grads = _penalty_and_grads(critic, lambda: gradient_penalty(
        critic, real, fake, generator=torch.Generator().manual_seed(3)).penalty)
    assert critic[0].bias.grad is None  # reached only through a pruned zero path
    torch.testing.assert_close(pen, ref, rtol=1e-12, atol=1e-14)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_penalty_is_differentiable_to_third_order():
    critic = mlp_critic(torch.float64)
    real, fake = _data((4, 6), torch.float64)
    w = critic[0].weight
    pen = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0),
                           backend=FAST[0] if FAST else "reference").penalty
    (g1,) = torch.autograd.grad(pen, w, create_graph=True)
    (g2,) = torch.autograd.grad(g1.square().sum(), w)
    assert torch.isfinite(g2).all() and g2.abs().sum() > 0


# ------------------------------------------------------------------ the ops vs the reference
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
def test_ops_match_reference(backend, shape):
    for dtype in _dtypes(backend):
        for name, g in layouts(_randn(*shape, dtype=dtype, seed=shape[1])):
            norms = G.gp_row_norms(g, backend)
            assert norms.dtype == dtype and norms.shape == shape[:1], name
            torch.testing.assert_close(norms, G.gp_row_norms(g, "reference"), **TOL[dtype])
            torch.testing.assert_close(norms, g.double().norm(dim=1).to(dtype), **TOL[dtype])
            scale = _randn(shape[0], dtype=dtype, seed=9)
            out = G.gp_scale_rows(g, scale, backend)
            assert out.is_contiguous() and out.shape == shape, name
            torch.testing.assert_close(out, g * scale[:, None], **TOL[dtype])


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy
def test_ops_empty_and_hostile_rows(backend):
    assert G.gp_row_norms(torch.empty(0, 4), backend).shape == (0,)
    assert torch.equal(G.gp_row_norms(torch.empty(3, 0), backend), torch.zeros(3))
    assert G.gp_scale_rows(torch.empty(3, 0), torch.ones(3), backend).shape == (3, 0)
    g = torch.tensor([[0.0, 0.0, 0.0], [math.nan, 1.0, 0.0], [math.inf, 1.0, 2.0],
                      [3e19, 3e19, 0.0], [1e-25, 1e-25, 0.0], [3.0, 4.0, 0.0]])
    norms = G.gp_row_norms(g, backend).tolist()
    assert norms[0] == 0 and math.isnan(norms[1]) and norms[2] == math.inf
    assert norms[3] == math.inf and norms[4] == 0  # float32 sum of squares: no rescaling
    assert norms[5] == pytest.approx(5.0)


@pytest.mark.parametrize("backend", F64)
def test_gradcheck_and_gradgradcheck_of_the_ops(backend):
    g = _randn(4, 9, dtype=torch.float64, seed=4).requires_grad_()
    scale = _randn(4, dtype=torch.float64, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: G.gp_row_norms(t, backend), (g,))
    assert torch.autograd.gradgradcheck(lambda t: G.gp_row_norms(t, backend), (g,))
    assert torch.autograd.gradcheck(lambda t, s: G.gp_scale_rows(t, s, backend), (g, scale))
    assert torch.autograd.gradgradcheck(lambda t, s: G.gp_scale_rows(t, s, backend), (g, scale))
    # Through the public flattening, on a (N, C, H, W) gradient.
    g4 = _randn(3, 2, 2, 3, dtype=torch.float64, seed=6).requires_grad_()
    fn = lambda t: (per_sample_grad_norm(t, backend=backend) - 1).square()  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (g4,))


def test_zero_row_has_zero_gradient_at_every_order():
    g = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    norms = per_sample_grad_norm(g)
    (d1,) = torch.autograd.grad((norms - 1).square().sum(), g, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), g)
    assert torch.equal(norms.detach(), torch.zeros(2))
    assert torch.equal(d1.detach(), torch.zeros(2, 5)) and torch.equal(d2, torch.zeros(2, 5))


@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend):
    g = _randn(3, 10)
    scale = _randn(3, seed=1)
    for args in ((g, backend), (g.clone().requires_grad_(), backend)):
        torch.library.opcheck(G.gp_row_norms, args)
    torch.library.opcheck(G.gp_scale_rows, (g, scale, backend))
    torch.library.opcheck(G.gp_scale_rows, (g.clone().requires_grad_(),
                                            scale.clone().requires_grad_(), backend))


@pytest.mark.parametrize("backend", ALL)
def test_torch_compile_fullgraph_of_the_norm_path(backend):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def penalty(grad):
        norms = per_sample_grad_norm(grad, backend=backend)
        return 10.0 * (norms - 1.0).square().mean()

    grad = _randn(4, 2, 3, 3, seed=7).requires_grad_()
    pen = penalty(grad)
    pen.backward()
    eager = grad.detach().clone().requires_grad_()
    want = 10.0 * (eager.reshape(4, -1).norm(dim=1) - 1).square().mean()
    want.backward()
    torch.testing.assert_close(pen, want)
    torch.testing.assert_close(grad.grad, eager.grad)


def test_channels_last_and_permuted_gradients_flatten_without_copy():
    g = _randn(3, 4, 5, 6).to(memory_format=torch.channels_last)
    rows = G._sample_rows(g)
    assert rows.data_ptr() == g.data_ptr() and rows.shape == (3, 120)
    torch.testing.assert_close(per_sample_grad_norm(g), g.reshape(3, -1).norm(dim=1))


# ------------------------------------------------------------------ lazy, drift, kinds
class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_lazy_regularization_every_k():
    critic = Counting(mlp_critic())
    real, fake = _data((5, 6))
    full = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    for step in range(9):
        critic.calls = 0
        r = gradient_penalty(critic, real, fake, every=4, step=step,
                             generator=torch.Generator().manual_seed(0))
        if step % 4:
            assert critic.calls == 0 and r.grad_norm is None
            assert r.penalty.item() == 0 and r.penalty.dtype == torch.float32
        else:
            assert critic.calls == 1
            torch.testing.assert_close(r.penalty, 4 * full.penalty)
            torch.testing.assert_close(r.grad_norm, full.grad_norm)


def test_drift_term():
    critic = Counting(mlp_critic())
    real, fake = _data((5, 6))
    base = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    critic.calls = 0
    r = gradient_penalty(critic, real, fake, drift=1e-3,
                         generator=torch.Generator().manual_seed(0))
    want = 1e-3 * critic.inner(real).square().mean()
    assert critic.calls == 2  # the penalty's forward and one on real
    torch.testing.assert_close(r.drift, want.detach())
    torch.testing.assert_close(r.penalty, base.penalty + want)
    # Scores already computed are used as they are; the drift also counts on skipped steps.
    scores = critic.inner(real)
    critic.calls = 0
    r = gradient_penalty(critic, real, fake, drift=0.5, real_scores=scores, every=2,
                         step=1)
    assert critic.calls == 0 and r.grad_norm is None
    torch.testing.assert_close(r.penalty, 0.5 * scores.square().mean())
    assert r.penalty.requires_grad
    # R1 reuses its own forward on real.
    critic.calls = 0
    r1 = gradient_penalty(critic, real, kind="r1", drift=0.1)
    assert critic.calls == 1
    torch.testing.assert_close(r1.drift, 0.1 * scores.detach().square().mean())


def test_one_sided_ignores_norms_below_center():
    real, fake = _data((6, 6))
    critic = mlp_critic()
    r = gradient_penalty(critic, real, fake, center=100.0, one_sided=True)
    assert r.penalty.item() == 0 and (r.grad_norm < 100).all()
    two = gradient_penalty(critic, real, fake, center=100.0)
    assert two.penalty.item() > 0


def test_generator_reproducibility_and_no_grad_evaluation():
    critic = mlp_critic()
    real, fake = _data((5, 6))
    a = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(8))
    b = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.penalty, b.penalty)
    with torch.no_grad():
        c = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(8))
    assert not c.penalty.requires_grad
    torch.testing.assert_close(c.penalty, a.penalty.detach())


def test_zero_gradient_samples_are_defined():
    # ReLU critic: samples with all-negative inputs see a zero gradient (norm 0).
    torch.manual_seed(0)
    critic = nn.Sequential(nn.ReLU(), nn.Linear(3, 1))
    real = torch.tensor([[-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]])
    fake = -real.abs()
    r = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    r.penalty.backward()
    assert r.grad_norm[0] == 0
    assert torch.isfinite(critic[1].weight.grad).all()


# ------------------------------------------------------------------ bad input
def _critic():
    return mlp_critic()


W = torch.nn.Parameter(torch.ones(()))


@pytest.mark.parametrize("call,err,match", [
    (lambda c, r, f: gradient_penalty(c, r, f[:, :5]), ValueError, "same shape"),
    (lambda c, r, f: gradient_penalty(c, r, f[:3]), ValueError, "same shape"),
    (lambda c, r, f: gradient_penalty(c, r, f.double()), ValueError, "dtype"),
    (lambda c, r, f: gradient_penalty(c, r), ValueError, "fake is required"),
    (lambda c, r, f: gradient_penalty(c, None, f, kind="r1"), ValueError, "real"),
    (lambda c, r, f: gradient_penalty(c, r, kind="r2"), ValueError, "fake"),
    (lambda c, r, f: gradient_penalty(lambda x: c(x).reshape(1, -1), r, f), ValueError,
     r"critic\(x\) must have shape \(4,\) or \(4, 1\)"),
    (lambda c, r, f: gradient_penalty(lambda x: c(x)[:2], r, f), ValueError,
     r"critic\(x\)"),
    (lambda c, r, f: gradient_penalty(lambda x: [1.0] * 4, r, f), TypeError, "tensor"),
    (lambda c, r, f: gradient_penalty(lambda x: c(x.detach()), r, f), ValueError,
     "does not depend on its input"),
    (lambda c, r, f: gradient_penalty(lambda x: W.expand(x.shape[0]), r, f), ValueError,
     "does not depend on its input"),
    (lambda c, r, f: gradient_penalty(lambda x: torch.zeros(4), r, f), ValueError,
     "does not depend on its input"),
    (lambda c, r, f: gradient_penalty("critic", r, f), TypeError, "critic"),
    (lambda c, r, f: gradient_penalty(c, r.long(), f.long()), TypeError, "real"),
    (lambda c, r, f: gradient_penalty(c, r[:0], f[:0]), ValueError, "real"),
    (lambda c, r, f: gradient_penalty(c, r, f, kind="wgan"), ValueError, "kind"),
    (lambda c, r, f: gradient_penalty(c, r, f, weight=-1.0), ValueError, "weight"),
    (lambda c, r, f: gradient_penalty(c, r, f, weight=math.nan), ValueError, "weight"),
    (lambda c, r, f: gradient_penalty(c, r, f, center=math.inf), ValueError, "center"),
    (lambda c, r, f: gradient_penalty(c, r, kind="r1", center=0.0), ValueError,
     "center"),
    (lambda c, r, f: gradient_penalty(c, r, kind="r1", one_sided=True), ValueError,
     "one_sided"),
    (lambda c, r, f: gradient_penalty(c, r, f, one_sided=1), TypeError, "one_sided"),
    (lambda c, r, f: gradient_penalty(c, r, f, every=0), ValueError, "every"),
    (lambda c, r, f: gradient_penalty(c, r, f, every=4), ValueError, "step"),
    (lambda c, r, f: gradient_penalty(c, r, f, every=4, step=-1), ValueError, "step"),
    (lambda c, r, f: gradient_penalty(c, r, f, every=2.0, step=0), TypeError, "every"),
    (lambda c, r, f: gradient_penalty(c, r, f, drift=-1e-3), ValueError, "drift"),
    (lambda c, r, f: gradient_penalty(c, None, f, kind="r2", drift=1.0), ValueError,
     "drift"),
    (lambda c, r, f: gradient_penalty(c, r, f, drift=1.0, real_scores=torch.ones(3)),
     ValueError, "real_scores"),
    (lambda c, r, f: gradient_penalty(c, r, f, generator=0), TypeError, "generator"),
    (lambda c, r, f: gradient_penalty(c, r, f, check_finite=1), TypeError,
     "check_finite"),
    (lambda c, r, f: gradient_penalty(c, r, f, scaler=2.0**16), TypeError, "scaler"),
    (lambda c, r, f: gradient_penalty(c, r, f, backend="fast"), ValueError, "backend"),
    (lambda c, r, f: gradient_penalty(c, r, f, backend="cuda"), genfast.BackendError,
     "cuda"),
    (lambda c, r, f: gradient_penalty(c, r.half(), f.half(), backend="cpu"),
     genfast.BackendError, "float16"),
    (lambda c, r, f: per_sample_grad_norm(r[0, 0]), ValueError, "grad"),
    (lambda c, r, f: G.gp_scale_rows(r, torch.ones(3), "reference"), ValueError, "scale"),
    (lambda c, r, f: G.gp_row_norms(r[0], "cpu"), ValueError, "2-D"),
])
def test_bad_input_gets_a_clear_error(call, err, match):
    real, fake = _data((4, 6))
    with pytest.raises(err, match=match):
        call(_critic(), real, fake)


def test_triton_backend_is_wired_when_present():
    if "triton" not in FAST:
        pytest.skip("Triton launchers or the interpreter are not available here")
    g = _randn(5, 33)
    torch.testing.assert_close(G.gp_row_norms(g, "triton"), g.norm(dim=1), **TOL[torch.float32])
    scale = _randn(5, seed=3)
    torch.testing.assert_close(G.gp_scale_rows(g, scale, "triton"), g * scale[:, None],
                               **TOL[torch.float32])


def test_r1_weight_is_stylegan_gamma():
    """R1 with weight=gamma is StyleGAN's gamma / 2 * E||grad||^2 (not gamma * E||grad||^2)."""
    critic = mlp_critic()
    real, _ = _data((5, 6))
    r = gradient_penalty(critic, real, kind="r1", weight=4.0)
    x = real.clone().requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    torch.testing.assert_close(r.penalty.detach(), 2.0 * g.square().sum(1).mean())
    torch.testing.assert_close(r.grad_norm, g.norm(dim=1))


def test_public_exports():
    assert genfast.gradient_penalty is G.gradient_penalty
    assert genfast.per_sample_grad_norm is G.per_sample_grad_norm
    assert genfast.GradientPenalty is G.GradientPenalty

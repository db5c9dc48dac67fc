"""spectral_norm op family, the drop-in layers: genfast.nn.spectral_norm against torch's
parametrization (every layer kind, training and eval), the functional API, state_dict and the
converter both ways, fold, the multi-tensor SpectralNormGroup, autograd to second order (the
GAN step D(real) + D(fake), gradient penalties) and torch.compile. The op itself:
test_spectral_norm.py."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import (
    TOL,
    fast_backends,
    single_thread,  # noqa: F401 (a fixture, used by pytestmark)
)
from _spectral_norm_cases import LAYERS, critic, mixed_model, pair, sn_of, vectors
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast.nn.spectral_norm import (
    SpectralNorm,
    SpectralNormGroup,
    convert_spectral_norm,
    is_folded,
    remove_spectral_norm,
    revert_spectral_norm,
    spectral_norm,
)
from genfast.ops import spectral_norm as S

CPU = [b for b in fast_backends("spectral_norm") if b == "cpu"]


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------ against torch
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("backend", ["reference", *CPU])
def test_matches_torch_parametrization(kind, n_iter, backend):
    ref, ours, x = pair(kind, n_power_iterations=n_iter, backend=backend)
    for mode in ("train", "train", "eval", "train"):
        ref.train(mode == "train")
        ours.train(mode == "train")
        y_ref, y = ref(x), ours(x)
        w_ref, w = ref.parametrizations.weight.original, ours.parametrizations.weight.original
        (g_ref,) = torch.autograd.grad(y_ref.square().sum(), w_ref)
        (g,) = torch.autograd.grad(y.square().sum(), w)
        torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
        torch.testing.assert_close(g, g_ref, **TOL[torch.float64])
        torch.testing.assert_close(sn_of(ours)._u, sn_of(ref)._u, **TOL[torch.float64])
        torch.testing.assert_close(sn_of(ours)._v, sn_of(ref)._v, **TOL[torch.float64])
    assert ours.parametrizations.weight.original is w  # the Parameter torch's optimizer holds


def test_float32_matches_torch_and_sigma_is_the_top_singular_value():
    ref, ours, x = pair("conv2d", torch.float32, n_power_iterations=2)
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sn_of(ours)._u, sn_of(ref)._u, rtol=1e-4, atol=1e-5)
    w = ours.weight.detach().reshape(4, -1)
    assert abs(torch.linalg.matrix_norm(w, 2).item() - 1) < 1e-3


def test_diagonal_weight_sigma_is_the_largest_entry():
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([0.5, -3.0, 2.0, 1.0])))
    spectral_norm(lin, n_power_iterations=20)
    torch.testing.assert_close(lin.weight.detach().abs().amax(), torch.tensor(1.0))


def test_functional_api_matches_the_layer():
    torch.manual_seed(0)
    lin = spectral_norm(nn.Linear(6, 4).double())
    sn, w = sn_of(lin), lin.parametrizations.weight.original
    u, v = sn._u.clone(), sn._v.clone()
    w_sn = S.spectral_normalize(w, u, v)  # one iteration from the layer's vectors
    torch.testing.assert_close(w_sn, lin.weight, **TOL[torch.float64])
    torch.testing.assert_close(u, sn._u, **TOL[torch.float64])
    s = S.spectral_sigma(w, u, v, update=False)
    torch.testing.assert_close(w / s, w_sn, **TOL[torch.float64])
    (g,) = torch.autograd.grad(s, w)
    torch.testing.assert_close(g, torch.outer(u, v), **TOL[torch.float64])  # d sigma / dW
    torch.testing.assert_close(S.spectral_normalize(torch.tensor([3.0, 4.0])),
                               torch.tensor([0.6, 0.8]))


def test_one_dim_weights_are_normalized_exactly():
    m = nn.Module()
    m.scale = nn.Parameter(torch.tensor([3.0, -4.0]))
    spectral_norm(m, "scale")
    torch.testing.assert_close(m.scale, torch.tensor([0.6, -0.8]))
    assert list(m.state_dict()) == ["parametrizations.scale.original"]


# ------------------------------------------------------------------ state_dict and converter
@pytest.mark.parametrize("kind", ["linear", "conv2d", "convT2d"])
def test_state_dict_loads_both_ways_strict(kind):
    ref, ours, x = pair(kind)
    ref2, ours2, _ = pair(kind, seed=5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a in (ref, ours, ref2, ours2):
        a(x)  # one training step each: the states differ
    ours2.load_state_dict(ref.state_dict(), strict=True)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for a, b in ((ours2, ref), (ref2, ours)):
        a.eval()
        b.eval()
        torch.testing.assert_close(a(x), b(x), **TOL[torch.float64])


@pytest.mark.parametrize("fold", [False, True])
def test_converter_both_ways_keeps_tensors_flags_and_outputs(fold):
    ref, model = mixed_model(), mixed_model()
    model[2].eval()  # a mixed training flag must survive
    ref[2].eval()
    params = [id(p) for p in model.parameters()]
    bufs = [id(b) for b in model.buffers()]
    assert convert_spectral_norm(model, fold=fold) is model
    assert all(isinstance(sn_of(model[i]), SpectralNorm) for i in (0, 2, 4))
    assert [id(p) for p in model.parameters()] == params
    assert [id(b) for b in model.buffers()] == bufs
    assert not sn_of(model[2]).training and sn_of(model[0]).training
    assert is_folded(model[0]) == fold
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(model(x), ref(x), **TOL[torch.float64])
    revert_spectral_norm(model)
    assert not any(isinstance(m, SpectralNorm) for m in model.modules())
    assert not is_folded(model[0])
    assert [id(p) for p in model.parameters()] == params
    assert [id(b) for b in model.buffers()] == bufs
    torch.testing.assert_close(model(x), ref(x), **TOL[torch.float64])


# ------------------------------------------------------------------ fold
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "convT2d"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["reference", *CPU])
def test_fold_gives_the_same_outputs_and_gradients(kind, bias, backend):
    make, inp = LAYERS[kind]
    mods = []
    for fold in (False, True):
        torch.manual_seed(0)
        m = make().double()
        if not bias:
            m.bias = None
        mods.append(spectral_norm(m, fold=fold, backend=backend))
    x = inp().double()
    for mode in ("train", "eval", "train"):
        outs = []
        for m in mods:
            m.train(mode == "train")
            xi = x.clone().requires_grad_()
            y = m(xi)
            leaves = [xi, *m.parameters()]
            grads = torch.autograd.grad(y.sin().sum(), leaves, create_graph=True)
            # and second order, as a gradient penalty takes it
            outs.append((y, [*grads, *torch.autograd.grad(grads[0].square().sum(), leaves)]))
        torch.testing.assert_close(outs[1][0], outs[0][0], **TOL[torch.float64])
        for a, b in zip(outs[1][1], outs[0][1], strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_fold_conv_transpose_output_size_and_removal():
    torch.manual_seed(0)
    m = spectral_norm(nn.ConvTranspose2d(2, 3, 3, stride=2), fold=True)
    x = torch.randn(1, 2, 4, 4)
    assert m(x, output_size=[10, 10]).shape == (1, 3, 10, 10)
    m.eval()
    expect = F.conv_transpose2d(x, m.weight, m.bias, stride=2, output_padding=1)
    torch.testing.assert_close(m(x, output_size=[10, 10]), expect)
    remove_spectral_norm(m)
    assert not is_folded(m) and not parametrize.is_parametrized(m)
    torch.testing.assert_close(m(x, output_size=[10, 10]), expect)


# ------------------------------------------------------------------ multi-tensor group
@pytest.mark.parametrize("fold", [False, True])
def test_group_matches_per_layer_and_torch(fold):
    ref, per_layer, grouped = critic(torch_sn), critic(fold=fold), critic(fold=fold)
    group = SpectralNormGroup(grouped)
    assert len(group) == 3
    x = torch.randn(5, 1, 8, 8)
    for mode in ("train", "train", "eval", "train"):
        outs = []
        for m in (ref, per_layer, grouped):
            m.train(mode == "train")
            y = m(x)
            outs.append((y, torch.autograd.grad(y.sum(), list(m.parameters()))))
        assert torch.equal(outs[2][0], outs[1][0])  # the same kernel on the same data
        for i in (1, 2):
            torch.testing.assert_close(outs[i][0], outs[0][0], rtol=1e-4, atol=1e-5)
            for a, b in zip(outs[i][1], outs[0][1], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    group.remove()
    assert all(sn_of(m)._pending is None for m in grouped if parametrize.is_parametrized(m))


def test_group_mixed_modes_repeated_calls_and_manual_update():
    grouped, per_layer = critic(), critic()
    grouped[2].eval()
    per_layer[2].eval()
    SpectralNormGroup(grouped)
    x = torch.randn(2, 1, 8, 8)
    # A layer called twice in one forward iterates again at its second call, as in torch.
    twice = [lambda m: m[2](m[1](m[0](x))), lambda m: m[2](m[1](m[0](x))) + m[0](x).sum()]
    for f in twice:
        assert torch.equal(grouped(x), per_layer(x))
        assert torch.equal(f(grouped), f(per_layer))
    for a, b in zip(grouped.buffers(), per_layer.buffers(), strict=True):
        assert torch.equal(a, b)
    # A layer the forward skipped: its sigma must not outlive the step (the weights change).
    root = nn.Module()
    root.d = critic()
    root.forward = lambda x: root.d[1](root.d[0](x))  # layers after the first unused
    SpectralNormGroup(root)
    root(x)
    assert all(sn_of(m)._pending is None for m in root.d if parametrize.is_parametrized(m))
    layer = root.d[2].eval()
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(3.0)  # an optimizer step
    w = layer.parametrizations.weight.original
    s = S.spectral_sigma(w, sn_of(layer)._u, sn_of(layer)._v, update=False)
    torch.testing.assert_close(layer.weight, w / s)
    manual = SpectralNormGroup(critic(), hook=False)
    manual.update()
    assert all(sn_of(m)._pending is not None for m in manual.model
               if parametrize.is_parametrized(m))


# ------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", ["reference", *CPU])
def test_gradcheck_and_gradgradcheck(backend):
    torch.manual_seed(0)
    m = spectral_norm(nn.Conv2d(2, 3, 2).double(), n_power_iterations=2, backend=backend)
    sn = sn_of(m)
    u0, v0 = sn._u.clone(), sn._v.clone()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = m.parametrizations.weight.original.detach().clone().requires_grad_()

    def fn(w, x):
        # The power iteration changes u and v at every call: reset them (as torch's tests do)
        # so that gradcheck's repeated evaluations see one function.
        sn._u.copy_(u0)
        sn._v.copy_(v0)
        return F.conv2d(x, sn(w), m.bias)

    # Training mode: u and v follow the weight, which autograd (as torch's) does not see, so
    # the weight's gradient is exact only at convergence; check the input's, to second order.
    assert torch.autograd.gradcheck(lambda x: fn(w.detach(), x), (x,))
    assert torch.autograd.gradgradcheck(lambda x: fn(w.detach(), x), (x,))
    m.eval()  # fixed u and v: the weight's gradients, first and second order, are exact
    assert torch.autograd.gradcheck(fn, (w, x))
    assert torch.autograd.gradgradcheck(fn, (w, x))


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("group", [False, True])
def test_two_forwards_then_one_backward(fold, group):
    """The GAN step D(real) + D(fake): the second forward updates u and v in place while the
    first one's graph still holds what it saved."""
    ref, d = critic(torch_sn), critic(fold=fold)
    if group:
        SpectralNormGroup(d)
    real, fake = torch.randn(2, 4, 1, 8, 8)
    for m in (ref, d):
        (F.relu(1 - m(real)).mean() + F.relu(1 + m(fake)).mean()).backward()
    for a, b in zip(d.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_through_the_group():
    d = critic()
    SpectralNormGroup(d)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    (g.square().sum() + d(x).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())


# ------------------------------------------------------------------ torch.library / compile
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_compile_fullgraph_module(mode):
    torch._dynamo.reset()
    eager, compiled = critic(fold=True), critic(fold=True)
    SpectralNormGroup(compiled)
    for m in (eager, compiled):
        m.train(mode == "train")
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 1, 8, 8)
    for _ in range(2):
        y, y_ref = step(x), eager(x)
        torch.testing.assert_close(y, y_ref)
        y.sum().backward()
        y_ref.sum().backward()
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(compiled.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b)  # train mode: the in-place updates happened


def test_torch_compile_fullgraph_functional():
    torch._dynamo.reset()
    ws, us, vs = vectors([(5, 3, 2)], dims=[1])
    w = ws[0].requires_grad_()
    u2, v2 = us[0].clone(), vs[0].clone()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(w, u, v):
        return S.spectral_normalize(w, u, v, 2, dim=1)

    y, y_ref = f(w, us[0], vs[0]), S.spectral_normalize(w, u2, v2, 2, dim=1)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(us[0], u2)  # the in-place update happened, once
    (g,) = torch.autograd.grad(y.square().sum(), w)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), w)
    torch.testing.assert_close(g, g_ref)


# ------------------------------------------------------------------ the drop-in hot path
def test_direct_runner_follows_scopes_buffers_and_failures(monkeypatch):
    """A layer keeps a direct kernel runner between calls; it must give way to a backend scope,
    follow replaced buffers, and fall back when its backend fails."""
    import genfast
    from genfast import backends

    if not CPU:
        pytest.skip("genfast._C is not built")
    impls = backends._IMPLS["spectral_norm"]
    calls, ref_power = [], impls["reference"][0]
    monkeypatch.setitem(impls, "reference", (lambda *a: calls.append(1) or ref_power(*a),))
    torch.manual_seed(0)
    lin, ref = spectral_norm(nn.Linear(6, 4)), torch_sn(nn.Linear(6, 4))
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(2, 6)

    def check(n_ref_calls):
        torch.testing.assert_close(lin(x), ref(x), **TOL[torch.float32])
        assert len(calls) == n_ref_calls

    check(0)  # the C++ kernel, directly
    with genfast.use_backend("reference"):
        check(1)
    check(1)
    sn = sn_of(lin)
    sn._u, sn_of(ref)._u = sn._u.clone(), sn_of(ref)._u.clone()  # new tensors: a new table
    check(1)
    assert sn._memo[0][0][1] == sn._u.data_ptr()

    def broken(*a):
        raise RuntimeError("injected kernel failure")

    sn._memo[0] = (sn._memo[0][0], broken)
    monkeypatch.setitem(impls, "cpu", (broken,))
    try:
        with pytest.warns(backends.BackendFallbackWarning, match="injected kernel failure"):
            check(2)  # auto fell back to the reference, and stays there
        check(3)
    finally:
        backends.reset_failures()

"""spectral_norm op family: the kernels against the reference, the reference and the layers
against torch's parametrization, state_dict and converter round trips, fold, the multi-tensor
group, autograd to second order, torch.library / torch.compile integration, bad input.
(DDP: tests/test_spectral_norm_ddp.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

import genfast
from genfast import backends
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

FAST = [b for b in ("cpu",) if backends.available(b)]
# Kernels compared with the reference directly; Triton runs under the interpreter here.
KERNELS = [b for b in ("cpu", "triton") if backends.available(b)]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-11, atol=1e-13)}

@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny ops: a second OpenMP thread only adds barrier waits, which a busy machine stretches
    # to milliseconds per op (gradcheck runs thousands).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# (layer factory, input factory): odd sizes; ConvTranspose normalizes over dim 1.
LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), lambda: torch.randn(3, 7)),
    "linear_wide": (lambda: nn.Linear(33, 1), lambda: torch.randn(2, 33)),
    "conv1d": (lambda: nn.Conv1d(2, 6, 5), lambda: torch.randn(2, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: torch.randn(2, 3, 5, 5)),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), lambda: torch.randn(2, 3, 4, 4)),
    "embedding": (lambda: nn.Embedding(11, 6), lambda: torch.tensor([[0, 3, 10], [7, 7, 1]])),
}


def _pair(kind, dtype=torch.float64, seed=0, backend=None, **kw):
    """The same layer, spectral-normalized by torch and by genfast from the same RNG state."""
    make, inp = LAYERS[kind]
    out = []
    for sn in (torch_sn, lambda m, **kw: spectral_norm(m, backend=backend, **kw)):
        torch.manual_seed(seed)
        out.append(sn(make().to(dtype), **kw))
    torch.manual_seed(seed + 1)
    x = inp()
    return *out, (x.to(dtype) if x.is_floating_point() else x)


def _sn(m, name="weight"):
    return m.parametrizations[name][0]


def _vectors(shapes, dtype=torch.float32, seed=0, dims=None):
    """Weights of `shapes` and unit u, v vectors sized for output dims `dims` (default 0)."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or [0] * len(shapes)
    ws = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    sizes = [S.matrix_shape(w, d) for w, d in zip(ws, dims, strict=True)]
    us, vs = ([F.normalize(torch.randn(n, generator=g, dtype=torch.float64), dim=0).to(dtype)
               for n in ns] for ns in zip(*sizes, strict=True))
    return ws, us, vs


# ------------------------------------------------------------------ against torch
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_matches_torch_parametrization(kind, n_iter, backend):
    ref, ours, x = _pair(kind, n_power_iterations=n_iter, backend=backend)
    for mode in ("train", "train", "eval", "train"):
        ref.train(mode == "train")
        ours.train(mode == "train")
        y_ref, y = ref(x), ours(x)
        w_ref, w = ref.parametrizations.weight.original, ours.parametrizations.weight.original
        (g_ref,) = torch.autograd.grad(y_ref.square().sum(), w_ref)
        (g,) = torch.autograd.grad(y.square().sum(), w)
        torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
        torch.testing.assert_close(g, g_ref, **TOL[torch.float64])
        torch.testing.assert_close(_sn(ours)._u, _sn(ref)._u, **TOL[torch.float64])
        torch.testing.assert_close(_sn(ours)._v, _sn(ref)._v, **TOL[torch.float64])
    assert ours.parametrizations.weight.original is w  # the Parameter torch's optimizer holds


def test_float32_matches_torch_and_sigma_is_the_top_singular_value():
    ref, ours, x = _pair("conv2d", torch.float32, n_power_iterations=2)
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_sn(ours)._u, _sn(ref)._u, rtol=1e-4, atol=1e-5)
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
    sn, w = _sn(lin), lin.parametrizations.weight.original
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


# ------------------------------------------------------------------ kernels vs reference
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_kernel_matches_reference(backend, dtype, n_iter):
    if dtype not in S.SPEC.dtypes[backend]:
        pytest.skip(f"{backend} does not take {dtype}")
    shapes = [(1, 1), (7, 3), (33, 129), (5, 2, 3, 3), (3, 1), (1, 40), (129, 33)]
    dims = [0, 1, 0, 1, 0, 1, 0]
    ws, us, vs = _vectors(shapes, dtype, dims=dims)
    out = {}
    for b in ("reference", backend):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        sig = S.spectral_norm_power_iteration(ws, u2, v2, n_iter, dims=dims, backend=b)
        out[b] = (sig, u2, v2)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    assert out[backend][0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for a, r in zip(out[backend], out["reference"], strict=True):
        torch.testing.assert_close(a, r, **tol)


@pytest.mark.parametrize("backend", ["reference", *KERNELS])
def test_multi_tensor_equals_one_call_per_weight_and_strides(backend):
    ws, us, vs = _vectors([(9, 4, 2), (6, 13), (1, 8), (17, 17)])
    ws[1] = ws[1].t().contiguous().t()  # column stride 6: copied for the kernel
    ws[3] = ws[3][:, ::2]  # row stride 17, column stride 2
    us[0] = torch.stack([us[0], us[0]], 1)[:, 0]  # non-contiguous buffer, updated through a copy
    vs[3] = vs[3][:9]
    one_u, one_v = [u.clone() for u in us], [v.clone() for v in vs]
    sig = S.spectral_norm_power_iteration(ws, us, vs, 2, backend=backend)
    for i, w in enumerate(ws):
        s = S.spectral_norm_power_iteration([w.contiguous()], [one_u[i]], [one_v[i]], 2,
                                            backend=backend)
        torch.testing.assert_close(sig[i:i + 1], s, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(us[i], one_u[i], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(vs[i], one_v[i], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", FAST)
def test_kernel_threads_give_the_same_bits(backend):
    # Enough work for the CPU kernel to deal the weights to two threads.
    ws, us, vs = _vectors([(700, 1000), (300, 2001), (1500, 900), (5, 7)])
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        out.append((S.spectral_norm_power_iteration(ws, u2, v2, 1, backend=backend), *u2, *v2))
    for a, b in zip(*out, strict=True):
        assert torch.equal(a, b)


def test_empty_sides_and_zero_weights_are_defined():
    ws = [torch.zeros(4, 0), torch.zeros(0, 3), torch.zeros(3, 5)]
    us = [torch.ones(4) / 2, torch.ones(0), torch.ones(3)]
    vs = [torch.ones(0), torch.ones(3), torch.ones(5)]
    for b in ("reference", *FAST):
        sig = S.spectral_norm_power_iteration(ws, [u.clone() for u in us],
                                              [v.clone() for v in vs], 1, backend=b)
        assert torch.equal(sig, torch.zeros(3))
    lin = spectral_norm(nn.Linear(5, 3))
    with torch.no_grad():
        lin.parametrizations.weight.original.zero_()
    x = torch.randn(2, 5, requires_grad=True)
    y = lin(x)
    assert torch.equal(y, lin.bias.expand(2, 3))
    y.sum().backward()
    assert torch.isfinite(lin.parametrizations.weight.original.grad).all()
    assert torch.isfinite(x.grad).all()
    t = torch_sn(nn.Linear(5, 3))
    with torch.no_grad():
        t.parametrizations.weight.original.zero_()
    assert t(x).isnan().all()  # what genfast defines away


# ------------------------------------------------------------------ state_dict and converter
@pytest.mark.parametrize("kind", ["linear", "conv2d", "convT2d"])
def test_state_dict_loads_both_ways_strict(kind):
    ref, ours, x = _pair(kind)
    ref2, ours2, _ = _pair(kind, seed=5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a in (ref, ours, ref2, ours2):
        a(x)  # one training step each: the states differ
    ours2.load_state_dict(ref.state_dict(), strict=True)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for a, b in ((ours2, ref), (ref2, ours)):
        a.eval()
        b.eval()
        torch.testing.assert_close(a(x), b(x), **TOL[torch.float64])


def _model(sn=torch_sn):
    torch.manual_seed(0)
    return nn.Sequential(sn(nn.Conv2d(1, 4, 3, 2, 1)), nn.LeakyReLU(0.2),
                         sn(nn.ConvTranspose2d(4, 3, 3)), nn.Flatten(),
                         sn(nn.Linear(3 * 6 * 6, 2)), nn.Linear(2, 1)).double()


@pytest.mark.parametrize("fold", [False, True])
def test_converter_both_ways_keeps_tensors_flags_and_outputs(fold):
    ref, model = _model(), _model()
    model[2].eval()  # a mixed training flag must survive
    ref[2].eval()
    params = [id(p) for p in model.parameters()]
    bufs = [id(b) for b in model.buffers()]
    assert convert_spectral_norm(model, fold=fold) is model
    assert all(isinstance(_sn(model[i]), SpectralNorm) for i in (0, 2, 4))
    assert [id(p) for p in model.parameters()] == params
    assert [id(b) for b in model.buffers()] == bufs
    assert not _sn(model[2]).training and _sn(model[0]).training
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
@pytest.mark.parametrize("backend", ["reference", *FAST])
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
def _d(sn=spectral_norm, **kw):
    torch.manual_seed(0)
    return nn.Sequential(sn(nn.Conv2d(1, 6, 4, 2, 1), **kw), nn.LeakyReLU(0.2),
                         sn(nn.Conv2d(6, 12, 4, 2, 1), **kw), nn.LeakyReLU(0.2),
                         sn(nn.Conv2d(12, 1, 2), **kw), nn.Flatten(0))


@pytest.mark.parametrize("fold", [False, True])
def test_group_matches_per_layer_and_torch(fold):
    ref, per_layer, grouped = _d(torch_sn), _d(fold=fold), _d(fold=fold)
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
    assert all(_sn(m)._pending is None for m in grouped if parametrize.is_parametrized(m))


def test_group_mixed_modes_repeated_calls_and_manual_update():
    grouped, per_layer = _d(), _d()
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
    root.d = _d()
    root.forward = lambda x: root.d[1](root.d[0](x))  # layers after the first unused
    SpectralNormGroup(root)
    root(x)
    assert all(_sn(m)._pending is None for m in root.d if parametrize.is_parametrized(m))
    layer = root.d[2].eval()
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(3.0)  # an optimizer step
    w = layer.parametrizations.weight.original
    s = S.spectral_sigma(w, _sn(layer)._u, _sn(layer)._v, update=False)
    torch.testing.assert_close(layer.weight, w / s)
    manual = SpectralNormGroup(_d(), hook=False)
    manual.update()
    assert all(_sn(m)._pending is not None for m in manual.model if parametrize.is_parametrized(m))


# ------------------------------------------------------------------ autograd
@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_gradcheck_and_gradgradcheck(backend):
    torch.manual_seed(0)
    m = spectral_norm(nn.Conv2d(2, 3, 2).double(), n_power_iterations=2, backend=backend)
    sn = _sn(m)
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
    ref, d = _d(torch_sn), _d(fold=fold)
    if group:
        SpectralNormGroup(d)
    real, fake = torch.randn(2, 4, 1, 8, 8)
    for m in (ref, d):
        (F.relu(1 - m(real)).mean() + F.relu(1 + m(fake)).mean()).backward()
    for a, b in zip(d.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_through_the_group():
    d = _d()
    SpectralNormGroup(d)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    (g.square().sum() + d(x).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())


# ------------------------------------------------------------------ torch.library / compile
@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_opcheck(backend):
    ws, us, vs = _vectors([(5, 7), (3, 2, 2)], dims=[0, 1])
    args = (ws, us, vs, [0, 1], 2, 1e-12, backend)
    torch.library.opcheck(S.power_iteration_op, args)
    torch.library.opcheck(S.power_iteration_op, (ws, us, vs, [0, 1], 0, 1e-12, backend))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_compile_fullgraph_module(mode):
    torch._dynamo.reset()
    eager, compiled = _d(fold=True), _d(fold=True)
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
    ws, us, vs = _vectors([(5, 3, 2)], dims=[1])
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


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,err,match", [
    (lambda: spectral_norm(nn.Linear(2, 2), "bias2"), ValueError, "no parameter"),
    (lambda: spectral_norm(spectral_norm(nn.Linear(2, 2))), ValueError, "already"),
    (lambda: spectral_norm(torch_sn(nn.Linear(2, 2))), ValueError, "already"),
    (lambda: spectral_norm(nn.Linear(2, 2), n_power_iterations=0), ValueError,
     "n_power_iterations"),
    (lambda: spectral_norm(nn.Linear(2, 2), n_power_iterations=1.5), ValueError,
     "n_power_iterations"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps=0.0), ValueError, "eps"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps=math.nan), ValueError, "eps"),
    (lambda: spectral_norm(nn.Linear(2, 2), dim=2), IndexError, "dim"),
    (lambda: spectral_norm(nn.Linear(2, 2), dim="0"), TypeError, "dim"),
    (lambda: spectral_norm(nn.Linear(2, 2), name=0), TypeError, "name"),
    (lambda: spectral_norm("linear"), TypeError, "module"),
    (lambda: spectral_norm(nn.LSTMCell(2, 2), "weight_ih", fold=True), ValueError, "fold"),
    (lambda: S.spectral_normalize(torch.ones(3, 2)), TypeError, "u must be"),
    (lambda: S.spectral_sigma(torch.ones(3, 2), torch.ones(3), torch.ones(3)), ValueError,
     "v must be"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(2)],
                                             [torch.ones(2)]), ValueError, r"us\[0\]"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2).double()]), ValueError, r"vs\[0\]"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3)], [torch.ones(3)],
                                             [torch.ones(1)]), ValueError, "2 dims"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2).long()], [torch.ones(3)],
                                             [torch.ones(2)]), TypeError, "float"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2), torch.ones(2, 2).double()],
                                             [torch.ones(3), torch.ones(2).double()],
                                             [torch.ones(2), torch.ones(2).double()]),
     ValueError, "share one dtype"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [], []), ValueError, "length"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2)], -1), ValueError, ">= 0"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2)], backend="cuda"),
     genfast.BackendError, "cuda"),
])
def test_bad_input_gets_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_replaced_buffer_of_the_wrong_size_is_caught_before_the_kernel():
    lin = spectral_norm(nn.Linear(4, 3))
    _sn(lin)._u = torch.ones(2)
    with pytest.raises(ValueError, match="do not match"):
        lin(torch.randn(1, 4))


def test_cpu_extension_rejects_out_of_bounds_tables():
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")
    from genfast.ops._boundary import cpu_module

    meta = torch.tensor([[0, 0, 0, 3, 2, 2]])
    sig = torch.empty(1)
    with pytest.raises(ValueError, match="null"):
        cpu_module().spectral_norm_power_iteration(1, meta.data_ptr(), 0, 1, 1e-12,
                                                   sig.data_ptr(), 1)
    with pytest.raises(ValueError, match="dtype"):
        cpu_module().spectral_norm_power_iteration(1, meta.data_ptr(), 2, 1, 1e-12,
                                                   sig.data_ptr(), 1)


# ------------------------------------------------------------------ GPU backends
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends_match_reference(backend, dtype):
    if dtype not in S.SPEC.dtypes[backend] or not backends.available(backend, "cuda"):
        pytest.skip(f"{backend} does not take {dtype} here")
    ws, us, vs = _vectors([(1, 1), (64, 3, 3, 3), (129, 1000), (1, 4096), (33, 7)], dtype)
    ws, us, vs = ([t.cuda() for t in ts] for ts in (ws, us, vs))
    out = {}
    for b in ("reference", backend):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        out[b] = (S.spectral_norm_power_iteration(ws, u2, v2, 2, backend=b), u2, v2)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for a, r in zip(out[backend], out["reference"], strict=True):
        torch.testing.assert_close(a, r, **tol)

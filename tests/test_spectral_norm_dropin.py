"""spectral_norm drop-in fidelity: what torch's parametrization accepts, genfast's accepts too.
Stacked spectral norms on one weight (torch's parametrization lists), complex weights (the
reference runs them; a compiled backend asked for by name says why not), and a converter that
leaves alone, and names, every layer genfast's spectral norm could not run."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, fast_backends
from _spectral_norm_cases import critic, sn_of
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast import backends
from genfast.nn.spectral_norm import (
    SpectralNorm,
    SpectralNormGroup,
    convert_spectral_norm,
    is_folded,
    spectral_norm,
)
from genfast.ops import spectral_norm as S

T64 = TOL[torch.float64]
# auto runs complex weights on the reference, with one fallback warning per process
REFERENCE_FALLBACK = pytest.mark.filterwarnings(
    "ignore::genfast.backends.BackendFallbackWarning")


def _close(a, b):
    torch.testing.assert_close(a, b, **T64)


def _twice(sn, dtype=torch.float64, seed=0, **kw):
    """A Linear with two spectral norms stacked on its weight by `sn` (each call may differ)."""
    torch.manual_seed(seed)
    m = nn.Linear(6, 5).to(dtype)
    first, second = sn if isinstance(sn, tuple) else (sn, sn)
    return second(first(m, **kw), **kw)


def _step_and_compare(ref, ours, x, modes=("train", "train", "eval", "train")):
    """Outputs, weight gradients and every u, v of the two models agree at each step."""
    for mode in modes:
        ref.train(mode == "train")
        ours.train(mode == "train")
        y_ref, y = ref(x), ours(x)
        params_ref, params = list(ref.parameters()), list(ours.parameters())
        g_ref = torch.autograd.grad(y_ref.abs().square().sum(), params_ref)
        g = torch.autograd.grad(y.abs().square().sum(), params)
        _close(y, y_ref)
        for a, b in zip(g, g_ref, strict=True):
            _close(a, b)
        for a, b in zip(ours.buffers(), ref.buffers(), strict=True):
            _close(a, b)


# ------------------------------------------------------------------ stacking
def test_two_spectral_norms_on_one_weight_match_torch():
    ref, ours = _twice(torch_sn), _twice(spectral_norm)
    plist = ours.parametrizations.weight
    assert len(plist) == 2 and all(isinstance(p, SpectralNorm) for p in plist)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert "parametrizations.weight.1._u" in ours.state_dict()
    _step_and_compare(ref, ours, torch.randn(3, 6, dtype=torch.float64))


@pytest.mark.parametrize("order", ["genfast on torch", "torch on genfast"])
def test_mixed_stacks_match_torch(order):
    mixed = (torch_sn, spectral_norm) if order == "genfast on torch" else (spectral_norm, torch_sn)
    ours = _twice(mixed)
    assert isinstance(sn_of(ours, i=1 if order == "genfast on torch" else 0), SpectralNorm)
    _step_and_compare(_twice(torch_sn), ours, torch.randn(3, 6, dtype=torch.float64))


def test_stacking_on_a_folded_layer_turns_folding_off():
    torch.manual_seed(0)
    m = spectral_norm(nn.Linear(6, 5).double(), fold=True)
    assert is_folded(m)
    spectral_norm(m)
    assert not is_folded(m)  # the folded forward would skip the second normalization
    _step_and_compare(_twice(torch_sn), m, torch.randn(3, 6, dtype=torch.float64))


def test_group_updates_the_first_and_layers_run_the_second():
    def model(sn):
        torch.manual_seed(0)  # float64 from the warm-up iterations on
        return nn.Sequential(sn(sn(nn.Linear(6, 5).double())), nn.Tanh(),
                             nn.Linear(5, 1).double())

    ref, ours = model(torch_sn), model(spectral_norm)
    group = SpectralNormGroup(ours)
    assert len(group) == 1  # the stacked one's input is not a stored parameter
    _step_and_compare(ref, ours, torch.randn(3, 6, dtype=torch.float64))


# ------------------------------------------------------------------ complex weights
@REFERENCE_FALLBACK
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_weights_match_torch(dtype):
    tol = T64 if dtype == torch.complex128 else dict(rtol=1e-4, atol=1e-5)
    for make in (lambda: nn.Linear(7, 5, dtype=dtype), lambda: nn.Linear(3, 9, dtype=dtype)):
        mods = []
        for sn in (torch_sn, spectral_norm):
            torch.manual_seed(0)
            mods.append(sn(make()))
        ref, ours = mods
        assert sn_of(ours)._u.dtype == dtype
        x = torch.randn(4, ref.in_features, dtype=dtype)
        for mode in ("train", "train", "eval", "train"):
            ref.train(mode == "train")
            ours.train(mode == "train")
            y_ref, y = ref(x), ours(x)
            (g_ref,) = torch.autograd.grad(y_ref.abs().sum(), ref.parametrizations.weight.original)
            (g,) = torch.autograd.grad(y.abs().sum(), ours.parametrizations.weight.original)
            torch.testing.assert_close(y, y_ref, **tol)
            torch.testing.assert_close(g, g_ref, **tol)
            torch.testing.assert_close(sn_of(ours)._v, sn_of(ref)._v, **tol)


@REFERENCE_FALLBACK
def test_complex_gradients_to_second_order():
    torch.manual_seed(0)
    m = spectral_norm(nn.Linear(4, 3, dtype=torch.complex128)).eval()  # fixed u, v
    sn = sn_of(m)
    w = m.parametrizations.weight.original.detach().clone().requires_grad_()
    x = torch.randn(2, 4, dtype=torch.complex128, requires_grad=True)

    def fn(w, x):
        return F.linear(x, sn(w))

    assert torch.autograd.gradcheck(fn, (w, x))
    assert torch.autograd.gradgradcheck(fn, (w, x))
    s = S.spectral_sigma(w, sn._u, sn._v, update=False)
    (g,) = torch.autograd.grad(s.real, w)
    # d Re(sigma) / dW for sigma = u^H W v, in autograd's convention: u conj(v)^T
    _close(g, torch.outer(sn._u, sn._v.conj()))


def test_complex_runs_on_the_reference_and_named_backends_say_why_not():
    w = torch.randn(5, 4, dtype=torch.complex64)
    u, v = (F.normalize(torch.randn(n, dtype=w.dtype), dim=0) for n in (5, 4))
    backends.reset_failures()  # so the one fallback warning per cause is emitted again
    with pytest.warns(backends.BackendFallbackWarning, match="complex64 not supported"):
        sigma = S.spectral_norm_power_iteration([w], [u.clone()], [v.clone()], 3)
    assert sigma.dtype == torch.complex64
    top = torch.linalg.svdvals(w)[0]
    assert sigma.abs().item() == pytest.approx(top.item(), rel=0.2)
    for name in [b for b in ("cpu", "triton") if backends.available(b)]:
        with pytest.raises(backends.BackendError, match=f"backend '{name}'.*complex64"):
            S.spectral_norm_power_iteration([w], [u.clone()], [v.clone()], backend=name)
    with pytest.raises(backends.BackendError, match="complex128"):
        spectral_norm(nn.Linear(3, 2, dtype=torch.complex128), backend="cpu")


# ------------------------------------------------------------------ the converter's checks
@pytest.mark.filterwarnings("ignore:An output with one or more elements was resized")
def test_converter_leaves_layers_genfast_could_not_run_and_names_them():
    torch.manual_seed(0)
    model = nn.Sequential(torch_sn(nn.Linear(4, 6)),                       # converts
                          torch_sn(nn.Linear(6, 6, dtype=torch.complex64)),  # cpu: real only
                          torch_sn(nn.Linear(6, 6)),                        # bad buffer, below
                          torch_sn(nn.Linear(6, 6).half()))                 # cpu: no float16
    model[2].parametrizations.weight[0]._u = torch.ones(3)  # torch's out= resizes it; genfast's
    #                                                         kernel would refuse it
    with pytest.warns(UserWarning, match="left 3 spectral norm") as rec:
        convert_spectral_norm(model, backend="cpu", fold=True)
    text = str(rec[0].message)
    assert "1.weight" in text and "complex64" in text
    assert "2.weight" in text and "_u is (3,)" in text
    assert "3.weight" in text and "float16" in text
    assert isinstance(sn_of(model[0]), SpectralNorm) and is_folded(model[0])
    for i in (1, 2, 3):
        assert not isinstance(sn_of(model[i]), SpectralNorm) and not is_folded(model[i])
    model[0](torch.randn(2, 4))  # every layer still runs its first forward
    model[1](torch.randn(2, 6, dtype=torch.complex64))
    model[2](torch.randn(2, 6))


@REFERENCE_FALLBACK
def test_converter_warns_about_nothing_when_everything_converts():
    model = critic(torch_sn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_spectral_norm(model)
    assert all(isinstance(sn_of(m), SpectralNorm) for m in model if hasattr(m, "parametrizations"))
    torch.manual_seed(0)
    cplx = torch_sn(nn.Linear(3, 2, dtype=torch.complex128))
    convert_spectral_norm(cplx)  # auto: the reference runs complex weights
    assert isinstance(sn_of(cplx), SpectralNorm)
    cplx(torch.randn(1, 3, dtype=torch.complex128))


@pytest.mark.parametrize("training", [True, False])
def test_one_node_read_matches_the_general_path_to_second_order(training):
    """A plain eager `.weight` read is one autograd node around the C++ kernel (the hot path);
    its value, buffer update, gradient and second-order gradient must be those of the general
    path (op + normalization node), here the reference backend."""
    import genfast

    if "cpu" not in fast_backends("spectral_norm"):
        pytest.skip("genfast._C is not built")
    torch.manual_seed(0)
    fast = spectral_norm(nn.Conv2d(3, 8, 3)).train(training)
    slow = spectral_norm(nn.Conv2d(3, 8, 3)).train(training)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 6, 6)

    def grads(m):
        w = m.parametrizations.weight.original
        y = m(x)
        (g,) = torch.autograd.grad(y.square().sum(), w, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), w)
        return y, g, gg, m.weight.grad_fn

    y, g, gg, node = grads(fast)
    with genfast.use_backend("reference"):
        y_ref, g_ref, gg_ref, node_ref = grads(slow)
    assert type(node).__name__ == "_StepBackward"  # the one-node path ran
    assert type(node_ref).__name__ != "_StepBackward"
    tol = dict(rtol=1e-4, atol=1e-5)
    for a, b in ((y, y_ref), (g, g_ref), (gg, gg_ref), (sn_of(fast)._u, sn_of(slow)._u),
                 (sn_of(fast)._v, sn_of(slow)._v)):
        torch.testing.assert_close(a, b, **tol)

"""PyTorch's own tests of the spectral-norm parametrization, ported to genfast.nn.spectral_norm.

Source: pytorch/pytorch test/nn/test_parametrization.py, class TestNNParametrization:
test_new_spectral_norm, test_new_spectral_norm_load_state_dict, test_new_spectral_norm_dim,
test_new_spectral_norm_forward and test_new_spectral_norm_value (every test of that file that
calls parametrizations.spectral_norm). Each upstream assertion is kept, in the same order, with
genfast's spectral_norm where torch's was registered; torch's own parametrize functions
(remove_parametrizations, is_parametrized) are still torch's, since genfast's layer is a
parametrization of theirs. Upstream's @swap([True, False]) is the `swap` fixture here.

Not ported: the DataParallel half of test_new_spectral_norm (apply_dp=True), which needs two
GPUs, and skips upstream without them too. assertEqual / assertNotEqual become
torch.testing.assert_close with its default tolerances (assertEqual's) and its negation.
Every assertion holds; genfast.nn.spectral_norm's docstring lists where genfast and torch
differ otherwise (zero weights, float32 rounding, error types).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import genfast.backends  # noqa: F401  (named in a warning filter)
from genfast.nn.spectral_norm import spectral_norm


@pytest.fixture(autouse=True)
def _seed():
    """upstream's TestCase.setUp seeds every test (common_utils.SEED, 1234 by default)."""
    torch.manual_seed(1234)


@pytest.fixture(params=[True, False], ids=["swap", "no_swap"])
def swap(request):
    """upstream's @swap([True, False]): module conversions by swap_tensors, or not."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(request.param)
    yield request.param
    torch.__future__.set_swap_module_params_on_conversion(before)


@pytest.fixture
def float64_default():
    """upstream's `with set_default_dtype(torch.double)`."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _equal(a, b):
    torch.testing.assert_close(a, b)


def _not_equal(a, b):
    with pytest.raises(AssertionError):
        torch.testing.assert_close(a, b)


def _gradcheck(fn, inputs, **kw):
    assert torch.autograd.gradcheck(fn, inputs, **{"check_batched_grad": True, **kw})


def test_new_spectral_norm_registration_and_removal(swap, float64_default):
    """The first half of test_new_spectral_norm: what is registered where, and removal."""
    m = spectral_norm(nn.Linear(5, 7))
    spectral_norm_m = m.parametrizations.weight[0]
    assert spectral_norm_m._u.size() == torch.Size([m.weight.size(0)])
    # .parametrizations.weight.original should be trainable
    assert hasattr(m.parametrizations.weight, "original")
    assert "original" in m.parametrizations.weight._parameters
    # u should be just a reused buffer
    assert hasattr(spectral_norm_m, "_u")
    assert "_u" in spectral_norm_m._buffers and "_v" in spectral_norm_m._buffers
    # weight should be a plain attribute, not counted as a buffer or a param
    assert m.weight is not None
    assert "weight" not in m._buffers and "weight" not in m._parameters
    assert m.parametrizations.weight.original.size() == m.weight.size()
    assert m.parametrizations.weight.original.stride() == m.weight.stride()

    m = parametrize.remove_parametrizations(m, "weight")
    assert not hasattr(m, "parametrizations")  # spectral_norm is the only parametrization
    assert "weight" in m._parameters

    # We can register spectral_norm multiple times on the same parameter and on multiple
    # parameters in the same module
    m = spectral_norm(m, "weight")
    m = spectral_norm(m, "weight")
    m = spectral_norm(m, "bias")
    # Removing a parametrization runs forward in eval mode if leave_parametrized=True
    m = parametrize.remove_parametrizations(m, "bias")
    assert "bias" in m._parameters
    assert hasattr(m, "parametrizations")
    assert "weight" not in m._parameters
    m = parametrize.remove_parametrizations(m, "weight")
    assert not hasattr(m, "parametrizations")
    assert "weight" in m._parameters
    assert not parametrize.is_parametrized(m)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_new_spectral_norm_training_and_eval(swap, float64_default, requires_grad):
    """The second half of test_new_spectral_norm, on the CPU (apply_dp=False)."""

    def get_modules():
        m = nn.Linear(3, 4)
        m.weight.requires_grad_(requires_grad)
        m = spectral_norm(m)
        return m, m, m.parametrizations.weight[0]

    input = torch.randn(2, 3)
    m, wrapped_m, spectral_norm_m = get_modules()
    assert hasattr(spectral_norm_m, "_u")
    u0, v0 = spectral_norm_m._u.clone(), spectral_norm_m._v.clone()

    # TEST TRAINING BEHAVIOR: gradient descent first, to modify the initial matrix
    opt = torch.optim.SGD(wrapped_m.parameters(), lr=0.1)
    opt.zero_grad()
    wrapped_m(input).sum().backward()
    opt.step()
    out = wrapped_m(input)
    if requires_grad:  # forward again: u and v are updated
        _not_equal(u0, spectral_norm_m._u)
        _not_equal(v0, spectral_norm_m._v)
        # backprop reaches the original weight
        torch.autograd.grad(out.sum(), m.parametrizations.weight.original)

    # backward works with multiple forwards; training mode, so u and v are reset to the same
    # values at each call for the finite differences
    saved_u, saved_v = spectral_norm_m._u.clone(), spectral_norm_m._v.clone()

    def fn(input):
        spectral_norm_m._u.data.copy_(saved_u)
        spectral_norm_m._v.data.copy_(saved_v)
        return wrapped_m(input) + wrapped_m(input)

    fn(input.clone().requires_grad_()).sum().backward()
    _gradcheck(fn, (input.clone().requires_grad_(),), check_batched_grad=False)

    # test removing: eval mode, so that removal does not run another power iteration
    m, wrapped_m, _ = get_modules()
    pre_remove_out = wrapped_m(input)
    if swap:  # with swap_tensors the autograd graph must not be alive anymore
        pre_remove_out = pre_remove_out.detach()
    m.eval()
    m = parametrize.remove_parametrizations(m, "weight")
    _equal(wrapped_m(input), pre_remove_out)

    spectral_norm(m)
    for _ in range(3):
        pre_remove_out = wrapped_m(input)
    if swap:
        pre_remove_out = pre_remove_out.detach()
    m.eval()
    m = parametrize.remove_parametrizations(m, "weight")
    _equal(wrapped_m(input), pre_remove_out)

    # TEST EVAL BEHAVIOR
    m, wrapped_m, spectral_norm_m = get_modules()
    wrapped_m(input)
    last_train_out = wrapped_m(input)
    last_train_u, last_train_v = spectral_norm_m._u.clone(), spectral_norm_m._v.clone()
    wrapped_m.zero_grad()
    wrapped_m.eval()
    eval_out0 = wrapped_m(input)
    _equal(eval_out0, last_train_out)  # eval gives the last training iteration's result
    _equal(eval_out0, wrapped_m(input))  # and more of it changes nothing
    _equal(last_train_u, spectral_norm_m._u)
    _equal(last_train_v, spectral_norm_m._v)

    # backward with multiple forwards in mixed training and eval modes
    saved_u, saved_v = spectral_norm_m._u.clone(), spectral_norm_m._v.clone()

    def fn_mixed(input):
        spectral_norm_m._u.data.copy_(saved_u)
        spectral_norm_m._v.data.copy_(saved_v)
        outs = []
        for mode in (True, False, True, False):
            wrapped_m.train(mode)
            outs.append(wrapped_m(input))
        return sum(outs)

    _gradcheck(fn_mixed, (input.clone().requires_grad_(),))
    if requires_grad:  # backprop reaches weight_orig in eval

        def fn_weight(weight):
            return wrapped_m(input)

        _gradcheck(fn_weight, (m.parametrizations.weight.original,))


@pytest.mark.parametrize("activate_times", [0, 3])
def test_new_spectral_norm_load_state_dict(swap, activate_times):
    inp = torch.randn(2, 3)
    m = nn.Linear(3, 5)
    snm = spectral_norm(m)
    snm.train()
    for _ in range(activate_times):
        snm(inp)
    state_dict = copy.deepcopy(snm.state_dict())
    assert set(state_dict) == {"parametrizations.weight.original", "bias",
                               "parametrizations.weight.0._v", "parametrizations.weight.0._u"}

    # non-strict loading works
    non_strict_state_dict = copy.deepcopy(state_dict)
    non_strict_state_dict["nonsense"] = "nonsense"
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "nonsense"'):
        snm.load_state_dict(non_strict_state_dict, strict=True)
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict["parametrizations.weight.original"]
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict["parametrizations.weight.0._u"]
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict["parametrizations.weight.0._v"]
    snm.load_state_dict(non_strict_state_dict, strict=False)
    non_strict_state_dict["weight"] = snm.weight.detach().clone()  # set W as a buffer
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict._metadata["parametrizations.weight.0"]  # remove metadata info
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict["weight"]  # remove W buffer
    snm.load_state_dict(non_strict_state_dict, strict=False)
    del non_strict_state_dict["bias"]
    snm.load_state_dict(non_strict_state_dict, strict=False)

    # normal state_dict; re-wrapping does not matter
    m = parametrize.remove_parametrizations(snm, "weight")
    snm = spectral_norm(m)
    snm.load_state_dict(state_dict)
    with torch.no_grad():
        snm.eval()
        out0_eval = snm(inp)
        snm.train()
        out1_train = snm(inp)
        out2_train = snm(inp)
        snm.eval()
        out3_eval = snm(inp)

    m = parametrize.remove_parametrizations(snm, "weight")
    snm = spectral_norm(m)
    snm.load_state_dict(state_dict)  # normal loading
    with torch.no_grad():
        snm.eval()
        _equal(out0_eval, snm(inp))
        snm.train()
        _equal(out1_train, snm(inp))
        _equal(out2_train, snm(inp))
        snm.eval()
        _equal(out3_eval, snm(inp))


def test_new_spectral_norm_dim(swap):
    inp = torch.randn(2, 3, 10, 12)
    m = spectral_norm(nn.ConvTranspose2d(3, 4, (5, 6)))
    snm = m.parametrizations.weight[0]
    m(inp)  # this should not run into incompatible shapes
    assert snm._u.shape == m.parametrizations.weight.original[0, :, 0, 0].shape  # u's dim


def test_new_spectral_norm_forward(swap):
    input = torch.randn(3, 5)
    m = spectral_norm(nn.Linear(5, 7))
    snm = m.parametrizations.weight[0]
    # naive forward
    _weight = m.parametrizations.weight.original
    _bias, _v = m.bias, snm._v
    _weight_mat = _weight.view(_weight.size(0), -1)
    _u = F.normalize(torch.mv(_weight_mat, _v), dim=0, eps=1e-12)
    _v = F.normalize(torch.mv(_weight_mat.t(), _u), dim=0, eps=1e-12)
    _weight.data /= torch.dot(_u, torch.matmul(_weight_mat, _v))
    out_hat = F.linear(input, _weight, _bias)
    expect_out = m(input)
    _equal(expect_out, out_hat)


@pytest.mark.filterwarnings("ignore::genfast.backends.BackendFallbackWarning")  # complex
def test_new_spectral_norm_value(swap):
    """The spectral norm (the top singular value) of a diagonal matrix is its largest |entry|.
    One test for both dtypes, as upstream: the complex weights are the seed's second draw."""
    for dtype in (torch.float, torch.cfloat):
        m = nn.Linear(2, 2, dtype=dtype)
        with torch.no_grad():
            x = torch.diagonal(m.weight)
            m.weight = nn.Parameter(torch.diag(x))
            spectral_norm(m)
            # weights rescaled by the spectral norm, i.e. the largest diagonal element in norm
            expected = torch.diag(x / x.abs().max())
            _equal(m.weight.data, expected)

"""PyTorch's own tests of nn.LSTM / nn.LSTMCell (test/test_nn.py, TestNN and TestNNDeviceType;
test/nn/test_packed_sequence.py) run against genfast.nn, restated in our words. This file: the
cells, argument and device checks, states and values against a second implementation;
test_lstm_upstream_training.py: dropout, weight handling, packed sequences, autograd.

Every upstream assertion that concerns an LSTM is kept. Upstream tests that compare two torch
implementations (CPU against cuDNN, "fused" against unfused) compare genfast against torch's
CPU LSTM here; tests that need a second device use the meta device as the other one; tests
written for nn.RNN (dropout placement, dropout state) are restated for the LSTM, whose output
cannot be predicted by hand, through properties that say the same thing. Where an assertion
cannot hold for genfast, the test's docstring says why.
"""

import copy
import itertools
import re
import warnings

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn

from genfast.nn import LSTM, LSTMCell, convert_lstm

F64 = dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def genfast_copy(module):
    """genfast's twin of a torch module: a deep copy, converted (same weights)."""
    return convert_lstm(copy.deepcopy(module))


# --------------------------------------------------------------------------- cells
@pytest.mark.parametrize("bias", [True, False])
def test_LSTM_cell(bias):
    """Upstream is a smoke test (six steps, then backward); we also check torch's values."""
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    ref = nn.LSTMCell(10, 20, bias=bias)
    cell = genfast_copy(ref)
    hx, cx = torch.randn(3, 20), torch.randn(3, 20)
    h_ref, c_ref = hx, cx
    for _ in range(6):
        hx, cx = cell(x, (hx, cx))
        h_ref, c_ref = ref(x, (h_ref, c_ref))
    (hx + cx).sum().backward()
    torch.testing.assert_close(hx, h_ref, rtol=1e-5, atol=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())


def test_RNN_cell_no_broadcasting():
    def check(x, hx):
        with pytest.raises(RuntimeError):
            LSTMCell(10, 20)(x, hx)

    x, good = torch.randn(3, 10), torch.randn(3, 20)
    for bad in (torch.randn(1, 20), torch.randn(3, 1)):  # batch, then hidden size
        check(x, (bad, good))
        check(x, (good, bad))
    check(torch.randn(3, 1), (good, good))  # input size


def test_LSTM_cell_forward_input_size():
    with pytest.raises(Exception):  # noqa: B017  (upstream asks for any exception)
        LSTMCell(10, 20)(torch.randn(3, 11), (torch.randn(3, 20), torch.randn(3, 20)))


def test_LSTM_cell_forward_hidden_size():
    cell = LSTMCell(10, 20)
    x, hx, cx = torch.randn(3, 10), torch.randn(3, 21), torch.randn(3, 20)
    with pytest.raises(Exception):  # noqa: B017
        cell(x, (hx, cx))
    with pytest.raises(Exception):  # noqa: B017
        cell(x, (cx, hx))


def test_lstmcell_backward_only_one_output_grad():
    """An undefined gradient for one of (h, c) does not break the backward (pytorch#11872)."""
    cell = LSTMCell(2, 3, dtype=torch.float64)
    s = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for i in range(2):
        cell(s)[i].sum().backward()
        assert s.grad is not None and s.grad.abs().sum().item() != 0


# --------------------------------------------------------------------------- argument checks
def test_cudnn_forward_exception():
    """Upstream runs this on every device (its name is historical)."""
    cases = [(LSTM(10, 20, batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
             (LSTM(10, 20, batch_first=True, proj_size=10),
              (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19)))]
    for rnn, hidden in cases:
        with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
            rnn(torch.randn(2, 3, 10), hidden)
        with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to "
                                                         "input_size")):
            rnn(torch.randn(2, 3, 3))


def _bad_shapes(shape, dims):
    for dim in dims:
        bad = list(shape)
        bad[dim] = 7  # a prime no size divides
        yield tuple(bad)


def test_rnn_args_check():
    T, B, n_in, H, L = 6, 4, 3, 5, 2
    good_x, good_h = (T, B, n_in), (L, B, H)

    def check(x_shape, h_shape):
        x, h = torch.randn(x_shape), torch.randn(h_shape)
        pairs = [(h, h)] if h_shape == good_h else [(h, torch.randn(good_h)),
                                                    (torch.randn(good_h), h)]
        for hidden in pairs:
            with pytest.raises(RuntimeError):
                LSTM(n_in, H, L)(x, hidden)

    for x_shape in _bad_shapes(good_x, (1, 2)):  # input batch, input size
        check(x_shape, good_h)
    for h_shape in _bad_shapes(good_h, (1, 2, 0)):  # hidden batch, size, layers
        check(good_x, h_shape)


def test_projections_lstm_args_check():
    T, B, n_in, H, P, L = 6, 4, 3, 5, 2, 2
    good_x, good_h, good_c = (T, B, n_in), (L, B, P), (L, B, H)

    def check(x_shape, h_shape, c_shape):
        with pytest.raises(RuntimeError):
            LSTM(n_in, H, L, proj_size=P)(torch.randn(x_shape),
                                      (torch.randn(h_shape), torch.randn(c_shape)))

    for x_shape in _bad_shapes(good_x, (1, 2)):
        check(x_shape, good_h, good_c)
    for dim in (1, 2, 0):  # both states wrong together
        (h_shape,), (c_shape,) = _bad_shapes(good_h, (dim,)), _bad_shapes(good_c, (dim,))
        check(good_x, h_shape, c_shape)
    check(good_x, (H, B, P), good_c)  # h's leading size set to the hidden size
    check(good_x, (7, B, P), good_c)
    check(good_x, good_h, (7, B, H))


@pytest.mark.parametrize("proj_size", [0, 2])
def test_rnn_check_device(proj_size):
    """Upstream needs two CUDA devices; the meta device plays the other device here, and the
    same messages must come out in the same cases."""
    n_in, H, L, B, T = 3, 5, 2, 4, 6
    model = LSTM(n_in, H, L, proj_size=proj_size)
    other = copy.deepcopy(model).to("meta")
    x = torch.randn(T, B, n_in)
    h = torch.randn(L, B, proj_size or H)
    c = torch.randn(L, B, H)
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same"):
        model(x.to("meta"))
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same"):
        other(x)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same"):
        model(x, (h.to("meta"), c.to("meta")))
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same"):
        other(x.to("meta"), (h, c))
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same"):
        model(x.to("meta"), (h.to("meta"), c))  # the two states on different devices


def test_error_RNN_seq_len_zero():
    for bidirectional in (True, False):
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
            LSTM(5, 6, bidirectional=bidirectional)(torch.ones(0, 10, 5))


def test_RNN_input_size_zero():
    rnn = LSTM(input_size=3, hidden_size=4)
    out = rnn(torch.zeros(5, 0, 3))
    assert out[0].shape == (5, 0, 4)
    out[0].sum().backward()  # must not raise


# --------------------------------------------------------------------------- states and values
def test_rnn_initial_hidden_state():
    rnn = LSTM(30, 20, 2)
    x = torch.randn(10, 32, 30)
    zeros = torch.zeros(2, 32, 20)
    out1, hid1 = rnn(x, (zeros, zeros))
    out2, hid2 = rnn(x)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(hid1, hid2)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projections_lstm_initial_hidden_state(bidirectional):
    rnn = LSTM(30, 20, 2, bidirectional=bidirectional, proj_size=10)
    D = 2 if bidirectional else 1
    x = torch.randn(10, 32, 30)
    out1, hid1 = rnn(x, (torch.zeros(2 * D, 32, 10), torch.zeros(2 * D, 32, 20)))
    out2, hid2 = rnn(x)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(hid1, hid2)


def _noncontig(t):
    """upstream's make_noncontig: the same values, every other element of a wider tensor."""
    return torch.stack([torch.zeros_like(t), t], t.dim()).select(t.dim(), 1)


def _forward_backward(rnn, x, hx, cx, grads):
    """Run and backpropagate (output, h_n, c_n) against `grads`; returns everything compared."""
    grad_out, grad_h, grad_c = grads
    if isinstance(x, rnn_utils.PackedSequence):
        data = x.data.detach().clone().requires_grad_()
        inp, leaf = rnn_utils.PackedSequence(data, x.batch_sizes), data
    else:
        inp = leaf = x.detach().clone().requires_grad_()
    h0 = hx.detach().clone().requires_grad_()
    c0 = cx.detach().clone().requires_grad_()
    out, (h, c) = rnn(inp, (h0, c0))
    out = out.data if isinstance(out, rnn_utils.PackedSequence) else out
    torch.autograd.backward([out, h, c], [grad_out, grad_h, grad_c])
    return [out, h, c, leaf.grad, h0.grad, c0.grad] + [p.grad for p in rnn.parameters()]


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_RNN_cpu_vs_cudnn(dropout, proj_size):
    """Upstream runs the same LSTM on the CPU and with cuDNN over every combination of bias,
    bidirectional, batch_first, contiguity and variable lengths (given as a list or a tensor),
    with dropout 0 and 1 (the two values whose outcome does not depend on the random draw),
    and compares outputs, final states and every gradient to 5e-5. Here genfast plays the
    second implementation (float64, so the bound is tighter)."""
    n_in, H, L, T, B = 10, 6, 2, 7, 6
    P = proj_size or H
    lengths = [7, 5, 5, 2, 1, 1]
    for bias, bidir, batch_first, contig, variable, lens_tensor in itertools.product(
            (True, False), repeat=6):
        if variable is False and lens_tensor:
            continue  # lengths unused: the same case as lens_tensor False
        torch.manual_seed(0)
        D = 2 if bidir else 1
        ref = nn.LSTM(n_in, H, L, bias=bias, dropout=dropout, bidirectional=bidir,
                      batch_first=batch_first, proj_size=proj_size, dtype=torch.float64)
        ours = genfast_copy(ref)
        shape = (B, T) if batch_first else (T, B)
        x = torch.randn(*shape, n_in, dtype=torch.float64)
        grad_out = torch.randn(*shape, P * D, dtype=torch.float64)
        hx = torch.randn(L * D, B, P, dtype=torch.float64)
        cx = torch.randn(L * D, B, H, dtype=torch.float64)
        grad_h = torch.randn(L * D, B, P, dtype=torch.float64)
        grad_c = torch.randn(L * D, B, H, dtype=torch.float64)
        if not contig:
            x, hx, cx, grad_out, grad_h, grad_c = map(_noncontig,
                                                      (x, hx, cx, grad_out, grad_h, grad_c))
        if variable:
            lens = torch.tensor(lengths) if lens_tensor else lengths
            x = rnn_utils.pack_padded_sequence(x, lens, batch_first=batch_first)
            grad_out = rnn_utils.pack_padded_sequence(grad_out, lens,
                                                      batch_first=batch_first).data
        grads = (grad_out, grad_h, grad_c)
        want = _forward_backward(ref, x, hx, cx, grads)
        got = _forward_backward(ours, x, hx, cx, grads)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("bias", [True, False])
def test_rnn_fused(bias):
    """Upstream compares the CPU LSTM with the CUDA one (cuDNN off); genfast against torch."""
    torch.manual_seed(1)
    n_in, H, L, T, B = 10, 6, 2, 7, 6
    ref = nn.LSTM(n_in, H, L, bias=bias, dtype=torch.float64)
    ours = genfast_copy(ref)
    x = torch.randn(T, B, n_in, dtype=torch.float64)
    hx = torch.randn(L, B, H, dtype=torch.float64)
    grads = (torch.randn(T, B, H, dtype=torch.float64), torch.randn(L, B, H, dtype=torch.float64))
    grads = (grads[0], grads[1], grads[1] + 1)
    want = _forward_backward(ref, x, hx, hx + 1, grads)
    got = _forward_backward(ours, x, hx, hx + 1, grads)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize(("proj_size", "name"), [(0, "weight_hh_l0"), (3, "weight_hr_l0")])
def test_RNN_cudnn_weight_norm(proj_size, name):
    """Upstream moves the weight-normed LSTM to CUDA; here it stays on the CPU, which is the
    part under test: the legacy weight_norm's pre-hook replaces a flat weight each call."""
    torch.manual_seed(2)
    m = LSTM(10, 6, 2, proj_size=proj_size)
    x = torch.randn(7, 6, 10)
    expected = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is legacy
        m = torch.nn.utils.weight_norm(m, name=name)
    got = m(x)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    m = torch.nn.utils.remove_weight_norm(m, name=name)
    torch.testing.assert_close(m(x)[0], expected[0], rtol=1e-5, atol=1e-6)


def test_partial_flat_weights():
    """Upstream deletes a weight, moves the module to CUDA (which must not fail with the weight
    missing) and puts the moved weight back; here the move is to float64."""
    m = LSTM(10, 6, 2)
    inp = torch.randn(3, 2, 10)
    expected = m(inp)
    orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.double()
    m.weight_hh_l0 = orig.double()
    torch.testing.assert_close(m(inp.double())[0].float(), expected[0], rtol=1e-5, atol=1e-6)


def test_save_lstm_compatibility():
    """A module pickled before proj_size existed (torch < 1.8) still loads and runs."""
    model = LSTM(2, 3)
    x = torch.randn(32, 5, 2)
    expected = model(x)
    state = dict(model.__dict__)
    del state["proj_size"]
    loaded = LSTM(2, 3)
    loaded.__setstate__(state)
    torch.testing.assert_close(loaded(x), expected)

"""PyTorch's own tests of nn.LSTM / nn.LSTMCell (test/test_nn.py, TestNN and TestNNDeviceType;
test/nn/test_packed_sequence.py) run against genfast.nn, restated in our words.

Every upstream assertion that concerns an LSTM is kept. Upstream tests that compare two torch
implementations (CPU against cuDNN, "fused" against unfused) compare genfast against torch's
CPU LSTM here; tests that need a second device use the meta device as the other one; tests
written for nn.RNN (dropout placement, dropout state) are restated for the LSTM, whose output
cannot be predicted by hand, through properties that say the same thing. Where an assertion
cannot hold for genfast, the test's docstring says why.
"""

import copy
import io
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


def assert_raises_like_torch(exc, fn_ours, fn_torch=None, match=None):
    with pytest.raises(exc, match=match):
        fn_ours()
    if fn_torch is not None:
        with pytest.raises(exc):
            fn_torch()


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


@pytest.mark.xfail(strict=True, reason="genfast/ops/lstm.py's kernel backward reshapes the "
                   "empty h_prev of a zero batch with -1 (reported to the lead)")
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


# --------------------------------------------------------------------------- dropout
def _first_layer_state(rnn, x, hx=None):
    y, (h, c) = rnn(x, hx)
    return y, h[0], c[0]


@pytest.mark.parametrize("p", [0.0, 0.276, 0.731, 1.0])
@pytest.mark.parametrize("train", [True, False])
def test_RNN_dropout(p, train):
    """Upstream checks, with an all-ones ReLU RNN whose output it can predict, that dropout
    sits between the layers: not on the first layer's state, all of the second layer's input
    when p = 1, none in eval (and that its output is uniform, a property of those weights).
    An LSTM's output cannot be predicted by hand, so the placement is checked against runs
    without dropout and with a zero second-layer input."""
    torch.manual_seed(3)
    rnn = LSTM(10, 16, 2, bias=False, dropout=p, dtype=torch.float64).train(train)
    plain = LSTM(10, 16, 2, bias=False, dtype=torch.float64)
    plain.load_state_dict(rnn.state_dict())
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    hx = (torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(2, 3, 16, dtype=torch.float64))
    out, (h, c) = rnn(x, hx)
    want, (h_want, c_want) = plain(x, hx)
    # The first layer never sees dropout.
    torch.testing.assert_close(h[0], h_want[0], **F64)
    torch.testing.assert_close(c[0], c_want[0], **F64)
    if p == 0 or not train:
        torch.testing.assert_close(out, want, **F64)
    elif p == 1:
        # The second layer's whole input is dropped: it runs on zeros.
        second = nn.LSTM(16, 16, bias=False, dtype=torch.float64)
        second.load_state_dict({k.replace("l1", "l0"): v for k, v in rnn.state_dict().items()
                                if k.endswith("l1")})
        zeros_out, _ = second(torch.zeros(4, 3, 16, dtype=torch.float64), (hx[0][1:], hx[1][1:]))
        torch.testing.assert_close(out, zeros_out, **F64)
    else:
        assert not torch.allclose(out, want)


@pytest.mark.parametrize("p", [0.0, 0.1234])
@pytest.mark.parametrize("train", [True, False])
def test_RNN_dropout_state(p, train):
    """Two calls draw different masks in training (p > 0), and the module pickles whole."""
    torch.manual_seed(4)
    rnn = LSTM(20, 20, 2, bias=False, dropout=p).train(train)
    x = torch.rand(1, 1, 20)
    hx = (torch.rand(2, 1, 20), torch.rand(2, 1, 20))
    out1, hy1 = rnn(x, hx)
    out2, hy2 = rnn(x, hx)
    buf = io.BytesIO()
    torch.save(rnn, buf)
    buf.seek(0)
    rnn2 = torch.load(buf, weights_only=False)
    assert type(rnn2) is LSTM
    rnn2.flatten_parameters()
    out3, hy3 = rnn2(x, hx)
    if p == 0 or not train:
        torch.testing.assert_close(out1, out2)
        torch.testing.assert_close(out1, out3)
        torch.testing.assert_close(hy1, hy2)
        torch.testing.assert_close(hy1, hy3)
    else:
        assert not torch.equal(out1, out2)
        assert not torch.equal(out1, out3)
        # Only the last layer's state sees the mask.
        assert not torch.equal(hy1[0][1], hy2[0][1])
        assert not torch.equal(hy1[0][1], hy3[0][1])


@pytest.mark.parametrize("train", [True, False])
def test_RNN_change_dropout(train):
    torch.manual_seed(5)
    rnn = LSTM(20, 20, 2, dropout=0, dtype=torch.float64).train(train)
    x = torch.rand(3, 2, 20, dtype=torch.float64)
    prev = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        out1, hy1 = rnn(x)
        out2, hy2 = rnn(x)
        if p in (0, 1) or not train:
            torch.testing.assert_close(out1, out2)
            torch.testing.assert_close(hy1, hy2)
        else:
            assert not torch.equal(out1, out2)
            assert not torch.equal(hy1[0], hy2[0])
        if prev is not None:
            if train:
                assert not torch.equal(out1, prev) and not torch.equal(out2, prev)
            else:
                torch.testing.assert_close(out1, prev)
                torch.testing.assert_close(out2, prev)
        prev = out1.detach()


# --------------------------------------------------------------------------- weights
@pytest.mark.parametrize("proj_size", [0, 3])
def test_cudnn_weight_tying(proj_size):
    """Upstream ties bias_ih_l0_reverse to bias_ih_l0, trains a step on CUDA and compares with
    the CPU; here genfast and torch take the same step and are compared."""
    torch.manual_seed(6)
    ref = nn.LSTM(10, 6, batch_first=True, bidirectional=True, proj_size=proj_size,
                  dtype=torch.float64)
    ref.bias_ih_l0_reverse = ref.bias_ih_l0
    ours = genfast_copy(ref)
    assert ours.bias_ih_l0_reverse is ours.bias_ih_l0
    x = torch.randn(5, 4, 10, dtype=torch.float64)
    hx = (torch.randn(2, 5, proj_size or 6, dtype=torch.float64),
          torch.randn(2, 5, 6, dtype=torch.float64))
    for m in (ref, ours):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        m(x, hx)[0].sum().backward()
        opt.step()
    for a, b in zip(ours(x, hx), ref(x, hx), strict=True):
        torch.testing.assert_close(a, b, **F64)


def test_cudnn_weight_format():
    """Upstream checks that cuDNN warns once when a weight no longer sits in its flat buffer
    and still computes the same. genfast has no flat buffer, so there is nothing to warn
    about: the same outputs and gradients, no warning, and the weight still shares storage
    with the tensor it was set to."""
    torch.manual_seed(7)
    for proj_size in (0, 10):
        rnn = LSTM(10, 20, batch_first=True, proj_size=proj_size)
        x = torch.randn(5, 4, 10, requires_grad=True)
        hx = (torch.randn(1, 5, proj_size or 20, requires_grad=True),
              torch.randn(1, 5, 20, requires_grad=True))
        leaves = [x, *hx, *rnn.parameters()]
        rnn(x, hx)[0].sum().backward()
        grads = [v.grad.clone() for v in leaves]
        out = rnn(x, hx)[0]
        for v in leaves:
            v.grad = None
        weight = rnn.weight_hh_l0
        data = weight.data.clone()
        with torch.no_grad():
            weight.set_(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out2 = rnn(x, hx)[0]
        out2.sum().backward()
        torch.testing.assert_close(out2, out)
        for v, g in zip(leaves, grads, strict=True):
            torch.testing.assert_close(v.grad, g)
        data[:] = 4
        torch.testing.assert_close(rnn.weight_hh_l0.data, data)


# --------------------------------------------------------------------------- packed sequences
@pytest.mark.parametrize(("enforce_sorted", "lengths"),
                         [(True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]),
                          (False, [10, 10, 6, 2, 2, 1, 1]), (False, [2, 1, 3, 2, 10, 5, 3])])
@pytest.mark.parametrize("default_hiddens", [True, False])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_variable_sequence(enforce_sorted, lengths, default_hiddens, proj_size):
    """Each sequence run on its own equals the packed batch: outputs (zero-padded), final
    states, lengths, and the gradients of the input and of every parameter."""
    torch.manual_seed(8)
    n_in, H, L = 3, 4, 2
    lstm = LSTM(n_in, H, L, bidirectional=True, proj_size=proj_size)
    lstm2 = copy.deepcopy(lstm)
    T, B = max(lengths), len(lengths)
    x_leaf = torch.randn(T, B, n_in, requires_grad=True)
    h0 = None if default_hiddens else (torch.randn(2 * L, B, proj_size or H),
                                       torch.randn(2 * L, B, H))
    outs, hiddens = [], []
    for i, n in enumerate(lengths):
        hi = None if h0 is None else tuple(t[:, i:i + 1].contiguous() for t in h0)
        out, hid = lstm2(x_leaf[:n, i:i + 1], hi)
        outs.append(torch.cat([out, out.new_zeros(T - n, 1, out.shape[2])]))
        hiddens.append(hid)
    seq_out = torch.cat(outs, 1)
    seq_hidden = tuple(torch.cat(h, 1) for h in zip(*hiddens, strict=True))
    packed = rnn_utils.pack_padded_sequence(x_leaf, lengths, enforce_sorted=enforce_sorted)
    packed_out, packed_hidden = lstm(packed, h0)
    unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
    tol = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(packed_hidden, seq_hidden, **tol)
    torch.testing.assert_close(unpacked, seq_out, **tol)
    assert unpacked_len.tolist() == lengths
    seq_out.sum().backward()
    grad_x = x_leaf.grad.clone()
    x_leaf.grad.zero_()
    unpacked.sum().backward()
    torch.testing.assert_close(x_leaf.grad, grad_x, **tol)
    for p1, p2 in zip(lstm.parameters(), lstm2.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=0, atol=2e-4)


def test_pack_sequence_through_the_lstm():
    """test_packed_sequence.py's pack_sequence / pack_padded_sequence compatibility, through
    the module: the two packings of the same (sorted or unsorted) batch give the same output,
    which unpacks to the padded batch's layout, in the caller's order."""
    torch.manual_seed(9)
    lstm = LSTM(5, 4, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n * n, 5, dtype=torch.float64) for n in range(4, 0, -1)]
    shuffled = [seqs[i] for i in (2, 0, 3, 1)]
    for batch, sorted_ in ((seqs, True), (seqs, False), (shuffled, False)):
        lengths = [len(s) for s in batch]
        padded = rnn_utils.pad_sequence(batch)
        a = lstm(rnn_utils.pack_sequence(batch, enforce_sorted=sorted_))[0]
        b = lstm(rnn_utils.pack_padded_sequence(padded, lengths, enforce_sorted=sorted_))[0]
        torch.testing.assert_close(a.data, b.data, **F64)
        out, out_lengths = rnn_utils.pad_packed_sequence(a)
        assert out_lengths.tolist() == lengths
        for i, s in enumerate(batch):  # row i is sequence i, run alone
            torch.testing.assert_close(out[:len(s), i], lstm(s)[0], **F64)
            assert not out[len(s):, i].any()


def test_pack_padded_sequence_gradient_stops_at_the_padding():
    """test_packed_sequence.py checks that the padded positions get no gradient through the
    packing; through the LSTM too."""
    torch.manual_seed(10)
    lstm = LSTM(5, 3, num_layers=2, bidirectional=True)
    padded = torch.randn(10, 4, 5, requires_grad=True)
    lengths = [10, 8, 4, 2]
    out = lstm(rnn_utils.pack_padded_sequence(padded, lengths))[0]
    out.data.sum().backward()
    for i, n in enumerate(lengths):
        assert padded.grad[:n, i].abs().sum() > 0
        assert not padded.grad[n:, i].any()


# --------------------------------------------------------------------------- autograd
def test_rnn_retain_variables():
    """Backward through the same graph five times (retain_graph) gives the same gradients."""
    rnn = LSTM(10, 20, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    out = rnn(x)
    out[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        out[0].sum().backward(retain_graph=True)
        again = [x.grad] + [p.grad for p in rnn.parameters()]
        for a, b in zip(again, grads, strict=True):
            torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("proj_size", [0, 1])
def test_LSTM_grad_and_gradgrad(proj_size):
    """Upstream (CUDA) runs gradcheck and gradgradcheck of the LSTM over its input, states and
    weights; here on the CPU in float64, small."""
    torch.manual_seed(11)
    H, P = 2, proj_size or 2
    rnn = LSTM(2, H, num_layers=1, proj_size=proj_size, dtype=torch.float64)
    names = [n for n, _ in rnn.named_parameters()]
    x = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(1, 2, P, dtype=torch.float64, requires_grad=True)
    cx = torch.randn(1, 2, H, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in rnn.parameters()]

    def fn(x, hx, cx, *params):
        out, (h, c) = torch.func.functional_call(rnn, dict(zip(names, params, strict=True)),
                                                 (x, (hx, cx)))
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, hx, cx, *params))
    assert torch.autograd.gradgradcheck(fn, (x, hx, cx, *params))


def test_LSTM_differentiable_backward_using_oneDNN():
    """Upstream checks that the CPU (oneDNN) LSTM's backward can itself be differentiated:
    the input gradient taken with create_graph, then a loss on it backpropagated. The same,
    equal to torch's."""
    torch.manual_seed(12)
    ref = nn.LSTM(10, 20, num_layers=2, dtype=torch.float64)
    ours = genfast_copy(ref)
    x = torch.randn(5, 3, 10, dtype=torch.float64)

    def second_order(m):
        xx = x.clone().requires_grad_()
        out, (h, c) = m(xx)
        (gx,) = torch.autograd.grad(out.sum() + h.sum() + c.sum(), xx, create_graph=True)
        gx.square().sum().backward()
        return [gx.detach(), *[p.grad for p in m.parameters()]]

    for a, b in zip(second_order(ours), second_order(ref), strict=True):
        torch.testing.assert_close(a, b, **F64)

"""PyTorch's own tests of nn.LSTM (test/test_nn.py, TestNN and TestNNDeviceType;
test/nn/test_packed_sequence.py) run against genfast.nn, restated in our words: dropout, weight
handling (tying, replaced storage), packed sequences, autograd (retain_graph, gradcheck and
gradgradcheck, a differentiated backward). The rest, and the conventions of the port, are in
test_lstm_upstream.py; where an upstream assertion cannot hold, the test's docstring says why.
"""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn

from genfast.nn import LSTM, convert_lstm

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


# --------------------------------------------------------------------------- dropout
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


def test_pack_sequence_batch_sizes_throw():
    """Upstream builds a CUDA LSTM and a PackedSequence whose batch_sizes live on the GPU; the
    constructor refuses it before the LSTM is reached. The meta device stands in for CUDA."""
    LSTM(3, 4, bidirectional=True, num_layers=2).to("meta")
    with pytest.raises(ValueError, match="batch_sizes should always be on CPU"):
        rnn_utils.PackedSequence(torch.rand(5, 3, device="meta"),
                                 torch.tensor([1, 1, 1, 1, 1], device="meta"))

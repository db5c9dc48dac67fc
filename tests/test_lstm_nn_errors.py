"""genfast.nn.LSTM / LSTMCell on bad input raise what torch.nn.LSTM / LSTMCell raise (the same
exception type, genfast's message naming the problem), and bad constructor arguments are
named; empty batches run as torch's do."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from genfast.nn import LSTM, LSTMCell

_X = torch.randn(5, 2, 3)
_Z = torch.zeros
BAD_LSTM = [  # (what, input, hx, genfast's message); torch must raise the same type
    ("4-D input", torch.randn(2, 5, 2, 3), None, "Expected input to be 2D or 3D"),
    ("input_size", torch.randn(5, 2, 4), None, "must be equal to input_size"),
    ("dtype", _X.double(), None, "does not match weight dtype"),
    ("h0 shape", _X, (_Z(2, 3, 4), _Z(2, 2, 4)), r"Expected hidden\[0\] size"),
    ("c0 shape", _X, (_Z(2, 2, 4), _Z(2, 2, 5)), r"Expected hidden\[1\] size"),
    ("2-D states, batched input", _X, (_Z(2, 4), _Z(2, 4)), "should also be 3-D"),
    ("3-D states, unbatched input", _X[:, 0], (_Z(2, 1, 4), _Z(2, 1, 4)), "also be 2-D"),
    ("empty sequence", torch.randn(0, 2, 3), None, "sequence length"),
    ("input device", _X.to("meta"), None, "Input and parameter tensors"),
    ("state device", _X, (_Z(2, 2, 4, device="meta"),) * 2, "Input and hidden tensors"),
    ("packed states' batch", pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]),
     (_Z(2, 1, 4), _Z(2, 1, 4)), r"Expected hidden\[0\] size"),
]
BAD_CELL = [
    ("3-D input", torch.randn(2, 1, 3), None, "Expected input to be 1D or 2D"),
    ("3-D state", torch.randn(2, 3), (_Z(1, 2, 4), _Z(1, 2, 4)), r"Expected hx\[0\]"),
    ("one state", torch.randn(2, 3), (_Z(2, 4),), "two hidden states"),
    ("input_size", torch.randn(2, 5), None, "inconsistent input_size"),
    ("batch", torch.randn(2, 3), (_Z(3, 4), _Z(3, 4)), "doesn't match hidden0 batch"),
    ("hidden_size", torch.randn(2, 3), (_Z(2, 4), _Z(2, 5)), "hidden1 has inconsistent"),
    ("unbatched input, batched state", torch.randn(3), (_Z(1, 4), _Z(1, 4)), "hidden0"),
    ("dtype", torch.randn(2, 3).double(), None, "dtype"),
]


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the type itself is what is compared)
        return e
    raise AssertionError("no error raised")


@pytest.mark.parametrize(("what", "x", "hx", "msg"), BAD_LSTM, ids=[c[0] for c in BAD_LSTM])
def test_bad_lstm_input_raises_torchs_error_type(what, x, hx, msg):
    ref = nn.LSTM(3, 4, num_layers=2)
    ours = LSTM(3, 4, num_layers=2)
    want = _raised(lambda: ref(x, hx))
    with pytest.raises(type(want), match=msg):
        ours(x, hx)


@pytest.mark.parametrize(("what", "x", "hx", "msg"), BAD_CELL, ids=[c[0] for c in BAD_CELL])
def test_bad_cell_input_raises_torchs_error_type(what, x, hx, msg):
    want = _raised(lambda: nn.LSTMCell(3, 4)(x, hx))
    with pytest.raises(type(want), match=msg):
        LSTMCell(3, 4)(x, hx)


def test_packed_input_of_the_wrong_width_raises():
    """torch's CPU LSTM runs such input without a word; genfast checks it as it checks padded
    input."""
    with pytest.raises(RuntimeError, match="must be equal to input_size"):
        LSTM(3, 4)(pack_sequence([torch.randn(3, 4)]))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        LSTM(3, 4, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        LSTMCell(3, 4, backend="fast")
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        LSTM(3, 4, num_layers=2, dropout=1.5)
    assert "backend='reference'" in repr(LSTM(3, 4, backend="reference"))
    # Empty batches run as torch's do.
    assert LSTM(3, 4)(torch.randn(5, 0, 3))[0].shape == (5, 0, 4)
    assert LSTMCell(3, 4)(torch.randn(0, 3))[0].shape == (0, 4)

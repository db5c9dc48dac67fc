"""The C++ CPU recurrence kernels lstm_fwd / lstm_bwd (csrc/cpu/lstm.cpp), beyond the
all-backend grid of test_lstm.py: the natives against the kernel references of the contract
(_lstm_ref.ref_fwd / ref_bwd) over odd sizes, lengths, projection and reverse on every SIMD copy,
the public layer against torch.nn.LSTM with the same weights, the same bits for any thread
count, saturated and non-finite gates, and the binding's refusals."""

from __future__ import annotations

import pytest
import torch
from _helpers import TOL, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast import backends
from genfast.ops._boundary import DTYPE_CODE, native
from genfast.ops._lstm_ref import active_masks, ref_bwd, ref_fwd

C, _why = backends.extension("_C")
pytestmark = [
    pytest.mark.skipif(C is None or not hasattr(C, "lstm_fwd"),
                       reason=f"genfast._C lacks the lstm kernels: {_why}"),
    pytest.mark.usefixtures("single_thread"),
]
ISAS = ["avx512", "avx2", "sse2", "scalar"]


def _opt(t):
    return 0 if t is None else t


def kfwd(gx, w_hh, w_hr=None, h0=None, c0=None, lengths=None, reverse=False, save=True):
    """The native forward as the header states it: (y, gates | None, c_all | None, hT, cT)."""
    T, B, H4 = gx.shape
    H, P = H4 // 4, w_hh.shape[1]
    y, hT, cT = gx.new_full((T, B, P), 7.0), gx.new_full((B, P), 7.0), gx.new_full((B, H), 7.0)
    gates = gx.new_full((T, B, H4), 7.0) if save else None
    c_all = gx.new_full((T, B, H), 7.0) if save else None
    native("cpu", "lstm_fwd", gx, w_hh, _opt(w_hr), _opt(h0), _opt(c0), _opt(lengths), y,
           _opt(gates), _opt(c_all), hT, cT, T, B, H, P, reverse, DTYPE_CODE[gx.dtype])
    return y, gates, c_all, hT, cT


def kbwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, reverse, want_dh_all=True):
    T, B, H4 = gates.shape
    H, P = H4 // 4, w_hh.shape[1]
    dgx = gates.new_full((T, B, H4), 7.0)
    dh0, dc0 = gates.new_full((B, P), 7.0), gates.new_full((B, H), 7.0)
    dh_all = gates.new_full((T, B, P), 7.0) if want_dh_all else None
    native("cpu", "lstm_bwd", w_hh, _opt(w_hr), _opt(c0), _opt(lengths), gates, c_all,
           _opt(dy), _opt(dhT), _opt(dcT), dgx, dh0, dc0, _opt(dh_all), T, B, H, P, reverse,
           DTYPE_CODE[gates.dtype])
    return dgx, dh0, dc0, dh_all


def _case(T, B, H, P, proj, lengths, state, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = (lambda *s, sc=1.0: torch.randn(*s, generator=g, dtype=dtype) * sc)
    gx = r(T, B, 4 * H, sc=scale)
    w_hh = r(4 * H, P, sc=P ** -0.5)
    w_hr = r(P, H, sc=H ** -0.5) if proj else None
    h0, c0 = (r(B, P), r(B, H)) if state else (None, None)
    lens = None
    if lengths:
        lens = torch.randint(0, T + 1, (B,), generator=g)
        lens[0] = T
        lens[-1] = 0 if B > 1 else lens[-1]
    return gx, w_hh, w_hr, h0, c0, lens


def _masked(x, lengths, T):
    """gates / c_all are unspecified at inactive steps: compare the active ones only."""
    m = active_masks(lengths, T)
    return x if m is None else torch.where(m, x, 0)


def _check(case, reverse, dtype, msg=""):
    gx, w_hh, w_hr, h0, c0, lens = case
    T, B = gx.shape[:2]
    tol = TOL[dtype]
    got = kfwd(gx, w_hh, w_hr, h0, c0, lens, reverse)
    want = ref_fwd(gx, w_hh, w_hr, h0, c0, lens, reverse, True)
    for name, a, b in zip(("y", "gates", "c_all", "hT", "cT"), got, want, strict=True):
        if name in ("gates", "c_all"):
            a, b = _masked(a, lens, T), _masked(b, lens, T)
        torch.testing.assert_close(a, b, **tol, msg=f"{msg} fwd {name}")
    y_inf, g_inf, c_inf, hT_inf, cT_inf = kfwd(gx, w_hh, w_hr, h0, c0, lens, reverse, save=False)
    assert torch.equal(y_inf, got[0]) and torch.equal(hT_inf, got[3])
    assert torch.equal(cT_inf, got[4])
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(got[0].shape, generator=gen, dtype=dtype)
    dhT = torch.randn(got[3].shape, generator=gen, dtype=dtype) if h0 is not None else None
    dcT = torch.randn(got[4].shape, generator=gen, dtype=dtype) if h0 is not None else None
    gates, c_all = want[1], want[2]
    gotb = kbwd(w_hh, w_hr, c0, lens, gates, c_all, dy, dhT, dcT, reverse)
    wantb = ref_bwd(w_hh, w_hr, c0, lens, gates, c_all, dy, dhT, dcT, True, reverse, dtype)
    for name, a, b in zip(("dgx", "dh0", "dc0", "dh_all"), gotb, wantb, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=f"{msg} bwd {name}")
    assert torch.equal(kbwd(w_hh, w_hr, c0, lens, gates, c_all, dy, dhT, dcT, reverse,
                            want_dh_all=False)[0], gotb[0])


# (T, B, H, P, projection, lengths, initial state, reverse)
GRID = [
    (1, 1, 1, 1, False, False, False, False),
    (4, 3, 5, 5, False, True, True, False),
    (9, 7, 17, 17, False, True, True, True),
    (4, 1, 33, 33, False, False, True, True),
    (9, 3, 64, 64, False, True, False, False),
    (4, 7, 33, 7, True, True, True, False),
    (9, 3, 17, 40, True, True, True, True),
    (1, 7, 5, 3, True, False, False, False),
    (9, 7, 64, 64, False, True, True, False),
    # calls of <= 2 steps read w_hh in place (fwd: dot products; bwd: when P fills whole vectors)
    (2, 7, 32, 32, False, True, True, True),
    (1, 3, 40, 32, True, True, True, False),
    (2, 5, 16, 64, True, False, False, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H,P,proj,lengths,state,reverse", GRID)
def test_natives_match_reference(T, B, H, P, proj, lengths, state, reverse, dtype):
    case = _case(T, B, H, P, proj, lengths, state, dtype)
    _check(case, reverse, dtype, f"{(T, B, H, P, proj, lengths, state, reverse)}")


@pytest.mark.parametrize("isa", ISAS)
def test_every_simd_copy(isa):
    if isa not in C.supported_isas():
        pytest.skip(f"this CPU does not run {isa}")
    before = C.isa()
    try:
        C.set_isa(isa)
        for dtype in (torch.float64, torch.float32):
            _check(_case(5, 7, 21, 21, False, True, True, dtype, seed=3), False, dtype, isa)
            _check(_case(4, 5, 19, 11, True, True, True, dtype, seed=4), True, dtype, isa)
    finally:
        C.set_isa(before)


def test_saturated_and_nonfinite_gates():
    for dtype in (torch.float32, torch.float64):
        case = _case(6, 5, 20, 20, False, False, True, dtype, seed=5, scale=60.0)
        _check(case, False, dtype, "saturated")
        gx = case[0].clone()
        gx[2, 1, 3] = float("nan")
        y, _, _, hT, _ = kfwd(gx, *case[1:])
        assert not y[:2].isnan().any() and y[2:, 1].isnan().any()
        assert not torch.cat([y[:, :1], y[:, 2:]], 1).isnan().any() and hT[1].isnan().any()


def test_empty_sizes():
    gx = torch.randn(0, 3, 8)
    w_hh = torch.randn(8, 2)
    h0, c0 = torch.randn(3, 2), torch.randn(3, 2)
    y, gates, c_all, hT, cT = kfwd(gx, w_hh, None, h0, c0)
    assert y.shape == (0, 3, 2) and torch.equal(hT, h0) and torch.equal(cT, c0)
    dhT, dcT = torch.randn(3, 2), torch.randn(3, 2)
    dgx, dh0, dc0, _ = kbwd(w_hh, None, c0, None, gates, c_all, None, dhT, dcT, False)
    assert torch.equal(dh0, dhT) and torch.equal(dc0, dcT)
    kfwd(torch.randn(4, 0, 8), w_hh)  # B == 0: nothing to do, nothing touched


@pytest.mark.parametrize("steps", [6, 2])  # 2: the short-call (unpacked) paths
@pytest.mark.parametrize("proj", [False, True])
def test_same_bits_for_any_thread_count(proj, steps):
    # Big enough per step (B*4H*P + B*H*P >= 2^17 multiply-adds) for the kernel to split.
    case = _case(steps, 7, 80, 64 if proj else 80, proj, True, True, torch.float32, seed=6)
    T = case[0].shape[0]
    dy = torch.randn(T, 7, case[1].shape[1])
    outs = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        f = kfwd(*case, reverse=proj)
        b = kbwd(case[1], case[2], case[4], case[5], f[1], f[2], dy, None, None, proj)
        outs.append([t for t in (*f, *b) if t is not None])
    torch.set_num_threads(1)
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("proj_size,reverse", [(0, False), (0, True), (6, False), (6, True)])
def test_layer_matches_nn_lstm(proj_size, reverse):
    """genfast.lstm_layer(backend="cpu") against nn.LSTM with the same weights (reverse: nn.LSTM
    on the time-flipped input), values and gradients, float64."""
    torch.manual_seed(7)
    T, B, n_in, H = 9, 3, 4, 11
    m = torch.nn.LSTM(n_in, H, proj_size=proj_size, dtype=torch.float64)
    x = torch.randn(T, B, n_in, dtype=torch.float64, requires_grad=True)
    P = proj_size or H
    h0 = torch.randn(B, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    xs = x.flip(0) if reverse else x
    y_t, (hT_t, cT_t) = m(xs, (h0[None], c0[None]))
    y_t = y_t.flip(0) if reverse else y_t
    w = dict(m.named_parameters())
    y, hT, cT = genfast.lstm_layer(x, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"],
                                   w["bias_hh_l0"], w.get("weight_hr_l0"), h0, c0,
                                   reverse=reverse, backend="cpu")
    tol = TOL[torch.float64]
    for a, b in ((y, y_t), (hT, hT_t[0]), (cT, cT_t[0])):
        torch.testing.assert_close(a, b, **tol)
    gy, gh, gc = torch.randn_like(y), torch.randn_like(hT), torch.randn_like(cT)
    wrt = (x, h0, c0, *m.parameters())
    got = torch.autograd.grad((y * gy).sum() + (hT * gh).sum() + (cT * gc).sum(), wrt)
    want = torch.autograd.grad((y_t * gy).sum() + (hT_t[0] * gh).sum() + (cT_t[0] * gc).sum(),
                               wrt)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_layer_lengths_match_packed_nn_lstm():
    torch.manual_seed(8)
    T, B, n_in, H = 7, 4, 3, 9
    m = torch.nn.LSTM(n_in, H, dtype=torch.float64)
    x = torch.randn(T, B, n_in, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 1, 3])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (hT_t, cT_t) = m(packed)
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    w = dict(m.named_parameters())
    y, hT, cT = genfast.lstm_layer(x, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"],
                                   w["bias_hh_l0"], lengths=lengths, backend="cpu")
    for a, b in ((y, y_t), (hT, hT_t[0]), (cT, cT_t[0])):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_binding_refuses_bad_sizes():
    gx, w_hh = torch.randn(2, 3, 8), torch.randn(8, 2)
    y, hT, cT = torch.empty(2, 3, 2), torch.empty(3, 2), torch.empty(3, 2)
    p = (gx.data_ptr(), w_hh.data_ptr(), 0, 0, 0, 0, y.data_ptr(), 0, 0, hT.data_ptr(),
         cT.data_ptr())
    with pytest.raises(ValueError, match="negative size"):
        C.lstm_fwd(*p, -1, 3, 2, 2, False, 0, 1)
    with pytest.raises(ValueError, match="must equal H"):
        C.lstm_fwd(*p, 2, 3, 2, 3, False, 0, 1)
    with pytest.raises(ValueError, match="gx: null"):
        C.lstm_fwd(0, *p[1:], 2, 3, 2, 2, False, 0, 1)
    with pytest.raises(ValueError, match="both"):
        C.lstm_fwd(*p[:7], gx.data_ptr(), 0, *p[9:], 2, 3, 2, 2, False, 0, 1)
    with pytest.raises(ValueError, match="dtype"):
        C.lstm_fwd(*p, 2, 3, 2, 2, False, 2, 1)
    with pytest.raises(ValueError, match="overflow"):
        C.lstm_fwd(*p, 1 << 40, 1 << 40, 2, 2, False, 0, 1)
    g = torch.empty(2, 3, 8)
    q = (w_hh.data_ptr(), 0, 0, 0, g.data_ptr(), g.data_ptr(), 0, 0, 0, g.data_ptr(),
         hT.data_ptr(), cT.data_ptr(), 0)
    with pytest.raises(ValueError, match="dgx: null"):
        C.lstm_bwd(*q[:9], 0, *q[10:], 2, 3, 2, 2, False, 0, 1)
    with pytest.raises(ValueError, match="negative size"):
        C.lstm_bwd(*q, 2, 3, -2, 2, False, 0, 1)

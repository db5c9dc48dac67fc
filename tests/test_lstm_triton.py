"""The Triton LSTM kernels (kernels/lstm.py) against the contract of genfast/ops/lstm.py, on the
CPU under the Triton interpreter.

Oracles: a float64 torch loop of the design's equations written here (forward, and autograd
through it for every backward), and the committed reference kernels (genfast/ops/_lstm_ref.py
ref_fwd / ref_bwd). The GEMM-path cells are checked alone and chained into the whole layer the
way genfast/ops/_lstm_backends.py chains them (torch.addmm + cell per step)."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import pytest
import torch

pytest.importorskip("triton")

from _triton_helpers import triton_cast  # noqa: E402

from genfast.kernels import lstm as K  # noqa: E402
from genfast.ops._lstm_ref import ref_bwd, ref_fwd  # noqa: E402

pytestmark = pytest.mark.triton
TOL32 = dict(rtol=2e-5, atol=2e-5)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def make_lengths(B, T, kind):
    if kind is None:
        return None
    vals = {"mixed": [0, T, max(T - 2, 1)], "full": [T] * 3, "empty": [0] * 3}[kind]
    return torch.tensor(vals[:B], dtype=torch.int64)


def oracle(gx, w_hh, h0, c0, lengths, reverse):
    """The design's recurrence as float64 torch ops: (y, hT, cT, gates, c_all)."""
    T, B, H4 = gx.shape
    H = H4 // 4
    gx, w = gx.double(), w_hh.double()
    h = gx.new_zeros(B, H) if h0 is None else h0.double()
    c = gx.new_zeros(B, H) if c0 is None else c0.double()
    ys, gates, cs = [None] * T, [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        act = (torch.ones(B, dtype=torch.bool) if lengths is None else t < lengths)[:, None]
        i, f, g, o = (gx[t] + h @ w.t()).split(H, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c + i * g
        h_new = o * c_new.tanh()
        gates[t], cs[t] = torch.cat((i, f, g, o), 1), c_new
        ys[t] = torch.where(act, h_new, 0)
        h, c = torch.where(act, h_new, h), torch.where(act, c_new, c)
    stack = (lambda v: torch.stack(v) if T else gx.new_zeros(0, B, H))
    return stack(ys), h, c, (torch.stack(gates) if T else None), (stack(cs) if T else None)


def oracle_grads(gx, w_hh, h0, c0, lengths, reverse, dy, dhT, dcT):
    """(dgx, dh0, dc0) of <y, dy> + <hT, dhT> + <cT, dcT> (None cotangents: zeros)."""
    T, B, H4 = gx.shape
    H = H4 // 4
    leaves = [gx.double().requires_grad_(),
              (h0 if h0 is not None else torch.zeros(B, H)).double().requires_grad_(),
              (c0 if c0 is not None else torch.zeros(B, H)).double().requires_grad_()]
    y, hT, cT, _, _ = oracle(leaves[0], w_hh, leaves[1], leaves[2], lengths, reverse)
    loss = sum((v * d.double()).sum() for v, d in ((y, dy), (hT, dhT), (cT, dcT))
               if d is not None)
    if not torch.is_tensor(loss):
        return [torch.zeros_like(v) for v in leaves]
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def active(lengths, T, B):
    """(T, B, 1) mask of the active steps (what gates / c_all hold)."""
    n = torch.full((B,), T) if lengths is None else lengths
    return (torch.arange(T)[:, None] < n[None, :])[..., None]


def run_recurrence(gx, w_hh, h0, c0, lengths, reverse, dy, dhT, dcT, block=None):
    T, B, H4 = gx.shape
    H, dt = H4 // 4, gx.dtype
    y, hT, cT = torch.full((T, B, H), 7.0, dtype=dt), torch.empty(B, H, dtype=dt), \
        torch.empty(B, H, dtype=dt)
    gates, c_all = torch.empty(T, B, H4), torch.empty(T, B, H)
    K.recurrence_fwd(gx, w_hh, h0, c0, lengths, y, gates, c_all, hT, cT, reverse, block=block)
    dgx, dh0, dc0 = (torch.full((T, B, H4), 7.0, dtype=dt), torch.empty(B, H, dtype=dt),
                     torch.empty(B, H, dtype=dt))
    K.recurrence_bwd(w_hh, c0, lengths, gates, c_all, dy, dhT, dcT, dgx, dh0, dc0, reverse,
                     block=block)
    return (y, hT, cT, gates, c_all), (dgx, dh0, dc0)


def case_data(T, B, H, with_state, with_dy, seed=0):
    gx, w = randn(T, B, 4 * H, seed=seed), randn(4 * H, H, seed=seed + 1, scale=H ** -0.5)
    h0, c0 = ((randn(B, H, seed=seed + 2), randn(B, H, seed=seed + 3)) if with_state
              else (None, None))
    dy, dhT, dcT = ((randn(T, B, H, seed=seed + 4), randn(B, H, seed=seed + 5),
                     randn(B, H, seed=seed + 6)) if with_dy else (None, None, None))
    return gx, w, h0, c0, dy, dhT, dcT


# (T, B, H, lengths, reverse, initial state and cotangents given, block). H = 1 and 5 take the
# broadcast-and-sum body, 16 the tl.dot body; block = 2 or 16 at H = 5 / 40 walks several
# hidden and reduction tiles; lengths hold 0 and T.
CASES = [
    (1, 1, 1, None, False, True, None),
    (3, 3, 5, "mixed", False, True, None),
    (5, 3, 5, "mixed", True, True, None),
    (3, 1, 16, None, True, False, None),
    (5, 3, 16, "mixed", False, True, None),
    (3, 3, 16, "mixed", True, True, None),
    (3, 3, 5, "mixed", True, False, 2),
    (3, 3, 40, "mixed", False, True, 16),
    (3, 3, 5, "empty", False, True, None),
]
IDS = [f"T{c[0]}-B{c[1]}-H{c[2]}-{c[3] or 'all'}" + ("-rev" if c[4] else "")
       + ("" if c[5] else "-zeros") + (f"-block{c[6]}" if c[6] else "") for c in CASES]


@pytest.mark.parametrize("T,B,H,lens,reverse,given,block", CASES, ids=IDS)
def test_recurrence_matches_oracle(T, B, H, lens, reverse, given, block):
    gx, w, h0, c0, dy, dhT, dcT = case_data(T, B, H, given, given)
    if not given:  # only the output's gradient: dhT and dcT absent
        dy = randn(T, B, H, seed=9)
    lengths = make_lengths(B, T, lens)
    (y, hT, cT, gates, c_all), grads = run_recurrence(gx, w, h0, c0, lengths, reverse, dy, dhT,
                                                      dcT, block)
    wy, whT, wcT, wgates, wc = oracle(gx, w, h0, c0, lengths, reverse)
    for got, want in ((y, wy), (hT, whT), (cT, wcT)):
        torch.testing.assert_close(got, want.float(), **TOL32)
    m = active(lengths, T, B)
    torch.testing.assert_close(torch.where(m, gates, 0), torch.where(m, wgates.float(), 0),
                               **TOL32)
    torch.testing.assert_close(torch.where(m, c_all, 0), torch.where(m, wc.float(), 0), **TOL32)
    for got, want in zip(grads, oracle_grads(gx, w, h0, c0, lengths, reverse, dy, dhT, dcT),
                         strict=True):
        torch.testing.assert_close(got, want.float(), **TOL32)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_recurrence_matches_reference_kernels(reverse):
    T, B, H = 4, 3, 16
    gx, w, h0, c0, dy, dhT, dcT = case_data(T, B, H, True, True, seed=3)
    lengths = torch.tensor([2, 4, 0])
    (y, hT, cT, gates, c_all), grads = run_recurrence(gx, w, h0, c0, lengths, reverse, dy, dhT,
                                                      dcT)
    ry, rg, rc, rh, rcT = ref_fwd(gx, w, None, h0, c0, lengths, reverse, True)
    for got, want in ((y, ry), (hT, rh), (cT, rcT)):
        torch.testing.assert_close(got, want, **TOL32)
    m = active(lengths, T, B)
    torch.testing.assert_close(torch.where(m, gates, 0), torch.where(m, rg, 0), **TOL32)
    want = ref_bwd(w, None, c0, lengths, rg, rc, dy, dhT, dcT, False, reverse, torch.float32)
    for got, ref in zip(grads, want[:3], strict=True):
        torch.testing.assert_close(got, ref, **TOL32)


@pytest.mark.parametrize("B,H", [(18, 16), (70, 8)], ids=["dot", "elem"])
def test_recurrence_row_blocks(B, H):
    # More rows than one program holds (16 with tl.dot, 64 at H = 8 without): every row block
    # runs its own steps and lengths.
    T = 3
    gx, w, h0, c0, dy, dhT, dcT = case_data(T, B, H, True, True, seed=11)
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(12))
    (y, hT, cT, _, _), grads = run_recurrence(gx, w, h0, c0, lengths, False, dy, dhT, dcT)
    for got, want in zip((y, hT, cT), oracle(gx, w, h0, c0, lengths, False)[:3], strict=True):
        torch.testing.assert_close(got, want.float(), **TOL32)
    for got, want in zip(grads, oracle_grads(gx, w, h0, c0, lengths, False, dy, dhT, dcT),
                         strict=True):
        torch.testing.assert_close(got, want.float(), **TOL32)


def test_recurrence_without_steps_or_saving():
    # T = 0: the final state is the initial one; inference (gates = c_all = None) gives the same
    # outputs as training.
    B, H = 3, 5
    h0, c0 = randn(B, H, seed=1), randn(B, H, seed=2)
    hT, cT = torch.empty(B, H), torch.empty(B, H)
    w = randn(4 * H, H, seed=3)
    K.recurrence_fwd(torch.empty(0, B, 4 * H), w, h0, c0, None, torch.empty(0, B, H), None, None,
                     hT, cT, False)
    assert torch.equal(hT, h0) and torch.equal(cT, c0)
    gx = randn(3, B, 4 * H, seed=4)
    (y, hT, cT, _, _), _ = run_recurrence(gx, w, h0, c0, None, False, None, None, None)
    y2, hT2, cT2 = torch.empty_like(y), torch.empty_like(hT), torch.empty_like(cT)
    K.recurrence_fwd(gx, w, h0, c0, None, y2, None, None, hT2, cT2, False)
    assert torch.equal(y2, y) and torch.equal(hT2, hT) and torch.equal(cT2, cT)


# ----------------------------------------------------------------------------- GEMM path cells


def cell_oracle(G, c, H):
    i, f, g, o = G.double().split(H, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c_new = f * c.double() + i * g
    return torch.cat((i, f, g, o), 1), c_new, o * c_new.tanh()


@pytest.mark.parametrize("with_cp", [True, False], ids=["c_prev", "no-c_prev"])
@pytest.mark.parametrize("B,H,block", [(1, 1, None), (3, 5, None), (3, 16, None),
                                       (5, 9, (2, 4))], ids=["1x1", "3x5", "3x16", "tiles"])
def test_cell_fwd_and_bwd(B, H, block, with_cp):
    G = randn(B, 4 * H, seed=1)
    c = randn(B, H, seed=2) if with_cp else torch.zeros(B, H)
    lengths = torch.tensor([0, 2, 3, 1, 2][:B])
    t = 1
    act = (t < lengths)[:, None]
    wg, wc, wht = cell_oracle(G, c, H)
    c_state = c.clone()
    gates_t, c_t, ht = torch.full((B, 4 * H), 5.0), torch.full((B, H), 5.0), torch.empty(B, H)
    K.cell_fwd(G, c_state, gates_t, c_t, ht, lengths, t, block=block)
    torch.testing.assert_close(ht, torch.where(act, wht, 0).float(), **TOL32)
    torch.testing.assert_close(c_state, torch.where(act, wc, c).float(), **TOL32)
    torch.testing.assert_close(gates_t, torch.where(act, wg, 5).float(), **TOL32)
    torch.testing.assert_close(c_t, torch.where(act, wc, 5).float(), **TOL32)

    # Backward: the gradient of <ht, dht> + <c_new, dc> in (G, c_prev), at the active rows.
    dht, dc = randn(B, H, seed=3), randn(B, H, seed=4)
    Gd, cd = G.double().requires_grad_(), c.double().requires_grad_()
    _, c_new, h_new = cell_oracle(Gd, cd, H)
    dG_want, dcp_want = torch.autograd.grad((h_new * dht).sum() + (c_new * dc).sum(), (Gd, cd))
    dc_state, dG = dc.clone(), torch.full((B, 4 * H), 5.0)
    K.cell_bwd(dht, dc_state, wg.float(), wc.float(), c if with_cp else None, dG, lengths, t,
               block=block)
    torch.testing.assert_close(dG, torch.where(act, dG_want, 0).float(), **TOL32)
    torch.testing.assert_close(dc_state, torch.where(act, dcp_want, dc).float(), **TOL32)


def gemm_path(gx, w_hh, h0, c0, lengths, reverse, dy, dhT, dcT):
    """The layer from the cells, chained as genfast/ops/_lstm_backends.py does (no projection)."""
    T, B, H4 = gx.shape
    H = H4 // 4
    act = active(lengths, T, B)
    order = list(range(T - 1, -1, -1) if reverse else range(T))
    y, gates, c_all = torch.empty(T, B, H), torch.empty(T, B, H4), torch.empty(T, B, H)
    h = torch.zeros(B, H) if h0 is None else h0
    c = torch.zeros(B, H) if c0 is None else c0.clone()
    for t in order:
        K.cell_fwd(torch.addmm(gx[t], h, w_hh.t()), c, gates[t], c_all[t], y[t], lengths, t)
        h = torch.where(act[t], y[t], h)
    dh = torch.zeros(B, H) if dhT is None else dhT
    dc = torch.zeros(B, H) if dcT is None else dcT.clone()
    dgx = torch.empty(T, B, H4)
    c_init = torch.zeros(B, H) if c0 is None else c0
    for k, t in reversed(list(enumerate(order))):
        prev = order[k - 1] if k else None
        cp = c_init if prev is None else torch.where(act[prev], c_all[prev], c_init)
        d = dh if dy is None else dh + dy[t]
        K.cell_bwd(d.contiguous(), dc, gates[t], c_all[t], cp.contiguous(), dgx[t], lengths, t)
        dh = torch.where(act[t], dgx[t] @ w_hh, dh)
    return (y, h, c), (dgx, dh, dc)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gemm_path_chain_matches_oracle(reverse):
    T, B, H = 5, 3, 5
    gx, w, h0, c0, dy, dhT, dcT = case_data(T, B, H, True, True, seed=7)
    lengths = make_lengths(B, T, "mixed")
    outs, grads = gemm_path(gx, w, h0, c0, lengths, reverse, dy, dhT, dcT)
    for got, want in zip(outs, oracle(gx, w, h0, c0, lengths, reverse)[:3], strict=True):
        torch.testing.assert_close(got, want.float(), **TOL32)
    for got, want in zip(grads, oracle_grads(gx, w, h0, c0, lengths, reverse, dy, dhT, dcT),
                         strict=True):
        torch.testing.assert_close(got, want.float(), **TOL32)


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype,H", [(torch.float16, 5), (torch.bfloat16, 5),
                                     (torch.float16, 16)], ids=["fp16", "bf16", "fp16-dot"])
def test_low_precision(dtype, H):
    # H = 5: the broadcast-and-sum body, 16: tl.dot (fp16 only: the interpreter's tl.dot
    # mishandles bf16 operands). fp32 math and state: within the data dtype's rounding.
    T, B = 3, 3
    gx, w, h0, c0, dy, dhT, dcT = [v.to(dtype) for v in case_data(T, B, H, True, True, seed=5)]
    lengths = make_lengths(B, T, "mixed")
    (y, hT, cT, _, _), grads = run_recurrence(gx, w, h0, c0, lengths, True, dy, dhT, dcT)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=3e-3, atol=3e-3)
    wy, whT, wcT, _, _ = oracle(gx, w, h0, c0, lengths, True)
    for got, want in ((y, wy), (hT, whT), (cT, wcT)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), **tol)
    for got, want in zip(grads, oracle_grads(gx, w, h0, c0, lengths, True, dy, dhT, dcT),
                         strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)
    G, c = randn(B, 4 * H, seed=1).to(dtype), randn(B, H, seed=2)
    ht, c_state = torch.empty(B, H, dtype=dtype), c.clone()
    K.cell_fwd(G, c_state, None, None, ht, None, 0)
    _, wc, wht = cell_oracle(G.float(), c, H)
    torch.testing.assert_close(ht, triton_cast(wht.float(), dtype), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(c_state, wc.float(), **TOL32)


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_name_the_argument():
    B, H = 2, 3
    G, c, ht = torch.zeros(B, 4 * H), torch.zeros(B, H), torch.zeros(B, H)
    with pytest.raises(ValueError, match="c_state"):
        K.cell_fwd(G, c.double(), None, None, ht, None, 0)
    with pytest.raises(ValueError, match="gates_t and c_t"):
        K.cell_fwd(G, c, torch.zeros(B, 4 * H), None, ht, None, 0)
    with pytest.raises(ValueError, match="lengths"):
        K.cell_fwd(G, c, None, None, ht, torch.zeros(B, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="t must be"):
        K.cell_fwd(G, c, None, None, ht, None, -1)
    with pytest.raises(TypeError, match="G must be a float32"):
        K.cell_fwd(G.long(), c, None, None, ht, None, 0)
    with pytest.raises(ValueError, match="G must be"):
        K.cell_fwd(torch.zeros(B, 5), c, None, None, ht, None, 0)
    with pytest.raises(ValueError, match="dht"):
        K.cell_bwd(ht.long(), c, G, c, None, G, None, 0)
    with pytest.raises(ValueError, match="block"):
        K.cell_fwd(G, c, None, None, ht, None, 0, block=(3, 4))
    gx, w, y = torch.zeros(2, B, 4 * H), torch.zeros(4 * H, H), torch.zeros(2, B, H)
    with pytest.raises(ValueError, match="w_hh"):
        K.recurrence_fwd(gx, w.t().contiguous(), None, None, None, y, None, None, c, c, False)
    with pytest.raises(ValueError, match="gates and c_all"):
        K.recurrence_fwd(gx, w, None, None, None, y, torch.zeros(2, B, 4 * H), None, c, c, False)
    with pytest.raises(ValueError, match="h0"):
        K.recurrence_fwd(gx, w, c.half(), None, None, y, None, None, c, c, False)
    with pytest.raises(ValueError, match="dy"):
        K.recurrence_bwd(w, None, None, torch.zeros(2, B, 4 * H), y, y[:1], None, None, gx, c,
                         c, False)
    assert K.supports_recurrence(16, 1) and K.supports_recurrence(256, 4096)
    assert not K.supports_recurrence(257, 1) and not K.supports_recurrence(0, 1)

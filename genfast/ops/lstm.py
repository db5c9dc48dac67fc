"""The fused LSTM layer: public API, torch.library ops, autograd, dispatch (op stem `lstm`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference (torch, one step at a time) genfast/ops/_lstm_ref.py, C++ CPU csrc/cpu/lstm.cpp,
Triton kernels/lstm.py, CUDA csrc/cuda/lstm.cu. The multi-layer / bidirectional functional core
of nn.LSTM (genfast.lstm) and nn.LSTMCell (genfast.lstm_cell) are built on the one-layer,
one-direction op here; genfast/nn/lstm.py holds the drop-in modules.

## One layer, one direction (torch's gate order i, f, g, o along the 4H axis)
x (T, B, I), w_ih (4H, I), w_hh (4H, P), b_ih, b_hh (4H) or None, w_hr (P, H) or None (then
P = H), h0 (B, P), c0 (B, H) or None (zeros), lengths (B,) int64 in [0, T] or None (all T),
reverse (steps T-1 .. 0).

    gx = x @ w_ih^T + b_ih + b_hh                       ONE GEMM for all steps (torch)
    step t of sequence b is active iff t < lengths[b]; for an active step:
      G = gx[t] + h @ w_hh^T;  i, f, g, o = sigmoid(G_i), sigmoid(G_f), tanh(G_g), sigmoid(G_o)
      c = f c + i g;   ht = o tanh(c);   h = ht @ w_hr^T (or ht);   y[t] = h
    an inactive step keeps (h, c) and writes y[t] = 0 (what pad_packed_sequence gives).
Returns y (T, B, P), hT = h, cT = c after the last step. Training saves the activated gates
(T, B, 4H) and c_all (T, B, H) (c after each active step) in the work dtype (float32 for
float16 / bfloat16 / float32, float64 for float64): gate math and the c state run in it.

## Backward (first order on the kernels; the reverse of the forward's step order)
With dh = dhT, dc = dcT (zeros if None); an inactive step passes (dh, dc) through and writes
dgx[t] = 0 (its y is a constant, so dy[t] is ignored); an active step:
      dh += dy[t];  dh_all[t] = dh;   dht = dh @ w_hr (or dh);  tc = tanh(c_all[t])
      dc += dht o (1 - tc^2);  cp = the c before step t (the previous active step's c_all, or c0)
      dG = [dc g i (1-i), dc cp f (1-f), dc i (1-g^2), dht tc o (1-o)] -> dgx[t];  dc *= f
      dh = dG @ w_hh
dh0 = dh, dc0 = dc. Then torch GEMMs over all steps: dx = dgx @ w_ih, dw_ih = dgx^T x,
dw_hh = dgx^T h_prev (h_prev[t]: the h before step t), db_ih = db_hh = dgx summed,
dw_hr = dh_all^T ht_all (ht recomputed as o tanh(c_all)). Under create_graph the backward
re-runs the forward as differentiable torch ops (_lstm_ref.lstm_layer_reference) and
differentiates that graph, so every order exists (WGAN-GP through an LSTM critic).

## Kernels (which = 0 forward, 1 backward), one per backend
  fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse, save) -> (y, gates, c_all, hT, cT)
  bwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all, reverse, dtype)
      -> (dgx, dh0, dc0, dh_all)
Native signatures (csrc/cpu/lstm.h; CUDA adds `void* stream` and returns a code):
  lstm_fwd(gx, w_hh, w_hr, h0, c0, lengths, y, gates, c_all, hT, cT, T, B, H, P, reverse,
           dtype, num_threads)
  lstm_bwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, dgx, dh0, dc0, dh_all, T, B, H,
           P, reverse, dtype, num_threads)
The GEMM path (Triton; CUDA for shapes its persistent kernel does not take): per step
torch.addmm for G and one fused cell kernel (kernels/lstm.py cell_fwd / cell_bwd, the CUDA
natives lstm_cell_fwd / lstm_cell_bwd; genfast/ops/_lstm_backends.py runs the loop).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _checks
from ._boundary import standard_dtypes
from ._eager import eager_op
from ._lstm_backends import BWD, FWD, workspace
from ._lstm_ref import active_masks, lstm_layer_reference

__all__ = ["lstm", "lstm_cell", "lstm_layer", "lstm_layer_reference"]
SPEC = backends.register_op(backends.OpSpec(
    name="lstm", dtypes=standard_dtypes(),
    # The CUDA backend holds both GPU paths (persistent kernel for small batches, GEMM + fused
    # cell otherwise); Triton has the GEMM path and a fused small-H recurrence.
    auto_cuda=("cuda", "triton", "reference")))

OptT = Optional[Tensor]  # noqa: UP045  (torch.library parses the annotation)


# --------------------------------------------------------------------------- forward op
def _input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None):
    T, B, n_in = x.shape
    x2 = x.reshape(T * B, n_in)
    # gx is read once by the recurrence and dropped: on the CPU it lives in a reused workspace
    # (a fresh 32 MB buffer costs ~10 ms of page faults per layer call at 2x512, B=32, T=128).
    out = workspace("gx", (T * B, w_ih.shape[0]), x) if x.device.type == "cpu" else None
    with torch.no_grad():
        if b_ih is None and b_hh is None:
            gx = torch.mm(x2, w_ih.t(), out=out)
        else:
            bias = b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh
            gx = torch.addmm(bias, x2, w_ih.t(), out=out)
    return gx.view(T, B, w_ih.shape[0])


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


def _fwd_impl(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend):
    x, w_ih, w_hh = x.contiguous(), w_ih.contiguous(), w_hh.contiguous()
    w_hr, h0, c0 = (None if t is None else t.contiguous() for t in (w_hr, h0, c0))
    gx = _input_projection(x, w_ih, b_ih, b_hh).contiguous()
    y, gates, c_all, hT, cT = backends.call("lstm", backend, FWD, gx, w_hh, w_hr, h0, c0,
                                            lengths, reverse, save)
    if not save:  # two tensors: a custom op's outputs may not alias each other
        gates, c_all = _empty(x), _empty(x)
    return y, hT, cT, gates, c_all


@torch.library.custom_op("genfast::lstm_layer", mutates_args=())
def lstm_layer_op(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: OptT, b_hh: OptT, w_hr: OptT,
                  h0: OptT, c0: OptT, lengths: OptT, reverse: bool, save: bool,
                  backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, hT, cT, gates, c_all): the layer's outputs and what its backward reads (empty
    unless `save`)."""
    return _fwd_impl(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend)


@lstm_layer_op.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend):
    T, B, _ = x.shape
    H4, P = w_hh.shape
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    gates = x.new_empty(T, B, H4, dtype=wd) if save else x.new_empty(0)
    c_all = x.new_empty(T, B, H4 // 4, dtype=wd) if save else x.new_empty(0)
    return (x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H4 // 4), gates, c_all)


_INPUTS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "h0", "c0")


def _setup(ctx, inputs, output):
    *tensors, lengths, ctx.reverse, _save, ctx.backend = inputs
    ctx.save_for_backward(*tensors, lengths, output[0], output[3], output[4])
    ctx.mark_non_differentiable(output[3], output[4])
    # Unused outputs (the saved gates: (T, B, 4H)) would otherwise get zero gradients filled in.
    ctx.set_materialize_grads(False)


# --------------------------------------------------------------------------- backward op
def _prev_hidden(y: Tensor, h0: Tensor | None, lengths: Tensor | None, reverse: bool):
    """h_prev (T, B, P): the h each step started from (h0 at a sequence's first step)."""
    T, B, P = y.shape
    init = y.new_zeros(1, B, P) if h0 is None else h0.unsqueeze(0)
    if not reverse:
        return torch.cat((init, y[:-1]), 0)
    h_prev = torch.cat((y[1:], init), 0)
    if lengths is not None:  # sequence b starts at step lengths[b] - 1, from h0
        first = active_masks(lengths, T) & ~active_masks(lengths - 1, T)
        h_prev = torch.where(first, init, h_prev)
    return h_prev


def _bwd_impl(x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, c_all, gy, ghT, gcT, reverse,
              backend, need):
    """First order: [dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0] (empty where not needed)."""
    T, B, n_in = x.shape
    H4 = w_hh.shape[0]
    H = H4 // 4
    want = dict(zip(("x", "w_ih", "w_hh", "b", "w_hr", "h0", "c0"), need, strict=True))
    dgx, dh0, dc0, dh_all = backends.call("lstm", backend, BWD, w_hh, w_hr, c0, lengths, gates,
                                          c_all, gy, ghT, gcT, want["w_hr"], reverse, x.dtype)
    d2 = dgx.view(T * B, H4)
    out = [_empty(x) for _ in range(7)]
    if want["x"]:
        out[0] = (d2 @ w_ih).view(T, B, n_in)
    if want["w_ih"]:
        out[1] = d2.t() @ x.reshape(T * B, n_in)
    if want["w_hh"]:
        out[2] = d2.t() @ _prev_hidden(y, h0, lengths, reverse).reshape(T * B, y.shape[2])
    if want["b"]:
        out[3] = d2.sum(0)
    if want["w_hr"]:
        ht = gates[..., 3 * H:] * c_all.tanh()
        if lengths is not None:  # c_all is undefined at inactive steps
            ht = torch.where(active_masks(lengths, T), ht, 0)
        out[4] = dh_all.reshape(T * B, dh_all.shape[2]).t() @ ht.to(x.dtype).reshape(T * B, H)
    if want["h0"]:
        out[5] = dh0
    if want["c0"]:
        out[6] = dc0
    return out


def _bwd_entry(x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, c_all, gy, ghT, gcT, reverse,
               backend, need):
    c = (lambda t: None if t is None else t.contiguous())
    return _bwd_impl(*(c(t) for t in (x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, c_all,
                                      gy, ghT, gcT)), reverse, backend, need)


@torch.library.custom_op("genfast::lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd_op(x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: OptT, h0: OptT, c0: OptT,
                      lengths: OptT, y: Tensor, gates: Tensor, c_all: Tensor, gy: OptT,
                      ghT: OptT, gcT: OptT, reverse: bool, backend: str,
                      need: list[bool]) -> list[Tensor]:
    """The first-order backward on the kernels (contract): [dx, dw_ih, dw_hh, db, dw_hr, dh0,
    dc0], each empty (0 elements) where `need` is False."""
    return _bwd_entry(x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, c_all, gy, ghT, gcT,
                      reverse, backend, need)


@lstm_layer_bwd_op.register_fake
def _(x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, c_all, gy, ghT, gcT, reverse, backend,
      need):
    B = x.shape[1]
    H4, P = w_hh.shape
    shapes = (x.shape, w_ih.shape, w_hh.shape, (H4,),
              (P, H4 // 4) if w_hr is not None else (0,), (B, P), (B, H4 // 4))
    return [x.new_empty(s) if n else x.new_empty(0) for s, n in zip(shapes, need, strict=True)]


layer_bwd = eager_op(lstm_layer_bwd_op, _bwd_entry)


def _graph_grads(t: dict, lengths, reverse: bool, gy, ghT, gcT, need: dict):
    """create_graph: differentiate the forward re-run as torch ops, keeping the graph."""
    names = [k for k in _INPUTS if need[k]]
    y, hT, cT = lstm_layer_reference(*(t[k] for k in _INPUTS), lengths, reverse)
    outs, grads = [], []
    for o, g in ((y, gy), (hT, ghT), (cT, gcT)):
        if g is not None:
            outs.append(o)
            grads.append(g)
    if not outs or not names:
        return dict.fromkeys(_INPUTS)
    got = torch.autograd.grad(outs, [t[k] for k in names], grads, create_graph=True,
                              allow_unused=True)
    res = dict(zip(names, got, strict=True))
    return {k: (torch.zeros_like(t[k]) if res.get(k) is None and need[k] else res.get(k))
            for k in _INPUTS}


def _grad(ctx, gy, ghT, gcT, _gg, _gc):
    *inputs, lengths, y, gates, c_all = ctx.saved_tensors
    t = dict(zip(_INPUTS, inputs, strict=True))
    need = dict(zip(_INPUTS, ctx.needs_input_grad[:8], strict=True))
    if torch.is_grad_enabled():
        out = _graph_grads(t, lengths, ctx.reverse, gy, ghT, gcT, need)
    else:
        flags = [need["x"], need["w_ih"], need["w_hh"], need["b_ih"] or need["b_hh"],
                 need["w_hr"], need["h0"], need["c0"]]
        got = layer_bwd(t["x"], t["w_ih"], t["w_hh"], t["w_hr"], t["h0"], t["c0"], lengths, y,
                        gates, c_all, gy, ghT, gcT, ctx.reverse, ctx.backend, flags)
        dx, dwi, dwh, db, dwr, dh0, dc0 = (g if f else None for g, f in zip(got, flags,
                                                                          strict=True))
        out = {"x": dx, "w_ih": dwi, "w_hh": dwh, "w_hr": dwr, "h0": dh0, "c0": dc0,
               "b_ih": db if need["b_ih"] else None,
               "b_hh": (db.clone() if need["b_ih"] else db) if need["b_hh"] else None}
    return (*(out[k] for k in _INPUTS), None, None, None, None)


lstm_layer_op.register_autograd(_grad, setup_context=_setup)
layer_fwd = eager_op(lstm_layer_op, _fwd_impl, _setup, _grad)


# --------------------------------------------------------------------------- public API
def _check_param(name: str, w: object, shape: tuple[int, ...], x: Tensor) -> Tensor:
    _checks.tensor(name, w)
    if tuple(w.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(w.shape)}")
    if w.device != x.device or w.dtype != x.dtype:
        raise ValueError(f"{name} must be on x's device and of x's dtype ({x.device}, "
                         f"{x.dtype}), got {w.device}, {w.dtype}")
    return w


def _check_lengths(lengths: object, T: int, B: int, x: Tensor) -> Tensor | None:
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    lengths = lengths.to(device=x.device, dtype=torch.int64).contiguous()
    if B and not torch.compiler.is_compiling():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths must be in [0, {T}] (T = x.shape[0]), got values in "
                             f"[{lo}, {hi}]")
    return lengths


def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
               b_hh: Tensor | None = None, w_hr: Tensor | None = None,
               h0: Tensor | None = None, c0: Tensor | None = None, *,
               lengths: Tensor | None = None, reverse: bool = False,
               backend: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction, fused (see the module docstring for the equations).

    x: (T, B, I) time-major. w_ih (4H, I), w_hh (4H, P), b_ih / b_hh (4H,) or None, w_hr
    (P, H) (a projection, nn.LSTM's proj_size) or None (P = H); h0 (B, P), c0 (B, H) or None
    (zeros); lengths: (B,) integer tensor in [0, T] (sequence b runs steps t < lengths[b]; the
    rest of its y is 0 and its state stops there) or None; reverse: run t = T-1 .. 0 (the
    backward direction of a bidirectional layer). Returns (y (T, B, P), h_T (B, P), c_T (B, H)).
    Differentiable to any order. backend: "auto" (default), "reference", "cpu", "triton",
    "cuda".
    """
    _checks.tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got shape {tuple(x.shape)}")
    T, B, n_in = x.shape
    _checks.tensor("w_hh", w_hh)
    if w_hh.dim() != 2 or w_hh.shape[0] % 4 or w_hh.shape[0] == 0:
        raise ValueError(f"w_hh must be 2-D (4H, P) with H >= 1, got shape "
                         f"{tuple(w_hh.shape)}")
    H4, P = w_hh.shape
    H = H4 // 4
    _check_param("w_hh", w_hh, (H4, P), x)
    _check_param("w_ih", w_ih, (H4, n_in), x)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _check_param(name, b, (H4,), x)
    if w_hr is not None:
        _check_param("w_hr", w_hr, (P, H), x)
    elif P != H:
        raise ValueError(f"w_hh has {P} columns but H = {H}: without w_hr they must be equal")
    if h0 is not None:
        _check_param("h0", h0, (B, P), x)
    if c0 is not None:
        _check_param("c0", c0, (B, H), x)
    reverse = _checks.boolean("reverse", reverse)
    lengths = _check_lengths(lengths, T, B, x)
    args = _checks.autocast_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)
    be = backends.resolve("lstm", args[0], backend)
    save = torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args)
    if torch.compiler.is_compiling():
        out = lstm_layer_op(*args, lengths, reverse, save, be)
    else:
        out = layer_fwd(*args, lengths, reverse, save, be)
    return out[0], out[1], out[2]


def lstm(x: Tensor, hx: tuple[Tensor, Tensor] | None, weights: list[Tensor], *,
         num_layers: int, bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
         training: bool = False, bidirectional: bool = False, proj_size: int = 0,
         lengths: Tensor | None = None,
         backend: str | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The functional core of nn.LSTM on genfast's fused layers: (output, (h_n, c_n)).

    x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I). hx: (h_0 (L*D, B, P),
    c_0 (L*D, B, H)) ((L*D, P) / (L*D, H) unbatched) or None. weights: nn.LSTM's
    `_flat_weights` order (per layer, per direction: w_ih, w_hh, [b_ih, b_hh], [w_hr]).
    Dropout (probability `dropout`, when `training`) applies to every layer's output but the
    last, as torch's. lengths: (B,) valid steps per sequence (the packed-sequence path;
    outputs past a sequence's end are 0 and h_n / c_n are taken at its last step).
    """
    _checks.tensor("x", x)
    num_layers = _checks.integer("num_layers", num_layers, 1)
    proj_size = _checks.integer("proj_size", proj_size, 0)
    dropout = _checks.real("dropout", dropout, 0.0, 1.0)
    D = 2 if bidirectional else 1
    per = 2 + 2 * bool(bias) + (proj_size > 0)
    if len(weights) != num_layers * D * per:
        raise ValueError(f"weights must hold {num_layers * D * per} tensors (layers x "
                         f"directions x {per}), got {len(weights)}")
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
        if hx is not None:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    elif x.dim() != 3:
        raise ValueError(f"x must be 2-D (unbatched) or 3-D, got shape {tuple(x.shape)}")
    elif batch_first:
        x = x.transpose(0, 1)
    hs, cs = [], []
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = (layer * D + d) * per
            w = weights[k:k + per]
            b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
            w_hr = w[-1] if proj_size > 0 else None
            h0 = None if hx is None else hx[0][layer * D + d]
            c0 = None if hx is None else hx[1][layer * D + d]
            y, h, c = lstm_layer(inp, w[0], w[1], b_ih, b_hh, w_hr, h0, c0, lengths=lengths,
                                 reverse=d == 1, backend=backend)
            outs.append(y)
            hs.append(h)
            cs.append(c)
        inp = outs[0] if D == 1 else torch.cat(outs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            inp = torch.nn.functional.dropout(inp, dropout, training=True)
    out = inp
    h_n, c_n = torch.stack(hs), torch.stack(cs)
    if unbatched:
        return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n)


def lstm_cell(x: Tensor, hx: tuple[Tensor, Tensor] | None, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None, *,
              backend: str | None = None) -> tuple[Tensor, Tensor]:
    """nn.LSTMCell's step on the fused layer (T = 1): (h', c') from x (B, I) or (I,) and
    hx = (h (B, H), c (B, H)) or None (zeros)."""
    _checks.tensor("x", x)
    unbatched = x.dim() == 1
    if unbatched:
        x = x.unsqueeze(0)
        if hx is not None:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    elif x.dim() != 2:
        raise ValueError(f"x must be 1-D or 2-D (B, I), got shape {tuple(x.shape)}")
    h0, c0 = (None, None) if hx is None else hx
    _, h, c = lstm_layer(x.unsqueeze(0), w_ih, w_hh, b_ih, b_hh, None, h0, c0, backend=backend)
    if unbatched:
        return h.squeeze(0), c.squeeze(0)
    return h, c

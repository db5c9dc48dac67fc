"""Native sampling loop of an LSTM language model in one call: packing, public API, torch.library
op, dispatch. Registered as op "lstm_generate" (genfast.backends, `genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_lstm_generate_ref.py (a torch loop that carries the state; lm_forward,
the teacher-forced oracle; naive_generate, the full nn.LSTM over the whole prefix per step;
module_generate, the step-by-step loop over the torch modules), C++ CPU
csrc/cpu/lstm_generate.cpp, Triton kernels/lstm_generate.py, CUDA csrc/cuda/lstm_generate.cu.

## The network (sizes L layers, V tokens, H hidden; torch's gate order i, f, g, o)
tokens in [0, V). x = emb[token] (emb (V, E); one-hot input: emb = identity, E = V). Layer 0
reads x, layer l >= 1 reads h of layer l-1 (no projection, unidirectional, no dropout at
generation). Per layer l, with its state (h_l, c_l):
  G    = w_ih_l x_l + b_ih_l + w_hh_l h_l + b_hh_l                 (4H)
  i, f, g, o = sigmoid(G[0:H]), sigmoid(G[H:2H]), tanh(G[2H:3H]), sigmoid(G[3H:4H])
  c_l  = f * c_l + i * g;   h_l = o * tanh(c_l)
head: logits = w_out h_{L-1} + b_out (w_out (V, H), b_out (V)).

## Packed layout (one contiguous 1-D tensor of the model dtype; see pack_lstm)
[tab (V, 4H) = emb @ w_ih_0^T + b_ih_0 + b_hh_0]  layer 0's input side folded per token
[w_hh_0 (4H, H)], per layer l >= 1 [w_ih_l (4H, H), w_hh_l (4H, H), b_l (4H) = b_ih_l + b_hh_l],
[w_out (V, H), b_out (V)]; each row-major, absent biases packed as zeros.
meta: int64 CPU tensor [L, V, H]. Backends may re-layout internally (the C++ kernel packs the
weights into its GEMV tiles once per call).

## Generation: lstm_generate(weights, meta, tokens, h, c, start, offset, seed, inv_temperature,
## top_k, top_p) mutates tokens (B, N) int64, h and c (L, B, H) of the model dtype (contiguous)
(h, c) on entry is the state BEFORE consuming token 0 (zeros for a fresh stream). For
p = 1 .. N-1: token p-1 goes through the stack (updating every layer's state) -> logits; if
p >= start, token p is overwritten by the `sample` family's draw (genfast/ops/sample.py:
temperature, top_k, top_p; csrc/cpu/sample_row.h) from those logits as row
r = (offset + p) * B + b of the Philox stream of `seed`; else the given token p is kept (it
must be in [0, V)). Tokens p < start are read; token N-1 is never fed. 1 <= start <= N
(start = N: only the state advances); offset >= 0 is the position of token 0 in the whole
stream. On return (h, c) is the state before consuming token N-1, so a continuation call
passes tokens[:, N-1:] as its tokens (start 1), the returned state and offset + N - 1, and
draws exactly what one long call would have drawn. Exactness: the teacher-forced module
forward on tokens[:, :N-1] from the entry state, then genfast.sample_categorical with rows
ordered (position, stream) (rows (offset + p) * B + b, p = 1 .. N-1; offset 0: rows B .. N*B-1
of a draw over all N*B rows) and the same seed gives the same tokens at p >= start.
float64 runs in float64; every other dtype computes in float32 (state and gate math). Streams
are independent: the result does not depend on how a backend splits them (threads, blocks).
Native signature (C++; the CUDA copy adds `void* stream` and returns a cudaError_t code):
  lstm_generate(weights, meta, meta_len, tokens, h, c, B, N, start, offset, seed,
                inv_temperature, top_k, top_p, dtype, num_threads)
Triton: genfast.kernels.lstm_generate.generate(weights, meta (list of int), tokens, h, c, start,
offset, seed (1-element int64 tensor), inv_temperature, top_k, top_p), in place.
inv_temperature = +inf is greedy; top_k = 0 and top_p = 1.0 disable the filters.

## Public API: lstm_generate(pack, prime (B, Tp) int64, n, *, state, temperature, top_k, top_p,
## seed, offset, backend) -> (tokens (B, Tp + n), (h, c))
tokens = [prime, n drawn tokens] (start = Tp, Tp >= 1); the returned state is the one before
consuming the last token, so lstm_generate(pack, tokens[:, -1:], m, state=state,
offset=offset + Tp + n - 1, seed=same) continues the stream exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import backends, random
from . import _checks
from ._boundary import Seed, dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._eager import eager_op
from ._lstm_generate_ref import (
    contract_sampler,
    module_generate,
    naive_generate,
    packed_sizes,
    ref_generate,
    unpack,
)
from .sample import sampler_knobs

__all__ = ["LSTMPack", "contract_sampler", "lstm_generate", "lstm_generate_op",
           "module_generate", "naive_generate", "pack_lstm", "packed_sizes", "unpack"]
SPEC = backends.register_op(backends.OpSpec(name="lstm_generate", dtypes=standard_dtypes()))


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class LSTMPack:
    """An LSTM language model packed for lstm_generate: `weights` (1-D, the model dtype and
    device) and `meta` (int64, CPU) in the layout of the module docstring, plus its sizes."""

    weights: Tensor
    meta: Tensor
    layers: int  # L
    vocab: int  # V
    hidden: int  # H


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same(name: str, t: Tensor, like: Tensor) -> Tensor:
    if t.dtype != like.dtype or t.device != like.device:
        raise TypeError(f"{name} must be {_name(like.dtype)} on {like.device} like "
                        f"head.weight, got {_name(t.dtype)} on {t.device}")
    return t.detach()


@torch.no_grad()
def pack_lstm(embedding: nn.Embedding | Tensor | None, lstm: nn.LSTM,
              head: nn.Linear) -> LSTMPack:
    """Pack an LSTM language model for lstm_generate (layout in the module docstring).

    embedding: nn.Embedding (V, E) or its (V, E) weight, or None for one-hot input (E = V);
    lstm: torch.nn.LSTM or genfast.nn.LSTM (unidirectional, proj_size 0, input_size E,
    batch_first either way; dropout is not applied at generation); head: nn.Linear (H -> V).
    The pack is a copy: pack again after the parameters change.
    """
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm must be an nn.LSTM (torch or genfast), got {type(lstm).__name__}")
    if lstm.bidirectional:
        raise ValueError("lstm must be unidirectional for generation, got bidirectional=True")
    if lstm.proj_size:
        raise ValueError(f"lstm must have proj_size 0 for lstm_generate, got {lstm.proj_size}")
    L, H, V = lstm.num_layers, lstm.hidden_size, head.out_features
    w_out = head.weight
    _checks.tensor("head.weight", w_out)
    if head.in_features != H:
        raise ValueError(f"head must map hidden_size {H} to the vocabulary, got in_features "
                         f"{head.in_features}")
    if V < 2:
        raise ValueError(f"head must have out_features (the vocabulary) >= 2, got {V}")
    if isinstance(embedding, nn.Embedding):
        if embedding.max_norm is not None:
            raise ValueError("embedding must not use max_norm (it renormalises rows at lookup, "
                             "which a folded table cannot follow)")
        emb = embedding.weight
    elif embedding is None or isinstance(embedding, Tensor):
        emb = embedding
    else:
        raise TypeError(f"embedding must be an nn.Embedding, a (V, E) tensor or None (one-hot), "
                        f"got {type(embedding).__name__}")
    E = V if emb is None else emb.shape[-1]
    if emb is not None:
        _checks.tensor("embedding", emb)
        if emb.dim() != 2 or emb.shape[0] != V:
            raise ValueError(f"embedding must be (V={V}, E) like head's vocabulary, got shape "
                             f"{tuple(emb.shape)}")
        emb = _same("embedding", emb, w_out)
    if lstm.input_size != E:
        what = "the vocabulary: one-hot input" if emb is None else "the embedding dim"
        raise ValueError(f"lstm.input_size must be {E} ({what}), got {lstm.input_size}")

    def param(name: str, shape: tuple[int, ...]) -> Tensor:
        t = getattr(lstm, name, None)
        if t is None:  # bias=False
            return w_out.new_zeros(shape)
        return _same(f"lstm.{name}", t, w_out)

    b0 = param("bias_ih_l0", (4 * H,)) + param("bias_hh_l0", (4 * H,))
    w_ih0 = param("weight_ih_l0", (4 * H, E))
    tab = (w_ih0.t() if emb is None else emb @ w_ih0.t()) + b0
    parts = [tab, param("weight_hh_l0", (4 * H, H))]
    for li in range(1, L):
        parts += [param(f"weight_ih_l{li}", (4 * H, H)), param(f"weight_hh_l{li}", (4 * H, H)),
                  param(f"bias_ih_l{li}", (4 * H,)) + param(f"bias_hh_l{li}", (4 * H,))]
    parts += [w_out.detach(), w_out.new_zeros(V) if head.bias is None
              else _same("head.bias", head.bias, w_out)]
    weights = torch.cat([p.reshape(-1) for p in parts])
    meta = torch.tensor([L, V, H], dtype=torch.int64)
    return LSTMPack(weights, meta, L, V, H)


# --------------------------------------------------------------------------- compiled backends
def _native_generate(backend, weights, meta, tokens, h, c, start, offset, seed, inv_temp, top_k,
                     top_p):
    B, N = tokens.shape
    native(backend, "lstm_generate", weights, meta, meta.numel(), tokens, h, c, B, N, start,
           offset, Seed(seed), inv_temp, top_k, top_p, dtype_code(weights))


def _triton_generate(weights, meta, tokens, h, c, start, offset, seed, inv_temp, top_k, top_p):
    triton_kernels("lstm_generate").generate(weights, meta.tolist(), tokens, h, c, start, offset,
                                             seed, inv_temp, top_k, top_p)


implementations("lstm_generate", reference=(ref_generate,), native=(_native_generate,),
                triton=(_triton_generate,))


# --------------------------------------------------------------------------- torch.library op
def _generate_impl(weights, meta, tokens, h, c, start, offset, seed, inv_temperature, top_k,
                   top_p, backend):
    backends.call("lstm_generate", backend, 0, weights, meta, tokens, h, c, start, offset, seed,
                  inv_temperature, top_k, top_p)


@torch.library.custom_op("genfast::lstm_generate", mutates_args=("tokens", "h", "c"))
def lstm_generate_op(weights: Tensor, meta: Tensor, tokens: Tensor, h: Tensor, c: Tensor,
                     start: int, offset: int, seed: Tensor, inv_temperature: float, top_k: int,
                     top_p: float, backend: str) -> None:
    _generate_impl(weights, meta, tokens, h, c, start, offset, seed, inv_temperature, top_k,
                   top_p, backend)


@lstm_generate_op.register_fake
def _(weights, meta, tokens, h, c, start, offset, seed, inv_temperature, top_k, top_p, backend):
    return None


_generate = eager_op(lstm_generate_op, _generate_impl)


# --------------------------------------------------------------------------- public API
def _state(state: object, pack: LSTMPack, B: int) -> tuple[Tensor, Tensor]:
    w = pack.weights
    shape = (pack.layers, B, pack.hidden)
    if state is None:
        return w.new_zeros(shape), w.new_zeros(shape)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"state must be None or a pair (h, c), got {type(state).__name__}")
    out = []
    for name, t in zip(("state[0] (h)", "state[1] (c)"), state, strict=True):
        t = _checks.tensor(name, t, dtypes=(w.dtype,))
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape (layers, batch, hidden) = {shape}, got "
                             f"{tuple(t.shape)}")
        if t.device != w.device:
            raise ValueError(f"{name} must be on {w.device} like pack.weights, got {t.device}")
        out.append(t.detach().clone(memory_format=torch.contiguous_format))
    return out[0], out[1]


def lstm_generate(pack: LSTMPack, prime: Tensor, n: int, *,
                  state: tuple[Tensor, Tensor] | None = None, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  offset: int = 0, backend: str | None = None
                  ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Continue B token streams by n tokens each with the packed LSTM language model `pack`.

    prime: (B, Tp) int64, Tp >= 1, values in [0, V): the streams so far (the state must be the
    one before prime[:, 0]: None means zeros, a fresh stream). Returns (tokens (B, Tp + n) =
    [prime, drawn], (h, c)), h and c (layers, B, hidden) being the state before the LAST token
    (it has not been fed yet): lstm_generate(pack, tokens[:, -1:], m, state=(h, c),
    offset=offset + Tp + n - 1, seed=seed) continues exactly as one longer call would.
    temperature / top_k / top_p: as genfast.sample_categorical (temperature 0 is greedy).
    seed: the Philox seed (None: drawn from torch's RNG once for the call); token p of the
    result is drawn with noise row (offset + p) * B + b. One native call on cpu / cuda.
    """
    if not isinstance(pack, LSTMPack):
        raise TypeError(f"pack must be an LSTMPack (pack_lstm), got {type(pack).__name__}")
    w = pack.weights
    prime = _checks.tensor("prime", prime, dtypes=(torch.int64,))
    if prime.dim() != 2 or prime.shape[1] < 1:
        raise ValueError(f"prime must be 2-D (batch, time) with time >= 1, got shape "
                         f"{tuple(prime.shape)}")
    if prime.device != w.device:
        raise ValueError(f"prime must be on {w.device} like pack.weights, got {prime.device}")
    n = _checks.integer("n", n, low=0)
    offset = _checks.integer("offset", offset, low=0)
    B, Tp = prime.shape
    h, c = _state(state, pack, B)
    inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, pack.vocab)
    # A value test reads the data: on the CPU only (no device sync), and not while compiling (a
    # data-dependent branch); the kernels refuse bad tokens too.
    if (prime.device.type == "cpu" and B and not torch.compiler.is_compiling()
            and bool(((prime < 0) | (prime >= pack.vocab)).any())):
        raise ValueError(f"prime must hold tokens in [0, {pack.vocab}), got values in "
                         f"[{int(prime.min())}, {int(prime.max())}]")
    name = backends.resolve("lstm_generate", w, backend)
    out = torch.zeros(B, Tp + n, dtype=torch.int64, device=w.device)
    out[:, :Tp] = prime
    seed_t = random.make_seed(w.device, seed)
    if B and Tp + n > 1:
        _generate(w, pack.meta, out, h, c, Tp, offset, seed_t, inv_temp, k, p, name)
    return out, (h, c)

"""Whole-network WaveNet generation in one native call: public API, reference, torch.library op,
dispatch. Registered as op "causal_conv_generate" (genfast.backends, `genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_causal_conv_generate_ref.py (a torch loop with per-layer queues, the
fast-wavenet algorithm; and wavenet_forward_packed, the teacher-forced oracle), C++ CPU
csrc/cpu/causal_conv_generate.cpp, Triton kernels/causal_conv_generate.py, CUDA
csrc/cuda/causal_conv_generate.cu.

## The network
input: x0 = emb[tok] (embedding (A, R) of the previous token), or "scalar":
  x0[r] = w_in[r] * v + b_in[r] with v = 2 * tok / (A - 1) - 1.
L residual layers, layer l with w_dil (G, R, K), b_dil (G), w_res (R, H), b_res (R),
w_skip (S, H), b_skip (S), H = G / 2, dilation d_l; at position p:
  a = b_dil + sum_k w_dil[:, :, k] @ x(p - (K-1-k) d_l) + gcond[b, l] + lcond[b, i, l]
  z = tanh(a[:H]) * sigmoid(a[H:]);  x <- x + w_res z + b_res;  skip <- skip + w_skip z + b_skip
(skip starts at 0; inputs at positions < 0 are 0: causal zero padding).
head: logits = w2 @ relu(w1 @ relu(skip) + b1) + b2, w1 (E, S), w2 (A, E).

## Packed layout (one contiguous 1-D tensor of the model dtype; see pack_wavenet)
[emb (A, R) | w_in (R), b_in (R)], per layer [w_dil, b_dil, w_res, b_res, w_skip, b_skip],
then [w1, b1, w2, b2]; each row-major, absent biases packed as zeros.
meta: int64 CPU tensor [L, A, R, G, S, E, K, input_kind (0 embedding, 1 scalar), d_0 .. d_{L-1}].
Backends may re-layout internally (the C++ kernel blocks the weights input-major at the start of
each call: negligible against a chunk of thousands of steps).

## State (new_state): updated in place, so a later call continues exactly
rings (B, sum_l (K-1) d_l R), model dtype, zeros initially: layer l owns (K-1) d_l slots of R
values, position q in slot q mod ((K-1) d_l); after a layer's step at position p has read its
taps it writes its input x into slot p mod ((K-1) d_l).
pos (B, 2) int64 = (steps done, previous token), initially (0, A // 2) (mu-law zero).

## Step i of a call, stream b, position p = pos[b, 0]
token = the `sample` family's draw (genfast/ops/sample.py: temperature, top_k, top_p) from the
logits as row r = p * B + b of the Philox stream of `seed`. So genfast.sample_categorical on the
teacher-forced logits of [A // 2, tokens[:-1]], rows ordered (step, stream), with the same seed
gives the same tokens: the exactness test. tokens[b, i] = token; pos[b] = (p + 1, token).
gcond (B, L, G): global conditioning already projected per layer, or None; lcond (B, n, L, G):
local conditioning of this call's n steps, or None.
float64 runs in float64; every other dtype computes in float32 (rings in the model dtype).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .. import backends, random
from . import _checks
from ._boundary import Seed, dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._causal_conv_generate_ref import META_HEAD, ref_generate, unpack, wavenet_forward_packed
from ._eager import eager_op
from .sample import sampler_knobs

__all__ = ["META_HEAD", "GenerateState", "WaveNetPack", "new_state", "pack_wavenet", "unpack",
           "wavenet_forward_packed", "wavenet_generate", "wavenet_generate_op"]
SPEC = backends.register_op(backends.OpSpec(name="causal_conv_generate",
                                            dtypes=standard_dtypes()))
_KINDS = {"embedding": 0, "scalar": 1}


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class WaveNetPack:
    """A WaveNet packed for generation: `weights` (1-D, the model dtype and device) and `meta`
    (int64, CPU) in the layout of the module docstring; its sizes are read from meta."""

    weights: Tensor
    meta: Tensor

    def _m(self, i: int) -> int:
        return int(self.meta[i])

    classes = property(lambda self: self._m(1))  # A
    residual = property(lambda self: self._m(2))  # R
    gate = property(lambda self: self._m(3))  # G (H = G // 2)
    skip = property(lambda self: self._m(4))  # S
    hidden = property(lambda self: self._m(5))  # E
    kernel_size = property(lambda self: self._m(6))  # K

    @property
    def input_kind(self) -> str:  # "embedding" or "scalar"
        return list(_KINDS)[self._m(7)]

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.meta[8:])

    @property
    def ring_size(self) -> int:
        return sum((self.kernel_size - 1) * d * self.residual for d in self.dilations)

    @property
    def receptive_field(self) -> int:
        return (self.kernel_size - 1) * sum(self.dilations) + 1


class GenerateState(NamedTuple):
    """rings (B, pack.ring_size) and pos (B, 2) int64 (steps done, previous token)."""

    rings: Tensor
    pos: Tensor


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _param(name: str, t: object, shape: tuple[int, ...], like: Tensor | None) -> Tensor:
    """t as `shape` (a trailing Conv1d kernel dim of 1 is dropped); the dtype/device of `like`."""
    if t is None:
        return like.new_zeros(shape)
    x = _checks.tensor(name, t)
    if x.dim() == len(shape) + 1 and x.shape[-1] == 1:
        x = x[..., 0]
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        raise TypeError(f"{name} must be {_name(like.dtype)} on {like.device} like the input "
                        f"weight, got {_name(x.dtype)} on {x.device}")
    return x


def pack_wavenet(*, input_weight: Tensor, input_bias: Tensor | None = None,
                 input_kind: str = "embedding", layers: list[dict],
                 head: tuple) -> WaveNetPack:
    """Pack a WaveNet's weights for wavenet_generate (layout in the module docstring).

    input_weight: the embedding (A, R), or for input_kind="scalar" w_in (R,) (or a Conv1d(1, R, 1)
    weight) with input_bias (R,). layers: dicts {w_dil (G, R, K), b_dil, w_res (R, H), b_res,
    w_skip (S, H), b_skip, dilation}; w_res / w_skip may be Conv1d weights (R, H, 1); biases may
    be None. head: (w1 (E, S), b1, w2 (A, E), b2).
    """
    if input_kind not in _KINDS:
        raise ValueError(f"input_kind must be 'embedding' or 'scalar', got {input_kind!r}")
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError("layers must be a non-empty list of dicts")
    if not isinstance(head, (list, tuple)) or len(head) != 4:
        raise ValueError("head must be a tuple (w1, b1, w2, b2)")
    w_in = _checks.tensor("input_weight", input_weight)
    w0 = _checks.tensor("layers[0]['w_dil']", layers[0].get("w_dil"), min_dim=3)
    G, R, K = w0.shape
    if G % 2 or G < 2:
        raise ValueError(f"layers[0]['w_dil'] must have an even number of gate channels, got {G}")
    H = G // 2
    w2 = _checks.tensor("head[2]", head[2], min_dim=2)
    A = w2.shape[0]
    if A < 2:
        raise ValueError(f"head[2] (w2) must have at least 2 classes, got {A}")
    parts = []
    if input_kind == "embedding":
        if input_bias is not None:
            raise ValueError("input_bias must be None for an embedding input")
        parts.append(_param("input_weight", w_in, (A, R), None))
    else:
        w_in = _param("input_weight", w_in.reshape(-1) if w_in.numel() == R else w_in, (R,), None)
        parts += [w_in, _param("input_bias", input_bias, (R,), w_in)]
    ref = parts[0]
    S = _checks.tensor("layers[0]['w_skip']", layers[0].get("w_skip"), min_dim=2).shape[0]
    dil = []
    for i, lay in enumerate(layers):
        if not isinstance(lay, dict):
            raise TypeError(f"layers[{i}] must be a dict, got {type(lay).__name__}")
        n = f"layers[{i}]"
        dil.append(_checks.integer(f"{n}['dilation']", lay.get("dilation"), low=1))
        parts += [_param(f"{n}['w_dil']", lay.get("w_dil"), (G, R, K), ref),
                  _param(f"{n}['b_dil']", lay.get("b_dil"), (G,), ref),
                  _param(f"{n}['w_res']", lay.get("w_res"), (R, H), ref),
                  _param(f"{n}['b_res']", lay.get("b_res"), (R,), ref),
                  _param(f"{n}['w_skip']", lay.get("w_skip"), (S, H), ref),
                  _param(f"{n}['b_skip']", lay.get("b_skip"), (S,), ref)]
    E = _checks.tensor("head[0]", head[0], min_dim=2).shape[0]
    parts += [_param("head[0]", head[0], (E, S), ref), _param("head[1]", head[1], (E,), ref),
              _param("head[2]", head[2], (A, E), ref), _param("head[3]", head[3], (A,), ref)]
    weights = torch.cat([p.detach().reshape(-1) for p in parts])
    meta = torch.tensor([len(layers), A, R, G, S, E, K, _KINDS[input_kind], *dil],
                        dtype=torch.int64)
    return WaveNetPack(weights, meta)


def new_state(pack: WaveNetPack, batch: int) -> GenerateState:
    """The initial state of `batch` streams: zero rings, pos = (0, A // 2)."""
    batch = _checks.integer("batch", batch, low=1)
    w = pack.weights
    pos = torch.tensor([0, pack.classes // 2], dtype=torch.int64).repeat(batch, 1).to(w.device)
    return GenerateState(w.new_zeros(batch, pack.ring_size), pos)


# --------------------------------------------------------------------------- compiled backends
def _native_generate(backend, weights, meta, gcond, lcond, rings, pos, n, seed, inv_temp, top_k,
                     top_p):
    B = pos.shape[0]
    tokens = torch.empty(B, n, dtype=torch.int64, device=pos.device)
    native(backend, "wavenet_generate", weights, meta, meta.numel(),
           0 if gcond is None else gcond, 0 if lcond is None else lcond, rings, pos, tokens, B, n,
           Seed(seed), inv_temp, top_k, top_p, dtype_code(weights))
    return tokens


def _triton_generate(weights, meta, gcond, lcond, rings, pos, n, seed, inv_temp, top_k, top_p):
    tokens = torch.empty(pos.shape[0], n, dtype=torch.int64, device=pos.device)
    return triton_kernels("causal_conv_generate").generate(
        weights, meta.tolist(), gcond, lcond, rings, pos, tokens, seed, inv_temp, top_k, top_p)


implementations("causal_conv_generate", reference=(ref_generate,), native=(_native_generate,),
                triton=(_triton_generate,))


# --------------------------------------------------------------------------- torch.library op
def _generate_impl(weights, meta, gcond, lcond, rings, pos, n, seed, inv_temperature, top_k,
                   top_p, backend):
    return backends.call("causal_conv_generate", backend, 0, weights, meta, gcond, lcond, rings,
                         pos, n, seed, inv_temperature, top_k, top_p)


@torch.library.custom_op("genfast::wavenet_generate", mutates_args=("rings", "pos"))
def wavenet_generate_op(weights: Tensor, meta: Tensor, gcond: Tensor | None,
                        lcond: Tensor | None, rings: Tensor, pos: Tensor, n: int, seed: Tensor,
                        inv_temperature: float, top_k: int, top_p: float,
                        backend: str) -> Tensor:
    return _generate_impl(weights, meta, gcond, lcond, rings, pos, n, seed, inv_temperature,
                          top_k, top_p, backend)


@wavenet_generate_op.register_fake
def _(weights, meta, gcond, lcond, rings, pos, n, seed, inv_temperature, top_k, top_p, backend):
    return pos.new_empty((pos.shape[0], n))


_generate = eager_op(wavenet_generate_op, _generate_impl)


# --------------------------------------------------------------------------- public API
def _check_like(name: str, t: object, shape: tuple[int, ...], like: Tensor,
                dtype: torch.dtype | None = None) -> Tensor:
    x = _checks.tensor(name, t, dtypes=(dtype or like.dtype,))
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.device != like.device:
        raise ValueError(f"{name} must be on {like.device} like pack.weights, got {x.device}")
    return x


def wavenet_generate(pack: WaveNetPack, n: int, *, batch: int | None = None,
                     gcond: Tensor | None = None, lcond: Tensor | None = None,
                     state: GenerateState | None = None, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, backend: str | None = None,
                     chunk: int = 16384) -> tuple[Tensor, GenerateState]:
    """Generate n tokens of `batch` streams with the packed WaveNet `pack` (see pack_wavenet).

    batch: the number of streams (default: the state's, else 1).
    Returns (tokens (batch, n) int64, state). state (from new_state, or a previous call) is
    advanced in place and returned; passing it back with the same seed continues exactly as one
    longer call would. gcond: (batch, L, G) per-layer global conditioning; lcond: (batch, n, L, G)
    per-layer local conditioning of these n steps (both already projected, in the model dtype).
    temperature / top_k / top_p: as genfast.sample_categorical (temperature 0 is greedy).
    seed: the Philox seed (None: drawn from torch's RNG once for the call). The loop runs in
    native calls of `chunk` steps, with no Python per step on the cpu / cuda backends.
    """
    if not isinstance(pack, WaveNetPack):
        raise TypeError(f"pack must be a WaveNetPack (pack_wavenet), got {type(pack).__name__}")
    n = _checks.integer("n", n, low=0)
    chunk = _checks.integer("chunk", chunk, low=1)
    w = pack.weights
    L, G = len(pack.dilations), pack.gate
    if state is not None and (not isinstance(state, tuple) or len(state) != 2):
        raise TypeError("state must be a GenerateState (rings, pos) from new_state")
    if batch is None:
        batch = 1 if state is None else getattr(state[1], "shape", (1,))[0]
    batch = _checks.integer("batch", batch, low=1)
    state = new_state(pack, batch) if state is None else GenerateState(*state)
    rings = _check_like("state.rings", state.rings, (batch, pack.ring_size), w)
    pos = _check_like("state.pos", state.pos, (batch, 2), w, torch.int64)
    if not (rings.is_contiguous() and pos.is_contiguous()):
        raise ValueError("state.rings and state.pos must be contiguous (they are updated in place)")
    if pos.device.type == "cpu" and batch and not (
            (pos[:, 0] >= 0).all() and (pos[:, 1] >= 0).all() and (pos[:, 1] < pack.classes).all()):
        raise ValueError(f"state.pos must hold (steps >= 0, previous token in [0, "
                         f"{pack.classes})) per stream, got {pos.tolist()}")
    if gcond is not None:
        gcond = _check_like("gcond", gcond, (batch, L, G), w).contiguous()
    if lcond is not None:
        lcond = _check_like("lcond", lcond, (batch, n, L, G), w)
    inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, pack.classes)
    name = backends.resolve("causal_conv_generate", w, backend)
    seed_t = random.make_seed(w.device, seed)
    parts = []
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        lc = None if lcond is None else lcond[:, i0:i1].contiguous()
        parts.append(_generate(w, pack.meta, gcond, lc, rings, pos, i1 - i0, seed_t, inv_temp, k,
                               p, name))
    tokens = torch.cat(parts, 1) if parts else pos.new_empty((batch, 0))
    return tokens, GenerateState(rings, pos)

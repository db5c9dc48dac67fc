"""Whole-network gated PixelCNN generation in one native call: packing, public API, torch.library
op, dispatch. Registered as op "masked_conv_generate" (genfast.backends, `genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_masked_conv_generate_ref.py (a torch loop with per-layer row caches, the
fast-pixel-cnn algorithm; pixelcnn_forward_packed, the teacher-forced oracle; naive_generate),
C++ CPU csrc/cpu/masked_conv_generate.cpp, Triton kernels/masked_conv_generate.py, CUDA
csrc/cuda/masked_conv_generate.cu.

## The network (van den Oord et al. 2016b, gated; sizes L, A, C, E, kernel width k = 2c + 1)
tokens (B, H, W) int64 in [0, A). x0 = emb[tokens] (emb (A, C)); v_0 = h_0 = x0. Layer l
(l = 0 mask A without residual; l >= 1 mask B with residual), cond_l = cond[b, l] (2C) or 0:
  V    = vconv_l(v_l) + bv                      vertical stack, weight wv (2C, C, c+1, k)
  v_{l+1} = gate(V + cond_l)
  Hp   = hconv_l(h_l) + bh + wl V + bl + cond_l  horizontal stack, weight wh (2C, C, 1, c+1)
  h_{l+1} = (h_l if l >= 1 else 0) + wr gate(Hp) + br
  gate(u) = tanh(u[:C]) * sigmoid(u[C:])
vconv at (i, j): sum over rows r, columns s of wv[:, :, r, s] @ v[i - c + r, j - c + s], with
r in [0, c] for mask B and r in [0, c) for mask A (the current row is not read at layer 0);
hconv at (i, j): sum over s of wh[:, :, 0, s] @ h[i, j - c + s], s in [0, c] for mask B and
[0, c) for mask A (the current pixel is not read at layer 0). Inputs outside the image are 0.
Taps a mask does not read are never read (they may hold anything). The link wl (2C, 2C) applies
to V WITHOUT cond; cond enters both gates once.
head: logits = w2 @ relu(w1 @ h_L + b1) + b2, w1 (E, C), w2 (A, E) (no ReLU before w1).
Causality: logits at pixel p = i * W + j depend on tokens at pixels < p only.

## Packed layout (one contiguous 1-D tensor of the model dtype; see pack_pixelcnn)
[emb (A, C)], per layer [wv (2C, C, c+1, k), bv (2C), wh (2C, C, c+1), bh (2C), wl (2C, 2C),
bl (2C), wr (C, C), br (C)], then [w1 (E, C), b1 (E), w2 (A, E), b2 (A)]; each row-major,
absent biases packed as zeros; every layer has the same sizes (layer 0's wr and br are used;
only its residual add is absent). meta: int64 CPU tensor [L, A, C, E, k], k odd >= 1.
Backends may re-layout internally (the C++ kernel blocks the weights once per call).

## Generation: masked_conv_generate(weights, meta, cond, tokens, start, seed, inv_temperature,
## top_k, top_p) mutates tokens (B, H, W) int64 (contiguous) in place
Pixels in raster order p = i * W + j, p = 0 .. H*W - 1. For p < start, tokens[b, p] is read
(it must be in [0, A)); for p >= start it is overwritten by the `sample` family's draw
(genfast/ops/sample.py: temperature, top_k, top_p; csrc/cpu/sample_row.h) from logits[b, :, i,
j] as row r = p * B + b of the Philox stream of `seed`. So genfast.sample_categorical on the
teacher-forced logits of the result, rows ordered (pixel, image), with the same seed gives the
same tokens at p >= start: the exactness test. cond: (B, L, 2C) (the per-layer class
embedding, already looked up) or None. 0 <= start <= H*W. float64 runs in float64; every other
dtype computes in float32. Images are independent: the result does not depend on how a backend
splits them (threads, blocks).
Native signature (C++; the CUDA copy adds `void* stream` and returns a cudaError_t code):
  pixelcnn_generate(weights, meta, meta_len, cond, tokens, B, H, W, start, seed,
                    inv_temperature, top_k, top_p, dtype, num_threads)
Triton: genfast.kernels.masked_conv_generate.generate(weights, meta (list of int), cond,
tokens, start, seed (1-element int64 tensor), inv_temperature, top_k, top_p), in place.
inv_temperature = +inf is greedy; top_k = 0 and top_p = 1.0 disable the filters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import backends, random
from . import _checks
from ._boundary import Seed, dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._eager import eager_op
from ._masked_conv_generate_ref import (
    LAYER_KEYS,
    naive_generate,
    pixelcnn_forward_packed,
    ref_generate,
    unpack,
)
from .sample import sampler_knobs

__all__ = ["LAYER_KEYS", "PixelCNNPack", "masked_conv_generate_op", "naive_generate",
           "pack_pixelcnn", "pixelcnn_forward_packed", "pixelcnn_generate", "unpack"]
SPEC = backends.register_op(backends.OpSpec(name="masked_conv_generate",
                                            dtypes=standard_dtypes()))


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class PixelCNNPack:
    """A gated PixelCNN packed for generation: `weights` (1-D, the model dtype and device) and
    `meta` (int64, CPU) in the layout of the module docstring, plus its sizes."""

    weights: Tensor
    meta: Tensor
    layers: int  # L
    classes: int  # A
    channels: int  # C
    hidden: int  # E
    kernel_size: int  # k = 2c + 1


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _param(name: str, t: object, shape: tuple[int, ...], like: Tensor | None) -> Tensor:
    """t as `shape` (trailing 1x1 conv dims dropped; a horizontal weight's row dim of 1 too)."""
    if t is None:
        if like is None:
            raise ValueError(f"{name} is required")
        return like.new_zeros(shape)
    x = _checks.tensor(name, t)
    if x.numel() == math.prod(shape) and x.dim() > len(shape) and all(
            d == 1 for d in x.shape[len(shape):]):
        x = x.reshape(x.shape[:len(shape)])
    if len(shape) == 3 and x.dim() == 4 and x.shape[2] == 1:  # wh (2C, C, 1, c+1)
        x = x[:, :, 0]
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if like is not None and (x.dtype != like.dtype or x.device != like.device):
        raise TypeError(f"{name} must be {_name(like.dtype)} on {like.device} like the "
                        f"embedding, got {_name(x.dtype)} on {x.device}")
    return x


def pack_pixelcnn(*, embedding: Tensor, layers: Sequence[Mapping[str, Tensor | None]],
                  out1_weight: Tensor, out1_bias: Tensor | None, out2_weight: Tensor,
                  out2_bias: Tensor | None) -> PixelCNNPack:
    """Pack a gated PixelCNN for pixelcnn_generate (layout in the module docstring).

    embedding (A, C); layers: one mapping per layer with keys v_weight (2C, C, c+1, k), v_bias,
    h_weight (2C, C, 1, c+1), h_bias, link_weight (2C, 2C, 1, 1), link_bias, res_weight
    (C, C, 1, 1), res_bias (biases may be None or absent; layer 0 is mask A, the others mask B);
    out1_weight (E, C, 1, 1), out1_bias, out2_weight (A, E, 1, 1), out2_bias. 1x1 conv weights
    may also be given as matrices.
    """
    emb = _checks.tensor("embedding", embedding, min_dim=2)
    if emb.dim() != 2:
        raise ValueError(f"embedding must be 2-D (A, C), got shape {tuple(emb.shape)}")
    A, C = emb.shape
    if A < 2 or C < 1:
        raise ValueError(f"embedding must have A >= 2 rows and C >= 1 columns, got {(A, C)}")
    if isinstance(layers, Mapping) or not isinstance(layers, Sequence) or not layers:
        raise ValueError("layers must be a non-empty sequence of per-layer mappings")
    for i, lay in enumerate(layers):
        if not isinstance(lay, Mapping):
            raise TypeError(f"layers[{i}] must be a mapping, got {type(lay).__name__}")
        unknown = set(lay) - set(LAYER_KEYS)
        if unknown:
            raise ValueError(f"layers[{i}] has unknown keys {sorted(unknown)}; expected "
                             f"{list(LAYER_KEYS)}")
    wv0 = _checks.tensor("layers[0]['v_weight']", layers[0].get("v_weight"), min_dim=4)
    k = wv0.shape[-1]
    if wv0.dim() != 4 or k % 2 == 0:
        raise ValueError(f"layers[0]['v_weight'] must be (2C, C, c+1, k) with k odd, got shape "
                         f"{tuple(wv0.shape)}")
    c = k // 2
    w2 = _checks.tensor("out2_weight", out2_weight, min_dim=2)
    E = w2.shape[1]
    parts = [emb]
    shapes = {"v_weight": (2 * C, C, c + 1, k), "v_bias": (2 * C,), "h_weight": (2 * C, C, c + 1),
              "h_bias": (2 * C,), "link_weight": (2 * C, 2 * C), "link_bias": (2 * C,),
              "res_weight": (C, C), "res_bias": (C,)}
    for i, lay in enumerate(layers):
        for key in LAYER_KEYS:
            if key.endswith("weight") and lay.get(key) is None:
                raise ValueError(f"layers[{i}]['{key}'] is required")
            parts.append(_param(f"layers[{i}]['{key}']", lay.get(key), shapes[key], emb))
    parts += [_param("out1_weight", out1_weight, (_checks.tensor(
        "out1_weight", out1_weight, min_dim=2).shape[0], C), emb)]
    E1 = parts[-1].shape[0]
    parts += [_param("out1_bias", out1_bias, (E1,), emb), _param("out2_weight", w2, (A, E1), emb),
              _param("out2_bias", out2_bias, (A,), emb)]
    if E != E1:
        raise ValueError(f"out2_weight must have shape {(A, E1)}, got {tuple(w2.shape)}")
    weights = torch.cat([p.detach().reshape(-1) for p in parts])
    meta = torch.tensor([len(layers), A, C, E1, k], dtype=torch.int64)
    return PixelCNNPack(weights, meta, len(layers), A, C, E1, k)


# --------------------------------------------------------------------------- compiled backends
def _native_generate(backend, weights, meta, cond, tokens, start, seed, inv_temp, top_k, top_p):
    B, H, W = tokens.shape
    native(backend, "pixelcnn_generate", weights, meta, meta.numel(), 0 if cond is None else cond,
           tokens, B, H, W, start, Seed(seed), inv_temp, top_k, top_p, dtype_code(weights))


def _triton_generate(weights, meta, cond, tokens, start, seed, inv_temp, top_k, top_p):
    triton_kernels("masked_conv_generate").generate(weights, meta.tolist(), cond, tokens, start,
                                                    seed, inv_temp, top_k, top_p)


implementations("masked_conv_generate", reference=(ref_generate,), native=(_native_generate,),
                triton=(_triton_generate,))


# --------------------------------------------------------------------------- torch.library op
def _generate_impl(weights, meta, cond, tokens, start, seed, inv_temperature, top_k, top_p,
                   backend):
    backends.call("masked_conv_generate", backend, 0, weights, meta, cond, tokens, start, seed,
                  inv_temperature, top_k, top_p)


@torch.library.custom_op("genfast::pixelcnn_generate", mutates_args=("tokens",))
def masked_conv_generate_op(weights: Tensor, meta: Tensor, cond: Tensor | None, tokens: Tensor,
                            start: int, seed: Tensor, inv_temperature: float, top_k: int,
                            top_p: float, backend: str) -> None:
    _generate_impl(weights, meta, cond, tokens, start, seed, inv_temperature, top_k, top_p,
                   backend)


@masked_conv_generate_op.register_fake
def _(weights, meta, cond, tokens, start, seed, inv_temperature, top_k, top_p, backend):
    return None


_generate = eager_op(masked_conv_generate_op, _generate_impl)


# --------------------------------------------------------------------------- public API
def pixelcnn_generate(pack: PixelCNNPack, n: int | None = None, *, height: int | None = None,
                      width: int | None = None, tokens: Tensor | None = None,
                      cond_bias: Tensor | None = None, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None,
                      seed: int | None = None, start: int = 0,
                      backend: str | None = None) -> Tensor:
    """Sample n images (B, height, width) int64 from the packed gated PixelCNN `pack`.

    tokens: (n, height, width) int64 (n, height, width default to its shape): pixels p < start
    (raster order) are kept from it, the rest sampled (completion); it is not modified, a new
    tensor is returned. Without tokens, start must be 0 and height, width are required.
    cond_bias: (n, L, 2C) per-layer conditioning bias (the class embedding of every layer,
    already looked up), in the model dtype. temperature / top_k / top_p: as
    genfast.sample_categorical (temperature 0 is greedy). seed: the Philox seed (None: drawn
    from torch's RNG once for the call). One native call on the cpu / cuda backends.
    """
    if not isinstance(pack, PixelCNNPack):
        raise TypeError(f"pack must be a PixelCNNPack (pack_pixelcnn), got {type(pack).__name__}")
    w = pack.weights
    if tokens is not None:
        tokens = _checks.tensor("tokens", tokens, dtypes=(torch.int64,))
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be 3-D (n, height, width), got shape "
                             f"{tuple(tokens.shape)}")
        if tokens.device != w.device:
            raise ValueError(f"tokens must be on {w.device} like pack.weights, got {tokens.device}")
        for name, given, size in (("n", n, tokens.shape[0]), ("height", height, tokens.shape[1]),
                                  ("width", width, tokens.shape[2])):
            if given is not None and _checks.integer(name, given, low=1) != size:
                raise ValueError(f"{name} must match tokens.shape {tuple(tokens.shape)}, got "
                                 f"{given}")
        B, H, W = tokens.shape
    else:
        B = 1 if n is None else _checks.integer("n", n, low=1)
        if height is None or width is None:
            raise ValueError("height and width are required when tokens is not given")
        H, W = _checks.integer("height", height, low=1), _checks.integer("width", width, low=1)
    start = _checks.integer("start", start, low=0, high=H * W)
    if tokens is None and start > 0:
        raise ValueError(f"start must be 0 when tokens is not given, got {start}")
    if cond_bias is not None:
        cond_bias = _checks.tensor("cond_bias", cond_bias, dtypes=(w.dtype,))
        shape = (B, pack.layers, 2 * pack.channels)
        if tuple(cond_bias.shape) != shape:
            raise ValueError(f"cond_bias must have shape {shape}, got {tuple(cond_bias.shape)}")
        if cond_bias.device != w.device:
            raise ValueError(f"cond_bias must be on {w.device} like pack.weights, got "
                             f"{cond_bias.device}")
        cond_bias = cond_bias.contiguous()
    inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, pack.classes)
    name = backends.resolve("masked_conv_generate", w, backend)
    if tokens is None:
        out = torch.zeros(B, H, W, dtype=torch.int64, device=w.device)
    else:
        out = tokens.clone(memory_format=torch.contiguous_format)
        if start and out.device.type == "cpu":
            given = out.view(B, H * W)[:, :start]
            if bool(((given < 0) | (given >= pack.classes)).any()):
                raise ValueError(f"tokens must be in [0, {pack.classes}) at the pixels p < start "
                                 f"= {start} (they are read)")
    seed_t = random.make_seed(w.device, seed)
    if start < H * W:
        _generate(w, pack.meta, cond_bias, out, start, seed_t, inv_temp, k, p, name)
    return out

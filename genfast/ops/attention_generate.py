"""Native sampling loop of a GPT (nanoGPT's decoder-only Transformer) in one call: packing, public
API, torch.library op, dispatch. Registered as op "attention_generate" (genfast.backends,
`genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_attention_generate_ref.py (a torch loop over the packed weights), C++ CPU
csrc/cpu/attention_generate.cpp, Triton kernels/attention_generate.py, CUDA
csrc/cuda/attention_generate.cu. The Python loop over the modules is GPTNet.generate
(genfast/models/_gpt_net.py, use_cache=True), which this op reproduces.

## The network (L layers, V tokens, C = n_embd, Hh heads, D = C / Hh, T = block_size)
A token at cache position t: x = wte[token] + wpe[t]. Per layer (pre-LN):
  a   = LN(x; ln1_w, ln1_b)       LayerNorm over C, eps 1e-5, biased variance
  qkv = W_attn a + b_attn         (3C): q | k | v, head h in columns [h D, (h+1) D) of each
  per head: softmax over the cached positions 0 .. t (causal: the new key included) of
            q.k_j / sqrt(D); y_h = sum_j P_j v_j
  x  += W_proj y + b_proj         (y: the heads concatenated)
  m   = LN(x; ln2_w, ln2_b)
  x  += W_proj2 GELU(W_fc m + b_fc) + b_proj2     exact GELU 0.5 u (1 + erf(u / sqrt 2))
logits = W_head LN(x; lnf_w, lnf_b)               (V), no bias.

## Packed layout (one contiguous 1-D tensor of the model dtype; see pack_gpt), row-major parts
[wte (V, C)] [wpe (T, C)]
per layer: [ln1_w (C)] [ln1_b (C)] [W_attn (3C, C)] [b_attn (3C)] [W_proj (C, C)] [b_proj (C)]
           [ln2_w (C)] [ln2_b (C)] [W_fc (4C, C)] [b_fc (4C)] [W_proj2 (C, 4C)] [b_proj2 (C)]
[lnf_w (C)] [lnf_b (C)] [W_head (V, C)]
Absent biases are packed as zeros; W_head is packed even when tied to wte. meta: int64 CPU tensor
[L, V, C, Hh, T]. Backends may re-layout internally once per call.

## Generation: attention_generate(weights, meta, tokens, kcache, vcache, scratch, start, keep,
## seed, inv_temperature, top_k, top_p) mutates tokens (B, N) int64
Tokens p < start are given (values in [0, V)); for p = start .. N-1 token p is drawn.
1 <= start <= N (start = N: nothing is drawn), 1 <= keep <= T. The context of draw p:
  * the first draw (p = start): the cache is emptied and filled with tokens
    [max(0, p - T), p) at positions 0, 1, ...; the logits are the last one's;
  * a later draw: if the cache holds T positions it is emptied and refilled with tokens
    [p - keep, p) at positions 0 .. keep - 1 (logits of the last); otherwise token p - 1 is
    appended at position = the cache length and its logits are used.
  A fill runs each token at its position attending to the positions up to its own; a backend
  may run a fill as one batched pass or position by position (same math; rounding may differ).
Token p is the `sample` family's draw (genfast/ops/sample.py: temperature, top_k, top_p;
csrc/cpu/sample_row.h, kernels/sample.py, csrc/cuda/draw_block.cuh) from the logits as Philox
row p * B + b of `seed` — GPTNet.generate's rows, so while the context fits the block (no
refill yet) the teacher-forced forward of the result plus genfast.sample_categorical over rows
ordered (position, stream) gives the same tokens (the exactness test).
kcache, vcache (L, B, Hh, T, D) and scratch (B, 10 C + V + T): caller-allocated workspaces in the
work dtype (contents on entry and exit unspecified; a backend may ignore scratch). Work dtype:
float64 for float64 weights, else float32 (fp16 / bf16 weights are widened on load). Streams are
independent: the result does not depend on how a backend splits them (threads, blocks).
Native signature (C++; the CUDA copy adds `void* stream` and returns a cudaError_t code):
  attention_generate(weights, meta, meta_len, tokens, kcache, vcache, scratch, B, N, start,
                     keep, seed, inv_temperature, top_k, top_p, dtype, num_threads)
Triton: genfast.kernels.attention_generate.generate(weights, meta (list of int), tokens, kcache,
vcache, scratch, start, keep, seed (1-element int64 tensor), inv_temperature, top_k, top_p).
inv_temperature = +inf is greedy; top_k = 0 and top_p = 1.0 disable the filters.

## Public API: attention_generate(pack, prime (B, Tp) int64, n, *, temperature, top_k, top_p,
## seed, keep, backend) -> tokens (B, Tp + n) = [prime, n drawn tokens]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import backends, random
from . import _checks
from ._attention_generate_ref import LN_EPS, check_meta, ref_generate, unpack
from ._boundary import Seed, dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._boundary import work_dtype as _work_dtype
from ._eager import eager_op
from .sample import sampler_knobs

__all__ = ["GPTPack", "attention_generate", "attention_generate_op", "pack_gpt", "unpack"]
# CUDA first under `auto` on a GPU: its cooperative kernel spreads every GEMV over the SMs and
# takes any vocabulary; the Triton kernel runs a stream per program and keeps the logits row in
# registers (V <= 1024, head dim <= 256: kernels/attention_generate.py).
SPEC = backends.register_op(backends.OpSpec(name="attention_generate", dtypes=standard_dtypes(),
                                            auto_cuda=("cuda", "triton", "reference")))


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class GPTPack:
    """A GPT packed for attention_generate: `weights` (1-D, the model dtype and device) and
    `meta` (int64, CPU) in the layout of the module docstring, plus its sizes."""

    weights: Tensor
    meta: Tensor
    layers: int  # L
    vocab: int  # V
    n_embd: int  # C
    n_head: int  # Hh
    block_size: int  # T


def _layer_norm(ln: object, where: str, C: int) -> nn.LayerNorm:
    if not isinstance(ln, nn.LayerNorm) or tuple(ln.normalized_shape) != (C,):
        raise ValueError(f"{where} must be an nn.LayerNorm over n_embd={C}")
    if ln.eps != LN_EPS:
        raise ValueError(f"{where}.eps must be {LN_EPS} (the packed contract), got {ln.eps}")
    return ln


def _gelu_exact(mlp: nn.Module, where: str) -> None:
    act = getattr(mlp, "gelu", None)
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        raise ValueError(f"{where}.gelu must be nn.GELU() (exact erf form) for attention_generate")


@torch.no_grad()
def pack_gpt(net: nn.Module) -> GPTPack:
    """Pack a GPT for attention_generate (layout in the module docstring).

    net: genfast.models._gpt_net.GPTNet or any module with nanoGPT's tree and names
    (transformer.wte / wpe / h[i].ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.gelu,
    mlp.c_proj / ln_f, lm_head; LayerNorm eps 1e-5, exact GELU); dropout is not applied at
    generation. The pack is a copy: pack again after the parameters change.
    """
    tr = getattr(net, "transformer", None)
    head = getattr(net, "lm_head", None)
    if tr is None or not isinstance(head, nn.Linear):
        raise TypeError(f"net must have nanoGPT's transformer / lm_head modules, got "
                        f"{type(net).__name__}")
    wte, wpe = tr.wte.weight, tr.wpe.weight
    V, C = wte.shape
    T = wpe.shape[0]
    w = head.weight
    _checks.tensor("lm_head.weight", w)
    if tuple(w.shape) != (V, C) or head.bias is not None:
        raise ValueError(f"lm_head must be a bias-free nn.Linear({C}, {V}), got weight "
                         f"{tuple(w.shape)}, bias {head.bias is not None}")
    blocks = list(tr.h)
    if not blocks:
        raise ValueError("net must have at least one block (transformer.h)")
    Hh = blocks[0].attn.n_head

    def part(t: Tensor | None, shape: tuple[int, ...], where: str) -> Tensor:
        if t is None:
            return w.new_zeros(shape)
        if t.dtype != w.dtype or t.device != w.device or tuple(t.shape) != shape:
            raise ValueError(f"{where} must be {tuple(shape)} {w.dtype} on {w.device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
        return t.detach()

    def ln(mod: object, where: str) -> list[Tensor]:
        m = _layer_norm(mod, where, C)
        return [part(m.weight, (C,), f"{where}.weight"), part(m.bias, (C,), f"{where}.bias")]

    def lin(mod: nn.Linear, shape: tuple[int, int], where: str) -> list[Tensor]:
        return [part(mod.weight, shape, f"{where}.weight"),
                part(mod.bias, (shape[0],), f"{where}.bias")]

    parts = [part(wte, (V, C), "transformer.wte.weight"), part(wpe, (T, C), "transformer.wpe")]
    for i, blk in enumerate(blocks):
        at = f"transformer.h[{i}]"
        if blk.attn.n_head != Hh:
            raise ValueError(f"{at}.attn.n_head must be {Hh} like block 0's")
        _gelu_exact(blk.mlp, f"{at}.mlp")
        parts += (ln(blk.ln_1, f"{at}.ln_1") + lin(blk.attn.c_attn, (3 * C, C), f"{at}.attn.c_attn")
                  + lin(blk.attn.c_proj, (C, C), f"{at}.attn.c_proj") + ln(blk.ln_2, f"{at}.ln_2")
                  + lin(blk.mlp.c_fc, (4 * C, C), f"{at}.mlp.c_fc")
                  + lin(blk.mlp.c_proj, (C, 4 * C), f"{at}.mlp.c_proj"))
    parts += ln(tr.ln_f, "transformer.ln_f") + [w.detach()]
    meta = torch.tensor([len(blocks), V, C, Hh, T], dtype=torch.int64)
    check_meta(meta.tolist())
    weights = torch.cat([p.reshape(-1) for p in parts])
    return GPTPack(weights, meta, len(blocks), V, C, Hh, T)


# --------------------------------------------------------------------------- compiled backends
def _native_generate(backend, weights, meta, tokens, kcache, vcache, scratch, start, keep, seed,
                     inv_temp, top_k, top_p):
    B, N = tokens.shape
    native(backend, "attention_generate", weights, meta, meta.numel(), tokens, kcache, vcache,
           scratch, B, N, start, keep, Seed(seed), inv_temp, top_k, top_p, dtype_code(weights))


def _triton_generate(weights, meta, tokens, kcache, vcache, scratch, start, keep, seed, inv_temp,
                     top_k, top_p):
    triton_kernels("attention_generate").generate(weights, meta.tolist(), tokens, kcache, vcache,
                                                  scratch, start, keep, seed, inv_temp, top_k,
                                                  top_p)


implementations("attention_generate", reference=(ref_generate,), native=(_native_generate,),
                triton=(_triton_generate,))


# --------------------------------------------------------------------------- torch.library op
def _generate_impl(weights, meta, tokens, kcache, vcache, scratch, start, keep, seed,
                   inv_temperature, top_k, top_p, backend):
    backends.call("attention_generate", backend, 0, weights, meta, tokens, kcache, vcache,
                  scratch, start, keep, seed, inv_temperature, top_k, top_p)


@torch.library.custom_op("genfast::attention_generate",
                         mutates_args=("tokens", "kcache", "vcache", "scratch"))
def attention_generate_op(weights: Tensor, meta: Tensor, tokens: Tensor, kcache: Tensor,
                          vcache: Tensor, scratch: Tensor, start: int, keep: int, seed: Tensor,
                          inv_temperature: float, top_k: int, top_p: float, backend: str) -> None:
    _generate_impl(weights, meta, tokens, kcache, vcache, scratch, start, keep, seed,
                   inv_temperature, top_k, top_p, backend)


@attention_generate_op.register_fake
def _(weights, meta, tokens, kcache, vcache, scratch, start, keep, seed, inv_temperature, top_k,
      top_p, backend):
    return None


_generate = eager_op(attention_generate_op, _generate_impl)


# --------------------------------------------------------------------------- public API
def workspaces(pack: GPTPack, B: int) -> tuple[Tensor, Tensor, Tensor]:
    """(kcache, vcache, scratch) for B streams, in the work dtype on the pack's device."""
    w = pack.weights
    wd = _work_dtype(w.dtype)
    # The pack's Python ints, not meta.tolist(): under torch.compile a tensor's values are
    # data-dependent symbols that empty() cannot be sized by.
    L, V, C, Hh, T = pack.layers, pack.vocab, pack.n_embd, pack.n_head, pack.block_size
    shape = (L, B, Hh, T, C // Hh)
    return (torch.empty(shape, dtype=wd, device=w.device),
            torch.empty(shape, dtype=wd, device=w.device),
            torch.empty(B, 10 * C + V + T, dtype=wd, device=w.device))


def attention_generate(pack: GPTPack, prime: Tensor, n: int, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None,
                       seed: int | None = None, keep: int | None = None,
                       backend: str | None = None) -> Tensor:
    """Continue B token streams by n tokens each with the packed GPT `pack` (pack_gpt).

    prime: (B, Tp) int64, Tp >= 1, values in [0, V). Returns (B, Tp + n) = [prime, drawn].
    The context is the last block_size tokens at most, with a KV cache per layer; when the
    cache is full it is refilled with the last `keep` tokens (default block_size // 2): the
    module docstring's rule, which is GPTNet.generate's (use_cache=True). temperature / top_k /
    top_p: as genfast.sample_categorical (temperature 0 is greedy). seed: the Philox seed (None:
    drawn from torch's RNG once for the call); token p of the result is drawn with noise row
    p * B + b. One native call on cpu / cuda (the whole loop, no Python per token).
    """
    if not isinstance(pack, GPTPack):
        raise TypeError(f"pack must be a GPTPack (pack_gpt), got {type(pack).__name__}")
    w = pack.weights
    prime = _checks.tensor("prime", prime, dtypes=(torch.int64,))
    if prime.dim() != 2 or prime.shape[1] < 1:
        raise ValueError(f"prime must be 2-D (batch, time) with time >= 1, got shape "
                         f"{tuple(prime.shape)}")
    if prime.device != w.device:
        raise ValueError(f"prime must be on {w.device} like pack.weights, got {prime.device}")
    n = _checks.integer("n", n, low=0)
    T = pack.block_size
    keep = T // 2 if keep is None else _checks.integer("keep", keep, low=1, high=T)
    inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, pack.vocab)
    B, Tp = prime.shape
    # A value test reads the data: on the CPU only (no device sync), and not while compiling;
    # the kernels refuse bad tokens too.
    if (prime.device.type == "cpu" and B and not torch.compiler.is_compiling()
            and bool(((prime < 0) | (prime >= pack.vocab)).any())):
        raise ValueError(f"prime must hold tokens in [0, {pack.vocab}), got values in "
                         f"[{int(prime.min())}, {int(prime.max())}]")
    name = backends.resolve("attention_generate", w, backend)
    out = torch.zeros(B, Tp + n, dtype=torch.int64, device=w.device)
    out[:, :Tp] = prime
    seed_t = random.make_seed(w.device, seed)
    if B and n:
        kc, vc, scratch = workspaces(pack, B)
        _generate(w, pack.meta, out, kc, vc, scratch, Tp, keep, seed_t, inv_temp, k, p, name)
    return out

"""nanoGPT's ``CausalSelfAttention`` on genfast's fused attention, with a key/value cache for
incremental decoding (op stem `attention`).

* ``CausalSelfAttention(n_embd, n_head)``: the fused QKV projection ``c_attn``, the heads, the
  genfast causal attention kernel and the output projection ``c_proj``, under nanoGPT's
  parameter names: a nanoGPT ``CausalSelfAttention`` state_dict loads as is (with or without
  the ``bias`` causal-mask buffer of its non-flash path) and ours loads into nanoGPT's. The
  attention is genfast.attention, so the layer's backward is itself differentiable.
* ``KVCache``: one layer's keys and values in buffers preallocated for ``max_len`` positions;
  ``forward(x, cache)`` writes the new positions in place and attends through the view of the
  filled prefix (the kernels take strided views: no copy, no reallocation per step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import backends
from ..ops import _checks
from ..ops.attention import attention, attention_step

__all__ = ["CausalSelfAttention", "KVCache"]


class KVCache:
    """Keys and values of one attention layer for ``max_len`` positions of ``batch_size``
    streams: buffers ``k`` and ``v`` of shape (batch_size, n_head, max_len, head_dim), of which
    the first ``length`` positions are filled.

    ``append(k, v)`` copies T new positions in at ``length`` and returns the views
    ``k[:, :, :length]`` / ``v[:, :, :length]`` (after the append), which the attention reads in
    place. ``reset()`` empties it (the buffers are reused). A cache is written in place, so it
    is for inference: CausalSelfAttention refuses it while autograd records.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, *,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        B = _checks.integer("batch_size", batch_size, low=1)
        H = _checks.integer("n_head", n_head, low=1)
        T = _checks.integer("max_len", max_len, low=1)
        D = _checks.integer("head_dim", head_dim, low=1)
        dtype = dtype or torch.get_default_dtype()
        self.k = torch.zeros(B, H, T, D, device=device, dtype=dtype)
        self.v = torch.zeros(B, H, T, D, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def __repr__(self) -> str:
        B, H, T, D = self.k.shape
        return (f"KVCache(batch_size={B}, n_head={H}, max_len={T}, head_dim={D}, "
                f"length={self.length}, dtype={self.k.dtype}, device={self.k.device})")

    def reset(self) -> None:
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (batch_size, n_head, T, head_dim) at positions [length, length + T);
        returns the filled prefixes (views of the buffers)."""
        B, H, _, D = self.k.shape
        T = k.shape[2] if k.dim() == 4 else -1
        for name, x in (("k", k), ("v", v)):
            if x.shape != (B, H, T, D):
                raise ValueError(f"{name} must be ({B}, {H}, T, {D}) for this cache (the same T "
                                 f"for k and v), got shapes {tuple(k.shape)}, {tuple(v.shape)}")
            if x.dtype != self.k.dtype or x.device != self.k.device:
                raise ValueError(f"{name} is {x.dtype} on {x.device}, the cache holds "
                                 f"{self.k.dtype} on {self.k.device}")
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"cache full: {self.length} positions held + {k.shape[2]} new > "
                             f"max_len={self.max_len} (reset() it or allocate a longer one)")
        self.k[:, :, self.length:end].copy_(k)
        self.v[:, :, self.length:end].copy_(v)
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, nanoGPT's module on genfast.attention.

    x: (B, T, n_embd) -> y: (B, T, n_embd). ``c_attn`` (n_embd -> 3 n_embd: q, k, v side by
    side, head h in columns [h*hd, (h+1)*hd) of each, hd = n_embd // n_head), softmax(q k^T /
    sqrt(hd)) over the keys each query may see, then ``c_proj``.

    cache: a KVCache (batch B, n_head, any max_len, hd) holding the keys and values of the
    positions before x: x's own are appended, and query i of x attends to every cached position
    and to x's positions <= i (the bottom-right causal rule). Without a cache x starts at
    position 0. Decoding token by token through a cache gives the full forward's outputs.
    Inference only (the cache is written in place): with a cache, autograd must be off.

    block_size: None, or the longest context (cached + new positions) the layer accepts; a
    longer one is an error, as in nanoGPT (where it sizes the mask buffer).

    dropout: applied to the output (``resid_dropout``) in training. The fused kernel never
    forms the attention probabilities, so they are not dropped (nanoGPT's flash path passes
    dropout_p to SDPA); ``attn_dropout`` is an Identity that only keeps nanoGPT's attribute
    names. In eval mode, or with dropout 0, the layer equals nanoGPT's.

    backend: genfast.attention's backend (None: auto, or the scope's genfast.use_backend).
    """

    def __init__(self, n_embd: int, n_head: int, *, bias: bool = True, dropout: float = 0.0,
                 block_size: int | None = None, backend: str | None = None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if backend is not None:
            backends.requested_backend(backend)  # raises naming the choices
        self.backend = backend
        C = _checks.integer("n_embd", n_embd, low=1)
        H = _checks.integer("n_head", n_head, low=1)
        if C % H:
            raise ValueError(f"n_embd ({C}) must be divisible by n_head ({H})")
        _checks.boolean("bias", bias)
        self.dropout = _checks.real("dropout", dropout, 0.0, 1.0, high_open=True)
        self.block_size = None if block_size is None else _checks.integer(
            "block_size", block_size, low=1)
        self.n_embd, self.n_head = C, H
        kw = {"device": device, "dtype": dtype}
        self.c_attn = nn.Linear(C, 3 * C, bias=bias, **kw)
        self.c_proj = nn.Linear(C, C, bias=bias, **kw)
        self.attn_dropout = nn.Identity()
        self.resid_dropout = nn.Dropout(self.dropout)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, n_head={self.n_head}, dropout={self.dropout}, "
                f"block_size={self.block_size}")

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KVCache for this layer (max_len defaults to block_size)."""
        max_len = self.block_size if max_len is None else max_len
        if max_len is None:
            raise ValueError("max_len is required when the layer has no block_size")
        w = self.c_attn.weight
        return KVCache(batch_size, self.n_head, max_len, self.head_dim, device=w.device,
                       dtype=w.dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = _checks.tensor("x", x)
        if x.dim() != 3 or x.shape[2] != self.n_embd:
            raise ValueError(f"x must be (batch, time, {self.n_embd}), got shape "
                             f"{tuple(x.shape)}")
        B, T, C = x.shape
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
        start = cache.length if cache is not None else 0
        if self.block_size is not None and start + T > self.block_size:
            raise ValueError(f"context of {start + T} positions ({start} cached + {T} new) "
                             f"exceeds block_size={self.block_size}")
        # Views into c_attn's output: the kernel reads any strides, so no per-head copies (and
        # one view + permute + unbind, not a split and three view / transpose pairs: a decode
        # step is ~30 tiny ops per layer, each a few microseconds of dispatch).
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
                raise RuntimeError("KVCache decoding is inference only (the cache is written "
                                   "in place): run it under torch.no_grad() or "
                                   "torch.inference_mode()")
            k, v = cache.append(k, v)
            y = attention_step(q, k, v, scale=self.head_dim ** -0.5, backend=self.backend)
        else:
            y = attention(q, k, v, causal=True, backend=self.backend)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # nanoGPT's non-flash path registers its causal mask as the buffer "bias"
        # (1, 1, block_size, block_size); the kernel applies the mask itself, so the buffer is
        # checked and dropped rather than reported as an unexpected key.
        mask = state_dict.get(prefix + "bias")
        if mask is not None:
            n = mask.shape[-1] if mask.dim() else 0
            tril = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
            if mask.shape != (1, 1, n, n) or not torch.equal(mask[0, 0] != 0, tril):
                raise ValueError(f"{prefix}bias: expected nanoGPT's causal mask buffer (a lower"
                                 f" triangle of ones, (1, 1, n, n)), got shape "
                                 f"{tuple(mask.shape)} with other values")
            del state_dict[prefix + "bias"]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

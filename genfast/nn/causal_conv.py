"""Causal dilated convolutions and the WaveNet stack as modules (op stem `causal_conv`).

* ``CausalConv1d``: an ``nn.Conv1d`` (same constructor, parameters and state_dict keys, so a
  Conv1d checkpoint loads) whose output at t sees only inputs <= t: r9y9's
  ``Conv1d(padding=(K-1)*d)(x)[..., :T]`` without computing and dropping the right half.
* ``WaveNetLayer``: dilated conv -> (+ local / global conditioning) -> tanh * sigmoid gate ->
  1x1 residual and 1x1 skip, as one fused op (genfast.wavenet_layer).
* ``WaveNet``: mu-law input (embedding or a 1x1 conv of the companded value), dilation cycles,
  the skip head ReLU-1x1-ReLU-1x1 to categorical logits, and ``generate``: the whole
  autoregressive loop in one native call per chunk (genfast/ops/causal_conv_generate.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..ops import _checks
from ..ops.causal_conv import activation_code, causal_conv1d, causal_conv1d_update
from ..ops.causal_conv_layer import wavenet_layer

INPUTS = ("embedding", "scalar")


class CausalConv1d(nn.Conv1d):
    """``nn.Conv1d`` that pads (kernel_size-1)*dilation on the left only (causal).

    Takes nn.Conv1d's arguments; padding is implied, so ``padding`` must be 0, ``stride`` 1
    and ``padding_mode`` "zeros". Keyword ``activation`` (None, "silu", "relu", "tanh") is
    fused into the kernel's store; ``backend`` as genfast.causal_conv1d.

    ``forward(x, initial_state=None, return_final_state=False)``: x (B, C_in, T) or unbatched
    (C_in, T); the state is the (B, C_in, P) history before x (P = (K-1)*dilation).
    ``step(x_new, state, cache_seqlens=None)``: decode steps through causal_conv1d_update (a
    ring buffer with cache_seqlens, else a shift); ``init_state(batch)`` is the zero history.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int],
                 stride: int | tuple[int] = 1, padding: int | tuple[int] | str = 0,
                 dilation: int | tuple[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 activation: str | None = None, backend: str | None = None) -> None:
        if padding not in (0, (0,), "valid"):
            raise ValueError(f"padding: CausalConv1d pads (kernel_size-1)*dilation on the left "
                             f"itself and takes padding=0, got {padding!r}")
        if stride not in (1, (1,)):
            raise ValueError(f"stride: CausalConv1d supports stride=1 only, got {stride!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: CausalConv1d pads with zeros (or a given "
                             f"initial_state), got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=0,
                         dilation=dilation, groups=groups, bias=bias, padding_mode="zeros",
                         device=device, dtype=dtype)
        activation_code(activation)  # the same error as the functional API
        self.activation, self.backend = activation, backend

    @property
    def history(self) -> int:
        """P = (kernel_size-1)*dilation: the inputs before t that output t reads."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def forward(self, x: Tensor, initial_state: Tensor | None = None,
                return_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
            initial_state = None if initial_state is None else initial_state.unsqueeze(0)
        out = causal_conv1d(x, self.weight, self.bias, dilation=self.dilation[0],
                            groups=self.groups, activation=self.activation,
                            initial_state=initial_state, return_final_state=return_final_state,
                            backend=self.backend)
        if not unbatched:
            return out
        return (out[0][0], out[1][0]) if return_final_state else out[0]

    @torch.no_grad()
    def step(self, x_new: Tensor, state: Tensor, cache_seqlens: Tensor | None = None) -> Tensor:
        """y for L new inputs x_new (B, C_in, L) or (B, C_in); `state` is updated in place
        (see genfast.causal_conv1d_update; with cache_seqlens the caller advances it by L)."""
        return causal_conv1d_update(x_new, state, self.weight, self.bias,
                                    dilation=self.dilation[0], groups=self.groups,
                                    activation=self.activation, cache_seqlens=cache_seqlens,
                                    backend=self.backend)

    def init_state(self, batch: int) -> Tensor:
        """Zero history (batch, C_in, P): the causal padding, as a state for forward or step."""
        _checks.integer("batch", batch, 1)
        return self.weight.new_zeros(batch, self.in_channels, self.history)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s


class WaveNetLayer(nn.Module):
    """One gated residual layer: a = conv(x) + cond; z = tanh(a[:G/2]) * sigmoid(a[G/2:]);
    returns (x + res(z), skip + skip(z)).

    Children: ``conv`` (CausalConv1d residual -> gate, kernel_size, dilation), ``res``
    (1x1 gate/2 -> residual), ``skip`` (1x1 gate/2 -> skip); ``cond`` (1x1 cond_channels ->
    gate, no bias) for local conditioning and ``gc`` (Linear gc_channels -> gate, no bias) for
    global conditioning when asked. No gate activations are kept for backward: the fused
    backward recomputes them (one conv per layer), which costs less than storing them.
    """

    def __init__(self, residual: int, gate: int, skip: int, kernel_size: int = 2,
                 dilation: int = 1, cond_channels: int = 0, gc_channels: int = 0,
                 bias: bool = True, backend: str | None = None) -> None:
        super().__init__()
        for name, v in (("residual", residual), ("gate", gate), ("skip", skip),
                        ("kernel_size", kernel_size), ("dilation", dilation)):
            _checks.integer(name, v, 1)
        _checks.integer("cond_channels", cond_channels, 0)
        _checks.integer("gc_channels", gc_channels, 0)
        if gate % 2:
            raise ValueError(f"gate must be even (filter and gate halves), got {gate}")
        self.backend = backend
        self.conv = CausalConv1d(residual, gate, kernel_size, dilation=dilation, bias=bias,
                                 backend=backend)
        self.res = nn.Conv1d(gate // 2, residual, 1, bias=bias)
        self.skip = nn.Conv1d(gate // 2, skip, 1, bias=bias)
        self.cond = nn.Conv1d(cond_channels, gate, 1, bias=False) if cond_channels else None
        self.gc = nn.Linear(gc_channels, gate, bias=False) if gc_channels else None

    def conditioning(self, cond: Tensor | None = None, gc: Tensor | None = None
                     ) -> Tensor | None:
        """The projected conditioning added before the gate: (B, G, T), (B, G, 1) or None."""
        out = None
        if cond is not None:
            if self.cond is None:
                raise ValueError("cond given to a WaveNetLayer built with cond_channels=0")
            out = self.cond(cond)
        if gc is not None:
            if self.gc is None:
                raise ValueError("gc given to a WaveNetLayer built with gc_channels=0")
            g = self.gc(gc).unsqueeze(-1)
            out = g if out is None else out + g
        return out

    def forward(self, x: Tensor, skip: Tensor | None = None, cond: Tensor | None = None,
                gc: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, residual, T); skip (B, skip, T) or None (zeros); cond (B, cond_channels, T);
        gc (B, gc_channels). Returns (x_out, skip_out)."""
        c = self.conditioning(cond, gc)
        return wavenet_layer(x, self.conv.weight, self.res.weight, self.skip.weight,
                             self.conv.bias, self.res.bias, self.skip.bias,
                             dilation=self.conv.dilation[0], cond=c, skip=skip,
                             backend=self.backend)


class WaveNet(nn.Module):
    """Categorical (mu-law) WaveNet: input -> `stacks` cycles of `layers` WaveNetLayers
    (dilations 1, 2, ..., 2**(layers-1)) -> relu -> 1x1 skip->head -> relu -> 1x1 head->classes.

    forward(tokens_in (B, T) int, cond=None (B, cond_channels, T), gc=None (B,) class ids)
    -> logits (B, classes, T); logits[..., t] predicts the token after tokens_in[..., t].
    ``input="scalar"`` feeds v = 2*tok/(classes-1) - 1 through a 1x1 conv instead of an
    embedding. ``gc_classes`` > 0 adds a global-conditioning embedding of size ``gc_dim``.
    """

    def __init__(self, classes: int = 256, residual: int = 32, gate: int = 64, skip: int = 128,
                 head: int = 128, layers: int = 10, stacks: int = 2, kernel_size: int = 2,
                 input: str = "embedding", cond_channels: int = 0, gc_classes: int = 0,
                 gc_dim: int = 16, backend: str | None = None) -> None:
        super().__init__()
        _checks.integer("classes", classes, 2)
        for name, v in (("head", head), ("layers", layers), ("stacks", stacks),
                        ("gc_dim", gc_dim)):
            _checks.integer(name, v, 1)
        _checks.integer("gc_classes", gc_classes, 0)
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        self.classes, self.input_kind, self.backend = classes, input, backend
        if input == "embedding":
            self.input = nn.Embedding(classes, residual)
        else:
            self.input = nn.Conv1d(1, residual, 1)
        self.gc_embed = nn.Embedding(gc_classes, gc_dim) if gc_classes else None
        gc_ch = gc_dim if gc_classes else 0
        self.layers = nn.ModuleList(
            WaveNetLayer(residual, gate, skip, kernel_size, 2 ** (i % layers), cond_channels,
                         gc_ch, backend=backend)
            for i in range(layers * stacks))
        self.head1 = nn.Conv1d(skip, head, 1)
        self.head2 = nn.Conv1d(head, classes, 1)
        self._pack_key: tuple | None = None
        self._pack: Any = None

    @property
    def receptive_field(self) -> int:
        """Samples one output sees: 1 + sum over layers of (kernel_size-1)*dilation."""
        return 1 + sum(layer.conv.history for layer in self.layers)

    def _embed_input(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens_in must be an int tensor (B, T), got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        if self.input_kind == "embedding":
            return self.input(tokens).transpose(1, 2)
        w = self.input.weight
        v = 2 * tokens.to(w.dtype) / (self.classes - 1) - 1
        return self.input(v.unsqueeze(1))

    def _gc_vector(self, gc: Tensor | int | None, batch: int) -> Tensor | None:
        if gc is None:
            return None
        if self.gc_embed is None:
            raise ValueError("gc given to a WaveNet built with gc_classes=0")
        n = self.gc_embed.num_embeddings
        if isinstance(gc, int):
            if not 0 <= gc < n:
                raise ValueError(f"gc must be a class id in [0, {n}), got {gc}")
            gc = torch.full((batch,), gc, device=self.head1.weight.device)
        # A tensor is not range-checked here (a host sync per step on a GPU); nn.Embedding
        # rejects an id out of range.
        if not isinstance(gc, Tensor) or gc.shape != (batch,) or gc.is_floating_point():
            raise ValueError(f"gc must be an int class id or a ({batch},) int tensor of them, "
                             f"got {gc!r}")
        return self.gc_embed(gc)

    def forward(self, tokens_in: Tensor, cond: Tensor | None = None,
                gc: Tensor | int | None = None) -> Tensor:
        x = self._embed_input(tokens_in)
        g = self._gc_vector(gc, x.shape[0])
        skip = None
        for layer in self.layers:
            x, skip = layer(x, skip, cond, g)
        return self.head2(torch.relu(self.head1(torch.relu(skip))))

    # ------------------------------------------------------------------ generation
    def pack(self) -> Any:
        """The weights packed for genfast's generator; rebuilt only when a parameter changed
        (keyed on every parameter's identity, version, device and dtype)."""
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        if self._pack_key != key:
            from ..ops.causal_conv_generate import pack_wavenet

            with torch.no_grad():
                if self.input_kind == "embedding":
                    inp = {"input_weight": self.input.weight.detach()}
                else:
                    inp = {"input_weight": self.input.weight.detach().reshape(-1),
                           "input_bias": self.input.bias.detach()}
                layers = [{"w_dil": lay.conv.weight.detach(),
                           "b_dil": _d(lay.conv.bias),
                           "w_res": lay.res.weight.detach()[..., 0],
                           "b_res": _d(lay.res.bias),
                           "w_skip": lay.skip.weight.detach()[..., 0],
                           "b_skip": _d(lay.skip.bias),
                           "dilation": lay.conv.dilation[0]} for lay in self.layers]
                head = (self.head1.weight.detach()[..., 0], self.head1.bias.detach(),
                        self.head2.weight.detach()[..., 0], self.head2.bias.detach())
                self._pack = pack_wavenet(input_kind=self.input_kind, layers=layers, head=head,
                                          **inp)
            self._pack_key = key
        return self._pack

    @torch.no_grad()
    def conditioning(self, n: int, batch: int, cond: Tensor | None = None,
                     gc: Tensor | int | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Every layer's projected conditioning, computed once before generation:
        global (B, L, G) and local (B, n, L, G) (nv-wavenet's cond_input)."""
        g = self._gc_vector(gc, batch)
        gcond = None
        if g is not None:
            gcond = torch.stack([lay.gc(g) for lay in self.layers], 1)
        lcond = None
        if cond is not None:
            if cond.dim() != 3 or cond.shape[0] != batch or cond.shape[2] < n:
                raise ValueError(f"cond must be (batch={batch}, cond_channels, >= n={n}), got "
                                 f"{tuple(cond.shape)}")
            if self.layers[0].cond is None:
                raise ValueError("cond given to a WaveNet built with cond_channels=0")
            c = cond[..., :n]
            lcond = torch.stack([lay.cond(c).transpose(1, 2) for lay in self.layers], 2)
        return gcond, lcond

    @torch.no_grad()
    def generate(self, n: int, *, batch: int = 1, cond: Tensor | None = None,
                 gc: Tensor | int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 backend: str | None = None) -> Tensor:
        """n samples per stream, (batch, n) int64 classes (mu_law_decode gives audio).

        The whole loop runs natively (genfast.ops.causal_conv_generate.wavenet_generate): per
        layer ring buffers and genfast's Gumbel-max sampler keyed by (seed, step, stream), so
        the result equals a teacher-forced forward on [classes//2, tokens[:-1]] sampled with
        ``genfast.sample_categorical(..., seed=seed)`` row n*batch + b.
        """
        from ..ops.causal_conv_generate import wavenet_generate

        _checks.integer("n", n, 1)
        _checks.integer("batch", batch, 1)
        gcond, lcond = self.conditioning(n, batch, cond, gc)
        tokens, _ = wavenet_generate(self.pack(), n, batch=batch, gcond=gcond, lcond=lcond,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     seed=seed, backend=backend or self.backend)
        return tokens


def _d(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()

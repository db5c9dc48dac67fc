"""Drop-in ``nn.LSTM`` / ``nn.LSTMCell`` on genfast's fused LSTM (op stem `lstm`).

* ``LSTM`` / ``LSTMCell`` subclass torch's: the same constructor, parameter names and
  state_dict (a torch checkpoint loads both ways), the same forward semantics (``(h0, c0)``,
  unbatched input, ``batch_first``, ``PackedSequence`` in -> ``PackedSequence`` out, dropout
  between layers, ``proj_size``) and torch's error types; the forward runs genfast.lstm /
  genfast.lstm_cell, whose backward is itself differentiable (WGAN-GP through an LSTM critic).
* ``convert_lstm(model)`` / ``revert_lstm(model)`` turn every torch LSTM / LSTMCell inside a
  model into genfast's and back, in place.

torch.compile: dynamo refuses to trace any ``nn.LSTM`` subclass (an isinstance test of
torch's) unless ``torch._dynamo.config.allow_rnn = True``; with it, genfast's LSTM traces into
genfast's ops (one graph node per layer and direction, forward and backward, fullgraph).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import backends
from ..ops.lstm import lstm, lstm_cell

__all__ = ["LSTM", "LSTMCell", "convert_lstm", "revert_lstm"]

State = tuple[Tensor, Tensor]


def _check_backend(backend: str | None) -> str | None:
    if backend is not None:
        backends.requested_backend(backend)  # raises ValueError naming the choices
    return backend


def _check_devices(input: Tensor, weights: list[Tensor], hx: State | None) -> None:
    """torch's check_attributes, in its words and order (states, then parameters): upstream
    tests match these messages."""
    for h in hx or ():
        if h.device != input.device:
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found "
                               f"input tensor at {input.device} and hidden tensor at "
                               f"{h.device}")
    for w in weights:
        if w.device != input.device:
            raise RuntimeError(f"Input and parameter tensors are not at the same device, found "
                               f"input tensor at {input.device} and parameter tensor at "
                               f"{w.device}")
    for h in hx or ():
        if h.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(f"hidden state dtype ({h.dtype}) does not match input dtype "
                               f"({input.dtype})")


def _pad(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Packed data -> time-major padded (T, B, I) and lengths, in the packed (sorted) order."""
    padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
    return padded, lengths


class LSTM(nn.LSTM):
    """``nn.LSTM`` computed by genfast's fused layers.

    Takes nn.LSTM's arguments (input_size, hidden_size, num_layers, bias, batch_first,
    dropout, bidirectional, proj_size, device, dtype) and keyword ``backend`` ("auto" when
    None, "reference", "cpu", "triton", "cuda"; as genfast.lstm). Parameters, state_dict keys
    and forward semantics are torch's: ``forward(input, hx=None) -> (output, (h_n, c_n))``
    with input (T, B, I), (B, T, I) with batch_first, unbatched (T, I) or a PackedSequence.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device: Any = None,
                 dtype: Any = None, *, backend: str | None = None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def __setstate__(self, d: dict) -> None:
        # torch's pickles (and pre-1.8 ones without proj_size, which torch fills in) have no
        # backend: they load as auto.
        super().__setstate__(d)
        self.__dict__.setdefault("backend", None)

    def flatten_parameters(self) -> None:
        """A no-op: genfast reads the parameters where they are (torch's version packs them
        into one cuDNN buffer, which genfast does not use)."""

    def _weights(self) -> list[Tensor]:
        # getattr on every call, not the cached _flat_weights: the parameters may have been
        # swapped (torch.func.functional_call, weight_norm's pre-hook, parametrizations).
        return [getattr(self, n) for n in self._flat_weights_names]

    def _check_input(self, input: Tensor, batch_sizes: Tensor | None, w0: Tensor) -> None:
        if input.dtype != w0.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype "
                             f"({w0.dtype}). Convert input: input.to({w0.dtype}), or convert "
                             f"model: model.to({input.dtype})")
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            raise RuntimeError(f"input must have {expected} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")

    def _check_hx(self, input: Tensor, hx: State, batch_sizes: Tensor | None) -> None:
        self.check_hidden_size(hx[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hx[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def forward(self, input: Tensor | PackedSequence, hx: State | None = None
                ) -> tuple[Tensor | PackedSequence, State]:
        weights = self._weights()
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, batch_sizes, weights[0])
            if hx is not None:
                self._check_hx(data, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
            _check_devices(data, weights, hx)
            x, lengths_cpu = _pad(data, batch_sizes)
            lengths = lengths_cpu.to(x.device)
            batched, batch_first = True, False
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D "
                                 f"instead")
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if batched else input.unsqueeze(batch_dim)
            if hx is not None:
                want = 3 if batched else 2
                if hx[0].dim() != want or hx[1].dim() != want:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D "
                                       f"but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if not batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_input(x, None, weights[0])
            if hx is not None:
                self._check_hx(x, hx, None)
            _check_devices(x, weights, hx)
            if x.size(1 - batch_dim) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            lengths, batch_first = None, self.batch_first
        out, (h_n, c_n) = lstm(x, hx, weights, num_layers=self.num_layers, bias=self.bias,
                               batch_first=batch_first, dropout=self.dropout,
                               training=self.training, bidirectional=self.bidirectional,
                               proj_size=self.proj_size, lengths=lengths, backend=self.backend)
        if packed:
            # The padded rows are in the packed (sorted) order with lengths descending, so
            # packing them back reproduces the input's batch_sizes layout exactly.
            out_data = pack_padded_sequence(out, lengths_cpu).data
            out = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
            return out, self.permute_hidden((h_n, c_n), unsorted_indices)
        if not batched:
            return out.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return out, (h_n, c_n)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + f", backend={self.backend!r}" if self.backend is not None else s


class LSTMCell(nn.LSTMCell):
    """``nn.LSTMCell`` computed by genfast's fused layer (one step).

    Takes nn.LSTMCell's arguments (input_size, hidden_size, bias, device, dtype) and keyword
    ``backend`` (as genfast.lstm_cell). ``forward(input, hx=None) -> (h', c')`` with input
    (B, I) or unbatched (I,), hx = (h, c) each (B, H) / (H,) or None (zeros).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, backend: str | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.backend = _check_backend(backend)

    def __setstate__(self, d: dict) -> None:
        super().__setstate__(d)
        self.__dict__.setdefault("backend", None)

    def forward(self, input: Tensor, hx: State | None = None) -> State:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        if hx is not None:
            if len(hx) != 2:
                raise RuntimeError("lstm_cell expects two hidden states")
            for i, v in enumerate(hx):
                if v.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{i}] to be 1D or 2D, got "
                                     f"{v.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is not None and not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if x.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected "
                               f"{self.input_size}")
        for i, v in enumerate(hx or ()):
            # An unbatched input with (1, H) states reaches here 3-D, and fails as in torch.
            if v.shape[0] != x.shape[0]:
                raise RuntimeError(f"Input batch size {x.shape[0]} doesn't match hidden{i} "
                                   f"batch size {v.shape[0]}")
            if v.dim() != 2 or v.shape[1] != self.hidden_size:
                got = v.shape[1] if v.dim() > 1 else tuple(v.shape)
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {got}, "
                                   f"expected {self.hidden_size}")
        if input.dtype != self.weight_ih.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(f"LSTMCell: input dtype ({input.dtype}) does not match weight "
                               f"dtype ({self.weight_ih.dtype})")
        _check_devices(x, [self.weight_ih, self.weight_hh], hx)
        h, c = lstm_cell(x, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                         backend=self.backend)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + f", backend={self.backend!r}" if self.backend is not None else s


# --------------------------------------------------------------------------- converters
_TO_GENFAST = {nn.LSTM: LSTM, nn.LSTMCell: LSTMCell}
_TO_TORCH = {LSTM: nn.LSTM, LSTMCell: nn.LSTMCell}


def _plain_class(module: nn.Module) -> type:
    """The module's class below torch.nn.utils.parametrize's generated subclass, if any."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _swap_class(module: nn.Module, new: type) -> None:
    if parametrize.is_parametrized(module):
        # parametrize injects a generated subclass holding the parametrized attributes as
        # properties; rebuild it over the new class so they keep working (and
        # remove_parametrizations, which restores __bases__[0], lands on `new`).
        old = type(module)
        body = {k: v for k, v in old.__dict__.items()
                if k not in ("__dict__", "__weakref__", "__module__", "__doc__")}
        new = type(f"Parametrized{new.__name__}", (new,), body)
    module.__class__ = new


def _convert(model: nn.Module, table: dict[type, type], backend: str | None) -> nn.Module:
    for module in model.modules():
        new = table.get(_plain_class(module))
        if new is None:
            continue
        # Swapping the class keeps the module object, its parameter objects (optimizers and
        # references stay valid), hooks, parametrizations, device, dtype and training flag.
        _swap_class(module, new)
        if new in (LSTM, LSTMCell):
            module.backend = backend
        else:
            module.__dict__.pop("backend", None)
    return model


def convert_lstm(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Turn every ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` inside `model` (or `model`
    itself) into genfast's :class:`LSTM` / :class:`LSTMCell`, in place, and return `model`.

    The modules stay the same objects with the same parameter objects, hooks, device, dtype
    and training flag; only their class changes. Subclasses of torch's layers (with their own
    forward) are left alone. `backend` is set on every converted module.
    """
    return _convert(model, _TO_GENFAST, _check_backend(backend))


def revert_lstm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert_lstm`: genfast's LSTM / LSTMCell inside `model` (or
    `model` itself) become torch's again, in place. Returns `model`."""
    return _convert(model, _TO_TORCH, None)

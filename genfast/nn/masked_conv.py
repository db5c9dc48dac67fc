"""Masked (PixelCNN) convolutions and the gated PixelCNN as modules (op stem `masked_conv`).

* ``MaskedConv2d``: an ``nn.Conv2d`` (same parameters) with the persistent ``mask`` buffer of
  the common ``conv2d(x, weight * mask)`` implementations, so their checkpoints (weight, bias,
  mask) load, as does a plain Conv2d's; forward is genfast.masked_conv2d, which reads only the
  causal taps (the masked ones are stored, never multiplied).
* ``GatedPixelCNNLayer``: van den Oord et al. 2016b's vertical / horizontal stacks with the
  1x1 link, tanh * sigmoid gates, residual and class bias, as one fused op
  (genfast.gated_pixelcnn_layer); parameter names and shapes are those of
  ritheshkumar95/pytorch-vqvae's GatedMaskedConv2d.
* ``PixelCNN``: token embedding -> gated layers (layer 0 mask A) -> ReLU head -> logits, and
  ``generate``: the whole raster loop in one native call (genfast/ops/masked_conv_generate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import _checks
from ..ops._masked_conv_checks import MASK_TYPES, pair
from ..ops.masked_conv import masked_conv2d, region_mask


def _mask_type(v: Any) -> str:
    if v not in MASK_TYPES:
        raise ValueError(f"mask_type must be 'A' or 'B', got {v!r}")
    return v


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose output (i, j) sees only the rows above and the pixels to its left
    (mask "A"), or those and itself (mask "B"); see genfast.masked_conv2d.

    Takes nn.Conv2d's arguments (kernel sizes odd; dilation 1, groups 1, zero padding) plus
    ``mask_type``, ``color_groups`` (3: PixelCNN's R -> G -> B ordering of contiguous channel
    blocks at the centre tap) and ``backend``. ``padding="same"`` (the default) pads
    (kh//2, kw//2) and, unlike nn.Conv2d's, allows strides.

    The ``mask`` buffer (C_out, C_in, kh, kw) is saved and loaded like the ``weight * mask``
    implementations' (a broadcastable stored mask loads too): a state dict without it (a plain
    Conv2d's) loads, and one whose mask differs from this module's raises an error. Taps
    outside the mask keep whatever values they hold and get zero gradient.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 mask_type: str = "B", stride: int | tuple[int, int] = 1,
                 padding: str | int | tuple[int, int] = "same", dilation: int = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None, *, color_groups: int = 1,
                 backend: str | None = None) -> None:
        _mask_type(mask_type)
        kh, kw = pair("kernel_size", kernel_size, 1)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel_size: the mask is defined about the kernel's centre, so "
                             f"both sizes must be odd, got ({kh}, {kw})")
        if dilation not in (1, (1, 1)):
            raise ValueError(f"dilation: MaskedConv2d supports dilation=1 only, got {dilation!r}")
        if groups != 1:
            raise ValueError(f"groups: MaskedConv2d supports groups=1 only, got {groups!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: MaskedConv2d pads with zeros, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding != "same":
                raise ValueError(f"padding must be 'same', an int or a pair, got {padding!r}")
            pad = (kh // 2, kw // 2)
        else:
            pad = pair("padding", padding, 0)
        _checks.integer("color_groups", color_groups, 1)
        if color_groups > min(in_channels, out_channels):
            raise ValueError(f"color_groups={color_groups} needs at least that many input and "
                             f"output channels, got {in_channels} -> {out_channels}")
        super().__init__(in_channels, out_channels, (kh, kw), stride=stride, padding=pad,
                         bias=bias, device=device, dtype=dtype)
        self.mask_type, self.color_groups, self.backend = mask_type, color_groups, backend
        self.register_buffer("mask", self._make_mask(), persistent=True)

    def _make_mask(self) -> Tensor:
        kh, kw = self.kernel_size
        return region_mask(self.out_channels, self.in_channels, kh, kw, kh // 2, kw // 2,
                           1 if self.mask_type == "A" else 2, self.color_groups,
                           self.weight.dtype, self.weight.device)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask_type: str = "B", *, color_groups: int = 1,
                  backend: str | None = None) -> MaskedConv2d:
        """A MaskedConv2d holding `conv`'s parameters (shared, not copied): mask taps of a
        trained Conv2d, or of a ``weight * mask`` module's conv, without touching its weights."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, mask_type,
                  stride=conv.stride, padding=0 if conv.padding == "valid" else conv.padding,
                  dilation=conv.dilation,
                  groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype,
                  color_groups=color_groups, backend=backend)
        out.weight, out.bias = conv.weight, conv.bias
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + "mask"
        ours = self._make_mask()
        if key in state_dict:
            theirs = state_dict[key]
            try:
                same = bool(torch.equal(torch.broadcast_to(theirs.to(ours.device) != 0,
                                                           ours.shape), ours != 0))
            except RuntimeError:
                same = False
            if not same:
                raise ValueError(
                    f"{key}: the checkpoint's mask {tuple(theirs.shape)} is not this "
                    f"MaskedConv2d's (mask_type={self.mask_type!r}, color_groups="
                    f"{self.color_groups}, kernel {tuple(self.kernel_size)}); build the module "
                    f"with the mask type and colour grouping the checkpoint was trained with")
        state_dict[key] = ours  # a plain Conv2d's state dict has no mask: ours is implied
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        return masked_conv2d(x, self.weight, self.bias, mask_type=self.mask_type,
                             stride=self.stride, padding=self.padding,
                             color_groups=self.color_groups, backend=self.backend)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", mask_type={self.mask_type!r}"
        if self.color_groups != 1:
            s += f", color_groups={self.color_groups}"
        return s


class GatedPixelCNNLayer(nn.Module):
    """One gated PixelCNN layer (van den Oord et al. 2016b): forward(v, h, cls=None, cond=None)
    -> (v', h'), with c = kernel_size // 2:

        V  = vert_stack(v)  (rows i-c..i, or i-c..i-1 for mask A)
        v' = gate(V + cond)
        h' = (h if residual) + horiz_resid(gate(horiz_stack(h) + vert_to_horiz(V) + cond))

    horiz_stack reads columns j-c..j of row i (j-c..j-1 for mask A); gate(u) = tanh(u[:C]) *
    sigmoid(u[C:]); cond = class_cond_embedding(cls) (B, 2C) or a given (B, 2C) bias.
    Children (pytorch-vqvae's GatedMaskedConv2d names and shapes): ``vert_stack`` Conv2d
    (2C, C, c+1, 2c+1), ``vert_to_horiz`` (2C, 2C, 1, 1), ``horiz_stack`` (2C, C, 1, c+1),
    ``horiz_resid`` (C, C, 1, 1), ``class_cond_embedding`` Embedding(num_classes, 2C) when
    num_classes is given. The masked taps (mask A's last row / column) are never read.
    """

    def __init__(self, channels: int, kernel_size: int = 7, mask_type: str = "B",
                 residual: bool | None = None, num_classes: int | None = None,
                 backend: str | None = None) -> None:
        super().__init__()
        C = _checks.integer("channels", channels, 1)
        k = _checks.integer("kernel_size", kernel_size, 1)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        self.mask_type = _mask_type(mask_type)
        self.residual = mask_type == "B" if residual is None else bool(residual)
        if num_classes is not None:
            _checks.integer("num_classes", num_classes, 1)
        self.channels, self.kernel_size, self.backend = C, k, backend
        c = k // 2
        self.vert_stack = nn.Conv2d(C, 2 * C, (c + 1, k), padding=(c, c))
        self.vert_to_horiz = nn.Conv2d(2 * C, 2 * C, 1)
        self.horiz_stack = nn.Conv2d(C, 2 * C, (1, c + 1), padding=(0, c))
        self.horiz_resid = nn.Conv2d(C, C, 1)
        self.class_cond_embedding = nn.Embedding(num_classes, 2 * C) if num_classes else None

    def conditioning(self, cls: Tensor | None = None, cond: Tensor | None = None
                     ) -> Tensor | None:
        """The (B, 2C) bias added before both gates: the class embedding plus `cond`."""
        out = None
        if cls is not None:
            if self.class_cond_embedding is None:
                raise ValueError("cls given to a GatedPixelCNNLayer built without num_classes")
            if not isinstance(cls, Tensor) or cls.dim() != 1 or cls.is_floating_point():
                raise ValueError(f"cls must be a (B,) int tensor of class ids, got {cls!r}")
            out = self.class_cond_embedding(cls)
        if cond is not None:
            out = cond if out is None else out + cond
        return out

    def forward(self, v: Tensor, h: Tensor, cls: Tensor | None = None,
                cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        from ..ops.masked_conv_layer import gated_pixelcnn_layer

        return gated_pixelcnn_layer(
            v, h, self.vert_stack.weight, self.vert_stack.bias, self.horiz_stack.weight,
            self.horiz_stack.bias, self.vert_to_horiz.weight, self.vert_to_horiz.bias,
            self.horiz_resid.weight, self.horiz_resid.bias, self.conditioning(cls, cond),
            mask_type=self.mask_type, residual=self.residual, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"mask_type={self.mask_type!r}, residual={self.residual}")


class PixelCNN(nn.Module):
    """Gated PixelCNN over `levels`-valued tokens (B, H, W): ``embedding`` (levels, C) ->
    ``layers`` GatedPixelCNNLayers (layer 0 mask A without residual, the rest mask B with
    residual) -> ``output_conv`` (1x1 C->hidden, ReLU, 1x1 hidden->levels) on the horizontal
    stack -> logits (B, levels, H, W); logits[..., i, j] predicts tokens[..., i, j] from the
    pixels before it in raster order. With num_classes, every layer adds its class embedding.

    kernel_size: one odd size for every layer or one per layer (pytorch-vqvae's GatedPixelCNN
    is 7 then 3s: its checkpoints load, the names being the same). image_size: the default
    (H, W) of ``generate``.
    """

    def __init__(self, levels: int = 256, channels: int = 64, layers: int = 10,
                 kernel_size: int | Sequence[int] = 7, hidden: int = 512,
                 num_classes: int | None = None, image_size: int | tuple[int, int] = (28, 28),
                 backend: str | None = None) -> None:
        super().__init__()
        _checks.integer("levels", levels, 2)
        for name, v in (("channels", channels), ("layers", layers), ("hidden", hidden)):
            _checks.integer(name, v, 1)
        ks = [kernel_size] * layers if isinstance(kernel_size, int) else list(kernel_size)
        if len(ks) != layers:
            raise ValueError(f"kernel_size: expected one int or {layers} (one per layer), got "
                             f"{kernel_size!r}")
        self.levels, self.channels, self.num_classes = levels, channels, num_classes
        self.image_size = pair("image_size", image_size, 1)
        self.backend = backend
        self.embedding = nn.Embedding(levels, channels)
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(channels, k, "A" if i == 0 else "B", residual=i > 0,
                               num_classes=num_classes, backend=backend)
            for i, k in enumerate(ks))
        self.output_conv = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                         nn.Conv2d(hidden, levels, 1))
        self._pack_key: tuple | None = None
        self._pack: Any = None

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.dtype not in (
                torch.int32, torch.int64):
            raise ValueError(f"tokens must be an int tensor (B, H, W), got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} "
                             f"{tuple(getattr(tokens, 'shape', ()))}")

    def _classes(self, cls: Tensor | int | None, batch: int, device) -> Tensor | None:
        if cls is None:
            return None
        if not self.num_classes:
            raise ValueError("cls given to a PixelCNN built without num_classes")
        if isinstance(cls, int) and not isinstance(cls, bool):
            if not 0 <= cls < self.num_classes:
                raise ValueError(f"cls must be a class id in [0, {self.num_classes}), got {cls}")
            return torch.full((batch,), cls, dtype=torch.int64, device=device)
        if not isinstance(cls, Tensor) or tuple(cls.shape) != (batch,) \
                or cls.is_floating_point():
            raise ValueError(f"cls must be a class id or a ({batch},) int tensor of them, got "
                             f"{cls!r}")
        return cls

    def forward(self, tokens: Tensor, cls: Tensor | int | None = None) -> Tensor:
        self._check_tokens(tokens)
        c = self._classes(cls, tokens.shape[0], tokens.device)
        v = h = self.embedding(tokens).permute(0, 3, 1, 2).contiguous()
        for layer in self.layers:
            v, h = layer(v, h, c)
        return self.output_conv(h)

    def bits_per_dim(self, tokens: Tensor, cls: Tensor | int | None = None) -> Tensor:
        """Mean negative log-likelihood of tokens, in bits per pixel (the loss to train on)."""
        return F.cross_entropy(self(tokens, cls), tokens.long()) / math.log(2)

    # ------------------------------------------------------------------ generation
    def pack(self) -> Any:
        """The weights packed for genfast's generator; rebuilt only when a parameter changed
        (keyed on every parameter's identity, version, device and dtype)."""
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.parameters())
        if self._pack_key != key:
            from ..ops.masked_conv_generate import pack_pixelcnn

            k = max(lay.kernel_size for lay in self.layers)
            with torch.no_grad():
                layers = [{"v_weight": _widen(lay.vert_stack.weight, k, True),
                           "v_bias": lay.vert_stack.bias,
                           "h_weight": _widen(lay.horiz_stack.weight, k, False),
                           "h_bias": lay.horiz_stack.bias,
                           "link_weight": lay.vert_to_horiz.weight,
                           "link_bias": lay.vert_to_horiz.bias,
                           "res_weight": lay.horiz_resid.weight,
                           "res_bias": lay.horiz_resid.bias} for lay in self.layers]
                layers = [{n: t.detach() for n, t in d.items()} for d in layers]
                o1, o2 = self.output_conv[0], self.output_conv[2]
                self._pack = pack_pixelcnn(
                    embedding=self.embedding.weight.detach(), layers=layers,
                    out1_weight=o1.weight.detach(), out1_bias=o1.bias.detach(),
                    out2_weight=o2.weight.detach(), out2_bias=o2.bias.detach())
            self._pack_key = key
        return self._pack

    @torch.no_grad()
    def class_bias(self, cls: Tensor | int | None, batch: int) -> Tensor | None:
        """Every layer's class embedding, (batch, layers, 2C), or None."""
        c = self._classes(cls, batch, self.embedding.weight.device)
        if c is None:
            return None
        return torch.stack([lay.class_cond_embedding(c) for lay in self.layers], 1)

    @torch.no_grad()
    def generate(self, n: int, *, cond: Tensor | int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 size: int | tuple[int, int] | None = None, tokens: Tensor | None = None,
                 start: int = 0, backend: str | None = None) -> Tensor:
        """n images of tokens (n, H, W) int64 in [0, levels), drawn pixel by pixel in raster
        order by genfast.pixelcnn_generate (one native call; per-layer row caches).

        cond: a class id or (n,) ids (models built with num_classes). size: (H, W), default
        ``image_size``. tokens (n, H, W) with start > 0: pixels before raster position `start`
        are kept (completion). Pixel p of image b is drawn as row p*n + b of the sampler's
        stream of `seed`, so genfast.sample_categorical(logits rows ordered (pixel, image),
        seed=seed) on the teacher-forced forward gives the same images.
        """
        from ..ops.masked_conv_generate import pixelcnn_generate

        _checks.integer("n", n, 1)
        H, W = self.image_size if size is None else pair("size", size, 1)
        if tokens is not None:
            self._check_tokens(tokens)
        return pixelcnn_generate(self.pack(), n, height=H, width=W, tokens=tokens,
                                 cond_bias=self.class_bias(cond, n), temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, start=start,
                                 backend=backend or self.backend)


def _widen(w: Tensor, k: int, vertical: bool) -> Tensor:
    """A smaller layer's stack weight as the same conv of kernel width k (zero outer taps), so
    every layer packs at one size: the last row / column stays the current one."""
    c = k // 2
    kw = w.shape[-1] if vertical else 2 * w.shape[-1] - 1
    d = c - kw // 2
    if d == 0:
        return w
    if vertical:  # rows i-c'..i sit at the bottom, columns centred
        return F.pad(w, (d, d, d, 0))
    return F.pad(w, (d, 0))

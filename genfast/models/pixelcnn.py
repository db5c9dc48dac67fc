"""PixelCNN (van den Oord et al. 2016a) and the class-conditional Gated PixelCNN (2016b).

    p(x) = prod over pixels p in raster order, colours k of Cat(x[p, k] | f(x[<p], x[p, <k]))

Images are quantised to ``levels`` values per channel (2: binarised; 16 grey levels by default
on the embedded 8x8 digits, whose 17 raw values 0..16 are rounded to 16); the loss is the
cross-entropy in bits per dimension (sub-pixel), reported on the held-out split at every
snapshot beside the uniform baseline log2(levels).

* ``pixelcnn`` (``PixelCNNModel``): 7x7 mask-A conv, residual blocks of mask-B convs, 1x1
  mask-B head, all genfast.nn.MaskedConv2d; colour data gets R -> G -> B channel masking and a
  levels-way softmax per channel. Sampling is a cached torch loop (genfast/models/
  _pixelcnn_net.py).
* ``gated-pixelcnn`` (``GatedPixelCNNModel``): genfast.nn.PixelCNN, conditioned on the digit's
  class (grey images only); sampling is genfast's native whole-network generator.

`genfast train pixelcnn|gated-pixelcnn` and `genfast sample ... --checkpoint PATH [--class K]`
(genfast/models/_pixelcnn_cli.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.masked_conv import PixelCNN
from ._pixelcnn_net import OriginalPixelCNN, nll_bits


def _ints(cfg: Any, names: tuple[str, ...], low: int = 1) -> None:
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _odd(name: str, v: int) -> None:
    if v % 2 == 0:
        raise ValueError(f"{name} must be odd (the mask is centred), got {v}")


@dataclass
class PixelCNNConfig:
    levels: int = 16  # values per channel (2: binarised)
    colors: int = 1  # image channels (3: RGB with channel masking)
    height: int = 8
    width: int = 8
    hidden: int = 32  # h: the residual stream has 2h channels
    blocks: int = 6  # residual blocks
    kernel_size: int = 7  # the mask-A input conv
    block_kernel: int = 3  # each block's mask-B conv
    head: int = 64  # the 1x1 head's hidden channels

    def __post_init__(self) -> None:
        _ints(self, ("colors", "height", "width", "hidden", "blocks", "kernel_size",
                     "block_kernel", "head"))
        _ints(self, ("levels",), 2)
        _odd("kernel_size", self.kernel_size)
        _odd("block_kernel", self.block_kernel)
        if self.colors > self.hidden:
            raise ValueError(f"hidden must be >= colors={self.colors} (one channel group per "
                             f"colour), got {self.hidden}")


@dataclass
class GatedPixelCNNConfig:
    levels: int = 16
    colors: int = 1  # the gated model is grey only
    height: int = 8
    width: int = 8
    channels: int = 16  # C of both stacks
    layers: int = 6
    kernel_size: int = 5
    hidden: int = 64  # the 1x1 head's hidden channels
    num_classes: int = 10  # class-conditional (0: unconditional)

    def __post_init__(self) -> None:
        _ints(self, ("height", "width", "channels", "layers", "kernel_size", "hidden"))
        _ints(self, ("levels",), 2)
        _ints(self, ("num_classes",), 0)
        _odd("kernel_size", self.kernel_size)
        if self.colors != 1:
            raise ValueError(f"gated-pixelcnn models grey images only (colors=1), got colors="
                             f"{self.colors}; train `pixelcnn` for colour images (it masks "
                             f"R -> G -> B within a pixel)")


def quantize(x: Tensor, levels: int) -> Tensor:
    """Images in [0, 1] -> int64 tokens in [0, levels): nearest level (x >= 0.5 for 2)."""
    # floor(. + 1/2), not round(): half-way values go up, whatever their parity
    return (x * (levels - 1) + 0.5).floor().clamp(0, levels - 1).long()


class _TokenImageModel(nn.Module):
    """What both models share: tokens (B, K, H, W), bits/dim, the train step, evaluation."""

    config: Any

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return c.colors, c.height, c.width

    def images(self, tokens: Tensor) -> Tensor:
        """Tokens as float images in [0, 1] for PNG grids."""
        return tokens.float() / (self.config.levels - 1)

    def loss(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean NLL in bits per dimension (the training loss)."""
        return nll_bits(self(tokens, labels), tokens)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    def train_step(self, batch: tuple[Tensor, Tensor | None],
                   optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, Tensor]:
        tokens, labels = batch
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss = self.loss(tokens, labels)
        loss.backward()
        opt.step()
        return {"bits_per_dim": loss.detach()}

    @torch.no_grad()
    def evaluate(self, tokens: Tensor, labels: Tensor | None = None,
                 chunk: int = 256) -> dict[str, float]:
        """Held-out NLL: ``bits_per_dim`` (the headline) and ``loss`` (nats per dimension)."""
        total = 0.0
        for s in range(0, len(tokens), chunk):
            t = tokens[s:s + chunk]
            lab = None if labels is None else labels[s:s + chunk]
            logits = self(t, lab)
            total += float(F.cross_entropy(logits.transpose(1, 2), t, reduction="sum"))
        dims = tokens.numel()
        return {"bits_per_dim": total / dims / math.log(2), "loss": total / dims}

    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._pixelcnn_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._pixelcnn_cli import sample

        return sample(cls, args)


class PixelCNNModel(_TokenImageModel):
    """The original PixelCNN (masked convolutions, residual blocks, channel masking)."""

    config_cls: ClassVar[type] = PixelCNNConfig
    description: ClassVar[str] = "PixelCNN, masked convs, colour masking (van den Oord 2016a)"
    conditional: ClassVar[bool] = False
    # 1,438 training digits overfit: at 16 levels the held-out NLL was 1.81 / 1.79 / 1.84
    # bits/dim after 500 / 1000 / 1500 steps (training 1.6 at 1500).
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1000, "batch_size": 64, "lr": 2e-3, "checkpoint_every": 250,
        "sample_every": 250, "log_every": 50, "n_samples": 40}

    def __init__(self, config: PixelCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or PixelCNNConfig()
        self.net = OriginalPixelCNN(c.colors, c.levels, c.hidden, c.blocks, c.kernel_size,
                                    c.block_kernel, c.head)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, K, levels, H, W) of tokens (B, K, H, W); labels are ignored."""
        return self.net(tokens)

    @torch.no_grad()
    def generate(self, n: int, *, cls: int | Tensor | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> Tensor:
        """(n, K, H, W) tokens from the cached sampler."""
        if cls is not None:
            raise ValueError("--class: pixelcnn is unconditional; train gated-pixelcnn for "
                             "class-conditional digits")
        c = self.config
        return self.net.sample(n, c.height, c.width, seed=seed, temperature=temperature,
                               top_k=top_k, top_p=top_p)


class GatedPixelCNNModel(_TokenImageModel):
    """genfast.nn.PixelCNN, conditioned on the class label (digits: 0..9)."""

    config_cls: ClassVar[type] = GatedPixelCNNConfig
    description: ClassVar[str] = "Gated PixelCNN, class-conditional, native generation (2016b)"
    conditional: ClassVar[bool] = True
    # Held-out 1.80 / 1.72 / 1.72 / 1.78 bits/dim after 250 / 500 / 750 / 1000 steps at 16
    # levels (training 1.44 at 1000): the digits overfit a bigger net sooner (C=32, 8 layers:
    # 1.92 at 500).
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 600, "batch_size": 64, "lr": 2e-3, "checkpoint_every": 200,
        "sample_every": 200, "log_every": 50, "n_samples": 40}

    def __init__(self, config: GatedPixelCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GatedPixelCNNConfig()
        self.net = PixelCNN(c.levels, c.channels, c.layers, c.kernel_size, c.hidden,
                            num_classes=c.num_classes or None,
                            image_size=(c.height, c.width))

    def _labels(self, labels: Tensor | None) -> Tensor | None:
        return labels if self.config.num_classes else None

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, 1, levels, H, W) of tokens (B, 1, H, W) given class labels (B,)."""
        return self.net(tokens[:, 0], self._labels(labels)).unsqueeze(1)

    @torch.no_grad()
    def generate(self, n: int, *, cls: int | Tensor | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> Tensor:
        """(n, 1, H, W) tokens; cls: a class id, (n,) ids, or None (classes 0, 1, ... in
        turn for a conditional model)."""
        k = self.config.num_classes
        if cls is not None and not k:
            raise ValueError("--class: this gated-pixelcnn was trained without classes")
        if cls is None and k:
            cls = torch.arange(n, device=self.net.embedding.weight.device) % k
        return self.net.generate(n, cond=cls, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed).unsqueeze(1)

"""WaveNet (van den Oord et al. 2016): a categorical mu-law model of raw audio.

    p(x) = prod_t Cat(x_t | softmax(f(x_{<t}, speaker))),   x_t in 256 mu-law classes

The network is genfast.nn.WaveNet (fused gated layers, dilations 1..512 in 2 cycles, 32
residual / 64 gate / 128 skip channels). Training minimises the cross-entropy on random crops
of ``segment`` samples (the input is [silence, y[:-1]]); ``evaluate`` reports the held-out
negative log-likelihood in bits per sample on the last 10% of every clip, never cropped into
training, beside two baselines a model must beat: uniform (log2 256 = 8.0) and the training
clips' mu-law histogram. Global conditioning (a speaker or class id per clip) is an embedding
added to every layer's gate. Generation is genfast's native whole-network loop.

`genfast train wavenet` trains on the CMU ARCTIC clip that ships in pysptk's sdist (or
``--data FILE.wav[,FILE2.wav...]``, one speaker id per file); `genfast sample wavenet` writes a
WAV and a waveform + spectrogram PNG and prints samples/s and the real-time factor
(genfast/models/_wavenet_cli.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.audio import Clips
from ..nn.causal_conv import INPUTS, WaveNet


@dataclass
class WaveNetConfig:
    classes: int = 256  # mu-law classes
    residual: int = 32
    gate: int = 64
    skip: int = 128
    head: int = 128
    layers: int = 10  # per cycle: dilations 1, 2, ..., 2**(layers-1)
    stacks: int = 2  # dilation cycles
    kernel_size: int = 2
    input: str = "embedding"  # or "scalar": a 1x1 conv of the companded value
    gc_classes: int = 0  # speakers / classes of global conditioning (0: none)
    gc_dim: int = 16
    segment: int = 8000  # training crop length (samples)
    sample_rate: int = 16000
    eval_chunk: int = 32000  # held-out clips are scored in chunks this long (exactly)

    def __post_init__(self) -> None:
        for name in ("residual", "gate", "skip", "head", "layers", "stacks", "kernel_size",
                     "gc_dim", "segment", "sample_rate", "eval_chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) \
                or self.classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {self.classes!r}")
        if isinstance(self.gc_classes, bool) or not isinstance(self.gc_classes, int) \
                or self.gc_classes < 0:
            raise ValueError(f"gc_classes must be an int >= 0, got {self.gc_classes!r}")
        if self.gate % 2:
            raise ValueError(f"gate must be even (filter and gate halves), got {self.gate}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")


class WaveNetModel(nn.Module):
    """A WaveNet with its training step, held-out evaluation and generation."""

    config_cls: ClassVar[type] = WaveNetConfig
    description: ClassVar[str] = "WaveNet, mu-law audio, native generation (van den Oord 2016)"
    # 200 steps: on the 3.6 s ARCTIC clip the held-out NLL was 3.18 / 3.03 / 3.35 bits/sample
    # after 100 / 200 / 300 steps (training 3.0 at 300): a longer run overfits the one clip.
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 200, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 50,
        "sample_every": 100, "log_every": 25}

    def __init__(self, config: WaveNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or WaveNetConfig()
        self.net = WaveNet(c.classes, c.residual, c.gate, c.skip, c.head, c.layers, c.stacks,
                           c.kernel_size, input=c.input, gc_classes=c.gc_classes,
                           gc_dim=c.gc_dim)

    @property
    def receptive_field(self) -> int:
        return self.net.receptive_field

    def inputs(self, y: Tensor) -> Tensor:
        """Teacher forcing: [silence, y[..., :-1]] (silence = classes // 2, the mu-law zero)."""
        first = torch.full_like(y[..., :1], self.config.classes // 2)
        return torch.cat([first, y[..., :-1]], -1)

    def _gc(self, speakers: Tensor | None) -> Tensor | None:
        return speakers if self.config.gc_classes else None

    def forward(self, y: Tensor, speakers: Tensor | None = None) -> Tensor:
        """Logits (B, classes, T) of y (B, T) under teacher forcing."""
        return self.net(self.inputs(y), gc=self._gc(speakers))

    def loss(self, y: Tensor, speakers: Tensor | None = None) -> Tensor:
        """Mean cross-entropy (nats per sample)."""
        return F.cross_entropy(self(y, speakers), y)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    def train_step(self, batch: tuple[Tensor, Tensor | None],
                   optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, Tensor]:
        y, speakers = batch
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss = self.loss(y, speakers)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "bits": loss.detach() / math.log(2)}

    @torch.no_grad()
    def clip_nll(self, y: Tensor, speaker: int | None = None) -> float:
        """Summed NLL (nats) of one clip y (N,) from silence. Long clips run in chunks that
        overlap by the receptive field, which gives exactly the unchunked outputs."""
        x = self.inputs(y)
        gc = None if speaker is None or not self.config.gc_classes else torch.tensor(
            [speaker], device=y.device)
        rf, chunk, total = self.receptive_field, self.config.eval_chunk, 0.0
        for s in range(0, len(y), chunk):
            lo = max(0, s - rf + 1)
            logits = self.net(x[lo:s + chunk][None], gc=gc)[0, :, s - lo:]
            total += float(F.cross_entropy(logits.T, y[s:s + chunk], reduction="sum"))
        return total

    @torch.no_grad()
    def evaluate(self, test: Clips) -> dict[str, float]:
        """Held-out NLL: ``bits_per_sample`` (the headline) and ``loss`` (nats per sample)."""
        total, count = 0.0, 0
        for i in range(len(test)):
            y = test.clip(i)
            total += self.clip_nll(y, int(test.speakers[i]))
            count += len(y)
        return {"loss": total / count, "bits_per_sample": total / count / math.log(2)}

    @torch.no_grad()
    def generate(self, n: int, *, batch: int = 1, speaker: int | Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, backend: str | None = None) -> Tensor:
        """(batch, n) mu-law classes (genfast.data.audio.mu_law_decode gives the waveform)."""
        if self.config.gc_classes and speaker is None:
            speaker = 0
        if speaker is not None and not self.config.gc_classes:
            raise ValueError("speaker given to a model trained without global conditioning "
                             "(gc_classes=0)")
        return self.net.generate(n, batch=batch, gc=speaker, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, backend=backend)

    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._wavenet_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._wavenet_cli import sample

        return sample(cls, args)


def baselines(train: Clips, test: Clips, classes: int = 256) -> dict[str, float]:
    """Bits per held-out sample of two models with no context: uniform over the classes, and
    the training clips' class histogram (add-1/2 smoothed, so an unseen class costs finite
    bits)."""
    counts = torch.bincount(train.tokens.cpu(), minlength=classes).double() + 0.5
    logp = (counts / counts.sum()).log2()
    return {"uniform": math.log2(classes),
            "unigram": float(-logp[test.tokens.cpu()].mean())}

"""Conditional GAN (Mirza & Osindero 2014): generator and discriminator both see the class
label y, so G(z, y) learns p(x | y) and a class can be asked for at sampling time.

Architecture (eriklindernoren/PyTorch-GAN implementations/cgan, research/models.md 1.8): the
label enters each network through a learned Embedding(10, 10), concatenated with the input.
G: [embed(y), z (100)] -> the vanilla GAN's MLP (128 -> 256 -> 512 -> 1024 -> C*H*W,
BatchNorm1d after the first block, LeakyReLU(0.2), Tanh). D: [flattened image, embed(y)] ->
512 -> 512 -> 512 -> 1 logit, LeakyReLU(0.2), Dropout(0.4) on the last two hidden layers.
The loss is the paper's: the minimax game on D(x | y) with binary cross-entropy (the
reference code's MSE is LSGAN's, a later change); the generator loss is selectable as in
genfast.models.gan (default non-saturating). Adam lr 2e-4, betas (0.5, 0.999), batch 64.

Training: real batches are (image, label) pairs from the embedded digits; generated batches
draw y uniformly over the classes. ``evaluate`` draws ``fd_samples`` samples with balanced
labels and reports FD-digits against the held-out digits, the *class accuracy* (the fraction
classified by the embedded classifier, genfast.models.fid.classify, as the class they were
asked for) and the mode coverage of genfast.models.gan.

`genfast train cgan`; `genfast sample cgan --checkpoint P --class K` writes samples of class K
(without --class, one row per class) and prints the classifier's agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import fid
from ._gan import TruncationMode
from .gan import GANMLPConfig, VanillaGAN, mlp_discriminator, mlp_generator, mode_coverage


@dataclass
class CGANConfig(GANMLPConfig):
    num_classes: int = 10
    embed_dim: int = 10  # the label embedding's width, in both networks
    d_hidden: tuple[int, ...] = (512, 512, 512)
    d_dropout: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_classes", "embed_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name[0] == "n" else 1):
                raise ValueError(f"{name} must be an int >= {2 if name[0] == 'n' else 1}, "
                                 f"got {v!r}")
        if not (isinstance(self.d_dropout, (int, float)) and 0.0 <= self.d_dropout < 1.0):
            raise ValueError(f"d_dropout must be a float in [0, 1), got {self.d_dropout!r}")


class ConditionalGenerator(nn.Module):
    """(z (B, z_dim[, 1, 1]), y (B,)) -> (B, C, H, W) tanh images."""

    def __init__(self, c: CGANConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        self.net = mlp_generator(c.z_dim + c.embed_dim, c.g_hidden, c.image_shape)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([self.embed(y), z.flatten(1)], 1))


class ConditionalDiscriminator(nn.Module):
    """(x (B, C, H, W), y (B,)) -> (B,) logits of "real image of class y"."""

    def __init__(self, c: CGANConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.num_classes, c.embed_dim)
        self.net = mlp_discriminator(math.prod(c.image_shape) + c.embed_dim, c.d_hidden,
                                     c.d_dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x.flatten(1), self.embed(y)], 1))


class CGAN(VanillaGAN):
    config_cls: ClassVar[type] = CGANConfig
    description: ClassVar[str] = ("Conditional GAN: G and D see the class label; sample --class K "
                                  "(Mirza & Osindero 2014)")
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 6000, "batch_size": 64, "lr": 2e-4, "sample_every": 1000,
        "checkpoint_every": 1000}
    conditional: ClassVar[bool] = True

    def __init__(self, config: CGANConfig | None = None) -> None:
        super().__init__(config or CGANConfig())

    def build_generator(self) -> nn.Module:
        return ConditionalGenerator(self.config)

    def build_discriminator(self) -> nn.Module:
        return ConditionalDiscriminator(self.config)

    def labels(self, n: int, cls: int | Tensor | None = None) -> Tensor:
        """n labels: all `cls`, the given (n,) tensor, or balanced and class-major."""
        k, dev = self.config.num_classes, self._device()
        if cls is None:
            return torch.arange(n, device=dev) * k // n
        if isinstance(cls, Tensor):
            y = cls.to(dev, torch.long).reshape(-1)
            if len(y) != n:
                raise ValueError(f"labels: got {len(y)} labels for {n} samples")
        else:
            y = torch.full((n,), int(cls), dtype=torch.long, device=dev)
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"class labels must be in [0, {k}), got {y.min().item()}.."
                             f"{y.max().item()}")
        return y

    def train_step(self, batch: tuple[Tensor, Tensor],
                   optimizers: dict[str, torch.optim.Optimizer], step: int) -> dict[str, Tensor]:
        x, y = batch
        real = x * 2.0 - 1.0
        g_step = step % self.config.n_critic == self.config.n_critic - 1
        z = self.latent(real.shape[0])
        y_fake = torch.randint(self.config.num_classes, (real.shape[0],), device=real.device)
        with torch.set_grad_enabled(g_step):
            fake = self.generator(z, y_fake)

        opt_d, opt_g = optimizers["d"], optimizers["g"]
        d_real = self.discriminator(real, y)
        d_fake = self.discriminator(fake.detach(), y_fake)
        d_loss = self.d_loss(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        if g_step:
            g_loss = self.g_loss(self.discriminator(fake, y_fake))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            self.last_g_loss.fill_(g_loss.detach())
        return {"d_loss": d_loss.detach(), "g_loss": self.last_g_loss.clone(),
                "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}

    @torch.no_grad()
    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] from latents (n, z_dim[, 1, 1]) and labels (default balanced)."""
        return (self.generator(z.reshape(len(z), -1), self.labels(len(z), y)) + 1.0) / 2.0

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None,
               truncation_mode: TruncationMode = "resample",
               generator: torch.Generator | None = None,
               labels: int | Tensor | None = None) -> Tensor:
        """n images of class `labels` (an int, an (n,) tensor, or balanced class-major)."""
        y = self.labels(n, labels)
        return self.generate(self.latent(n, truncation, truncation_mode, generator), y)

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """FD-digits against `x`, class accuracy and mode coverage of ``fd_samples`` samples
        with balanced labels."""
        n = self.config.fd_samples
        y = self.labels(n)
        s = self.sample(n, labels=y)
        fd = fid.fd_digits(s, x)
        probs = fid.classify(s)
        acc = (probs.argmax(1) == y.cpu()).double().mean().item()
        covered, _ = mode_coverage(probs)
        return {"loss": fd, "fd": fd, "class_acc": acc, "modes": float(covered)}

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        return cli_sample(cls, args)


def cli_sample(cls: type, args: Any) -> int:
    """`genfast sample cgan --checkpoint P [--class K] [--n N] [--seed S] [--truncation PSI]`."""
    from ._images import save_panels
    from ._trainer import load_model

    model, ckpt = load_model(cls, args)
    k, classes = getattr(args, "cls", None), model.config.num_classes
    if k is not None and not 0 <= k < classes:
        raise SystemExit(f"genfast: --class must be in [0, {classes}), got {k}")
    n = args.n or (64 if k is not None else 8 * classes)
    if n < 1:
        raise SystemExit(f"genfast: --n must be >= 1, got {n}")
    per_row = math.ceil(n / classes)
    # Without --class, row r holds class r.
    y = (torch.full((n,), k) if k is not None
         else torch.arange(classes).repeat_interleave(per_row)[:n])
    gen = torch.Generator().manual_seed(args.seed)
    trunc = getattr(args, "truncation", None)
    try:
        images = model.sample(n, truncation=trunc,
                              truncation_mode=getattr(args, "truncation_mode", "resample"),
                              generator=gen, labels=y)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    agree = (fid.classify(images).argmax(1) == y).double().mean().item()
    out = args.out or f"{args.model}_samples.png"
    title = (f"{args.model} step {ckpt['step']}, "
             + (f"class {k}" if k is not None else "one row per class")
             + (f", truncation {trunc:g}" if trunc is not None else ""))
    save_panels([(title, images, None if k is not None else per_row)], out)
    print(f"wrote {n} samples {'of class ' + str(k) if k is not None else '(row r: class r)'} "
          f"to {out}; the digits classifier agrees with the asked class on {agree:.1%}")
    return 0


__all__ = ["CGAN", "CGANConfig", "ConditionalDiscriminator", "ConditionalGenerator",
           "cli_sample"]

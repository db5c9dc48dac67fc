"""GAN (Goodfellow et al. 2014): multilayer-perceptron generator and discriminator, the
minimax game, Algorithm 1's k discriminator steps per generator step, and a mode-coverage
check of the samples.

Architecture (eriklindernoren/PyTorch-GAN implementations/gan, research/models.md 1.6), on
flattened images (the embedded digits at 16x16: 256 pixels):
G: z (100) -> 128 -> 256 -> 512 -> 1024 -> C*H*W, Linear + BatchNorm1d + LeakyReLU(0.2)
(no BatchNorm on the first block; the reference's eps=0.8 is a positional-argument slip, the
standard 1e-5 is used), Tanh out. D: C*H*W -> 512 -> 256 -> 1 logit, LeakyReLU(0.2).
Adam lr 2e-4, betas (0.5, 0.999), batch 64, PyTorch's default Linear initialisation.

Losses: D maximises log D(x) + log(1 - D(G(z))) (binary cross-entropy on logits). The
generator loss is ``g_loss`` (CLI ``--set g_loss=saturating``):

* ``"saturating"``: minimise log(1 - D(G(z))), the minimax game as written. Its gradient
  with respect to D's logit l is -sigmoid(l), which vanishes when D confidently rejects the
  samples (l << 0), exactly the early-training case: the paper's warning.
* ``"non-saturating"`` (default): minimise -log D(G(z)); the same fixed point, gradient
  1 - sigmoid(l), strong where the saturating one vanishes (the paper's practical choice).

``n_critic`` is Algorithm 1's k: each trainer step updates D on a fresh real batch and
fresh noise; every k-th step also updates G (genfast.models._gan), so ``--steps`` counts
discriminator updates.

Mode coverage (``evaluate``): the embedded digits classifier (genfast.models.fid.classify)
labels ``fd_samples`` generated images; a sample counts for class k when the classifier
gives k probability >= ``MIN_CONFIDENCE`` (0.9), and class k is *covered* when at least
``COVERAGE_SHARE`` (1/4) of its uniform share of the samples, i.e. n / 40, counts for it.
``modes`` is how many of the 10 classes are covered (10 for the held-out digits, fewer when
the generator collapses), ``class_k`` the fraction of samples counted for k (the fractions
sum to below 1 when some samples are no confident digit), ``confident`` their sum. Every
snapshot writes ``coverage_step*.png``, a bar chart of those fractions titled with the
covered count, beside the sample grid, so a collapse shows at the step it happens.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from . import fid
from ._gan import GAN, GANConfig, bce_d_loss, bce_g_loss
from ._images import save_panels
from ._trainer import (
    TrainConfig,
    _evaluate,
    _isolated_rng,
    batch_indices,
    resumed_config,
    train_loop,
)

G_LOSSES = ("non-saturating", "saturating")
NUM_CLASSES = 10
COVERAGE_SHARE = 0.25  # a class is covered at >= 1/4 of its uniform share of the samples
# A sample counts for its class only when classified with p >= this: the classifier is
# overconfident off the digits (at 0.5, uniform noise "covers" 5 classes; at 0.9, 1), while
# 86% of the held-out digits pass it and they cover all 10.
MIN_CONFIDENCE = 0.9


def _check_widths(name: str, v: Any) -> tuple[int, ...]:
    if isinstance(v, int) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                                     for h in v) or not len(v):
        raise ValueError(f"{name} must be a non-empty sequence of ints >= 1, got {v!r}")
    return tuple(v)


@dataclass
class GANMLPConfig(GANConfig):
    z_dim: int = 100
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1  # Algorithm 1's k: discriminator updates per generator update
    g_hidden: tuple[int, ...] = (128, 256, 512, 1024)
    d_hidden: tuple[int, ...] = (512, 256)
    g_loss: str = "non-saturating"  # or "saturating": minimise log(1 - D(G(z)))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.g_hidden = _check_widths("g_hidden", self.g_hidden)
        self.d_hidden = _check_widths("d_hidden", self.d_hidden)
        if self.g_loss not in G_LOSSES:
            raise ValueError(f"g_loss must be one of {G_LOSSES}, got {self.g_loss!r}")


def mlp_generator(in_dim: int, hidden: tuple[int, ...], image_shape: tuple[int, int, int]
                  ) -> nn.Sequential:
    """(B, in_dim[, 1, 1]) -> (B, C, H, W) tanh images; BatchNorm on all blocks but the first."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    for i, h in enumerate(hidden):
        layers.append(nn.Linear(in_dim, h))
        if i > 0:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.LeakyReLU(0.2, True))
        in_dim = h
    layers += [nn.Linear(in_dim, math.prod(image_shape)), nn.Tanh(), nn.Unflatten(1, image_shape)]
    return nn.Sequential(*layers)


def mlp_discriminator(in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0
                      ) -> nn.Sequential:
    """(B, ...) flattened to in_dim -> (B,) logits; LeakyReLU(0.2) (and Dropout) between."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    for i, h in enumerate(hidden):
        layers.append(nn.Linear(in_dim, h))
        if dropout and i > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.LeakyReLU(0.2, True))
        in_dim = h
    layers += [nn.Linear(in_dim, 1), nn.Flatten(0)]
    return nn.Sequential(*layers)


def g_loss_of(kind: str, d_fake: Tensor) -> Tensor:
    """The generator loss on discriminator logits: -log D(G(z)) or log(1 - D(G(z)))."""
    if kind == "saturating":
        return -F.softplus(d_fake).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    return bce_g_loss(d_fake)


def mode_coverage(probs: Tensor, share: float = COVERAGE_SHARE,
                  min_confidence: float = MIN_CONFIDENCE) -> tuple[int, Tensor]:
    """(covered classes, per-class fractions) of (N, K) class probabilities: a sample counts
    for its argmax class when that probability is >= min_confidence (noise that the classifier
    merely spreads over the classes covers nothing), and class k is covered when the fraction
    of all N samples counted for it is >= share / K."""
    if probs.dim() != 2 or probs.shape[0] < 1:
        raise ValueError(f"mode_coverage: expected (N >= 1, K) probabilities, got "
                         f"{tuple(probs.shape)}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"mode_coverage: share must be in (0, 1], got {share}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"mode_coverage: min_confidence must be in [0, 1], got "
                         f"{min_confidence}")
    k = probs.shape[1]
    p, label = probs.max(1)
    frac = torch.bincount(label[p >= min_confidence], minlength=k).double() / probs.shape[0]
    # The tolerance keeps an exact share (e.g. 25 of 1000) on the covered side.
    return int((frac >= share / k - 1e-12).sum()), frac


def coverage_figure(frac: Tensor, covered: int, path: str, title: str,
                    share: float = COVERAGE_SHARE) -> str:
    """A PNG bar chart of class fractions: covered classes green, the others red, dashed lines
    at the uniform share 1/K and at the coverage threshold share/K."""
    k = len(frac)
    w, h, left, top, bottom, bar = 40 + 30 * k, 190, 34, 30, 22, 20
    ymax = max(0.3, float(frac.max()) * 1.1)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    plot_h = h - top - bottom

    def y(v: float) -> int:
        return round(top + plot_h * (1 - v / ymax))

    d.text((4, 2), f"{title}: {covered}/{k} classes covered", fill=(0, 0, 0), font=font)
    d.text((4, 15), f"fraction per class; dashed: 1/{k}, threshold {share:g}/{k}",
           fill=(90, 90, 90), font=font)
    tick = 0.1 if ymax <= 0.5 else 0.2
    for i in range(int(ymax / tick + 1e-9) + 1):
        d.text((2, y(i * tick) - 6), f"{i * tick:.1f}", fill=(90, 90, 90), font=font)
    for i in range(k):
        x0 = left + 6 + 30 * i
        ok = frac[i] >= share / k - 1e-12
        d.rectangle((x0, y(float(frac[i])), x0 + bar, y(0)),
                    fill=(60, 160, 80) if ok else (200, 60, 50))
        d.text((x0 + 7, h - bottom + 4), str(i), fill=(0, 0, 0), font=font)
    for v, col in ((1 / k, (40, 40, 200)), (share / k, (200, 60, 50))):
        for x0 in range(left, w - 4, 8):
            d.line((x0, y(v), x0 + 4, y(v)), fill=col)
    d.line((left, top, left, y(0)), fill=(0, 0, 0))
    d.line((left, y(0), w - 4, y(0)), fill=(0, 0, 0))
    tmp = f"{path}.tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


class VanillaGAN(GAN):
    config_cls: ClassVar[type] = GANMLPConfig
    description: ClassVar[str] = ("GAN: MLP G and D, minimax with saturating or non-saturating "
                                  "G loss, k D steps (Goodfellow 2014)")
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 6000, "batch_size": 64, "lr": 2e-4, "sample_every": 1000,
        "checkpoint_every": 1000}
    conditional: ClassVar[bool] = False

    def __init__(self, config: GANMLPConfig | None = None) -> None:
        super().__init__(config or GANMLPConfig())

    def build_generator(self) -> nn.Module:
        c = self.config
        return mlp_generator(c.z_dim, c.g_hidden, c.image_shape)

    def build_discriminator(self) -> nn.Module:
        return mlp_discriminator(math.prod(self.config.image_shape), self.config.d_hidden)

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return bce_d_loss(d_real, d_fake)

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return g_loss_of(self.config.g_loss, d_fake)

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """FD-digits against `x` and mode coverage of the same ``fd_samples`` samples."""
        s = self.sample(self.config.fd_samples)
        fd = fid.fd_digits(s, x)
        covered, frac = mode_coverage(fid.classify(s))
        return {"loss": fd, "fd": fd, "modes": float(covered), "confident": float(frac.sum()),
                **{f"class_{k}": float(f) for k, f in enumerate(frac)}}

    @classmethod
    def cli_train(cls, args: Any) -> int:
        return cli_train(cls, args)


# -- training on the digits with their labels (shared with genfast.models.cgan) -------------

def load_labeled(model: nn.Module, path: str | None) -> tuple[tuple[Tensor, Tensor | None],
                                                              tuple[Tensor, Tensor | None]]:
    """((train images, labels), (test images, labels)) at the model's size: the embedded
    digits with labels, split as genfast.data.digits_split; or a user's images (no labels)."""
    from ..data import load_digits, load_images, resize, split

    c, size, _ = model.image_shape
    if path is None:
        x, y = load_digits(size)
        tr, te = split(torch.arange(len(x)))  # the same permutation as split(x)
        return (x[tr], y[tr]), (x[te], y[te])
    try:
        x = load_images(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"genfast: {e}") from None
    if x.shape[1] != c:
        raise SystemExit(f"genfast: --data {path} has {x.shape[1]} channels, the model expects "
                         f"{c}")
    tr_x, te_x = split(resize(x, size) if x.shape[-1] != size else x)
    return (tr_x, None), (te_x, None)


def fit(model: Any, name: str, train: tuple[Tensor, Tensor | None],
        test: tuple[Tensor, Tensor | None], tc: TrainConfig, out_dir: str | os.PathLike[str],
        *, resume: bool = False, device: str | torch.device = "cpu",
        progress: bool | None = None) -> dict[str, float]:
    """genfast.models._trainer's loop with (image, label) batches for a conditional model,
    and snapshots that write the sample grid (one row per class when conditional) and, for a
    model that reports class fractions, the mode-coverage chart."""
    device, out_dir = torch.device(device), os.fspath(out_dir)
    (train_x, train_y), (test_x, _) = train, test
    if model.conditional and train_y is None:
        raise ValueError(f"{name} is class-conditional: it needs labelled images")
    train_x, test_x = train_x.to(device), test_x.to(device)
    train_y = None if train_y is None else train_y.to(device)

    def batch(step: int) -> Tensor | tuple[Tensor, Tensor]:
        idx = batch_indices(len(train_x), tc.batch_size, tc.seed, step).to(device)
        return (train_x[idx], train_y[idx]) if model.conditional else train_x[idx]

    def snapshot(step: int) -> dict[str, float]:
        held_out = _evaluate(model, test_x, device)
        model.eval()
        try:
            with torch.no_grad(), _isolated_rng(device):
                what = ", ".join(f"{k} {held_out[k]:.3g}" for k in ("fd", "modes", "class_acc")
                                 if k in held_out)
                if model.conditional:  # row r holds class r
                    k = model.config.num_classes
                    nrow = math.ceil(tc.n_samples / k)
                    images = model.sample(k * nrow,
                                          labels=torch.arange(k).repeat_interleave(nrow))
                else:
                    nrow, images = None, model.sample(tc.n_samples)
                save_panels([(f"{name} step {step}: {what}", images, nrow)],
                            os.path.join(out_dir, f"samples_step{step:06d}.png"))
        finally:
            model.train()
        if "class_0" in held_out:
            frac = torch.tensor([held_out[f"class_{k}"] for k in range(NUM_CLASSES)])
            coverage_figure(frac, int(held_out["modes"]),
                            os.path.join(out_dir, f"coverage_step{step:06d}.png"),
                            f"{name} step {step}")
        return held_out

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snapshot,
                      evaluate=lambda: _evaluate(model, test_x, device), resume=resume,
                      device=device, progress=progress)


def cli_train(cls: type, args: Any) -> int:
    """`genfast train gan|cgan`: config from --set (a resume starts from the checkpoint's),
    the digits with labels, the shared loop; prints the held-out figures."""
    import genfast

    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, dict(getattr(args, "config", None) or {}))
    try:
        model = cls(cls.config_cls(**overrides))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    if cls.conditional and args.data is not None:
        raise SystemExit(f"genfast: {args.model} is class-conditional and trains on the "
                         f"embedded digits and their labels; --data images carry none")
    train, test = load_labeled(model, args.data)
    try:
        tc = TrainConfig.from_args(cls.train_defaults, args)
        t0 = time.perf_counter()
        with genfast.use_backend(args.backend):
            metrics = fit(model, args.model, train, test, tc, out, resume=args.resume,
                          device=args.device, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    wall = time.perf_counter() - t0
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                      if not (k.startswith("class_") and k[6:].isdigit()))
    print(f"{args.model}: {tc.steps} steps ({wall:.1f} s this run); held-out: {shown}")
    print(f"checkpoint, samples, metrics.jsonl in {out}")
    return 0


__all__ = ["COVERAGE_SHARE", "GANMLPConfig", "VanillaGAN", "cli_train", "coverage_figure",
           "fit", "g_loss_of", "load_labeled", "mode_coverage", "mlp_discriminator",
           "mlp_generator"]

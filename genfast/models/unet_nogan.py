"""The seed-000 generator: a U-Net colouriser trained by DeOldify's "NoGAN" schedule.

Task: colourise greyscale crops of the shipped photos (genfast.data.photos): the input is the
luma Y, the U-Net (spectral norm + self-attention, genfast/models/_unet_net.py) predicts the
chroma (Cb, Cr) and the output is the RGB image of (Y, Cb, Cr), so the luminance is exact and
only colour is learnt (DeOldify likewise keeps the input's luminance at inference).

Schedule (one trainer step = one update; a pure function of the step, so a resume lands in the
right phase and stage):

1. generator pretraining with the feature loss (L1 + weighted L1 of a feature net trained
   offline on the photos: _unet_features.py), progressive resizing: ``stage_sizes`` (low ->
   medium -> high resolution) for ``stage_steps`` with ``stage_batch`` crops, a one-cycle
   learning rate per stage (fit_one_cycle per size in DeOldify). The plain U-Net baseline
   (no SN, no attention, L1 only) trains beside it on the same batches;
2. critic pretraining: a binary real / generated classifier on frozen-generator outputs at the
   high resolution (BCE, averaged over its patch logits);
3. a short GAN phase: fastai's AdaptiveGANSwitcher (the critic trains until its loss falls
   under ``critic_thresh``, then one generator step, then back), generator loss
   ``gen_weights[0] * BCE(critic(G(x)), 1) + gen_weights[1] * feature loss`` (fastai's order:
   DeOldify's weights_gen=(1.0, 1.5)), Adam (0, 0.9), critic learning rate x ``critic_lr_mult``
   (GANDiscriminativeLR).

``evaluate`` reports PSNR, SSIM and the feature distance on held-out crops, for the generator,
the baseline (``base_*``) and the greyscale input itself (``grey_*``, no colour at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genfast.data.photos import resolve_photos, rgb_to_ycbcr, ycbcr_to_rgb
from genfast.nn.spectral_norm import SpectralNormGroup

from . import _unet_metrics as metrics
from ._unet_features import FeatureLoss, PhotoFeatures
from ._unet_net import UNet, critic

PHASES = ("pretrain", "critic", "gan")


def _ints(name: str, v: Any, lo: int) -> tuple[int, ...]:
    t = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    if not t or any(isinstance(i, bool) or not isinstance(i, int) or i < lo for i in t):
        raise ValueError(f"{name} must be ints >= {lo}, got {v!r}")
    return t


@dataclass
class UNetNoGANConfig:
    photos: Any = "auto"  # "auto", "sklearn" or photo names (the CLI stores the names)
    window: tuple[int, int] = (64, 192)  # training window sides, photo pixels
    width: int = 16  # generator channels at full resolution (doubling per level)
    depth: int = 3  # down-sampling levels: sizes must be multiples of 2**depth
    critic_width: int = 32
    critic_blocks: int = 2
    stage_sizes: tuple[int, ...] = (32, 48, 64)
    stage_steps: tuple[int, ...] = (150, 100, 100)
    stage_batch: tuple[int, ...] = (16, 12, 8)
    critic_steps: int = 50
    gan_steps: int = 100
    gan_batch: int = 8
    feature_weights: tuple[float, ...] = (0.2, 0.7, 0.1)  # DeOldify's 20/70/10, scaled
    critic_lr: float = 1e-3
    # DeOldify's GAN-phase rate. Measured on the default schedule: the GAN phase moved held-out
    # PSNR 24.92 -> 24.13 at 2e-5 and 24.79 -> 23.52 at 1e-4 (feature distance up either way).
    gan_lr: float = 2e-5
    critic_lr_mult: float = 5.0
    critic_thresh: float = 0.65
    gen_weights: tuple[float, float] = (1.0, 1.5)  # (adversarial, feature loss)
    baseline: bool = True

    def __post_init__(self) -> None:
        # "auto" / "sklearn" stay symbolic (validated); names become a tuple.
        names = resolve_photos(self.photos)
        self.photos = self.photos if self.photos in ("auto", "sklearn") else names
        self.window = _ints("window", self.window, 8)
        if len(self.window) != 2 or self.window[0] > self.window[1]:
            raise ValueError(f"window must be (min_side, max_side), got {self.window!r}")
        for name in ("width", "depth", "critic_width", "critic_blocks", "critic_steps",
                     "gan_steps", "gan_batch"):
            _ints(name, getattr(self, name), 0 if name.endswith("_steps") else 1)
        self.stage_sizes = _ints("stage_sizes", self.stage_sizes, 8)
        self.stage_steps = _ints("stage_steps", self.stage_steps, 1)
        self.stage_batch = _ints("stage_batch", self.stage_batch, 1)
        if not len(self.stage_sizes) == len(self.stage_steps) == len(self.stage_batch):
            raise ValueError(f"stage_sizes, stage_steps and stage_batch need one entry per "
                             f"stage, got {len(self.stage_sizes)}, {len(self.stage_steps)}, "
                             f"{len(self.stage_batch)}")
        if list(self.stage_sizes) != sorted(self.stage_sizes):
            raise ValueError(f"stage_sizes must not decrease (progressive resizing), got "
                             f"{self.stage_sizes}")
        m = 2 ** self.depth
        if any(s % m for s in self.stage_sizes):
            raise ValueError(f"stage_sizes must be multiples of {m} (2**depth), got "
                             f"{self.stage_sizes}")
        s = self.stage_sizes[-1]
        if s % 8:
            raise ValueError(f"the last stage size must be a multiple of 8 (the critic's "
                             f"attention pools 2x2 at a quarter of it), got {s}")
        if s // 2 ** (self.critic_blocks + 1) < 4:
            raise ValueError(f"critic_blocks={self.critic_blocks} leaves less than 4x4 of a "
                             f"{s}x{s} crop for the critic's last k4 conv")
        self.feature_weights = tuple(float(w) for w in self.feature_weights)
        self.gen_weights = tuple(float(w) for w in self.gen_weights)
        if len(self.gen_weights) != 2 or any(not math.isfinite(w) or w < 0
                                             for w in self.gen_weights + self.feature_weights):
            raise ValueError(f"gen_weights must be 2 and feature_weights finite floats >= 0, got "
                             f"{self.gen_weights}, {self.feature_weights}")
        for name in ("critic_lr", "gan_lr", "critic_lr_mult", "critic_thresh"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite float > 0, got {v!r}")
        if not isinstance(self.baseline, bool):
            raise ValueError(f"baseline must be True or False, got {self.baseline!r}")


def one_cycle(frac: float, max_lr: float, pct_start: float = 0.25, div: float = 25.0,
              final_div: float = 1e4) -> float:
    """fastai's fit_one_cycle learning rate at fraction `frac` of a cycle: cosine from
    max_lr / div up to max_lr over pct_start, then cosine down to max_lr / final_div."""
    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) * (1 + math.cos(math.pi * t)) / 2

    if frac < pct_start:
        return cos(max_lr / div, max_lr, frac / pct_start)
    return cos(max_lr, max_lr / final_div, (frac - pct_start) / (1 - pct_start))


class UNetNoGAN(nn.Module):
    """Generator, baseline, critic and feature loss with the NoGAN schedule."""

    config_cls: ClassVar[type] = UNetNoGANConfig
    description: ClassVar[str] = ("U-Net colouriser (SN + self-attention), feature loss, "
                                  "NoGAN schedule, progressive resizing (DeOldify)")
    train_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "log_every": 25}

    def __init__(self, config: UNetNoGANConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or UNetNoGANConfig()
        s = c.stage_sizes[-1]
        self.image_shape = (3, s, s)
        self.generator = UNet(1, 2, c.width, c.depth)
        self.baseline = (UNet(1, 2, c.width, c.depth, spectral=False, attention=False)
                         if c.baseline else None)
        self.critic = critic(3, c.critic_width, c.critic_blocks)
        # Untrained until set_feature_net (the CLI trains / loads it; a checkpoint holds it).
        self.feature_loss = FeatureLoss(PhotoFeatures(), c.feature_weights)
        self._sn = [SpectralNormGroup(self.generator), SpectralNormGroup(self.critic)]
        # last losses (generator, baseline, critic, adversarial), reported every step so the
        # trainer's window means are means of real values; GAN switcher mode (1: generator).
        self.register_buffer("last", torch.zeros(4))
        self.register_buffer("gen_mode", torch.zeros((), dtype=torch.long))
        ends = list(torch.tensor(c.stage_steps).cumsum(0).tolist())
        p = ends[-1]
        self._phases = ([("pretrain", e - n, e, sz, b) for e, n, sz, b in
                         zip(ends, c.stage_steps, c.stage_sizes, c.stage_batch, strict=False)]
                        + [("critic", p, p + c.critic_steps, s, c.gan_batch),
                           ("gan", p + c.critic_steps, p + c.critic_steps + c.gan_steps, s,
                            c.gan_batch)])

    # -- schedule -----------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self._phases[-1][2]

    @property
    def pretrain_steps(self) -> int:
        return self._phases[len(self.config.stage_sizes) - 1][2]

    def phase_at(self, step: int) -> tuple[str, int, int, int, int]:
        """(phase, first step, end step, crop size, batch size) of trainer step `step`."""
        for ph in self._phases:
            if ph[1] <= step < ph[2]:
                return ph
        raise ValueError(f"step {step} is past the schedule's {self.total_steps} steps")

    def set_feature_net(self, net: PhotoFeatures) -> None:
        self.feature_loss.net.load_state_dict(net.state_dict())

    # -- colourisation ------------------------------------------------------------------------
    @staticmethod
    def _colourise(net: nn.Module, rgb: Tensor) -> Tensor:
        y = rgb_to_ycbcr(rgb)[:, :1]
        return ycbcr_to_rgb(torch.cat([y, net(2.0 * y - 1.0)], 1))

    @torch.no_grad()
    def colourise(self, rgb: Tensor, which: str = "generator") -> Tensor:
        """RGB in [0, 1] of the greyscale of `rgb` (B, 3, S, S), by the generator or
        the baseline."""
        net = self.generator if which == "generator" else self.baseline
        if net is None or which not in ("generator", "baseline"):
            raise ValueError(f"which must be 'generator' or 'baseline' (with baseline=True), "
                             f"got {which!r}")
        return self._colourise(net, rgb).clamp_(0.0, 1.0)

    # -- training -----------------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        c, adam = self.config, torch.optim.Adam
        opts = {"g": adam(self.generator.parameters(), lr=lr, betas=(0.9, 0.99)),
                "c_pre": adam(self.critic.parameters(), lr=c.critic_lr, betas=(0.9, 0.99)),
                "g_gan": adam(self.generator.parameters(), lr=c.gan_lr, betas=(0.0, 0.9)),
                "c_gan": adam(self.critic.parameters(), lr=c.gan_lr * c.critic_lr_mult,
                              betas=(0.0, 0.9))}
        if self.baseline is not None:
            opts["base"] = adam(self.baseline.parameters(), lr=lr, betas=(0.9, 0.99))
        self._max_lr = lr
        return opts

    def _critic_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        r, f = self.critic(2 * real - 1), self.critic(2 * fake - 1)
        return (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))) / 2

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        phase, start, end, size, batch = self.phase_at(step)
        if tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"step {step} ({phase}) expects (B, 3, {size}, {size}) crops, got "
                             f"{tuple(x.shape)}")
        if phase == "pretrain":
            lr = one_cycle((step - start) / (end - start), getattr(self, "_max_lr", 1e-3))
            for key in ("g", "base"):
                for group in optimizers[key].param_groups if key in optimizers else ():
                    group["lr"] = lr
            self._update(optimizers["g"], self.feature_loss(
                self._colourise(self.generator, x), x), 0)
            if self.baseline is not None:
                self._update(optimizers["base"], F.l1_loss(
                    self._colourise(self.baseline, x), x), 1)
        elif phase == "critic":
            self._update(optimizers["c_pre"], self._critic_loss(x, self._frozen_fake(x)), 2)
        elif bool(self.gen_mode):
            fake = self._colourise(self.generator, x)
            d = self.critic(2 * fake - 1)
            adv = F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
            w_adv, w_feat = self.config.gen_weights
            self._update(optimizers["g_gan"], w_adv * adv + w_feat * self.feature_loss(fake, x), 0)
            self.last[3] = adv.detach()
            self.gen_mode.fill_(0)
        else:
            with torch.no_grad():
                fake = self._colourise(self.generator, x)
            loss = self._update(optimizers["c_gan"], self._critic_loss(x, fake), 2)
            # One host read per critic step: the switch decides what the next step trains.
            if float(loss) < self.config.critic_thresh:
                self.gen_mode.fill_(1)
        g, b, c, a = self.last.clone().unbind(0)
        return {"g_loss": g, "base_loss": b, "c_loss": c, "adv": a}

    def _update(self, opt: torch.optim.Optimizer, loss: Tensor, slot: int) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.last[slot] = loss.detach()
        return loss.detach()

    @torch.no_grad()
    def _frozen_fake(self, x: Tensor) -> Tensor:
        # The pretrained generator's predictions, as DeOldify saves them to disk: eval mode.
        self.generator.eval()
        try:
            return self._colourise(self.generator, x)
        finally:
            self.generator.train()

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, out: Tensor, target: Tensor) -> dict[str, float]:
        return {"psnr": metrics.mean_psnr(out, target),
                "ssim": float(metrics.ssim(out, target).mean()),
                "feat": float(self.feature_loss.distance(out, target))}

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """Held-out figures of the generator (``psnr``, ``ssim``, ``feat``; ``loss`` = feat),
        the baseline (``base_*``) and the uncoloured greyscale (``grey_*``)."""
        out = self.scores(self.colourise(x), x)
        greys = rgb_to_ycbcr(x)[:, :1].expand(-1, 3, -1, -1)
        res = {"loss": out["feat"], **out,
               **{f"grey_{k}": v for k, v in self.scores(greys, x).items()}}
        if self.baseline is not None:
            res.update({f"base_{k}": v
                        for k, v in self.scores(self.colourise(x, "baseline"), x).items()})
        return res

    # -- CLI ----------------------------------------------------------------------------------
    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._unet_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._unet_cli import sample

        return sample(cls, args)

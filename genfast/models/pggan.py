"""Progressive growing of GANs (Karras, Aila, Laine & Lehtinen 2018), scaled to the digits.

Resolution grows 4 -> 8 -> 16 (-> 32 with ``--set image_shape=(1,32,32)``, e.g. for 32x32
``--data``): stage 0 trains at 4x4 for ``stabilize_steps``; each later stage fades its new
layers in linearly over ``fade_steps`` (alpha 0 -> 1, genfast.models._pggan_net explains the
blend), then stabilises for ``stabilize_steps``; the last stage stabilises to the end. Stage
and alpha are a pure function of the step (``schedule``), so a resumed run is exact.
The trainer hands full-resolution batches; ``train_step`` average-pools them to the stage's
resolution and, during a fade, blends them with their 2x-coarser version by the same alpha
(the official train.py's process_reals), so D sees reals made as G's outputs are.

The paper's parts: equalised learning rate (weights N(0, 1) times He's constant at run time),
pixel-wise feature normalisation after every conv of G (and on z), minibatch standard deviation
before D's last block (group 4), LeakyReLU 0.2, nearest upsampling / average pooling, linear G
output. Loss: WGAN-GP (lambda 10, target 1) plus the drift term eps_drift * E[D(x)^2]
(eps 1e-3) through genfast.gradient_penalty; Adam lr 1e-3, betas (0, 0.99), eps 1e-8, its
state reset at every phase change (``reset_optimizer_state`` in the official code); an
exponential moving average of G's weights (the paper's G smoothing, ``ema_beta`` per G update)
is what samples and evaluation use (from step 4000 of a default run to 4800: FD-digits 14.2
with beta 0.99, 14.8 with 0.995, 15.8 with 0.998, 19.4 for the raw G). Widths follow the
paper's min(fmap_base / 2^stage, fmap_max), here 32-32-16 (-8) feature maps at 4-8-16 (-32)
for the CPU (the paper's 512 at low resolutions).
A trainer step is one D update; every ``n_critic``-th step (``step % n_critic == n_critic - 1``)
also updates G. The paper uses n_critic = 1 with its 512-wide nets; with these small ones
n_critic = 2 did better in the same steps and less time (training at 8x8 for 600 steps:
FD-digits 126 against 222 with n_critic = 1), so it is the default here.

Samples are G's output at the current stage, nearest-upsampled to the image size (so grids
show the stage's resolution). ``evaluate`` reports FD-digits of those samples against the
held-out digits (``fd``, the headline loss: at the final stage this is the final-resolution
figure), and ``fd_stage``, against held-out digits brought to the stage's resolution the same
way (the per-stage figure), with ``stage``, ``alpha`` and ``resolution``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from genfast.ops.gradient_penalty import gradient_penalty

from . import fid
from ._gan import TruncationMode, draw_latent
from ._pggan_net import Discriminator, Generator, channels_for, downsample2, schedule, upsample2


@dataclass
class PGGANConfig:
    image_shape: tuple[int, int, int] = (1, 16, 16)  # final (C, S, S); S a power of 2 >= 8
    z_dim: int = 128
    fmap_base: int = 64  # feature maps at stage k: min(fmap_base / 2^k, fmap_max)
    fmap_max: int = 32
    stabilize_steps: int = 400  # per stage (the last one stabilises until the end)
    fade_steps: int = 400  # per stage after the first
    betas: tuple[float, float] = (0.0, 0.99)
    n_critic: int = 2  # D updates per G update (the paper: 1; see the module docstring)
    gp_weight: float = 10.0  # lambda
    drift: float = 1e-3  # epsilon_drift
    mbstd_group: int = 4  # 1 turns the minibatch-stddev layer off
    ema_beta: float = 0.99  # G smoothing per step; 0 samples the trained G itself
    reset_optimizer: bool = True  # clear Adam's moments at every phase change
    fd_samples: int = 1000

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # lists after a JSON trip
        self.betas = tuple(float(b) for b in self.betas)
        c, h, w = self.image_shape if len(self.image_shape) == 3 else (0, 0, 0)
        if c < 1 or h != w or h < 8 or h & (h - 1):
            raise ValueError(f"image_shape must be (C, S, S) with S a power of 2 >= 8 (at least "
                             f"one growth from 4x4), got {self.image_shape}")
        for name, low in (("z_dim", 1), ("fmap_base", 1), ("fmap_max", 1),
                          ("stabilize_steps", 1), ("fade_steps", 0), ("mbstd_group", 1),
                          ("n_critic", 1),
                          ("fd_samples", 2)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas}")
        for name in ("gp_weight", "drift"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
        if not (isinstance(self.ema_beta, (int, float)) and 0.0 <= self.ema_beta < 1.0):
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta!r}")
        if not isinstance(self.reset_optimizer, bool):
            raise ValueError(f"reset_optimizer must be True or False, "
                             f"got {self.reset_optimizer!r}")

    @property
    def last_stage(self) -> int:
        return int(math.log2(self.image_shape[1] // 4))

    @property
    def growth_steps(self) -> int:
        """Steps until the last stage's fade-in ends (train longer to stabilise it)."""
        return self.stabilize_steps + self.last_stage * (self.fade_steps + self.stabilize_steps)


class PGGAN(nn.Module):
    config_cls: ClassVar[type] = PGGANConfig
    description: ClassVar[str] = ("PGGAN: progressive growing 4->8->16 with fade-in, WGAN-GP + "
                                  "drift (Karras et al. 2018)")
    train_defaults: ClassVar[dict[str, float | int]] = {
        "steps": 6000, "batch_size": 32, "lr": 1e-3, "sample_every": 400,
        "checkpoint_every": 400}

    def __init__(self, config: PGGANConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or PGGANConfig()
        self.image_shape = c.image_shape
        ch = channels_for(c.last_stage, c.fmap_base, c.fmap_max)
        self.generator = Generator(c.z_dim, ch, c.image_shape[0])
        self.discriminator = Discriminator(ch, c.image_shape[0], c.mbstd_group)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        # Steps trained so far: sample() and evaluate() use the stage of the last one, and a
        # checkpoint's samples (genfast sample) come out at the stage it was saved in.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_g_loss", torch.zeros(()))

    # -- schedule -----------------------------------------------------------------------------
    def stage_alpha(self, step: int | None = None) -> tuple[int, float]:
        """Stage and alpha of the 0-based `step`; None: of the last step trained."""
        if step is None:
            step = max(int(self.steps_done) - 1, 0)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        c = self.config
        stage, alpha, _ = schedule(step, c.last_stage, c.stabilize_steps, c.fade_steps)
        return stage, alpha

    def resolution(self, stage: int) -> int:
        return 4 * 2 ** stage

    def reals_at(self, x: Tensor, stage: int, alpha: float) -> Tensor:
        """Full-resolution images -> the stage's resolution (average pooling), blended during
        a fade with their 2x-coarser version, nearest-upsampled back (as G's output is)."""
        x = downsample2(x, self.image_shape[1] // self.resolution(stage))
        if alpha < 1.0:
            x = torch.lerp(upsample2(downsample2(x)), x, alpha)
        return x

    # -- trainer interface --------------------------------------------------------------------
    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        b = self.config.betas
        return {"d": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=b, eps=1e-8),
                "g": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=b, eps=1e-8)}

    def _device(self) -> torch.device:
        return self.steps_done.device

    def latent(self, n: int, truncation: float | None = None,
               truncation_mode: TruncationMode = "resample",
               generator: torch.Generator | None = None) -> Tensor:
        """n latents (n, z_dim); truncation as genfast.models._gan (BigGAN's resampling or
        the interpolation toward the mean latent 0)."""
        return draw_latent((n, self.config.z_dim), self._device(), truncation, truncation_mode,
                           generator)

    def train_step(self, x: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, float | Tensor]:
        c = self.config
        stage, alpha, phase_start = schedule(step, c.last_stage, c.stabilize_steps, c.fade_steps)
        if c.reset_optimizer and step == phase_start and step > 0:
            for opt in optimizers.values():
                opt.state.clear()
        real = self.reals_at(x * 2.0 - 1.0, stage, alpha)
        opt_d, opt_g = optimizers["d"], optimizers["g"]

        def critic(images: Tensor) -> Tensor:
            return self.discriminator(images, stage, alpha)

        g_step = step % c.n_critic == c.n_critic - 1
        # One G forward per step, kept in the graph only when G is updated this step.
        with torch.set_grad_enabled(g_step):
            fake = self.generator(self.latent(real.shape[0]), stage, alpha)
        d_real, d_fake = critic(real), critic(fake.detach())
        d_loss = d_fake.mean() - d_real.mean()
        gp = gradient_penalty(critic, real, fake.detach(), kind="wgan-gp", weight=c.gp_weight,
                              center=1.0, drift=c.drift, real_scores=d_real)
        opt_d.zero_grad(set_to_none=True)
        (d_loss + gp.penalty).backward()
        opt_d.step()

        if g_step:
            g_loss = -critic(fake).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            # Gradients also reached D; its next zero_grad clears them.
            if c.ema_beta > 0:
                with torch.no_grad():
                    for pe, p in zip(self.generator_ema.parameters(),
                                     self.generator.parameters(), strict=True):
                        pe.lerp_(p, 1.0 - c.ema_beta)
            self.last_g_loss.fill_(g_loss.detach())
        self.steps_done.fill_(step + 1)
        out: dict[str, float | Tensor] = {
            "d_loss": d_loss.detach(), "g_loss": self.last_g_loss.clone(),
            "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean(),
            "gp": gp.penalty.detach(), "grad_norm": gp.grad_norm.mean(),
            "stage": float(stage), "alpha": alpha}
        if gp.drift is not None:
            out["drift"] = gp.drift
        return out

    def _sampler(self) -> Generator:
        return self.generator_ema if self.config.ema_beta > 0 else self.generator

    @torch.no_grad()
    def generate(self, z: Tensor, stage: int | None = None, alpha: float | None = None
                 ) -> Tensor:
        """Images in [0, 1] at the image size from latents (n, z_dim): G's output at `stage`
        (default: the last step's stage and alpha), nearest-upsampled."""
        s, a = self.stage_alpha()
        stage = s if stage is None else stage
        alpha = (a if stage == s else 1.0) if alpha is None else alpha
        if not 0 <= stage <= self.config.last_stage:
            raise ValueError(f"stage must be in [0, {self.config.last_stage}], got {stage}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        out = self._sampler()(z.reshape(len(z), -1), stage, alpha)
        out = upsample2(out, self.image_shape[1] // self.resolution(stage))
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, truncation: float | None = None,
               truncation_mode: TruncationMode = "resample",
               generator: torch.Generator | None = None, stage: int | None = None) -> Tensor:
        """n images (n, C, H, W) in [0, 1] at the current stage (or `stage`)."""
        return self.generate(self.latent(n, truncation, truncation_mode, generator), stage)

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """FD-digits of samples at the current stage against `x` (``fd``) and against `x`
        brought to the stage's resolution (``fd_stage``)."""
        stage, alpha = self.stage_alpha()
        fake = self.sample(self.config.fd_samples)
        net = fid.feature_net(device=x.device)
        fd = fid.fd_digits(fake, x, net)
        ref = upsample2(self.reals_at(x, stage, alpha), self.image_shape[1]
                        // self.resolution(stage))
        fd_stage = fd if stage == self.config.last_stage and alpha == 1.0 else fid.fd_digits(
            fake, ref, net)
        return {"loss": fd, "fd": fd, "fd_stage": fd_stage, "stage": float(stage),
                "alpha": float(alpha), "resolution": float(self.resolution(stage))}


__all__ = ["PGGAN", "PGGANConfig"]

"""Gumbel-Softmax GAN for discrete sequences (Kusner & Hernandez-Lobato 2016).

Generator: an LSTM language model run free: z -> (h0, c0); at step t it reads the embedding of
its previous output y_{t-1} (a start symbol at t = 0), and emits
    y_t = softmax((logits_t + g_t) / tau),   g_t ~ Gumbel(0, 1)
through ``genfast.gumbel_softmax`` (a relaxed one-hot over the alphabet, fed back as the next
input: embedding = y_t @ E, so gradients flow through every step). Discriminator: an LSTM
(genfast.nn.LSTM) or a 1-D CNN reading the relaxed one-hot sequence (B, T, V); real sequences
are exact one-hots.

Losses (``loss``):
  "gan"      non-saturating GAN: D minimises BCE(D(x), 1) + BCE(D(G(z)), 0), G minimises
             BCE(D(G(z)), 1); one D update per G update.
  "wgan-gp"  WGAN-GP (Gulrajani et al. 2017): critic E[D(G(z))] - E[D(x)] + 10 E[(||grad||-1)^2]
             at random interpolates of real one-hots and relaxed fakes, 5 critic updates per
             generator update, Adam betas (0.5, 0.9) (the paper's language-model settings).
             With the LSTM critic the penalty differentiates the critic's input gradient, i.e.
             it runs the double backward of genfast.nn.LSTM (cuDNN's LSTM cannot).

Schedule (a pure function of the step, so resumed runs match):
  * steps [0, pretrain_steps): MLE pretraining of G (teacher-forced cross-entropy, Adam at
    ``mle_lr``), as RelGAN / SeqGAN do: a GAN from a random G on text rarely gets going on a
    CPU budget. D is not trained then.
  * after: adversarial steps; a trainer step is one D update, every ``n_critic``-th also
    updates G. tau(s) = max(tau_end, tau_start * exp(-tau_rate * s)) for adversarial step s
    (genfast.nn.TemperatureSchedule), i.e. from 1 down to 0.1 over the adversarial phase.
Every step reports ``mle`` (the teacher-forced NLL of the real batch in nats/char: during
pretraining the loss, later a check that the GAN does not forget the data), ``d_loss``,
``g_loss`` (0 during pretraining), ``tau`` and, with wgan-gp, ``gp`` and ``grad_norm``.

Evaluation (genfast.models._gsgan_text.HeldOut.scores): discrete samples (hard Gumbel-max
draws at temperature 1, fed back as exact one-hots) scored against held-out text: the fraction
of sampled character 3- and 4-grams and of sampled complete words that occur in it, and the
fraction of distinct 4-grams among the samples (diversity: a collapsed G scores low there).

What the adversarial phase buys (Lee corpus, defaults, seed 0, genfast.nn.LSTM on its CPU
backend), as prec4 / words / distinct4: the MLE-pretrained G (600 steps) 0.684 / 0.598 / 0.548;
after gan 0.731 / 0.638 / 0.475; after wgan-gp 0.697 / 0.643 / 0.526; the training text 0.765
/ 0.711 / 0.507. The gain is the precision / diversity trade a lower sampling temperature gives,
and no better than it: the same G trained by MLE for all 1800 steps scores 0.704 / 0.622 /
0.535 at temperature 1 and 0.753 / 0.683 / 0.485 at 0.9 (as Caccia et al. 2018, "Language GANs
falling short", found for text GANs at large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genfast.nn import LSTM, GumbelSoftmax, TemperatureSchedule
from genfast.ops.gradient_penalty import gradient_penalty
from genfast.ops.gumbel import gumbel_softmax

from . import _gsgan_text as text

LOSSES = ("gan", "wgan-gp")
DISCRIMINATORS = ("lstm", "cnn")


@dataclass
class GSGANConfig:
    alphabet: str = text.ALPHABET  # symbols; index = position (checkpoints carry it)
    seq_len: int = 12  # characters per sequence (windows starting at a word)
    loss: str = "gan"
    discriminator: str = "lstm"
    z_dim: int = 16  # latent -> initial LSTM state (the Gumbel noise adds per-step randomness)
    embed: int = 32
    g_hidden: int = 128
    g_layers: int = 1
    d_hidden: int = 128
    hard: bool = False  # straight-through one-hots to D (the paper feeds the soft ones)
    n_critic: int = 0  # D updates per G update; 0: 1 for gan, 5 for wgan-gp
    gp_weight: float = 10.0
    betas: tuple[float, float] = (0.0, 0.0)  # Adam, adversarial; (0, 0): per loss (see below)
    mle_lr: float = 1e-2
    pretrain_steps: int = 600
    tau_start: float = 1.0
    tau_end: float = 0.1
    tau_rate: float = 2e-3
    eval_samples: int = 1000

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # a list after a JSON trip
        if not isinstance(self.alphabet, str) or len(set(self.alphabet)) != len(self.alphabet) \
                or len(self.alphabet) < 2 or " " not in self.alphabet:
            raise ValueError(f"alphabet must be a string of >= 2 distinct symbols including a "
                             f"space, got {self.alphabet!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, "
                             f"got {self.discriminator!r}")
        for name in ("seq_len", "embed", "g_hidden", "g_layers", "d_hidden", "eval_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("z_dim", "n_critic", "pretrain_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4 (4-grams are scored), got {self.seq_len}")
        if not (math.isfinite(self.gp_weight) and self.gp_weight >= 0):
            raise ValueError(f"gp_weight must be a finite float >= 0, got {self.gp_weight!r}")
        if not (math.isfinite(self.mle_lr) and self.mle_lr > 0):
            raise ValueError(f"mle_lr must be a finite float > 0, got {self.mle_lr!r}")
        if not (0 < self.tau_end <= self.tau_start and math.isfinite(self.tau_start)):
            raise ValueError(f"need 0 < tau_end <= tau_start < inf, got tau_start="
                             f"{self.tau_start!r}, tau_end={self.tau_end!r}")
        if not (math.isfinite(self.tau_rate) and self.tau_rate >= 0):
            raise ValueError(f"tau_rate must be a finite float >= 0, got {self.tau_rate!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas}")
        if self.n_critic == 0:
            self.n_critic = 5 if self.loss == "wgan-gp" else 1
        if self.betas == (0.0, 0.0):
            self.betas = (0.5, 0.9) if self.loss == "wgan-gp" else (0.5, 0.999)


class Generator(nn.Module):
    """z (B, z_dim) -> relaxed one-hot sequences (B, T, V); teacher-forced logits for MLE."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int, z_dim: int,
                 tau: float, hard: bool) -> None:
        super().__init__()
        self.vocab, self.hidden, self.layers, self.z_dim = vocab, hidden, layers, z_dim
        self.embed = nn.Embedding(vocab + 1, embed)  # row `vocab` is the start symbol
        self.init = nn.Linear(z_dim, 2 * layers * hidden) if z_dim else None
        self.lstm = LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)
        self.gumbel = GumbelSoftmax(tau=tau, hard=hard)

    def initial_state(self, z: Tensor | None, batch: int) -> tuple[Tensor, Tensor] | None:
        if self.init is None:
            return None
        hc = torch.tanh(self.init(z)).view(batch, 2, self.layers, self.hidden)
        return hc[:, 0].transpose(0, 1).contiguous(), hc[:, 1].transpose(0, 1).contiguous()

    def _start(self, batch: int) -> Tensor:
        return self.embed.weight[self.vocab].expand(batch, 1, -1)

    def teacher_logits(self, tokens: Tensor, z: Tensor | None) -> Tensor:
        """Logits (B, T, V) of tokens (B, T) given the true previous tokens (one LSTM call)."""
        b = tokens.shape[0]
        x = torch.cat([self._start(b), self.embed(tokens[:, :-1])], 1)
        y, _ = self.lstm(x, self.initial_state(z, b))
        return self.head(y)

    def run(self, b: int, z: Tensor | None, steps: int, *, discrete: bool = False,
            temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """b free-running sequences (b, steps, V): relaxed one-hots (tau = self.gumbel.tau),
        or with ``discrete`` exact one-hots of Gumbel-max draws at `temperature`."""
        state = self.initial_state(z, b)
        x = self._start(b)
        outs = []
        for _ in range(steps):
            h, state = self.lstm(x, state)
            logits = self.head(h[:, 0])
            if discrete:
                y = self.gumbel_hard(logits / temperature, generator)
            else:
                y = self.gumbel(logits, generator=generator)
            outs.append(y)
            x = (y @ self.embed.weight[: self.vocab])[:, None]
        return torch.stack(outs, 1)

    @staticmethod
    def gumbel_hard(logits: Tensor, generator: torch.Generator | None) -> Tensor:
        # argmax(logits + g) is a draw from softmax(logits) whatever the tau: a categorical
        # sample, returned as its exact one-hot.
        return gumbel_softmax(logits, 1.0, True, generator=generator)


class LSTMDiscriminator(nn.Module):
    """(B, T, V) one-hots, exact or relaxed -> scores (B,): an LSTM over their embeddings,
    its outputs averaged over time (every step gets a direct gradient), then a linear map."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Linear(vocab, embed, bias=False)
        self.lstm = LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(self.embed(x))
        return self.out(y.mean(1)).squeeze(1)


class CNNDiscriminator(nn.Module):
    """(B, T, V) -> scores (B,): SeqGAN / RelGAN-style text CNN: convolutions of widths
    2, 3, 4 over the embedded sequence, max over time, LeakyReLU, a linear map."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Linear(vocab, embed, bias=False)
        self.convs = nn.ModuleList(nn.Conv1d(embed, hidden, k) for k in (2, 3, 4))
        self.out = nn.Linear(3 * hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        e = self.embed(x).transpose(1, 2)
        feats = [F.leaky_relu(conv(e), 0.2).amax(2) for conv in self.convs]
        return self.out(torch.cat(feats, 1)).squeeze(1)


class GSGAN(nn.Module):
    """The Gumbel-Softmax GAN with its training step, evaluation and sampling."""

    config_cls: ClassVar[type] = GSGANConfig
    description: ClassVar[str] = "Gumbel-Softmax GAN on character sequences (Kusner 2016)"
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1800, "batch_size": 64, "lr": 1e-4, "checkpoint_every": 300,
        "sample_every": 600, "log_every": 100}

    @classmethod
    def defaults_for(cls, config: GSGANConfig) -> dict[str, Any]:
        """train_defaults for `config`'s loss. WGAN-GP updates G once per 5 critic steps, so
        at gan's 1e-4 its G barely moves in a CPU-sized run (held-out prec4 0.684 after 1800
        steps, the MLE-pretrained G's 0.685); 5e-4 gives 0.700 (1e-3: 0.715, less diverse;
        measured with torch.nn.LSTM swapped in, the same model)."""
        if config.loss == "wgan-gp":
            return {**cls.train_defaults, "lr": 5e-4}
        return dict(cls.train_defaults)

    def __init__(self, config: GSGANConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GSGANConfig()
        v = len(c.alphabet)
        self.generator = Generator(v, c.embed, c.g_hidden, c.g_layers, c.z_dim, c.tau_start,
                                   c.hard)
        disc = LSTMDiscriminator if c.discriminator == "lstm" else CNNDiscriminator
        self.discriminator = disc(v, c.embed, c.d_hidden)
        self.schedule = TemperatureSchedule(c.tau_start, c.tau_end, c.tau_rate)
        # Last adversarial losses, reported on steps that do not compute them, saved with the
        # model so a resumed run logs what an unbroken one would.
        self.register_buffer("last_g_loss", torch.zeros(()))

    def _device(self) -> torch.device:
        return self.generator.head.weight.device

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        if not self.config.z_dim:
            return None
        return torch.randn(n, self.config.z_dim, device=self._device(), generator=generator)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        b = self.config.betas
        return {"mle": torch.optim.Adam(self.generator.parameters(), lr=self.config.mle_lr),
                "g": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=b),
                "d": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=b)}

    def mle_loss(self, tokens: Tensor) -> Tensor:
        """Teacher-forced cross-entropy of tokens (B, T), nats per character."""
        logits = self.generator.teacher_logits(tokens, self.latent(len(tokens)))
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        if self.config.loss == "wgan-gp":
            return d_fake.mean() - d_real.mean()
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))

    def g_loss(self, d_fake: Tensor) -> Tensor:
        if self.config.loss == "wgan-gp":
            return -d_fake.mean()
        return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))

    def train_step(self, tokens: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor | float]:
        c = self.config
        if step < c.pretrain_steps:
            loss = self.mle_loss(tokens)
            optimizers["mle"].zero_grad(set_to_none=True)
            loss.backward()
            optimizers["mle"].step()
            zero = torch.zeros((), device=tokens.device)
            extra = {"gp": zero, "grad_norm": zero} if c.loss == "wgan-gp" else {}
            return {"mle": loss.detach(), "d_loss": zero, "g_loss": zero, "tau": c.tau_start,
                    **extra}
        adv = step - c.pretrain_steps
        tau = self.schedule.apply(self.generator, adv)
        g_step = adv % c.n_critic == c.n_critic - 1
        with torch.no_grad():
            mle = self.mle_loss(tokens)
        real = F.one_hot(tokens, len(c.alphabet)).to(self.generator.head.weight.dtype)
        with torch.set_grad_enabled(g_step):
            fake = self.generator.run(len(tokens), self.latent(len(tokens)), c.seq_len)
        d_real = self.discriminator(real)
        d_fake = self.discriminator(fake.detach())
        d_loss = self.d_loss(d_real, d_fake)
        extra: dict[str, Tensor] = {}
        if c.loss == "wgan-gp":
            gp = gradient_penalty(self.discriminator, real, fake.detach(), kind="wgan-gp",
                                  weight=c.gp_weight, center=1.0, check_finite=False)
            d_total = d_loss + gp.penalty
            extra = {"gp": gp.penalty.detach(), "grad_norm": gp.grad_norm.mean()}
        else:
            d_total = d_loss
        optimizers["d"].zero_grad(set_to_none=True)
        d_total.backward()
        optimizers["d"].step()
        if g_step:
            g_loss = self.g_loss(self.discriminator(fake))
            optimizers["g"].zero_grad(set_to_none=True)
            g_loss.backward()
            optimizers["g"].step()
            self.last_g_loss.fill_(g_loss.detach())
        return {"mle": mle, "d_loss": d_loss.detach(), "g_loss": self.last_g_loss.clone(),
                "tau": tau, **extra}

    @torch.no_grad()
    def sample_tokens(self, n: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
        """n discrete sequences (n, seq_len) of symbol indices."""
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
        y = self.generator.run(n, self.latent(n, generator), self.config.seq_len,
                               discrete=True, temperature=temperature, generator=generator)
        return y.argmax(-1)

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> list[str]:
        """n generated strings of seq_len characters."""
        return text.decode(self.sample_tokens(n, temperature, generator), self.config.alphabet)

    @torch.no_grad()
    def evaluate(self, heldout: text.HeldOut) -> dict[str, float]:
        """Sample-quality figures of eval_samples draws against held-out text."""
        return heldout.scores(self.sample(self.config.eval_samples))

    @classmethod
    def cli_train(cls, args: Any) -> int:
        return text.cli_train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        return text.cli_sample(cls, args)

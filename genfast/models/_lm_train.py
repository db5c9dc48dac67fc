"""What the char-RNN and the music LSTM share: the token LSTM model base (genfast.nn.
LSTMLanguageModel: embedding -> genfast.nn.LSTM -> linear head, generation in one native
call), windowed batches of a token stream, held-out scoring with the state carried across
chunks, the training loop, and the sampling knobs and checkpoint loading of their CLIs.

Training uses the image trainer's loop (genfast/models/_trainer.train_loop), so its guarantees
hold: a batch is ``batch_size`` windows of ``seq_len + 1`` tokens at starts drawn by
``batch_indices`` over every start of the training stream (a pure function of (seed, step)),
checkpoints are atomic and carry the optimizer and RNG state, a resume continues exactly, and
snapshots (held-out metrics, a sample) run under a forked RNG.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import BackendError, use_backend
from ..nn import LSTMLanguageModel
from ._trainer import (
    TrainConfig,
    _evaluate,
    _isolated_rng,
    batch_indices,
    train_loop,
)


def check_lm_config(config: Any) -> None:
    """The network and training fields every token-LM config has."""
    for name in ("embedding_dim", "hidden_size", "num_layers", "seq_len", "eval_chunk"):
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(config.dropout, (int, float)) and 0.0 <= config.dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout!r}")
    if not (isinstance(config.clip, (int, float)) and config.clip >= 0):
        raise ValueError(f"clip must be >= 0 (0: no clipping), got {config.clip!r}")


class TokenLMModel(nn.Module):
    """A token LSTM language model with the trainer's hooks. Subclasses set ``config`` (with
    the fields check_lm_config reads) and call ``_build(vocab_size)``."""

    # Karpathy's char-rnn schedule sized for the 2-core CPU (both models use it)
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1500, "batch_size": 32, "lr": 2e-3, "checkpoint_every": 250,
        "sample_every": 500, "log_every": 50, "n_samples": 1}

    def _build(self, vocab_size: int) -> None:
        c = self.config
        self.vocab_size = vocab_size
        self.lm = LSTMLanguageModel(vocab_size, c.embedding_dim, c.hidden_size, c.num_layers,
                                    c.dropout)

    def forward(self, tokens: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.lm(tokens, state)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=lr)}

    def train_step(self, batch: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   step: int) -> dict[str, Tensor]:
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        logits, _ = self(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        if self.config.clip:
            nn.utils.clip_grad_norm_(self.parameters(), self.config.clip)
        opt.step()
        return {"loss": loss.detach(), "bits": loss.detach() / math.log(2)}

    @torch.no_grad()
    def token_nll(self, stream: Tensor) -> Tensor:
        """NLL (nats, float64) of every token of a 1-D stream after the first, given all the
        tokens before it: the state is carried from chunk to chunk of ``eval_chunk`` tokens,
        so the result equals one pass over the whole stream."""
        if stream.dim() != 1 or len(stream) < 2:
            raise ValueError(f"stream must be 1-D with >= 2 tokens, got {tuple(stream.shape)}")
        out, state, chunk = [], None, self.config.eval_chunk
        for s in range(0, len(stream) - 1, chunk):
            x = stream[s:min(s + chunk, len(stream) - 1)]
            y = stream[s + 1:s + 1 + len(x)]
            logits, state = self(x[None], state)
            out.append(F.cross_entropy(logits[0].double(), y, reduction="none"))
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, prime: Tensor, n: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> Tensor:
        """(B, Tp + n) tokens: prime (B, Tp) and n drawn after it."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return self.lm.generate(prime, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed)[0]


def windows(stream: Tensor, seq_len: int, starts: Tensor) -> Tensor:
    """(len(starts), seq_len + 1) windows of a 1-D stream."""
    return stream[starts[:, None] + torch.arange(seq_len + 1, device=stream.device)]


def unigram_bits(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """Bits per held-out token of the training histogram (add-1/2 smoothed): the context-free
    baseline a language model must beat."""
    counts = torch.bincount(train.cpu(), minlength=vocab_size).double() + 0.5
    logp = (counts / counts.sum()).log2()
    return float(-logp[test[1:].cpu()].mean())


def fit(model: TokenLMModel, name: str, train: Tensor, test: Tensor, tc: TrainConfig,
        out_dir: str | os.PathLike[str], *, snapshot: Callable[[str, int, dict], None],
        resume: bool = False, device: str | torch.device = "cpu",
        progress: bool | None = None) -> dict[str, float]:
    """Train on windows of the `train` stream to ``tc.steps`` total steps; ``model.evaluate(
    test)`` gives the held-out metrics, ``snapshot(out_dir, step, metrics)`` writes a sample at
    every ``tc.sample_every`` (under a forked RNG, in eval mode). Returns the final metrics."""
    device, out_dir = torch.device(device), os.fspath(out_dir)
    train, test = train.to(device), test.to(device)
    seq = model.config.seq_len
    if len(train) < seq + 2:
        raise ValueError(f"the training stream has {len(train)} tokens; seq_len={seq} needs "
                         f"at least {seq + 2}")

    def batch(step: int) -> Tensor:
        idx = batch_indices(len(train) - seq, tc.batch_size, tc.seed, step).to(device)
        return windows(train, seq, idx)

    def evaluate() -> dict[str, float]:
        return _evaluate(model, test, device)

    def snap(step: int) -> dict[str, float]:
        held_out = evaluate()
        model.eval()
        try:
            with torch.no_grad(), _isolated_rng(device):
                snapshot(out_dir, step, held_out)
        finally:
            model.train()
        return held_out

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snap, evaluate=evaluate,
                      resume=resume, device=device, progress=progress)


def sampling_knobs(args: Any, temperature: float) -> dict[str, Any]:
    """--temperature (default `temperature`), --top-k, --top-p and --seed of the sample CLI."""
    t = getattr(args, "temperature", None)
    return {"temperature": temperature if t is None else t,
            "top_k": getattr(args, "top_k", None), "top_p": getattr(args, "top_p", None),
            "seed": getattr(args, "seed", 0)}


def timed_generate(model: TokenLMModel, prime: Tensor, n: int, knobs: dict[str, Any]
                   ) -> tuple[Tensor, float]:
    """(tokens (1, Tp + n), seconds) of one generate call after a short warm-up call."""
    try:
        model.generate(prime, min(n, 4), **knobs)
        t0 = time.perf_counter()
        tokens = model.generate(prime, n, **knobs)
        return tokens, time.perf_counter() - t0
    except (ValueError, TypeError, BackendError) as e:
        raise SystemExit(f"genfast: {e}") from None


def fit_from_args(cls: type, model: TokenLMModel, args: Any, train: Tensor, test: Tensor,
                  out: str, snapshot: Callable | None) -> tuple[TrainConfig, dict, float]:
    """`genfast train`'s run of fit for a token LM: the TrainConfig from the CLI over the model's
    defaults, args' backend, resume, device and progress; bad settings exit with the message.
    Returns (the config, fit's metrics, wall seconds)."""
    try:
        tc = TrainConfig.from_args(cls.train_defaults, args)
        t0 = time.perf_counter()
        with use_backend(args.backend):
            metrics = fit(model, args.model, train, test, tc, out, snapshot=snapshot,
                          resume=args.resume, device=args.device,
                          progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    return tc, metrics, time.perf_counter() - t0

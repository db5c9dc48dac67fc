"""The Gumbel-Softmax GAN's text side: the alphabet and windows of the Lee corpus, the
held-out sample-quality figures, and `genfast train gsgan` / `genfast sample gsgan`.

Text (``normalize``): lower case; hyphens split words; tokens holding a digit are dropped
(a number's leftovers, "4:00pm" -> "pm", would be noise no model can learn); characters outside
the alphabet (quotes, brackets) are deleted; words are joined by single spaces. Sequences are
the ``seq_len``-character windows starting at every word start (55,841 of 12 characters
in the training split).

Figures (``HeldOut.scores``), each a fraction in [0, 1], of sampled strings against the
held-out documents (genfast.data.text.split_text, the same fixed split as char-RNN):
  prec3, prec4  sampled character 3- / 4-grams that occur in the held-out text (a windowed,
                whole-corpus-reference n-gram precision, the quantity BLEU builds on);
  words         sampled complete words (space-delimited inside a sample, trailing ".,'"
                stripped) that occur in the held-out text;
  distinct4     distinct 4-grams among all sampled 4-grams: diversity (a generator that
                repeats one good string scores high precision and low distinct4).
The training windows themselves and an untrained generator give the scale (printed by
cli_train): the held-out split is small, so even real text does not reach 1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from ._trainer import (
    _EVAL_SEED,
    TrainConfig,
    _isolated_rng,
    batch_indices,
    load_model,
    resumed_config,
    train_loop,
)

ALPHABET = " abcdefghijklmnopqrstuvwxyz.,'"
SNAPSHOT_SAMPLES = 48


def normalize(raw: str, alphabet: str = ALPHABET) -> str:
    """The corpus in `alphabet` (see the module docstring): words joined by single spaces."""
    keep = set(alphabet) - {" "}
    words = []
    for tok in raw.lower().replace("-", " ").split():
        if any(ch.isdigit() for ch in tok):
            continue
        tok = "".join(ch for ch in tok if ch in keep)
        if tok:
            words.append(tok)
    return " ".join(words)


def encode(s: str, alphabet: str) -> torch.Tensor:
    index = {ch: i for i, ch in enumerate(alphabet)}
    missing = sorted(set(s) - index.keys())
    if missing:
        raise ValueError(f"characters outside the alphabet {alphabet!r}: {missing!r}")
    return torch.tensor([index[ch] for ch in s], dtype=torch.int64)


def decode(tokens: torch.Tensor, alphabet: str) -> list[str]:
    """(n, T) symbol indices -> n strings."""
    return ["".join(alphabet[i] for i in row) for row in tokens.tolist()]


def word_starts(ids: torch.Tensor, seq_len: int, space: int) -> torch.Tensor:
    """Start offsets of the seq_len windows of `ids` that begin a word."""
    n = len(ids) - seq_len + 1
    if n < 1:
        raise ValueError(f"the text ({len(ids)} characters) is shorter than seq_len={seq_len}")
    starts = torch.arange(n)
    at_word = ids[:n] != space
    at_word[1:] &= ids[: n - 1] == space
    return starts[at_word]


def windows(ids: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    return ids[starts[:, None] + torch.arange(seq_len, device=ids.device)]


def _ngrams(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(len(s) - n + 1)]


def _complete_words(s: str) -> list[str]:
    # A sample begins at a word start; its last token is cut unless a space follows it.
    toks = s.split(" ")
    if not s.endswith(" "):
        toks = toks[:-1]
    return [w for w in (t.strip(".,'") for t in toks) if w]


class HeldOut:
    """The held-out text's n-gram and word sets, and the figures of samples against them."""

    def __init__(self, s: str) -> None:
        if len(s) < 4:
            raise ValueError(f"held-out text must have >= 4 characters, got {len(s)}")
        self.grams = {n: set(_ngrams(s, n)) for n in (3, 4)}
        self.words = {w.strip(".,'") for w in s.split(" ")} - {""}

    def scores(self, samples: Sequence[str]) -> dict[str, float]:
        if not samples:
            raise ValueError("scores: no samples")
        out: dict[str, float] = {}
        for n in (3, 4):
            grams = [g for s in samples for g in _ngrams(s, n)]
            out[f"prec{n}"] = sum(g in self.grams[n] for g in grams) / max(1, len(grams))
            if n == 4:
                out["distinct4"] = len(set(grams)) / max(1, len(grams))
        words = [w for s in samples for w in _complete_words(s)]
        out["words"] = sum(w in self.words for w in words) / max(1, len(words))
        return out


class Corpus:
    """Training windows (token ids, start offsets) and the held-out figures of one text."""

    def __init__(self, raw: str, alphabet: str, seq_len: int) -> None:
        from genfast.data.text import split_text

        train_raw, held_raw = split_text(raw)
        self.alphabet, self.seq_len = alphabet, seq_len
        self.ids = encode(normalize(train_raw, alphabet), alphabet)
        self.starts = word_starts(self.ids, seq_len, alphabet.index(" "))
        self.heldout = HeldOut(normalize(held_raw, alphabet))

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return windows(self.ids, self.starts[idx], self.seq_len)

    def data_scores(self, n: int) -> dict[str, float]:
        """The figures of n training windows drawn at random (a fixed seed): the ceiling."""
        g = torch.Generator().manual_seed(_EVAL_SEED)
        idx = torch.randperm(len(self.starts), generator=g)[:n]
        return self.heldout.scores(decode(self.batch(idx), self.alphabet))


def fit(model: Any, name: str, corpus: Corpus, tc: TrainConfig,
        out_dir: str | os.PathLike[str], *, resume: bool = False,
        device: str | torch.device = "cpu", progress: bool | None = None) -> dict[str, float]:
    """Train to ``tc.steps`` total steps on random windows (the image trainer's loop, log
    format and exact resume: _trainer.train_loop); returns the held-out figures at the end.
    Every snapshot writes samples_stepNNNNNN.txt."""
    device, out_dir = torch.device(device), os.fspath(out_dir)
    ids, starts = corpus.ids.to(device), corpus.starts.to(device)
    seq = torch.arange(corpus.seq_len, device=device)

    def batch(step: int) -> torch.Tensor:
        idx = batch_indices(len(starts), tc.batch_size, tc.seed, step).to(device)
        return ids[starts[idx][:, None] + seq]

    def evaluate() -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad(), _isolated_rng(device):
                return model.evaluate(corpus.heldout)
        finally:
            model.train()

    def snapshot(step: int) -> dict[str, float]:
        held_out = evaluate()
        model.eval()
        with torch.no_grad(), _isolated_rng(device):
            lines = model.sample(SNAPSHOT_SAMPLES)
        model.train()
        figures = ", ".join(f"{k}={v:.4f}" for k, v in held_out.items())
        path = os.path.join(out_dir, f"samples_step{step:06d}.txt")
        with open(f"{path}.tmp", "w") as f:
            f.write(f"# {name} step {step}: held-out {figures}\n")
            f.writelines(f"|{s}|\n" for s in lines)
        os.replace(f"{path}.tmp", path)
        return held_out

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snapshot,
                      evaluate=evaluate, resume=resume, device=device, progress=progress)


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in d.items())


def cli_train(cls: type, args: Any) -> int:
    import genfast
    from genfast.data.text import load_text

    from ._trainer import METRICS

    overrides = dict(getattr(args, "config", None) or {})
    if getattr(args, "loss", None) is not None:
        overrides["loss"] = args.loss
    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, overrides)
    try:
        config = cls.config_cls(**overrides)
        model = cls(config)
        tc = TrainConfig.from_args(cls.defaults_for(config), args)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    try:
        corpus = Corpus(load_text(args.data or "lee"), config.alphabet, config.seq_len)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"genfast: {e}") from None
    with torch.random.fork_rng(devices=[]):  # the baseline never shifts the training stream
        torch.manual_seed(args.seed)
        untrained = cls(config).eval().evaluate(corpus.heldout)
    t0 = time.perf_counter()
    with genfast.use_backend(args.backend):
        metrics = fit(model, args.model, corpus, tc, out, resume=args.resume,
                      device=args.device, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    print(f"{args.model} ({config.loss}, {config.discriminator} discriminator): {tc.steps} "
          f"steps ({config.pretrain_steps} MLE pretraining), {wall:.1f} s this run; "
          f"{len(corpus.starts)} training windows of {config.seq_len} characters")
    print(f"  held-out figures of {config.eval_samples} samples: {_fmt(metrics)}")
    with open(os.path.join(out, METRICS)) as f:
        import json

        tests = [r for r in map(json.loads, f) if r.get("split") == "test"]
    mle = [r for r in tests if r["step"] == config.pretrain_steps]
    if mle and config.pretrain_steps < tc.steps:
        print("  after MLE pretraining only: "
              + _fmt({k: mle[0][k] for k in metrics}))
    print(f"  untrained generator: {_fmt(untrained)}")
    print(f"  training text itself: {_fmt(corpus.data_scores(config.eval_samples))}")
    print(f"checkpoint, metrics.jsonl and samples_step*.txt in {out}")
    return 0


def cli_sample(cls: type, args: Any) -> int:
    model, ckpt = load_model(cls, args)
    n = args.n or 32
    temperature = getattr(args, "temperature", None)
    temperature = 1.0 if temperature is None else temperature
    gen = torch.Generator().manual_seed(args.seed)
    try:
        t0 = time.perf_counter()
        lines = model.sample(n, temperature=temperature, generator=gen)
        dt = time.perf_counter() - t0
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    out = args.out or f"{args.model}_samples.txt"
    with open(out, "w") as f:
        f.writelines(f"{s}\n" for s in lines)
    for s in lines:
        print(f"|{s}|")
    chars = n * model.config.seq_len
    print(f"wrote {n} samples of {model.config.seq_len} characters (step {ckpt['step']}, "
          f"temperature {temperature:g}, seed {args.seed}) to {out}; "
          f"{chars / max(dt, 1e-9):,.0f} characters/s")
    return 0

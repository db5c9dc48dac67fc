"""`genfast train` / `genfast sample` of the character language models (char-rnn, gpt): the
offline text, its held-out split, the vocabulary taken from the training text, text snapshots
while training, the held-out bits per character against the uniform and unigram baselines, and
timed sampling from a prime. Each model supplies its architecture's one-line description."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from ..data.text import load_text, split_text
from ._lm_train import fit_from_args, sampling_knobs, timed_generate, unigram_bits
from ._trainer import CHECKPOINT, load_model, resumed_config

SNAPSHOT_CHARS = 300


def train_char_lm(cls: type, args: Any, describe: Callable[[Any], str]) -> int:
    """Train `cls` (config_cls with .data and .for_text) on its text; describe(config) names
    the architecture in the summary line."""
    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, dict(getattr(args, "config", None) or {}))
    source = args.data or overrides.get("data", cls.config_cls.data)
    try:
        text = load_text(source)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise SystemExit(f"genfast: {e}") from None
    train_text, test_text = split_text(text)
    try:
        if "chars" not in overrides:
            config = cls.config_cls.for_text(train_text, **{**overrides, "data": source})
        else:
            config = cls.config_cls(**overrides)
        model = cls(config)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    vocab = model.vocab
    train_ids, test_ids = vocab.encode(train_text), vocab.encode(test_text)

    def snapshot(out_dir: str, step: int, held_out: dict) -> None:
        sample = model.complete("\n", SNAPSHOT_CHARS, temperature=0.8, seed=0)
        path = os.path.join(out_dir, f"sample_step{step:06d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# {args.model} step {step}, held-out {held_out['bits_per_char']:.3f} "
                    f"bits/char, temperature 0.8\n{sample.lstrip()}\n")

    tc, metrics, wall = fit_from_args(cls, model, args, train_ids, test_ids, out, snapshot)
    print(f"{args.model}: {tc.steps} steps on {source} ({len(train_text):,} training characters, "
          f"{len(vocab)} symbols, {describe(config)}), {wall:.1f} s this run")
    print(f"  held-out {metrics['bits_per_char']:.3f} bits/char ({len(test_text):,} characters "
          f"of {test_text.count(chr(10))} documents never trained on); baselines: uniform "
          f"{math.log2(len(vocab)):.3f}, unigram (training histogram) "
          f"{unigram_bits(train_ids, test_ids, len(vocab)):.3f}")
    print(f"checkpoint, metrics.jsonl and sample_step*.txt in {out}")
    return 0


def sample_char_lm(cls: type, args: Any, how: str = "", unit: str = "chars") -> int:
    """Continue --prime for --length characters and print the text and `unit`/s (`how`: the
    generation path, e.g. "KV cache, "). Without --checkpoint: runs/MODEL/checkpoint.pt."""
    if args.checkpoint is None:  # the run `genfast train MODEL` writes by default
        default = os.path.join("runs", args.model, CHECKPOINT)
        if os.path.isfile(default):
            args.checkpoint = default
    model, ckpt = load_model(cls, args)
    prime = getattr(args, "prime", None) or "\n"
    n = getattr(args, "length", None) or args.n or 500
    if n < 1:
        raise SystemExit(f"genfast: --length must be >= 1, got {n}")
    knobs = sampling_knobs(args, 0.8)
    try:
        model.complete(prime, 0)  # validates the prime before timing
    except ValueError as e:
        raise SystemExit(f"genfast: --prime: {e}") from None
    ids = model.vocab.encode(prime)[None]
    tokens, dt = timed_generate(model, ids, n, knobs)
    text = model.vocab.decode(tokens[0])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    threads = torch.get_num_threads()
    print(f"\n{args.model} step {ckpt['step']}: {n} characters in {dt:.3f} s = {n / dt:,.0f} "
          f"{unit}/s ({how}batch 1, {threads} thread{'s' * (threads != 1)}, temperature "
          f"{knobs['temperature']:g}, seed {knobs['seed']})"
          + (f"; written to {args.out}" if args.out else ""))
    return 0

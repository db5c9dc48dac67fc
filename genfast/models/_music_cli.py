"""`genfast train music-lstm` and `genfast sample music-lstm`: the folk-tune corpus in, held-out
bits per note and continued tunes (MIDI, WAV, piano roll) out."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..data.music import Melodies, NoteVocab, load_melodies
from ._lm_train import fit_from_args, sampling_knobs, timed_generate, unigram_bits
from ._music_io import write_melody
from ._trainer import load_model, resumed_config

SNAPSHOT_PRIME, SNAPSHOT_NOTES = 8, 48


def melodies(config: Any) -> Melodies:
    """The corpus and split a config was trained on (genfast.data.music.load_melodies)."""
    try:
        return load_melodies(config.corpus, transpose=config.transpose,
                             min_count=config.min_count, max_notes=config.max_notes)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as e:
        raise SystemExit(f"genfast: {e}") from None


def _names(vocab: NoteVocab, ids: torch.Tensor) -> str:
    return " ".join(NoteVocab.name(n) for n in vocab.decode(ids))


def train(cls: type, args: Any) -> int:

    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, dict(getattr(args, "config", None) or {}))
    if args.data:
        overrides["corpus"] = args.data
    try:  # the corpus fields, validated before the corpus is read (the vocab comes from it)
        probe = cls.config_cls(**{**overrides, "vocab": ((60, 1, 1),)})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    data = melodies(probe)
    vocab = overrides.get("vocab") or data.vocab.to_list()
    if [tuple(r) for r in vocab] != [tuple(r) for r in data.vocab.to_list()]:
        raise SystemExit("genfast: the checkpoint's note vocabulary differs from the corpus's "
                         f"({probe.corpus}): was the corpus changed?")
    config = cls.config_cls(**{**overrides, "vocab": vocab})
    model = cls(config)
    train_ids, test_ids = data.stream("train"), data.stream("test")
    tune = data.test[0]

    def snapshot(out_dir: str, step: int, held_out: dict) -> None:
        tokens, _ = model.continue_tune(tune, SNAPSHOT_PRIME, SNAPSHOT_NOTES, seed=0)
        write_melody(os.path.join(out_dir, f"sample_step{step:06d}"), model.vocab.decode(tokens),
                     f"{args.model} step {step}: {data.titles_test[0]!r} from "
                     f"{SNAPSHOT_PRIME} notes (grey), held-out "
                     f"{held_out['bits_per_note']:.3f} bits/note", SNAPSHOT_PRIME,
                     config.tempo)

    tc, metrics, wall = fit_from_args(cls, model, args, train_ids, test_ids, out, snapshot)
    n_notes = int((test_ids != 0).sum())
    uni = unigram_bits(train_ids, test_ids, len(model.vocab))
    print(f"{args.model}: {tc.steps} steps on {config.corpus} ({data.parsed:,} tunes parsed, "
          f"{data.skipped_parse} rejected by the ABC reader, {data.skipped_vocab} with notes "
          f"rarer than min_count={config.min_count}; {len(data.train):,} training tunes, "
          f"{int((train_ids != 0).sum()):,} notes, {len(model.vocab)} tokens), "
          f"{wall:.1f} s this run")
    print(f"  held-out {metrics['bits_per_note']:.3f} bits/note, {metrics['bits_per_token']:.3f}"
          f" bits/token with tune ends ({n_notes:,} notes of {len(data.test)} tunes never "
          f"trained on); baselines per token: uniform {math.log2(len(model.vocab)):.3f}, "
          f"unigram (training histogram) {uni:.3f}")
    print(f"checkpoint, metrics.jsonl and sample_step*.mid/wav/png in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    model, ckpt = load_model(cls, args)
    data = melodies(model.config)
    if [tuple(r) for r in data.vocab.to_list()] != list(model.config.vocab):
        raise SystemExit(f"genfast: the installed {model.config.corpus!r} corpus gives another "
                         "note vocabulary than the checkpoint's")
    index = getattr(args, "tune", None) or 0
    if not 0 <= index < len(data.test):
        raise SystemExit(f"genfast: --tune must be in [0, {len(data.test)}), got {index}")
    prime_arg = getattr(args, "prime", None)
    try:
        k = 8 if prime_arg is None else int(prime_arg)
    except ValueError:
        raise SystemExit(f"genfast: --prime for music-lstm is a number of notes, got "
                         f"{prime_arg!r}") from None
    n = getattr(args, "length", None) or args.n or 64
    tune = data.test[index]
    n_body = len(tune) - 2
    if not 0 <= k <= n_body or n < 1:
        raise SystemExit(f"genfast: --prime must be in [0, {n_body}] (the tune's notes) and "
                         f"--length >= 1, got {k} and {n}")
    knobs = sampling_knobs(args, 1.0)
    prime = tune[:k + 1][None]
    tokens, dt = timed_generate(model, prime, n, knobs)  # the speed of n draws
    tokens, ended = model.continue_tune(tune, k, n, **knobs)  # the same draws, cut at the end
    notes = model.vocab.decode(tokens)
    stem = os.path.splitext(args.out)[0] if args.out else f"{args.model}_sample"
    title = (f"{args.model} step {ckpt['step']}: {data.titles_test[index]!r} from {k} notes "
             f"(grey), temperature {knobs['temperature']:g}, seed {knobs['seed']}")
    mid, wav, png = write_melody(stem, notes, title, k, model.config.tempo)
    seconds = float(sum(d for _, d in notes)) * 60 / model.config.tempo
    print(f"held-out tune {index} {data.titles_test[index]!r}, first {k} notes: "
          f"{_names(model.vocab, tokens[1:k + 1])}")
    how = "ended by the model" if ended else f"cut at --length {n}"
    print(f"continuation ({len(notes) - k} notes, {how}): {_names(model.vocab, tokens[k + 1:])}")
    print(f"wrote {mid}, {wav} ({seconds:.1f} s at 16 kHz) and {png}")
    print(f"generation: {n} notes in {dt:.3f} s = {n / dt:,.0f} notes/s (batch 1)")
    return 0

"""Offline monophonic melodies: the ABC folk tunes that ship in music21's wheel, as note tokens.

Corpora (read as files under ``music21/corpus/``, located with importlib.util.find_spec: music21
is never imported, its import takes seconds): ``essen`` (essenFolksong/*.abc, 8,514 European and
Chinese folk songs from the Essen Associative Code collection, ABC by Seymour Shlien; permission
for non-commercial use and distribution, essenFolksong/license.txt) and ``oneills``
(oneills1850/*.abc, about 2,000 Irish fiddle tunes from O'Neill's 1850, transcribed by Norbert
Paap). genfast does not redistribute them: it reads the user's installed copy.

A tune becomes a list of notes ``(pitch, duration)``: pitch a MIDI number (middle C = ABC ``C``
= 60) or None for a rest, duration in quarter notes (a Fraction). genfast's own small ABC parser
(genfast/data/_music_abc.py) reads the header (K: key signature and mode, L: unit length, M: meter)
and the body: accidentals (which last to the bar line), octave marks, lengths (2, /2, 3/2, //),
broken rhythm (> < >>), tuplets, rests, ties (a tied note of the same pitch lengthens the
previous note; a "tie" between different pitches, as O'Neill's transcriptions use for slurs,
is ignored), chords (the top note is the melody). Bars and repeat marks are read as bar lines
only: repeats are not expanded, so a tune is its notated sequence. Decorations, grace notes,
chord symbols and annotations are skipped. Tunes the parser rejects are skipped and counted.

Every tune is transposed so its key signature has no sharps or flats (major keys to C, minor
to A minor, modes to their white-key form), by the shift in [-6, +5] semitones that makes the
relative major's tonic C. This is normalisation, not augmentation: it pools the statistics of
all keys into one and shrinks the vocabulary (``transpose=False`` keeps the written keys).

A token is one note: the pair (pitch or rest, duration). The vocabulary is the pairs seen at
least ``min_count`` times in the training tunes, plus token 0, the tune boundary (a tune is
``[0, notes..., 0]`` in the training stream); a tune with a rarer pair is left out of both
splits and counted.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from ._music_abc import AbcError, Note, Tune, parse_abc, parse_tune

__all__ = ["BOUNDARY", "CORPORA", "SPLIT_SEED", "AbcError", "Melodies", "Note", "NoteVocab", "Tune",
           "corpus_files", "load_melodies", "load_tunes", "parse_abc", "parse_tune",
           "transpose_to_c"]

CORPORA = {"essen": "essenFolksong", "oneills": "oneills1850"}
SPLIT_SEED = 20240617
BOUNDARY = 0


def corpus_files(name: str = "essen") -> list[str]:
    """The .abc files of an installed music21 corpus (sorted), or of a user's file / folder."""
    if not isinstance(name, str):
        raise TypeError(f"corpus name must be a str, got {type(name).__name__}")
    if name in CORPORA:
        spec = importlib.util.find_spec("music21")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the folk-tune corpus ships inside music21's wheel: pip install "
                              "music21 (genfast reads its ABC files; nothing is downloaded)")
        folder = os.path.join(list(spec.submodule_search_locations)[0], "corpus", CORPORA[name])
        files = sorted(glob.glob(os.path.join(folder, "*.abc")))
        if not files:
            raise FileNotFoundError(f"no .abc files in {folder} (the installed music21 lacks "
                                    "its corpus)")
        return files
    if os.path.isdir(name):
        files = sorted(glob.glob(os.path.join(name, "*.abc")))
        if not files:
            raise FileNotFoundError(f"no .abc files in {name}")
        return files
    if os.path.isfile(name):
        return [name]
    raise ValueError(f"corpus must be one of {sorted(CORPORA)}, an .abc file or a folder of them,"
                     f" got {name!r}")


def load_tunes(name: str = "essen") -> tuple[list[Tune], int]:
    """(parsed tunes, number of tunes skipped because the parser rejected them or they hold no
    note) of every file of corpus `name`."""
    tunes: list[Tune] = []
    skipped = 0
    for path in corpus_files(name):
        with open(path, encoding="latin-1") as f:  # the corpora hold Latin-1 titles
            got, bad = parse_abc(f.read())
        tunes += got
        skipped += bad
    return tunes, skipped


def transpose_to_c(tune: Tune) -> list[Note]:
    """The notes of `tune` shifted so its key signature becomes C major / A minor."""
    pc = (7 * tune.fifths) % 12  # the relative major's tonic pitch class
    shift = -pc if pc <= 6 else 12 - pc  # in [-6, +5]
    return [(None if p is None else p + shift, d) for p, d in tune.notes]


class NoteVocab:
    """Note tokens <-> ids. Id 0 is the tune boundary; ids >= 1 are (pitch | None, duration)."""

    def __init__(self, notes: Sequence[Note]) -> None:
        notes = [(None if p is None else int(p), Fraction(d)) for p, d in notes]
        if len(set(notes)) != len(notes):
            raise ValueError("NoteVocab: notes holds duplicates")
        if any(d <= 0 for _, d in notes):
            raise ValueError("NoteVocab: durations must be > 0")
        self.notes: list[Note | None] = [None, *notes]
        self.index = {n: i + 1 for i, n in enumerate(notes)}

    @classmethod
    def from_tunes(cls, tunes: Sequence[Sequence[Note]], min_count: int = 1) -> NoteVocab:
        """The notes occurring >= min_count times, by pitch (rests first) then duration."""
        counts = Counter(n for t in tunes for n in t)
        kept = [n for n, c in counts.items() if c >= min_count]
        if not kept:
            raise ValueError(f"NoteVocab.from_tunes: no note occurs {min_count} times")
        return cls(sorted(kept, key=lambda n: (-1 if n[0] is None else n[0], n[1])))

    def __len__(self) -> int:
        return len(self.notes)

    def covers(self, notes: Sequence[Note]) -> bool:
        return all(n in self.index for n in notes)

    def encode(self, notes: Sequence[Note], boundaries: bool = True) -> torch.Tensor:
        """int64 ids of a tune, framed by the boundary token unless boundaries=False."""
        missing = [n for n in notes if n not in self.index]
        if missing:
            raise ValueError(f"encode: notes not in the vocabulary: {missing[:5]}")
        ids = [self.index[n] for n in notes]
        return torch.tensor([BOUNDARY, *ids, BOUNDARY] if boundaries else ids,
                            dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> list[Note]:
        """The notes of a sequence of ids; boundary tokens are dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < len(self.notes)]
        if bad:
            raise ValueError(f"decode: ids outside [0, {len(self.notes)}): {bad[:5]}")
        return [self.notes[int(i)] for i in ids if int(i) != BOUNDARY]  # type: ignore[misc]

    def to_list(self) -> list[tuple[int, int, int]]:
        """(pitch or -1, numerator, denominator) per note id >= 1: what a checkpoint stores."""
        return [(-1 if p is None else p, d.numerator, d.denominator)
                for p, d in self.notes[1:]]  # type: ignore[misc]

    @classmethod
    def from_list(cls, rows: Sequence[Sequence[int]]) -> NoteVocab:
        return cls([(None if p < 0 else p, Fraction(num, den)) for p, num, den in rows])

    @staticmethod
    def name(note: Note | None) -> str:
        """'C5 1/2', 'rest 1', or '|' for the boundary (scientific pitch names)."""
        if note is None:
            return "|"
        p, d = note
        names = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
        return f"{'rest' if p is None else f'{names[p % 12]}{p // 12 - 1}'} {d}"


@dataclass
class Melodies:
    """A corpus split into token streams. ``train`` / ``test``: lists of int64 tunes, each
    framed by boundary tokens; ``titles_test`` the held-out tunes' titles."""

    vocab: NoteVocab
    train: list[torch.Tensor]
    test: list[torch.Tensor]
    titles_test: list[str]
    parsed: int  # tunes parsed
    skipped_parse: int  # tunes the parser rejected (or empty ones)
    skipped_vocab: int  # tunes with a note rarer than min_count in the training tunes

    def stream(self, split: str = "train") -> torch.Tensor:
        """All tunes of a split in one stream (adjacent boundaries merged into one)."""
        tunes = {"train": self.train, "test": self.test}[split]
        return torch.cat([tunes[0]] + [t[1:] for t in tunes[1:]])


def load_melodies(name: str = "essen", *, transpose: bool = True, held_out: float = 0.05,
                  min_count: int = 3, max_notes: int | None = None,
                  seed: int = SPLIT_SEED) -> Melodies:
    """Corpus `name` parsed, transposed (optional), split by tune (a fixed permutation holds
    out `held_out` of them) and tokenised with a vocabulary of the training tunes' notes.
    ``max_notes`` keeps only tunes of at most that many notes (None: all)."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"load_melodies: held_out must be in (0, 1), got {held_out}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"load_melodies: min_count must be an int >= 1, got {min_count!r}")
    tunes, skipped = load_tunes(name)
    notes = [transpose_to_c(t) if transpose else list(t.notes) for t in tunes]
    keep = [i for i, n in enumerate(notes) if max_notes is None or len(n) <= max_notes]
    if len(keep) < 2:
        raise ValueError(f"load_melodies: {name!r} has {len(keep)} usable tunes; need >= 2")
    order = keep[:]
    random.Random(seed).shuffle(order)
    n_test = min(len(order) - 1, max(1, round(len(order) * held_out)))
    test_idx, train_idx = sorted(order[:n_test]), sorted(order[n_test:])
    vocab = NoteVocab.from_tunes([notes[i] for i in train_idx], min_count)
    train = [vocab.encode(notes[i]) for i in train_idx if vocab.covers(notes[i])]
    test_ok = [i for i in test_idx if vocab.covers(notes[i])]
    dropped = len(train_idx) + len(test_idx) - len(train) - len(test_ok)
    if not train or not test_ok:
        raise ValueError(f"load_melodies: no tune left in a split after min_count={min_count}")
    return Melodies(vocab, train, [vocab.encode(notes[i]) for i in test_ok],
                    [tunes[i].title for i in test_ok], len(tunes), skipped, dropped)

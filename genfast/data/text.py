"""Offline English text for character-level language models, and a character vocabulary.

The corpus is the Lee background corpus that ships in gensim's wheel as
``gensim/test/test_data/lee_background.cor`` (installed with gensim: include_package_data):
299 ABC-news documents, one per line, 360,082 characters of plain English in 80 distinct
characters (letters, digits, punctuation, space, newline). It is read as a file: gensim is never
imported (its import pulls scipy and smart_open and takes seconds). Licences: gensim LGPL-2.1;
the corpus was supplied by M. D. Lee for research (cite Lee, Pincombe & Welsh 2005). genfast does
not redistribute it: it reads the user's installed copy.

The held-out split is by document (a fixed permutation), so held-out bits per character measure
text the model never saw, not the tail of a document it trained on.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterable, Sequence

import torch

# The split is fixed by this seed so that held-out bits per character from different runs,
# machines and --seed values are measured on the same documents.
SPLIT_SEED = 20240617
CORPORA = {"lee": "lee_background.cor", "lee-test": "lee.cor"}
UNK = "\ufffd"  # the Unicode replacement character stands for any character outside the vocab


def _gensim_test_data() -> str:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the text corpus ships inside gensim's wheel: pip install gensim "
                          "(genfast reads its test_data files; nothing is downloaded)")
    return os.path.join(list(spec.submodule_search_locations)[0], "test", "test_data")


def load_text(name: str = "lee") -> str:
    """The whole corpus `name` as one string, documents separated by newlines.

    ``"lee"``: gensim's lee_background.cor (299 documents, 360 KB); ``"lee-test"``: lee.cor
    (50 short documents of the same source, 24 KB). A path to an existing UTF-8 text file is
    read as well, so the models train on a user's own text.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_text: name must be a str, got {type(name).__name__}")
    if name in CORPORA:
        path = os.path.join(_gensim_test_data(), CORPORA[name])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the installed gensim")
    elif os.path.isfile(name):
        path = name
    else:
        raise ValueError(f"load_text: name must be one of {sorted(CORPORA)} or a path to a text "
                         f"file, got {name!r}")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"load_text: {path} holds no text")
    return text


def split_text(text: str, held_out: float = 0.05, seed: int = SPLIT_SEED) -> tuple[str, str]:
    """(train, held-out): whole lines (documents) drawn by a fixed permutation, each part joined
    by newlines. A text of a single line is split at a character boundary instead (the last
    `held_out` fraction is held out), as Karpathy's char-rnn splits its one file."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"split_text: held_out must be in (0, 1), got {held_out}")
    docs = [d for d in text.split("\n") if d]
    if len(docs) < 2:
        cut = len(text) - max(1, round(len(text) * held_out))
        if cut < 1:
            raise ValueError(f"split_text: a text of {len(text)} characters cannot be split")
        return text[:cut], text[cut:]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = min(len(docs) - 1, max(1, round(len(docs) * held_out)))
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return "\n".join(docs[i] for i in train) + "\n", "\n".join(docs[i] for i in held) + "\n"


class CharVocab:
    """Characters <-> int64 ids. Id 0 is `unk` (when given): characters outside the vocabulary
    encode to it; with ``unk=None`` they are an error naming them."""

    def __init__(self, chars: Iterable[str], unk: str | None = UNK) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharVocab: chars must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("CharVocab: chars holds duplicates")
        if unk is not None:
            if not isinstance(unk, str) or len(unk) != 1:
                raise ValueError(f"CharVocab: unk must be one character or None, got {unk!r}")
            chars = [unk] + [c for c in chars if c != unk]
        if not chars:
            raise ValueError("CharVocab: the vocabulary is empty")
        self.chars = chars
        self.unk = unk
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, unk: str | None = UNK) -> CharVocab:
        """The sorted distinct characters of `text` (plus `unk` as id 0)."""
        if not text:
            raise ValueError("CharVocab.from_text: text is empty")
        return cls(sorted(set(text)), unk=unk)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: object) -> bool:
        return ch in self.index

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        if self.unk is None:
            missing = sorted(set(text) - self.index.keys())
            if missing:
                raise ValueError(f"encode: characters not in the vocabulary: {missing!r}")
            ids = [self.index[c] for c in text]
        else:
            ids = [self.index.get(c, 0) for c in text]
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The characters of a 1-D sequence of ids."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode: ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        n = len(self.chars)
        bad = [i for i in ids if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"decode: ids outside [0, {n}): {bad[:5]}")
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        """A plain dict a checkpoint stores (see from_dict)."""
        return {"chars": "".join(self.chars), "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict) -> CharVocab:
        """The vocabulary of to_dict (``chars`` may also omit unk: it becomes id 0)."""
        chars = list(d["chars"])
        unk = d.get("unk")
        if unk is not None and chars[:1] == [unk]:
            chars = chars[1:]  # the constructor puts it back as id 0
        return cls(chars, unk=unk)

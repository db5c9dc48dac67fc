"""Embedded, offline datasets and loaders for a user's own files (DESIGN.md section 7)."""

from genfast.data.digits import (
    SPLIT_SEED,
    digits_split,
    load_digits,
    load_images,
    resize,
    split,
)
from genfast.data.music import NoteVocab, load_melodies, load_tunes, parse_abc
from genfast.data.text import CharVocab, load_text, split_text

__all__ = ["SPLIT_SEED", "digits_split", "load_digits", "load_images", "resize", "split",
           "CharVocab", "load_text", "split_text",
           "NoteVocab", "load_melodies", "load_tunes", "parse_abc"]

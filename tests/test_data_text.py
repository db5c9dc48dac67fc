"""genfast.data.text: the offline Lee corpus, its document split and the character vocabulary."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from genfast.data import text as text_mod
from genfast.data.text import UNK, CharVocab, load_text, split_text

HAVE_GENSIM = importlib.util.find_spec("gensim") is not None


@pytest.mark.skipif(not HAVE_GENSIM, reason="gensim (the corpus's wheel) is not installed")
def test_load_lee_corpus():
    text = load_text()
    assert len(text) == 360_082 and text.count("\n") == 299
    assert text.startswith("Hundreds of people have been forced to vacate their homes")
    small = load_text("lee-test")
    assert 0 < len(small) < len(text)


@pytest.mark.skipif(not HAVE_GENSIM, reason="gensim (the corpus's wheel) is not installed")
def test_split_is_fixed_and_disjoint():
    text = load_text()
    train, held = split_text(text)
    assert (train, held) == split_text(text)
    docs_train, docs_held = set(train.split("\n")) - {""}, set(held.split("\n")) - {""}
    assert len(docs_held) == 15 and not docs_train & docs_held
    assert docs_train | docs_held == set(text.split("\n")) - {""}
    assert split_text(text, seed=1) != (train, held)


def test_split_single_line_by_characters():
    train, held = split_text("abcdefghijklmnopqrst", held_out=0.25)
    assert (train, held) == ("abcdefghijklmno", "pqrst")


def test_load_text_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="name must be one of"):
        load_text("shakespeare")
    with pytest.raises(TypeError, match="name must be a str"):
        load_text(3)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="holds no text"):
        load_text(str(empty))
    own = tmp_path / "own.txt"
    own.write_text("my own text\n")
    assert load_text(str(own)) == "my own text\n"
    monkeypatch.setattr(text_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gensim"):
        load_text("lee")
    monkeypatch.setattr(text_mod, "_gensim_test_data", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lee_background.cor"):
        load_text("lee")
    with pytest.raises(ValueError, match="held_out"):
        split_text("abc\ndef\n", held_out=1.0)


def test_char_vocab_round_trip_and_unknowns():
    v = CharVocab.from_text("hello world")
    assert v.chars == [UNK, " ", "d", "e", "h", "l", "o", "r", "w"] and len(v) == 9
    ids = v.encode("hello")
    assert ids.dtype == torch.int64 and ids.tolist() == [4, 3, 5, 5, 6]
    assert v.decode(ids) == "hello"
    assert v.encode("hex").tolist() == [4, 3, 0]
    assert v.decode(v.encode("hex")) == "he" + UNK
    again = CharVocab.from_dict(v.to_dict())
    assert again.chars == v.chars and again.unk == v.unk
    strict = CharVocab.from_text("abc", unk=None)
    assert strict.chars == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['x', 'z'\]"):
        strict.encode("axz")
    assert CharVocab.from_dict(strict.to_dict()).chars == ["a", "b", "c"]


def test_char_vocab_errors():
    v = CharVocab.from_text("ab")
    with pytest.raises(ValueError, match=r"ids outside \[0, 3\)"):
        v.decode([0, 3])
    with pytest.raises(ValueError, match="1-D"):
        v.decode(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="text must be a str"):
        v.encode(["a"])
    with pytest.raises(ValueError, match="text is empty"):
        CharVocab.from_text("")
    with pytest.raises(ValueError, match="duplicates"):
        CharVocab(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(["ab"])
    with pytest.raises(ValueError, match="unk must be one character"):
        CharVocab(["a"], unk="??")

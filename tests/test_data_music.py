"""genfast.data.music: the ABC reader on hand-written tunes (exact tokens), keys, transposition,
the note vocabulary, the split, and the music21 corpus files when installed."""

from __future__ import annotations

import importlib.util
from fractions import Fraction as Fr

import pytest
import torch

from genfast.data import music
from genfast.data._music_abc import AbcError, parse_key
from genfast.data.music import NoteVocab, load_melodies, parse_abc, parse_tune, transpose_to_c

HAVE_MUSIC21 = importlib.util.find_spec("music21") is not None

TUNE1 = """X:1
T:Lengths and accidentals
M:4/4
L:1/8
K:G
G2 A/B/ c>d e<f | ^f f =F F | z2 c' C, | (3ABc d3/2 e// |]
"""

TUNE2 = """X:2
T:Ties, chords, decorations
M:6/8
L:1/8
K:Ador
|:"Am"A2-A B{c}AG|~c3 [ce]2 !trill!d|1 e>>f g:|2 [K:D] f3 z3|]
"""


def test_lengths_accidentals_octaves_rests_tuplets():
    t = parse_tune(TUNE1)
    assert (t.title, t.key, t.meter, t.fifths) == ("Lengths and accidentals", "G", "4/4", 1)
    q = Fr(1, 2)  # L:1/8 is half a quarter note
    assert t.notes == [
        (67, 2 * q), (69, q / 2), (71, q / 2),  # G2 A/ B/
        (72, q * Fr(3, 2)), (74, q / 2),  # c>d
        (76, q / 2), (78, q * Fr(3, 2)),  # e<f, f sharp from the key
        (78, q), (78, q),  # ^f f: the accidental lasts to the bar line
        (65, q), (65, q),  # =F F: a natural in another octave, also lasting
        (None, 2 * q), (84, q), (48, q),  # z2 c' C,
        (69, q * Fr(2, 3)), (71, q * Fr(2, 3)), (72, q * Fr(2, 3)),  # (3ABc
        (74, q * Fr(3, 2)), (76, q / 4),  # d3/2 e//
    ]


def test_ties_chords_decorations_endings_and_inline_keys():
    t = parse_tune(TUNE2)
    assert t.fifths == 1  # A dorian: one sharp; the inline [K:D] changes only the signature
    q = Fr(1, 2)
    assert t.notes == [
        (69, 3 * q),  # A2-A tied into one note
        (71, q), (69, q), (67, q),  # B {c} A G: the grace note is skipped
        (72, 3 * q), (76, 2 * q), (74, q),  # ~c3 [ce]2 (the top note) !trill!d
        (76, q * Fr(7, 4)), (78, q / 4), (79, q),  # |1 e>>f g (F sharp in A dorian)
        (78, 3 * q), (None, 3 * q),  # :|2 [K:D] f3 z3
    ]


def test_tie_between_different_pitches_and_default_unit():
    # O'Neill's transcriptions put '-' between different pitches (slurs): two notes. Without
    # L:, a meter below 3/4 means sixteenths.
    t = parse_tune("X:3\nM:2/4\nK:C\nG-A B2 | C4 z|\n")
    assert t.notes == [(67, Fr(1, 4)), (69, Fr(1, 4)), (71, Fr(1, 2)), (60, Fr(1)),
                       (None, Fr(1, 4))]


@pytest.mark.parametrize("value, fifths", [("C", 0), ("G", 1), ("F#", 6), ("Bb", -2),
                                           ("Gm", -2), ("Dmix", 1), ("C lydian", 1),
                                           ("Eb", -3), ("Ador", 1), ("none", 0), ("", 0),
                                           ("H", 5), ("Es", -3), ("E phr", 0)])
def test_key_signatures(value, fifths):
    assert parse_key(value)[0] == fifths


def test_key_explicit_accidentals_and_errors():
    _, sig = parse_key("D =c")
    assert sig == {"F": 1, "C": 0}
    for bad in ("Q", "Gxyz", "Cb loc"):
        with pytest.raises(AbcError):
            parse_key(bad)


def test_rejected_and_empty_tunes_are_counted():
    text = "\n".join([
        "% a file header is ignored", "",
        TUNE1,
        "X:4\nT:two voices\nK:C\nV:1\nCDE|\n",  # a second voice: not one melody
        "X:5\nT:overlay\nK:C\nCD & EF|\n",
        "X:6\nT:only rests\nK:C\nz4|\n",
        "X:7\nT:no key\nCDE|\n",
        "X:8\nT:garbage\nK:C\nC D ? E|\n",
        TUNE2,
    ])
    tunes, skipped = parse_abc(text)
    assert [t.title for t in tunes] == ["Lengths and accidentals", "Ties, chords, decorations"]
    assert skipped == 5
    with pytest.raises(AbcError, match="unexpected '\\?'"):
        parse_tune("X:8\nK:C\nC D ? E|\n")


def test_transpose_to_c():
    g = parse_tune("X:1\nL:1/4\nK:G\nGB|\n")
    f = parse_tune("X:1\nL:1/4\nK:F\nFA|\n")
    bb = parse_tune("X:1\nL:1/4\nK:Bb\nBd|\n")
    em = parse_tune("X:1\nL:1/4\nK:Em\nEz|\n")  # E minor has G's signature: to A minor
    assert transpose_to_c(g) == [(72, 1), (76, 1)]
    assert transpose_to_c(f) == [(60, 1), (64, 1)]
    assert transpose_to_c(bb) == [(72, 1), (76, 1)]
    assert transpose_to_c(em) == [(69, 1), (None, 1)]


def test_note_vocab():
    a = [(60, Fr(1)), (62, Fr(1, 2)), (None, Fr(1)), (60, Fr(1))]
    b = [(60, Fr(1)), (64, Fr(2))]
    v = NoteVocab.from_tunes([a, b])
    assert v.notes == [None, (None, 1), (60, 1), (62, Fr(1, 2)), (64, 2)] and len(v) == 5
    assert v.encode(a).tolist() == [0, 2, 3, 1, 2, 0]
    assert v.encode(b, boundaries=False).tolist() == [2, 4]
    assert v.decode(v.encode(a)) == a
    again = NoteVocab.from_list(v.to_list())
    assert again.notes == v.notes
    assert [NoteVocab.name(n) for n in v.notes] == ["|", "rest 1", "C4 1", "D4 1/2", "E4 2"]
    common = NoteVocab.from_tunes([a, b], min_count=2)
    assert common.notes == [None, (60, 1)] and not common.covers(a)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        common.encode(a)
    with pytest.raises(ValueError, match="outside"):
        v.decode([5])
    with pytest.raises(ValueError, match="no note occurs 9"):
        NoteVocab.from_tunes([a], min_count=9)


def _folder(tmp_path, n=20):
    tunes = []
    for i in range(n):
        notes = " ".join("CDEFGAB"[(i + j) % 7] + ("2" if j % 3 else "") for j in range(8))
        tunes.append(f"X:{i + 1}\nT:tune {i}\nM:4/4\nL:1/8\nK:{'GD'[i % 2]}\n{notes} |\n")
    tunes.append("X:99\nT:bad\nK:C\nC ? D|\n")
    (tmp_path / "a.abc").write_text("\n".join(tunes[:10]))
    (tmp_path / "b.abc").write_text("\n".join(tunes[10:]))
    return tmp_path


def test_load_melodies_split_and_streams(tmp_path):
    folder = str(_folder(tmp_path))
    m = load_melodies(folder, held_out=0.2, min_count=1)
    assert (m.parsed, m.skipped_parse, m.skipped_vocab) == (20, 1, 0)
    assert len(m.test) == 4 and len(m.train) == 16
    again = load_melodies(folder, held_out=0.2, min_count=1)
    assert m.titles_test == again.titles_test
    assert all(torch.equal(x, y) for x, y in zip(m.train, again.train, strict=True))
    s = m.stream()
    assert s[0] == 0 and s[-1] == 0 and len(s) == sum(len(t) - 1 for t in m.train) + 1
    # Tunes in D (2 sharps) and G (1 sharp) both land on white keys.
    assert {p % 12 for p, _ in m.vocab.notes[1:]} <= {0, 2, 4, 5, 7, 9, 11}
    kept = load_melodies(folder, held_out=0.2, min_count=1, transpose=False)
    assert {p for p, _ in kept.vocab.notes[1:]} >= {66, 61}  # F# and C# stay as written


def test_loader_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="corpus must be one of"):
        music.corpus_files("bach")
    with pytest.raises(FileNotFoundError, match="no .abc files"):
        music.corpus_files(str(tmp_path))
    folder = str(_folder(tmp_path))
    with pytest.raises(ValueError, match="usable tunes"):
        load_melodies(folder, max_notes=3)
    with pytest.raises(ValueError, match="held_out"):
        load_melodies(folder, held_out=0.0)
    with pytest.raises(ValueError, match="min_count"):
        load_melodies(folder, min_count=0)
    monkeypatch.setattr(music.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install music21"):
        music.corpus_files("essen")


@pytest.mark.skipif(not HAVE_MUSIC21, reason="the folk tunes ship in music21's wheel")
def test_the_essen_corpus_files():
    files = music.corpus_files("essen")
    assert len(files) == 31 and all(f.endswith(".abc") for f in files)
    han1 = next(f for f in files if f.endswith("han1.abc"))
    with open(han1, encoding="latin-1") as f:
        tunes, skipped = parse_abc(f.read())
    assert (len(tunes), skipped) == (554, 0)
    first = tunes[0]  # "Renmin gongshe shizai hao", L:1/16, K:C: d4A2c2 | ...
    assert first.title == "Renmin gongshe shizai hao"
    assert first.notes[:4] == [(74, 1), (69, Fr(1, 2)), (72, Fr(1, 2)), (74, 1)]

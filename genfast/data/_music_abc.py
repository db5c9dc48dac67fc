"""A small ABC-notation reader for monophonic tunes: header fields and the note line grammar.

Covers what the Essen and O'Neill corpora use (ABC 2.1): X:/T:/M:/L:/K: fields (also inline
[K:...] and field lines inside the body), key signatures with modes and explicit accidentals,
accidentals lasting to the bar line, octave marks, note lengths, broken rhythm, tuplets, ties,
chords (their top note), rests (z, x, and Z multi-measure rests). Decorations, slurs, grace
notes, chord symbols, annotations and line continuations are skipped. A second voice (V: in the
body, or &) is rejected: the reader is for single melodies.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction

Note = tuple[int | None, Fraction]  # (MIDI pitch or None for a rest, length in quarter notes)

_FIELD = re.compile(r"^([A-Za-z]):\s*(.*?)\s*$")
_LENGTH = re.compile(r"(\d*)(/*)(\d*)")
_INLINE = re.compile(r"\[([A-Za-z]):([^\]]*)\]")
_BAR = re.compile(r"(?:\[\||\|\]|[|:])+(?:\[?\d+(?:[,\-]\d+)*)?|\[\d+(?:[,\-]\d+)*")
_TUPLET = re.compile(r"\((\d+)(?::(\d*))?(?::(\d*))?")
_NOTE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([',]*)")
_SKIP_SPANS = {'"': '"', "!": "!", "+": "+", "{": "}"}
_SKIP_CHARS = set(" \t.~HLMOPSTuvy()\\`$*#")  # decorations, slurs, spacers, layout

_NATURAL = {"C": 60, "D": 62, "E": 64, "F": 65, "G": 67, "A": 69, "B": 71}
_TONIC_FIFTHS = {"C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5, "F": -1}
_MODE_FIFTHS = {"maj": 0, "ion": 0, "mix": -1, "dor": -2, "min": -3, "aeo": -3, "phr": -4,
                "loc": -5, "lyd": 1}
# Lengths are counted in integer ticks while parsing (Fraction arithmetic per note made parsing
# the 2.6 MB Essen corpus take 10 s): 2**10 * 3**2 * 5 * 7 per whole note divides every unit
# length down to 1/1024 and every tuplet up to 9.
TICKS_PER_WHOLE = 2**10 * 3**2 * 5 * 7
_ACCIDENTAL = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}


class AbcError(ValueError):
    """A tune the reader does not accept (the message says where)."""


@dataclass
class Tune:
    title: str
    key: str
    meter: str
    fifths: int  # the key signature: sharps > 0, flats < 0
    notes: list[Note] = field(default_factory=list)


def parse_key(value: str) -> tuple[int, dict[str, int]]:
    """K: field -> (fifths of the signature, alteration per letter). Modes: maj/ion, m/min/aeo,
    mix, dor, phr, lyd, loc (any case, 3 letters are enough); explicit accidentals (``K:D =c``)
    override the signature; ``none`` (or an empty field) is no signature."""
    words = value.split()
    if words and words[0][:1] == "H":  # Essen's few German key names: H = B, Es = Eb
        words[0] = "B" + words[0][1:]
    elif words and words[0][:2] in ("Es", "As"):
        words[0] = words[0][0] + "b" + words[0][2:]
    sig: dict[str, int] = {}
    if not words or words[0].lower() in ("none", "hp"):
        fifths, rest = 0, words[1:]
    else:
        m = re.fullmatch(r"([A-G])([#b]?)([A-Za-z]*)", words[0])
        if m is None:
            raise AbcError(f"K:{value}: unknown key")
        mode_word, rest = m.group(3).lower(), words[1:]
        if not mode_word and rest and re.fullmatch(r"[A-Za-z]+", rest[0]) \
                and rest[0][:3].lower() in _MODE_FIFTHS | {"m": 0}:
            mode_word, rest = rest[0].lower(), rest[1:]
        mode = "min" if mode_word == "m" else (mode_word[:3] or "maj")
        if mode not in _MODE_FIFTHS:
            raise AbcError(f"K:{value}: unknown mode {mode_word!r}")
        fifths = (_TONIC_FIFTHS[m.group(1)] + {"": 0, "#": 7, "b": -7}[m.group(2)]
                  + _MODE_FIFTHS[mode])
        if abs(fifths) > 7:
            raise AbcError(f"K:{value}: a signature of {abs(fifths)} accidentals")
    for letter in "FCGDAEB"[:max(fifths, 0)]:
        sig[letter] = 1
    for letter in "BEADGCF"[:max(-fifths, 0)]:
        sig[letter] = -1
    for w in rest:  # explicit accidentals; clef=, transpose= and the like are ignored
        m = re.fullmatch(r"(\^\^|\^|__|_|=)([A-Ga-g])", w)
        if m:
            sig[m.group(2).upper()] = _ACCIDENTAL[m.group(1)]
    return fifths, sig


def _meter(value: str) -> Fraction | None:
    """M: field -> the bar length as a fraction of a whole note (None for M:none)."""
    v = value.strip()
    if v in ("C", "c"):
        return Fraction(1)
    if v in ("C|", "c|"):
        return Fraction(1)
    # Essen writes free meter as "FREI4/4"; a stray "]" or text around the fraction is ignored.
    m = re.search(r"\(?([\d+]+)\)?\s*/\s*(\d+)", v)
    if m and int(m.group(2)) > 0:
        return Fraction(sum(int(x) for x in m.group(1).split("+") if x), int(m.group(2)))
    if v.lower() in ("none", ""):
        return None
    raise AbcError(f"M:{value}: unknown meter")


def _unit(value: str) -> Fraction:
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", value.strip())
    if m is None or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise AbcError(f"L:{value}: unknown unit length")
    return Fraction(int(m.group(1)), int(m.group(2)))


def _length(text: str, i: int) -> tuple[tuple[int, int], int]:
    """The length multiplier (num, den) written at text[i:] ('', 2, /2, 3/2, //, /) and the
    next index."""
    m = _LENGTH.match(text, i)
    return _multiplier(m.group(0)), m.end()


@functools.lru_cache(maxsize=1024)
def _multiplier(written: str) -> tuple[int, int]:
    m = _LENGTH.fullmatch(written)
    num_s, slashes, den_s = m.group(1), m.group(2), m.group(3)
    num = int(num_s) if num_s else 1
    den = int(den_s) if den_s else 2 ** len(slashes)
    if num == 0 or den == 0:
        raise AbcError(f"zero length {written!r}")
    return num, den


@functools.lru_cache(maxsize=4096)
def _quarters(ticks: int) -> Fraction:
    return Fraction(4 * ticks, TICKS_PER_WHOLE)


def _ticks(length: Fraction, what: str) -> int:
    t = length * TICKS_PER_WHOLE
    if t.denominator != 1 or t <= 0:
        raise AbcError(f"{what}: length {length} is not a positive multiple of "
                       f"1/{TICKS_PER_WHOLE}")
    return int(t)


class _Reader:
    """The body state: unit length, meter, signature, bar accidentals, rhythm modifiers."""

    def __init__(self, unit: Fraction | None, meter: Fraction | None, key: str) -> None:
        self.meter = meter
        # ABC's default unit: 1/16 for meters below 3/4, else 1/8.
        unit = unit or (Fraction(1, 16) if meter is not None and meter < Fraction(3, 4)
                        else Fraction(1, 8))
        self.unit = _ticks(unit, "L:")
        self.fifths, self.sig = parse_key(key)
        self.key_fifths = self.fifths  # the tune's key (a later K: changes only the signature)
        self.bar: dict[tuple[str, int], int] = {}
        self.notes: list[tuple[int | None, int]] = []  # (pitch, ticks)
        self.tie = False  # the last note ended with '-'
        self.next_factor: tuple[int, int] | None = None  # a broken rhythm's second half
        self.tuplet: tuple[int, int, int] | None = None  # (q, p, notes left): q/p each

    def field(self, letter: str, value: str) -> None:
        if letter == "K":
            self.fifths, self.sig = parse_key(value)
            self.bar = {}
        elif letter == "L":
            self.unit = _ticks(_unit(value), "L:")
        elif letter == "M":
            self.meter = _meter(value)
        elif letter == "V":
            raise AbcError("a second voice (V:): not a single melody")

    def pitch(self, acc: str | None, letter: str, marks: str) -> int:
        base = _NATURAL[letter.upper()] + (12 if letter.islower() else 0)
        base += 12 * marks.count("'") - 12 * marks.count(",")
        slot = (letter.upper(), base)
        if acc is not None:
            self.bar[slot] = _ACCIDENTAL[acc]
        alter = self.bar.get(slot, self.sig.get(letter.upper(), 0))
        return base + alter

    def add(self, pitch: int | None, mult: tuple[int, int]) -> None:
        num, den = mult
        num *= self.unit
        if self.next_factor is not None:
            num, den = num * self.next_factor[0], den * self.next_factor[1]
            self.next_factor = None
        if self.tuplet is not None:
            q, p, left = self.tuplet
            num, den = num * q, den * p
            self.tuplet = (q, p, left - 1) if left > 1 else None
        if num % den:
            raise AbcError(f"a length finer than 1/{TICKS_PER_WHOLE} of a whole note")
        dur = num // den
        if self.tie and self.notes and pitch is not None and self.notes[-1][0] == pitch:
            self.notes[-1] = (pitch, self.notes[-1][1] + dur)
        else:
            self.notes.append((pitch, dur))
        self.tie = False

    def broken(self, mark: str) -> None:
        if not self.notes:
            raise AbcError(f"broken rhythm {mark!r} before any note")
        k = 2 ** len(mark)  # > : 3/2 then 1/2; >> : 7/4 then 1/4; < the reverse
        first, second = ((2 * k - 1, k), (1, k)) if mark[0] == ">" else ((1, k), (2 * k - 1, k))
        p, d = self.notes[-1]
        if d * first[0] % first[1]:
            raise AbcError(f"broken rhythm {mark!r} on a length that does not divide")
        self.notes[-1] = (p, d * first[0] // first[1])
        self.next_factor = second

    def line(self, text: str) -> None:
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            m = _NOTE.match(text, i)
            if m:
                p = self.pitch(m.group(1), m.group(2), m.group(3))
                mult, i = _length(text, m.end())
                self.add(p, mult)
                continue
            if ch == "(" and i + 1 < n and text[i + 1].isdigit():
                m = _TUPLET.match(text, i)
                p = int(m.group(1))
                compound = self.meter is not None and self.meter.numerator in (6, 9, 12)
                q = int(m.group(2)) if m.group(2) else {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(
                    p, 3 if compound else 2)
                r = int(m.group(3)) if m.group(3) else p
                if p == 0 or q == 0 or r == 0:
                    raise AbcError(f"tuplet {m.group(0)!r}")
                self.tuplet = (q, p, r)
                i = m.end()
                continue
            if ch in _SKIP_CHARS or ch == "]":
                i += 1
                continue
            if ch in _SKIP_SPANS:
                end = text.find(_SKIP_SPANS[ch], i + 1)
                if end < 0:
                    raise AbcError(f"unclosed {ch!r} in {text[i:i + 20]!r}")
                i = end + 1
                continue
            if ch == "%":
                break
            m = _INLINE.match(text, i)
            if m:
                self.field(m.group(1), m.group(2))
                i = m.end()
                continue
            m = _BAR.match(text, i)
            if m:
                self.bar = {}
                i = m.end()
                continue
            if ch in "<>":
                j = i
                while j < n and text[j] == ch:
                    j += 1
                self.broken(text[i:j])
                i = j
                continue
            if ch == "-":
                self.tie = True
                i += 1
                continue
            if ch in "zx":
                mult, i = _length(text, i + 1)
                self.add(None, mult)
                continue
            if ch == "Z":
                (bars, den), i = _length(text, i + 1)
                if self.meter is None or den != 1:
                    raise AbcError("a multi-measure rest Z without a meter or with a fraction")
                self.add(None, (_ticks(bars * self.meter, "Z"), self.unit))
                continue
            if ch == "[":
                i = self.chord(text, i)
                continue
            if ch == "&":
                raise AbcError("a voice overlay (&): not a single melody")
            raise AbcError(f"unexpected {ch!r} in {text[max(0, i - 10):i + 10]!r}")

    def chord(self, text: str, i: int) -> int:
        """[notes]: the top note is the melody; its own length times the chord's."""
        end = text.find("]", i)
        if end < 0:
            raise AbcError(f"unclosed chord in {text[i:i + 20]!r}")
        pitches, first = [], None
        j = i + 1
        while j < end:
            m = _NOTE.match(text, j)
            if m is None:
                if text[j] in _SKIP_CHARS or text[j] == "-":
                    j += 1
                    continue
                raise AbcError(f"unexpected {text[j]!r} in chord {text[i:end + 1]!r}")
            pitches.append(self.pitch(m.group(1), m.group(2), m.group(3)))
            mult, j = _length(text, m.end())
            first = mult if first is None else first
        if not pitches:
            raise AbcError(f"empty chord {text[i:end + 1]!r}")
        outer, k = _length(text, end + 1)
        self.add(max(pitches), (first[0] * outer[0], first[1] * outer[1]))
        return k


def parse_tune(text: str) -> Tune:
    """One tune (from its X: line to before the next) -> Tune; AbcError if it is not a single
    melody this reader accepts."""
    header: dict[str, str] = {}
    reader: _Reader | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("%"):
            continue
        m = _FIELD.match(line)
        if reader is None:
            if m is None:  # free text in the header (Essen wraps long N: notes)
                continue
            letter, value = m.group(1), m.group(2)
            if letter == "K":
                unit = _unit(header["L"]) if "L" in header else None
                meter = _meter(header["M"]) if "M" in header else None
                reader = _Reader(unit, meter, value)
                header["K"] = value
            elif letter not in header:
                header[letter] = value
            continue
        if m is not None and not line.startswith("|"):
            reader.field(m.group(1), m.group(2))
            continue
        reader.line(line)
    if reader is None:
        raise AbcError("no K: field")
    return Tune(header.get("T", ""), header["K"], header.get("M", ""), reader.key_fifths,
                [(p, _quarters(t)) for p, t in reader.notes])


def parse_abc(text: str) -> tuple[list[Tune], int]:
    """Every tune of an ABC file -> (the tunes with at least one note, the number skipped: tunes
    the reader rejected and tunes without notes)."""
    tunes: list[Tune] = []
    skipped = 0
    chunks = re.split(r"(?m)^(?=X:)", text)
    for chunk in chunks:
        if not chunk.startswith("X:"):
            continue  # the file header before the first tune
        try:
            tune = parse_tune(chunk)
        except AbcError:
            skipped += 1
            continue
        if any(p is not None for p, _ in tune.notes):
            tunes.append(tune)
        else:
            skipped += 1
    return tunes, skipped

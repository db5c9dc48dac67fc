"""Melodies out: a Standard MIDI File writer and reader, a small additive synthesiser to WAV, and
a piano-roll PNG. Melodies are lists of (MIDI pitch or None for a rest, length in quarter
notes), as genfast.data.music produces them. Standard library + numpy (+ matplotlib for the
PNG): no MIDI or audio package is needed.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

from ..data.audio import write_wav

Melody = Sequence[tuple[int | None, Fraction | float]]
TICKS_PER_QUARTER = 480


def _varlen(n: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _check(melody: Melody, tempo: float) -> None:
    if not (isinstance(tempo, (int, float)) and math.isfinite(tempo) and tempo > 0):
        raise ValueError(f"tempo must be a positive number of beats per minute, got {tempo!r}")
    for p, d in melody:
        if p is not None and not 0 <= p <= 127:
            raise ValueError(f"MIDI pitches are in [0, 127], got {p}")
        if not d > 0:
            raise ValueError(f"note lengths must be > 0 quarter notes, got {d}")


def midi_bytes(melody: Melody, tempo: float = 120.0, program: int = 73,
               velocity: int = 90) -> bytes:
    """A format-0 Standard MIDI File of the melody on channel 0 (General MIDI `program`, 73 =
    flute), 480 ticks per quarter note, `tempo` quarter notes per minute."""
    _check(melody, tempo)
    if not 0 <= program <= 127 or not 1 <= velocity <= 127:
        raise ValueError(f"program must be in [0, 127] and velocity in [1, 127], got {program}, "
                         f"{velocity}")
    usec = round(60_000_000 / tempo)
    events = bytearray(b"\x00\xff\x51\x03" + usec.to_bytes(3, "big"))  # tempo
    events += bytes([0x00, 0xC0, program])  # program change
    # Ticks are rounded at note boundaries from the exact onset, so lengths never drift.
    time_q, last_tick, wait = Fraction(0), 0, 0
    for p, d in melody:
        start = round(time_q * TICKS_PER_QUARTER)
        time_q += Fraction(d)
        end = round(time_q * TICKS_PER_QUARTER)
        if p is None:
            continue
        events += _varlen(start - last_tick) + bytes([0x90, p, velocity])
        events += _varlen(end - start) + bytes([0x80, p, 0])
        last_tick = end
    wait = round(time_q * TICKS_PER_QUARTER) - last_tick  # trailing rests
    events += _varlen(wait) + b"\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


def write_midi(path: str | os.PathLike[str], melody: Melody, tempo: float = 120.0,
               program: int = 73) -> str:
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(midi_bytes(melody, tempo, program))
    os.replace(tmp, path)
    return path


def read_midi(data: bytes) -> tuple[int, float, list[tuple[int, int, int]]]:
    """A format-0/1 file's (ticks per quarter, tempo in bpm, notes (pitch, start tick, end
    tick)) from its first track with notes. Enough to check what midi_bytes writes, and to read
    simple melodies; running status and meta/sysex events are handled."""
    if data[:4] != b"MThd":
        raise ValueError("not a Standard MIDI File (no MThd header)")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if fmt not in (0, 1) or division & 0x8000:
        raise ValueError(f"MIDI format {fmt} / SMPTE time division is not supported")
    pos, tempo, notes = 8 + hlen, 120.0, []
    for _ in range(ntracks):
        if data[pos:pos + 4] != b"MTrk":
            raise ValueError(f"expected a track chunk at byte {pos}")
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        i, end, tick, status, on = pos + 8, pos + 8 + length, 0, 0, {}
        while i < end:
            delta = 0
            while True:
                b = data[i]
                i += 1
                delta = (delta << 7) | (b & 0x7F)
                if not b & 0x80:
                    break
            tick += delta
            if data[i] & 0x80:
                status = data[i]
                i += 1
            if status == 0xFF:  # meta: type, length, data
                kind, n = data[i], data[i + 1]
                if kind == 0x51:
                    tempo = 60_000_000 / int.from_bytes(data[i + 2:i + 5], "big")
                i += 2 + n
            elif status in (0xF0, 0xF7):
                n = data[i]
                i += 1 + n
            else:
                kind = status & 0xF0
                nbytes = 1 if kind in (0xC0, 0xD0) else 2
                args = data[i:i + nbytes]
                i += nbytes
                if kind == 0x90 and args[1] > 0:
                    on[args[0]] = tick
                elif kind in (0x80, 0x90) and args[0] in on:
                    notes.append((args[0], on.pop(args[0]), tick))
        pos = end
        if notes:
            break
    return division, tempo, sorted(notes, key=lambda n: n[1])


def synthesize(melody: Melody, tempo: float = 120.0, sample_rate: int = 16000) -> torch.Tensor:
    """The melody as a float32 waveform in [-1, 1]: each note three harmonics (1, 1/2, 1/4 of
    the fundamental's amplitude: a soft, reed-like tone), a 10 ms attack, an exponential
    decay and a 30 ms release so consecutive notes do not click."""
    _check(melody, tempo)
    sec_per_q = 60.0 / tempo
    total = float(sum(Fraction(d) for _, d in melody)) * sec_per_q
    out = np.zeros(int(math.ceil(total * sample_rate)) + 1, dtype=np.float64)
    t_q = Fraction(0)
    attack, release = int(0.010 * sample_rate), int(0.030 * sample_rate)
    for p, d in melody:
        start = int(round(float(t_q) * sec_per_q * sample_rate))
        t_q += Fraction(d)
        stop = min(len(out), int(round(float(t_q) * sec_per_q * sample_rate)))
        if p is None or stop <= start:
            continue
        n = stop - start
        t = np.arange(n) / sample_rate
        f0 = 440.0 * 2 ** ((p - 69) / 12)
        tone = sum(a * np.sin(2 * np.pi * k * f0 * t)
                   for k, a in ((1, 1.0), (2, 0.5), (3, 0.25)) if k * f0 < sample_rate / 2)
        env = np.exp(-t * 2.5)
        env[:min(attack, n)] *= np.linspace(0, 1, min(attack, n), endpoint=False)
        r = min(release, n)
        env[n - r:] *= np.linspace(1, 0, r)
        out[start:stop] += tone * env
    peak = np.abs(out).max()
    if peak > 0:
        out *= 0.8 / peak
    return torch.from_numpy(out.astype(np.float32))


def write_melody_wav(path: str | os.PathLike[str], melody: Melody, tempo: float = 120.0,
                     sample_rate: int = 16000) -> str:
    """The synthesised melody as a 16-bit mono WAV."""
    return write_wav(path, synthesize(melody, tempo, sample_rate), sample_rate)


def write_piano_roll(path: str | os.PathLike[str], melody: Melody, title: str,
                     primed: int = 0) -> str:
    """A piano roll: one bar per note (time in quarter notes, pitch on the y axis), the first
    `primed` notes (the given start) in grey, the generated ones in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.fspath(path)
    t, bars = 0.0, []
    for i, (p, d) in enumerate(melody):
        if p is not None:
            bars.append((t, float(d), p, i < primed))
        t += float(d)
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, t * 0.25)), 4))
    for start, dur, p, given in bars:
        ax.broken_barh([(start, dur * 0.95)], (p - 0.4, 0.8),
                       facecolors="0.6" if given else "tab:blue")
    pitches = [b[2] for b in bars] or [60]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, max(t, 1.0))
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_melody(stem: str, melody: Melody, title: str, primed: int = 0,
                 tempo: float = 120.0) -> tuple[str, str, str]:
    """stem.mid, stem.wav (16 kHz) and stem.png of a melody; returns the three paths."""
    return (write_midi(f"{stem}.mid", melody, tempo), write_melody_wav(f"{stem}.wav", melody,
                                                                        tempo),
            write_piano_roll(f"{stem}.png", melody, title, primed))

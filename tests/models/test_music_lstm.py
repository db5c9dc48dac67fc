"""Music LSTM: MIDI bytes read back, the synthesiser's WAV, the piano roll; a tiny config's loss
falls on a small ABC corpus, held-out bits per note, tune continuation, exact resume, and the
CLI trains / resumes / samples (MIDI + WAV + PNG + notes/s)."""

import argparse
import functools
import wave
from fractions import Fraction as Fr

import pytest
import torch
from _resume import assert_resume_is_exact
from PIL import Image

from genfast.cli import main
from genfast.data.music import load_melodies
from genfast.models import REGISTRY, _lm_train, _music_cli, _music_io, _trainer
from genfast.models.music_lstm import MusicLSTM, MusicLSTMConfig

TINY = dict(embedding_dim=8, hidden_size=24, num_layers=1, seq_len=24)
MELODY = [(60, Fr(1)), (None, Fr(1, 2)), (64, Fr(1, 2)), (67, Fr(3, 2)), (72, Fr(1, 3)),
          (71, Fr(1, 3)), (69, Fr(1, 3))]


def _corpus(tmp_path, n=24):
    """n tunes of scales and arpeggios in two rhythms: structure a small LSTM picks up."""
    tunes = []
    for i in range(n):
        body = ("CDEF GABc | c2 G2 E2 C2 |" if i % 2 else "CEGc z2 cG | E2 C2 D2 C2 |")
        tunes.append(f"X:{i}\nT:tune {i}\nM:4/4\nL:1/8\nK:{'CGDF'[i % 4]}\n{body}\n")
    (tmp_path / "tunes.abc").write_text("\n".join(tunes))
    return str(tmp_path / "tunes.abc")


def test_midi_round_trip():
    data = _music_io.midi_bytes(MELODY, tempo=100, program=0)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    division, tempo, notes = _music_io.read_midi(data)
    assert division == 480 and tempo == pytest.approx(100, rel=1e-6)
    # The rest leaves a gap; triplet onsets round to whole ticks from the exact onset.
    assert notes == [(60, 0, 480), (64, 720, 960), (67, 960, 1680), (72, 1680, 1840),
                     (71, 1840, 2000), (69, 2000, 2160)]
    long = _music_io.midi_bytes([(60, Fr(40))])  # 19,200 ticks: a 3-byte variable length
    assert _music_io.read_midi(long)[2] == [(60, 0, 19200)]
    with pytest.raises(ValueError, match="MIDI pitches"):
        _music_io.midi_bytes([(128, Fr(1))])
    with pytest.raises(ValueError, match="> 0 quarter"):
        _music_io.midi_bytes([(60, Fr(0))])
    with pytest.raises(ValueError, match="tempo"):
        _music_io.midi_bytes(MELODY, tempo=0)
    with pytest.raises(ValueError, match="MThd"):
        _music_io.read_midi(b"RIFF....")


def test_synthesizer_and_files(tmp_path):
    x = _music_io.synthesize(MELODY, tempo=120, sample_rate=16000)
    assert x.dtype == torch.float32 and len(x) == 36000 + 1  # 4.5 quarters at 0.5 s each
    assert float(x.abs().max()) == pytest.approx(0.8, abs=1e-6)
    assert float(x[8000 + 500:12000 - 500].abs().max()) == 0.0  # the rest is silent
    spec = torch.fft.rfft(x[1000:7000].double()).abs()  # the first note: C4, 261.6 Hz
    assert abs(float(spec.argmax()) * 16000 / 6000 - 261.63) < 3
    mid, wav, png = _music_io.write_melody(str(tmp_path / "m"), MELODY, "test", primed=2)
    with wave.open(wav) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == len(x)
    assert _music_io.read_midi(open(mid, "rb").read())[2][0] == (60, 0, 480)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600


def test_registered_and_config_errors():
    assert REGISTRY["music-lstm"] is MusicLSTM and MusicLSTM.description
    with pytest.raises(ValueError, match="vocab is empty"):
        MusicLSTMConfig()
    with pytest.raises(ValueError, match="vocab rows"):
        MusicLSTMConfig(vocab=((60, 1, 0),))
    with pytest.raises(ValueError, match="tempo"):
        MusicLSTMConfig(vocab=((60, 1, 1),), tempo=-1)
    with pytest.raises(ValueError, match="min_count"):
        MusicLSTMConfig(vocab=((60, 1, 1),), min_count=0)


def test_tiny_model_learns_and_continues_tunes(one_thread, tmp_path):
    torch.manual_seed(0)
    data = load_melodies(_corpus(tmp_path), held_out=0.2, min_count=1)
    train, test = data.stream("train"), data.stream("test")
    model = MusicLSTM(MusicLSTMConfig(vocab=data.vocab.to_list(), **TINY))
    opt = model.configure_optimizers(1e-2)
    before = model.evaluate(test)
    losses = []
    for step in range(40):
        idx = _trainer.batch_indices(len(train) - 24, 8, 0, step)
        losses.append(float(model.train_step(_lm_train.windows(train, 24, idx), opt,
                                             step)["bits"]))
    after = model.evaluate(test)
    unigram = _lm_train.unigram_bits(train, test, len(data.vocab))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert after["bits_per_note"] < before["bits_per_note"] - 1.0
    assert after["bits_per_token"] < unigram - 0.5, (after, unigram)
    model.eval()
    tune = data.test[0]
    tokens, ended = model.continue_tune(tune, 4, 40, temperature=0.0)
    assert torch.equal(tokens[:5], tune[:5])  # boundary + 4 given notes
    # Greedy continuation of a learnt 16-note tune: it ends it, and at the trained length.
    assert ended and len(tokens) == len(tune) - 1, (tokens, tune)
    with pytest.raises(ValueError, match="prime_notes=99"):
        model.continue_tune(tune, 99, 5)


def test_resume_is_exact(one_thread, tmp_path, monkeypatch):
    data = load_melodies(_corpus(tmp_path), held_out=0.2, min_count=1)
    written = []
    monkeypatch.setattr(_trainer, "fit", functools.partial(
        _lm_train.fit, snapshot=lambda out, step, held: written.append(step)))
    tc = {"batch_size": 4, "checkpoint_every": 3, "sample_every": 3, "log_every": 1}

    def make():
        torch.manual_seed(0)
        return MusicLSTM(MusicLSTMConfig(vocab=data.vocab.to_list(), **TINY))

    assert_resume_is_exact(make, "music-lstm", data.stream("train"), data.stream("test"), tc,
                           tmp_path)
    assert written == [3, 6, 3, 6]


def test_cli_train_resume_and_sample(one_thread, tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "run"
    args = ["train", "music-lstm", "--data", corpus, "--out", str(out), "--checkpoint-every",
            "2", "--sample-every", "4", "--batch-size", "4", "--no-progress"]
    sets = [x for k, v in {**TINY, "min_count": 1}.items() for x in ("--set", f"{k}={v}")]
    assert main(args + sets + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "bits/note" in text and "unigram" in text and "24 tunes parsed" in text
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert "6 steps" in capsys.readouterr().out
    for name in ("sample_step000004.mid", "sample_step000004.wav", "sample_step000004.png"):
        assert (out / name).exists(), name
    ns = argparse.Namespace(model="music-lstm", checkpoint=out / "checkpoint.pt", prime="3",
                            length=12, n=None, tune=0, temperature=1.0, top_k=None, top_p=0.9,
                            seed=4, out=str(tmp_path / "gen.mid"))
    assert _music_cli.sample(MusicLSTM, ns) == 0
    printed = capsys.readouterr().out
    assert "notes/s" in printed and "first 3 notes" in printed
    division, _, notes = _music_io.read_midi((tmp_path / "gen.mid").read_bytes())
    assert division == 480 and 3 <= len(notes) <= 15
    with wave.open(str(tmp_path / "gen.wav")) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 0
    with Image.open(tmp_path / "gen.png") as im:
        assert im.format == "PNG"
    ns.prime = "x"
    with pytest.raises(SystemExit, match="number of notes"):
        _music_cli.sample(MusicLSTM, ns)
    ns.prime, ns.tune = "3", 99
    with pytest.raises(SystemExit, match="--tune must be in"):
        _music_cli.sample(MusicLSTM, ns)


def test_cli_rejects_a_bad_corpus(tmp_path):
    with pytest.raises(SystemExit, match="corpus must be one of"):
        main(["train", "music-lstm", "--data", str(tmp_path / "none.abc"), "--no-progress"])

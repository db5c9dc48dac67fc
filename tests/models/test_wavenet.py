"""WaveNet model: mu-law and WAV round trips, a tiny config's loss falls on a synthetic signal,
held-out bits/sample (chunked scoring exact), the CLI trains / resumes / samples (WAV + PNG +
speed), exact resume through the shared check, and the real CMU ARCTIC clip when pysptk is
installed."""

import argparse
import importlib.util
import math
import wave

import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.cli import main
from genfast.data import audio
from genfast.models import _trainer, _wavenet_cli
from genfast.models.wavenet import WaveNetConfig, WaveNetModel, baselines

TINY = dict(residual=16, gate=32, skip=32, head=64, layers=5, stacks=1, segment=256)


def _clips(seconds=1.0, n=1):
    waves = [audio.synthetic_signal(seconds, seed=i) for i in range(n)]
    return audio.tokens_from_waves(waves)


def test_mu_law_round_trip_and_silence():
    x = torch.linspace(-1, 1, 2001)
    q = audio.mu_law_encode(x)
    assert q.min() == 0 and q.max() == 255 and int(audio.mu_law_encode(torch.zeros(1))) == 128
    back = audio.mu_law_decode(q)
    # Companding keeps the relative error small near zero and the step size bounded overall.
    # The widest step is at |x| = 1: ln(256) * 256/255 / 255 = 0.0218 after decoding.
    assert float((back - x).abs().max()) < 0.022
    assert torch.equal(audio.mu_law_encode(back), q)
    assert torch.equal(audio.mu_law_encode(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255]))


@pytest.mark.parametrize("width", [1, 2, 4])
def test_read_wav_pcm_widths_stereo_and_resampling(tmp_path, width):
    t = torch.arange(800) / 8000
    sig = 0.5 * torch.sin(2 * math.pi * 440 * t)
    path = tmp_path / f"s{width}.wav"
    scale = 2 ** (8 * width - 1) - 1
    ints = (sig.double() * scale).round().long()
    frames = torch.stack([ints, ints], 1).reshape(-1)  # stereo, both channels equal
    if width == 1:
        frames = frames + 128
    import numpy as np

    dt = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(frames.numpy().astype(dt).tobytes())
    same = audio.read_wav(path, 8000)
    torch.testing.assert_close(same, sig, atol=1.5 / scale, rtol=0)
    up = audio.read_wav(path, 16000)  # resample_poly 1:2
    assert len(up) == 1600 and abs(float(up.abs().max()) - 0.5) < 0.03


def test_write_wav_round_trip_and_bad_files(tmp_path):
    x = audio.synthetic_signal(0.1)
    p = audio.write_wav(tmp_path / "a.wav", x)
    torch.testing.assert_close(audio.read_wav(p), x, atol=2 / 32767, rtol=0)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(ValueError, match="bad.wav"):
        audio.read_wav(tmp_path / "bad.wav")
    with pytest.raises(FileNotFoundError):
        audio.read_wav(tmp_path / "missing.wav")


def test_split_holds_out_the_tail_of_every_clip():
    train, test = _clips(1.0, n=2)
    assert len(train) == len(test) == 2
    assert len(train.clip(0)) == 14400 and len(test.clip(0)) == 1600
    whole = audio.mu_law_encode(audio.synthetic_signal(1.0, seed=1))
    assert torch.equal(torch.cat([train.clip(1), test.clip(1)]), whole)
    starts, owner = train.crop_starts(256)
    ends = starts + 256
    assert bool((ends <= train.offsets[owner + 1]).all()) and len(starts) == 2 * (14400 - 255)
    with pytest.raises(ValueError, match="segment"):
        train.crop_starts(20000)


def test_tiny_model_loss_falls_and_beats_the_baselines(one_thread):
    torch.manual_seed(0)
    train, test = _clips(1.0)
    model = WaveNetModel(WaveNetConfig(**TINY))
    opt = model.configure_optimizers(1e-2)
    starts, _ = train.crop_starts(256)
    before = model.evaluate(test)["bits_per_sample"]
    losses = []
    for step in range(40):
        idx = _trainer.batch_indices(len(starts), 4, 0, step)
        losses.append(float(model.train_step((train.crops(starts[idx], 256), None), opt,
                                             step)["bits"]))
    after = model.evaluate(test)["bits_per_sample"]
    base = baselines(train, test)
    assert base["uniform"] == 8.0 and base["unigram"] < 8.0
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.7, losses
    assert after < before - 1.0 and after < base["unigram"] - 0.7, (before, after, base)


def test_chunked_evaluation_is_exact(one_thread):
    torch.manual_seed(1)
    model = WaveNetModel(WaveNetConfig(**TINY, eval_chunk=100)).double()
    y = torch.randint(0, 256, (357,))
    chunked = model.clip_nll(y)
    model.config.eval_chunk = 10_000
    assert chunked == pytest.approx(model.clip_nll(y), rel=1e-12)


def test_resume_is_exact(one_thread, tmp_path, monkeypatch):
    train, test = _clips(0.5, n=2)
    cfg = WaveNetConfig(**{**TINY, "segment": 128}, gc_classes=2)
    monkeypatch.setattr(_wavenet_cli, "SNAPSHOT_SECONDS", 0.01)
    monkeypatch.setattr(_trainer, "fit", _wavenet_cli.fit)  # the shared check, this trainer
    tc = {"batch_size": 3, "checkpoint_every": 3, "sample_every": 3, "log_every": 1}

    def make():
        torch.manual_seed(0)
        return WaveNetModel(cfg)

    a, _ = assert_resume_is_exact(make, "wavenet", train, test, tc, tmp_path)
    assert a.net.gc_embed.weight.grad is not None
    assert (tmp_path / "a" / "sample_step000006.wav").exists()


def test_global_conditioning_changes_the_output():
    model = WaveNetModel(WaveNetConfig(**TINY, gc_classes=2))
    y = torch.randint(0, 256, (2, 50))
    a = model(y, torch.tensor([0, 0]))
    b = model(y, torch.tensor([0, 1]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="speaker"):
        WaveNetModel(WaveNetConfig(**TINY)).generate(5, speaker=1)


def test_cli_train_resume_and_sample(one_thread, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_wavenet_cli, "SNAPSHOT_SECONDS", 0.05)
    wavs = [audio.write_wav(tmp_path / f"tone{i}.wav", audio.synthetic_signal(0.5, seed=i))
            for i in range(2)]
    out = tmp_path / "run"
    # Two files: two speakers, so the model gets global conditioning (gc_classes=2).
    args = ["train", "wavenet", "--data", ",".join(wavs), "--out", str(out),
            "--checkpoint-every", "2",
            "--sample-every", "4", "--no-progress", "--seed", "3"]
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    assert main(args + sets + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "bits/sample" in text and "uniform 8.000" in text and "unigram" in text
    assert main(args + ["--steps", "6", "--resume"]) == 0  # the config comes from the checkpoint
    assert "6 steps" in capsys.readouterr().out
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["gc_classes"] == 2
    for name in ("sample_step000004.wav", "sample_step000004.png", "metrics.jsonl"):
        assert (out / name).exists(), name
    stem = tmp_path / "gen"
    assert main(["sample", "wavenet", "--checkpoint", str(out / "checkpoint.pt"), "--n", "800",
                 "--seed", "5", "--out", f"{stem}.wav"]) == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "real-time factor" in text
    with wave.open(f"{stem}.wav") as w:
        assert (w.getnframes(), w.getsampwidth(), w.getframerate()) == (800, 2, 16000)
    assert (tmp_path / "gen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The sampling knobs (--seconds, --temperature, --top-k, --top-p, --speaker) by the hook.
    knobs = argparse.Namespace(model="wavenet", checkpoint=out / "checkpoint.pt", n=None,
                               seconds=0.02, temperature=0.0, top_k=20, top_p=0.9,
                               speaker=1, seed=1, out=str(tmp_path / "greedy.png"))
    assert _wavenet_cli.sample(WaveNetModel, knobs) == 0
    assert "320 samples" in capsys.readouterr().out
    with wave.open(str(tmp_path / "greedy.wav")) as w:
        assert w.getnframes() == 320


def test_cli_rejects_a_missing_file_and_a_bad_config(tmp_path):
    with pytest.raises(SystemExit, match="no WAV file"):
        main(["train", "wavenet", "--data", str(tmp_path / "none.wav"), "--no-progress"])
    wav = audio.write_wav(tmp_path / "t.wav", audio.synthetic_signal(0.1))
    with pytest.raises(SystemExit, match="gate"):
        main(["train", "wavenet", "--data", wav, "--set", "gate=7", "--no-progress",
              "--out", str(tmp_path / "r")])


@pytest.mark.skipif(importlib.util.find_spec("pysptk") is None,
                    reason="the CMU ARCTIC clip ships in pysptk's sdist (pip install pysptk)")
def test_the_bundled_arctic_clip(one_thread):
    (path, speaker), *_ = audio.bundled_clips()
    assert speaker == "awb" and path.endswith("arctic_a0007.wav")
    waves, names = audio.load_audio()
    x = waves[0]
    assert len(x) == 64000 and "awb" in names[0]
    assert 0.05 < float(x.abs().max()) <= 1.0 and float(x.std()) > 0.01
    train, test = audio.tokens_from_waves(waves[:1])
    base = baselines(train, test)
    # Speech concentrates near silence: the histogram alone saves bits against uniform
    # (7.41 on this clip's held-out tail).
    assert 4.0 < base["unigram"] < 7.8, base
    assert len(test.tokens) == 6400

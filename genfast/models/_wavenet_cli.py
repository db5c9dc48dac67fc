"""`genfast train wavenet` and `genfast sample wavenet`: the audio training loop and samples.

Audio is not a set of images, so WaveNet has its own loop with the image trainer's guarantees
(genfast/models/_trainer.py): batches are random crops whose order is a pure function of
(seed, step) (``batch_indices`` over every crop start), checkpoints are atomic and hold the
optimizer and RNG state, a resume truncates the log to the checkpoint and continues exactly,
and snapshots (held-out bits/sample, a short WAV + PNG) run under a forked RNG.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from ..data import audio
from ._trainer import (
    _EVAL_SEED,
    TrainConfig,
    _isolated_rng,
    batch_indices,
    load_model,
    resumed_config,
    train_loop,
)

SNAPSHOT_SECONDS = 0.5


def write_png(path: str, wave: torch.Tensor, sample_rate: int, title: str) -> str:
    """Waveform over the log-magnitude spectrogram (torch.stft, 32 ms Hann window, 8 ms hop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wave = wave.detach().float().cpu()
    n_fft, hop = 512, 128
    if len(wave) < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - len(wave)))
    spec = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    db = 20 * spec.abs().clamp_min(1e-5).log10()
    t = torch.arange(len(wave)) / sample_rate
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True,
                               gridspec_kw={"height_ratios": [1, 2]})
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.09, hspace=0.08)
    a.plot(t.numpy(), wave.numpy(), lw=0.4)
    a.set_ylim(-1, 1)
    a.set_ylabel("amplitude")
    a.set_title(title)
    b.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
             extent=(0, len(wave) / sample_rate, 0, sample_rate / 2000))
    b.set_ylabel("kHz")
    b.set_xlabel("seconds")
    tmp = f"{path}.tmp"
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_clip(stem: str, tokens: torch.Tensor, sample_rate: int, title: str) -> tuple[str, str]:
    """A generated stream as stem.wav (16-bit) and stem.png; returns both paths."""
    wave = audio.mu_law_decode(tokens.cpu())
    return (audio.write_wav(f"{stem}.wav", wave, sample_rate),
            write_png(f"{stem}.png", wave, sample_rate, title))


def fit(model: Any, name: str, train: audio.Clips, test: audio.Clips, tc: TrainConfig,
        out_dir: str | os.PathLike[str], *, resume: bool = False,
        device: str | torch.device = "cpu", progress: bool | None = None) -> dict[str, float]:
    """Train to ``tc.steps`` total steps on random crops (the image trainer's loop, log format
    and checkpoints: _trainer.train_loop); returns the held-out metrics at the end."""
    device, out_dir = torch.device(device), os.fspath(out_dir)
    train, test = train.to(device), test.to(device)
    seg, sr = model.config.segment, model.config.sample_rate
    starts, owner = train.crop_starts(seg)
    starts, owner = starts.to(device), owner.to(device)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(len(starts), tc.batch_size, tc.seed, step).to(device)
        return train.crops(starts[idx], seg), train.speakers[owner[idx]]

    def evaluate() -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad(), _isolated_rng(device):
                return model.evaluate(test)
        finally:
            model.train()

    def snapshot(step: int) -> dict[str, float]:
        held_out = evaluate()
        n = max(1, int(SNAPSHOT_SECONDS * sr))
        model.eval()
        tokens = model.generate(n, seed=_EVAL_SEED)[0]
        model.train()
        write_clip(os.path.join(out_dir, f"sample_step{step:06d}"), tokens, sr,
                   f"{name} step {step}: {n / sr:g} s generated, held-out "
                   f"{held_out['bits_per_sample']:.3f} bits/sample")
        return held_out

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snapshot,
                      evaluate=evaluate, resume=resume, device=device, progress=progress)


def _data(spec: str | None, sample_rate: int) -> tuple[list[torch.Tensor], list[str]]:
    paths = [p for p in spec.split(",") if p] if spec else None
    try:
        return audio.load_audio(paths, sample_rate)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"genfast: {e}") from None


def train(cls: type, args: Any) -> int:
    import genfast

    from .wavenet import baselines

    overrides = dict(getattr(args, "config", None) or {})
    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, overrides)
    rate = overrides.get("sample_rate", cls.config_cls.sample_rate)
    waves, names = _data(args.data, rate)
    if len(waves) > 1 and "gc_classes" not in overrides:
        overrides["gc_classes"] = len(waves)  # one speaker / class id per clip
    try:
        config = cls.config_cls(**overrides)
        model = cls(config)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    if config.gc_classes and config.gc_classes < len(waves):
        raise SystemExit(f"genfast: {len(waves)} clips need gc_classes >= {len(waves)}, got "
                         f"{config.gc_classes}")
    train_clips, test_clips = audio.tokens_from_waves(waves)
    try:
        tc = TrainConfig.from_args(cls.train_defaults, args)
        t0 = time.perf_counter()
        with genfast.use_backend(args.backend):
            metrics = fit(model, args.model, train_clips, test_clips, tc, out,
                          resume=args.resume, device=args.device,
                          progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    wall = time.perf_counter() - t0
    base = baselines(train_clips, test_clips, config.classes)
    seconds = len(train_clips.tokens) / rate
    print(f"{args.model}: {tc.steps} steps on {'; '.join(names)} ({seconds:.1f} s of training "
          f"audio, receptive field {model.receptive_field} samples), {wall:.1f} s this run")
    print(f"  held-out NLL {metrics['bits_per_sample']:.3f} bits/sample "
          f"({len(test_clips.tokens)} samples, the last 10% of each clip); baselines: uniform "
          f"{base['uniform']:.3f}, unigram (training histogram) {base['unigram']:.3f}")
    print(f"checkpoint, metrics.jsonl and sample_step*.wav/png in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    import genfast

    model, ckpt = load_model(cls, args)
    rate = model.config.sample_rate
    seconds = getattr(args, "seconds", None)
    n = args.n or int(round((seconds if seconds is not None else 2.0) * rate))
    if n < 1:
        raise SystemExit(f"genfast: --seconds/--n must give at least one sample, got {n}")
    speaker = getattr(args, "speaker", None)
    temperature = getattr(args, "temperature", None)
    kwargs = {"temperature": 1.0 if temperature is None else temperature,
              "top_k": getattr(args, "top_k", None), "top_p": getattr(args, "top_p", None)}
    try:
        model.generate(min(n, 16), speaker=speaker, seed=args.seed, **kwargs)  # warm-up
        t0 = time.perf_counter()
        tokens = model.generate(n, speaker=speaker, seed=args.seed, **kwargs)[0]
        dt = time.perf_counter() - t0
    except (ValueError, TypeError, genfast.BackendError) as e:
        raise SystemExit(f"genfast: {e}") from None
    stem = os.path.splitext(args.out)[0] if args.out else f"{args.model}_sample"
    extra = "" if speaker is None else f", speaker {speaker}"
    wav, png = write_clip(stem, tokens, rate,
                          f"{args.model} step {ckpt['step']}: {n / rate:g} s, seed {args.seed}"
                          f", temperature {kwargs['temperature']:g}{extra}")
    print(f"wrote {n} samples ({n / rate:.2f} s at {rate} Hz) to {wav} and {png}")
    print(f"generation: {n / dt:,.0f} samples/s, real-time factor {dt / (n / rate):.3f} "
          f"(generation time / audio duration; < 1 is faster than real time)")
    return 0

"""The categorical VAE trains on the embedded digits, resumes exactly, samples, and gives the
same loss on every gumbel backend; the CLI trains and samples end to end."""

import os

import pytest
import torch

import genfast
from genfast.cli import main
from genfast.data import digits_split
from genfast.models import GumbelVAE
from genfast.models._trainer import TrainConfig, fit, load_checkpoint


def _losses(model, x, steps, backend="auto"):
    opts = model.configure_optimizers(1e-3)
    out = []
    with genfast.use_backend(backend):
        for step in range(steps):
            out.append(model.train_step(x[(step * 50) % 1000:][:50], opts, step)["loss"])
    return out


def test_loss_falls_and_samples_are_images():
    torch.manual_seed(0)
    train, _ = digits_split()
    model = GumbelVAE()
    losses = _losses(model, train, 120)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    s = model.sample(16)
    assert s.shape == (16, 1, 8, 8) and s.min() >= 0 and s.max() <= 1


@pytest.mark.skipif(not genfast.backends.available("cpu"), reason="genfast._C not built")
def test_reference_and_cpu_backends_train_identically():
    train, _ = digits_split()
    runs = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(1)
        runs[backend] = _losses(GumbelVAE(), train, 5, backend)
    torch.testing.assert_close(runs["cpu"], runs["reference"], rtol=1e-4, atol=1e-4)


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path):
    train, test = digits_split()
    tc = dict(batch_size=32, checkpoint_every=10, sample_every=20, log_every=10)
    torch.manual_seed(2)
    full = fit(GumbelVAE(), "gumbel-vae", train, test, TrainConfig(steps=20, **tc),
               str(tmp_path / "a"), progress=False)
    torch.manual_seed(2)
    fit(GumbelVAE(), "gumbel-vae", train, test, TrainConfig(steps=10, **tc),
        str(tmp_path / "b"), progress=False)
    resumed = fit(GumbelVAE(), "gumbel-vae", train, test, TrainConfig(steps=20, **tc),
                  str(tmp_path / "b"), resume=True, progress=False)
    assert load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))["step"] == 20
    assert resumed == pytest.approx(full, rel=1e-5)


def test_cli_train_then_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "gumbel-vae", "--steps", "30", "--out", str(out), "--no-progress",
                 "--sample-every", "30", "--checkpoint-every", "30"]) == 0
    assert "held-out: loss=" in capsys.readouterr().out
    assert (out / "samples_step000030.png").exists() and (out / "metrics.jsonl").exists()
    png = tmp_path / "s.png"
    assert main(["sample", "gumbel-vae", "--checkpoint", str(out / "checkpoint.pt"),
                 "--out", str(png), "--n", "16"]) == 0
    assert png.stat().st_size > 100
    with pytest.raises(SystemExit, match="unknown model"):
        main(["train", "no-such-model"])
    with pytest.raises(SystemExit, match="no latent truncation"):
        main(["sample", "gumbel-vae", "--checkpoint", str(out / "checkpoint.pt"),
              "--truncation", "0.5", "--out", os.fspath(png)])

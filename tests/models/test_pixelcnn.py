"""PixelCNN and Gated PixelCNN models: the original's channel-masked receptive field is exactly
causal, its cached sampler equals the teacher-forced forward + genfast's sampler, a few steps
make the held-out bits/dim fall, runs resume exactly, and the CLI trains (digits and colour
--data), resumes and samples a PNG grid (with --class)."""

import numpy as np
import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.cli import main
from genfast.models import _pixelcnn_cli, _trainer
from genfast.models._pixelcnn_net import teacher_forced_draw
from genfast.models.pixelcnn import (
    GatedPixelCNNConfig,
    GatedPixelCNNModel,
    PixelCNNConfig,
    PixelCNNModel,
    quantize,
)

TINY = dict(hidden=6, blocks=2, kernel_size=5, block_kernel=3, head=12)
TINY_GATED = dict(channels=8, layers=3, kernel_size=3, hidden=16)


def _tiny(colors=1, levels=4, h=5, w=6, **kw):
    torch.manual_seed(0)
    return PixelCNNModel(PixelCNNConfig(levels=levels, colors=colors, height=h, width=w,
                                        **{**TINY, **kw})).double()


@pytest.mark.parametrize("colors", [1, 3])
def test_original_is_causal_over_pixels_and_colours(colors):
    m = _tiny(colors)
    tokens = torch.randint(0, 4, (1, colors, 5, 6))
    base = m(tokens)  # (1, K, L, H, W)
    for p, k in ((0, 0), (13, colors - 1), (17, 0), (29, colors - 1)):
        i, j = divmod(p, 6)
        t = tokens.clone()
        t[0, k, i, j] = (t[0, k, i, j] + 1) % 4
        diff = (m(t) - base).abs().sum(2)[0]  # (K, H, W)
        flat = diff.permute(1, 2, 0).reshape(-1)  # raster order (pixel, colour)
        r = p * colors + k
        assert not flat[:r + 1].any(), f"a logit at or before (pixel {p}, colour {k}) moved"
        if p < 29:
            assert flat[r + 1:].any()


@pytest.mark.parametrize(("colors", "kw"), [(1, {}), (3, {"temperature": 0.7, "top_k": 3})])
def test_cached_sampler_equals_teacher_forced_sampling(colors, kw):
    m = _tiny(colors)
    a = m.generate(3, seed=21, **kw)
    assert a.shape == (3, colors, 5, 6) and int(a.min()) >= 0 and int(a.max()) < 4
    assert torch.equal(a, m.generate(3, seed=21, **kw))
    assert not torch.equal(a, m.generate(3, seed=22, **kw))
    assert torch.equal(a, teacher_forced_draw(m(a), 21, **kw))
    with pytest.raises(ValueError, match="gated-pixelcnn"):
        m.generate(2, cls=1)


def _digits(levels=4):
    tr, te = _pixelcnn_cli.load_data(None, levels, 8)
    return tr, _pixelcnn_cli.TokenImages(te.tokens[:64], te.labels[:64])


@pytest.mark.parametrize("cls", [PixelCNNModel, GatedPixelCNNModel])
def test_a_few_steps_make_the_held_out_loss_fall(one_thread, cls):
    tr, te = _digits()
    torch.manual_seed(0)
    tiny = TINY if cls is PixelCNNModel else TINY_GATED
    model = cls(cls.config_cls(levels=4, **tiny))
    opt = model.configure_optimizers(1e-2)
    before = model.evaluate(te.tokens, te.labels)["bits_per_dim"]
    for step in range(25):
        idx = _trainer.batch_indices(len(tr), 32, 0, step)
        model.train_step((tr.tokens[idx], tr.labels[idx]), opt, step)
    after = model.evaluate(te.tokens, te.labels)["bits_per_dim"]
    assert after < before - 0.5 and after < 1.5, (before, after)  # uniform: 2 bits


def test_quantize_and_the_digits_split():
    x = torch.tensor([0.0, 0.2, 0.5, 0.74, 1.0])
    assert quantize(x, 2).tolist() == [0, 0, 1, 1, 1]
    assert quantize(x, 16).tolist() == [0, 3, 8, 11, 15]
    tr, te = _pixelcnn_cli.load_data(None, 2, 8)
    assert (len(tr), len(te)) == (1438, 359) and tr.labels is not None
    assert set(tr.tokens.unique().tolist()) == {0, 1}


def test_resume_is_exact(one_thread, tmp_path, monkeypatch):
    tr, te = _digits()
    monkeypatch.setattr(_trainer, "fit", _pixelcnn_cli.fit)  # the shared check, this trainer
    tc = {"batch_size": 8, "checkpoint_every": 3, "sample_every": 3, "log_every": 1,
          "n_samples": 4}

    def make():
        torch.manual_seed(0)
        return GatedPixelCNNModel(GatedPixelCNNConfig(levels=4, **TINY_GATED))

    a, _ = assert_resume_is_exact(make, "gated-pixelcnn", tr, te, tc, tmp_path)
    assert a.net.layers[1].class_cond_embedding.weight.grad is not None
    assert (tmp_path / "a" / "samples_step000006.png").exists()


def _sets(d):
    return [x for k, v in d.items() for x in ("--set", f"{k}={v}")]


def test_cli_gated_train_resume_and_sample_with_a_class(one_thread, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "gated-pixelcnn", "--out", str(out), "--levels", "2", "--batch-size", "16",
            "--checkpoint-every", "2", "--sample-every", "4", "--no-progress"]
    assert main(args + _sets(TINY_GATED) + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "bits/dim" in text and "uniform 1.000" in text and "1438 train / 359" in text
    assert main(args + ["--steps", "6", "--resume"]) == 0  # the config comes from the checkpoint
    assert "6 steps" in capsys.readouterr().out
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["levels"] == 2
    assert (out / "samples_step000004.png").exists() and (out / "metrics.jsonl").exists()
    png = tmp_path / "seven.png"
    assert main(["sample", "gated-pixelcnn", "--checkpoint", str(out / "checkpoint.pt"),
                 "--n", "8", "--class", "7", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "images/s" in text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--class"):
        main(["sample", "gated-pixelcnn", "--checkpoint", str(out / "checkpoint.pt"),
              "--class", "10", "--out", str(png)])


def test_cli_colour_data_trains_pixelcnn_and_is_refused_by_the_gated_model(one_thread, tmp_path,
                                                                           capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npy"
    np.save(data, rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8))
    out = tmp_path / "rgb"
    assert main(["train", "pixelcnn", "--data", str(data), "--out", str(out), "--steps", "2",
                 "--batch-size", "4", "--levels", "8", "--no-progress"] + _sets(TINY)) == 0
    assert "3x6x6 images, 8 levels" in capsys.readouterr().out
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["config"]["colors"] == 3
    png = tmp_path / "rgb.png"
    assert main(["sample", "pixelcnn", "--checkpoint", str(out / "checkpoint.pt"), "--n", "4",
                 "--temperature", "0.8", "--out", str(png)]) == 0
    assert "images/s" in capsys.readouterr().out and png.exists()
    with pytest.raises(SystemExit, match="train `pixelcnn`"):
        main(["train", "gated-pixelcnn", "--data", str(data), "--out", str(tmp_path / "g"),
              "--steps", "1", "--no-progress"])
    with pytest.raises(SystemExit, match="levels"):
        main(["train", "pixelcnn", "--levels", "1", "--out", str(tmp_path / "x"),
              "--no-progress"])

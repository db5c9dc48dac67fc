"""srgan: the SRResNet generator's exact x4 (sub-pixel) up-sampling, the patch discriminator,
the content loss, the SRResNet -> SRGAN phase schedule, each phase training, exact resume
across the phase boundary, bicubic's PSNR / SSIM on the held-out strips, the CLI, bad configs.
Tiny widths and crops keep it fast; the content loss's feature net is an untrained one
(training it is test_unet_nogan's business)."""

import json

import pytest
import torch
import torch.nn.functional as F

from genfast.models import REGISTRY, _srgan_cli, _trainer, _unet_features
from genfast.models import _unet_metrics as M
from genfast.models._srgan_net import (
    SRResNet,
    SubPixelUp,
    bicubic_upsample,
    discriminator,
    downsample,
    nearest_upsample,
)
from genfast.models.srgan import SRGAN, SRGANConfig, luma

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(photos="sklearn", hr_size=24, width=4, blocks=1, d_width=4, d_stages=2, batch=2,
            pretrain_steps=3, gan_steps=3)


def _model(**kw):
    torch.manual_seed(0)
    return SRGAN(SRGANConfig(**{**TINY, **kw}))


@pytest.fixture(scope="module")
def crops():
    return _srgan_cli.crops_for(_model())


@pytest.mark.parametrize("skip", [True, False])
def test_generator_output_is_exactly_scale_times_the_input(skip):
    torch.manual_seed(0)
    g = SRResNet(4, 2, 4, bicubic_skip=skip)
    for h, w in ((6, 6), (7, 5), (1, 3), (13, 10)):  # odd sizes too
        y = g(torch.rand(2, 3, h, w)).detach()
        assert y.shape == (2, 3, 4 * h, 4 * w)
        if not skip:
            assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert SRResNet(4, 1, 2)(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)
    assert SRResNet(4, 1, 8)(torch.rand(1, 3, 3, 3)).shape == (1, 3, 24, 24)
    assert len(g.up) == 2  # two x2 sub-pixel stages for x4
    with pytest.raises(ValueError, match="power of 2"):
        SRResNet(4, 1, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        g(torch.rand(2, 1, 8, 8))


def test_subpixel_upsampling_shape_and_icnr_start():
    torch.manual_seed(0)
    up = SubPixelUp(5)
    x = torch.randn(2, 5, 7, 3)
    y = up.shuffle(up.conv(x))
    assert y.shape == (2, 5, 14, 6) and up(x).shape == (2, 5, 14, 6)
    # ICNR: the four sub-pixel kernels start equal, so the sub-pixel output is exactly the
    # nearest-neighbour up-sampling of one conv's feature map (kernel 0 of each group of 4).
    w, b = up.conv.weight, up.conv.bias
    one = F.conv2d(x, w[::4], b[::4], padding=1)
    torch.testing.assert_close(y, F.interpolate(one, scale_factor=2.0, mode="nearest"),
                               rtol=0, atol=0)
    assert not torch.equal(w[0], w[4])  # distinct kernels per output channel
    # The residual form starts as the bicubic baseline exactly.
    lr = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(SRResNet(4, 1, 4, bicubic_skip=True)(lr),
                               bicubic_upsample(lr, 4), rtol=0, atol=0)


def test_blur_removes_any_subpixel_lattice():
    # Whatever the sub-pixel conv learns, a period-2 pattern (the lattice a GAN loss grows,
    # Aitken et al. 2017; Sugawara et al. 2019) is averaged flat by the 2x2 box filter.
    torch.manual_seed(0)
    up = SubPixelUp(3, blur=True)
    lattice = torch.tensor([[0.3, -0.2], [0.5, 0.1]]).repeat(4, 5)[None, None].expand(1, 3,
                                                                                  8, 10)
    flat = up.blur(lattice)
    assert flat.shape == lattice.shape
    torch.testing.assert_close(flat[..., 1:, 1:], torch.full_like(flat[..., 1:, 1:], 0.175))
    nn_init = SubPixelUp(3)
    with torch.no_grad():
        up.conv.load_state_dict(nn_init.conv.state_dict())
        x = torch.randn(2, 3, 5, 6)
        torch.testing.assert_close(up(x), up.blur(nn_init(x)))
    assert SRResNet(4, 1, 4, blur=True)(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)


def test_degradation_and_discriminator_shapes():
    x = torch.rand(3, 3, 24, 20)
    lr = downsample(x, 4)
    assert lr.shape == (3, 3, 6, 5) and 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0
    assert bicubic_upsample(lr, 4).shape == nearest_upsample(lr, 4).shape == x.shape
    torch.testing.assert_close(downsample(torch.full((1, 3, 8, 8), 0.3), 4),
                               torch.full((1, 3, 2, 2), 0.3))
    with pytest.raises(ValueError, match="not a multiple of scale 4"):
        downsample(torch.rand(1, 3, 10, 8), 4)
    d = discriminator(4, 3)
    assert d(torch.rand(2, 3, 32, 32)).shape == (2, 16)  # 32 / 2**3 = 4x4 patch logits
    # Studio-range luma: black -> 16/255, white -> 235/255.
    assert luma(torch.zeros(1, 3, 2, 2)).flatten()[0] == pytest.approx(16 / 255)
    assert luma(torch.ones(1, 3, 2, 2)).flatten()[0] == pytest.approx(235 / 255, abs=1e-6)


def test_phase_schedule():
    m = _model(pretrain_steps=4, gan_steps=3)
    assert m.pretrain_steps == 4 and m.total_steps == 7
    assert [m.phase_at(s) for s in range(7)] == ["pretrain"] * 4 + ["gan"] * 3
    with pytest.raises(ValueError, match="past the schedule"):
        m.phase_at(7)
    with pytest.raises(ValueError, match="step must be an int"):
        m.phase_at(-1)
    assert _model(gan_steps=0).phase_at(2) == "pretrain"


def test_content_loss_frozen_differentiable():
    m = _model(pixel_weight=0.5, feature_weights=(0.1, 0.0, 0.2))
    m.train()
    assert not m.content.net.training
    sr, hr = torch.rand(2, 3, 24, 24, requires_grad=True), torch.rand(2, 3, 24, 24)
    loss = m.content(sr, hr)
    assert float(loss.detach()) > 0.5 * float(F.mse_loss(sr, hr).detach()) > 0
    (g,) = torch.autograd.grad(loss, sr)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    assert all(not p.requires_grad for p in m.content.net.parameters())
    assert float(m.content(hr, hr)) == 0.0


def test_each_phase_trains(crops):
    m = _model(pretrain_steps=12, gan_steps=6)
    opts = m.configure_optimizers(3e-4)
    x = crops.train_batch(4, 24, 0, 0)  # the same batch every step: the MSE must fall
    d_before = [p.detach().clone() for p in m.discriminator.parameters()]
    first = m.train_step(x, opts, 0)
    for s in range(1, 12):
        last = m.train_step(x, opts, s)
    assert float(last["mse"]) < 0.9 * float(first["mse"])
    assert float(last["d_loss"]) == 0.0  # the discriminator is not trained in pretraining
    assert all(torch.equal(a, b) for a, b in zip(d_before, m.discriminator.parameters(),
                                                 strict=True))
    g_before = [p.detach().clone() for p in m.generator.parameters()]
    for s in range(12, 18):
        out = m.train_step(x, opts, s)
        assert all(torch.isfinite(v) for v in out.values())
    assert float(out["adv"]) > 0 and float(out["d_loss"]) > 0 and float(out["content"]) > 0
    for net, before in ((m.discriminator, d_before), (m.generator, g_before)):
        assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    # The discriminator judges images as the metrics see them, clamped to [0, 1].
    m.eval()
    torch.testing.assert_close(m._judge(x + 2.0), m._judge(torch.ones_like(x)), rtol=0, atol=0)
    torch.testing.assert_close(m._judge(x), m.discriminator(2 * x - 1), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expects \(B, 3, 24, 24\)"):
        m.train_step(crops.train_batch(2, 16, 0, 0), opts, 0)


def test_bicubic_psnr_ssim_on_held_out_strips(crops):
    m = _model()
    strips = _srgan_cli.held_out(m, crops)
    assert len(strips) == 2 and all(t.shape[-2] % 4 == 0 == t.shape[-1] % 4 for t in strips)
    assert strips[0].shape[-1] == 640 - crops.train_width[0] - (640 - crops.train_width[0]) % 4
    m.eval()
    r = m.evaluate(strips)
    assert 20.0 < r["bicubic_psnr"] < 45.0 and 0.5 < r["bicubic_ssim"] < 1.0
    assert 0.5 < r["bicubic_ssim_y"] < 1.0 and r["bicubic_psnr_y"] > r["bicubic_psnr"] - 5
    # At step 0 the residual generator is bicubic itself.
    for k in ("psnr", "ssim", "psnr_y", "ssim_y"):
        assert r[k] == pytest.approx(r[f"bicubic_{k}"], abs=1e-6)
    # Bicubic beats showing the low-res pixels as blocks, and the mean is of per-image PSNRs.
    lr = [m.low_res(t) for t in strips]
    near = torch.stack([M.psnr(nearest_upsample(a, 4), t)[0] for a, t in zip(lr, strips,
                                                                              strict=True)])
    bic = torch.stack([M.psnr(bicubic_upsample(a, 4), t)[0] for a, t in zip(lr, strips,
                                                                             strict=True)])
    assert float(bic.mean()) == pytest.approx(r["bicubic_psnr"], rel=1e-9)
    assert bool((bic > near).all())
    sq = sum(float((bicubic_upsample(a, 4) - t).double().square().sum())
             for a, t in zip(lr, strips, strict=True))
    mse = sq / sum(t.numel() for t in strips)
    assert r["bicubic_mse"] == pytest.approx(mse) and r["loss"] == r["mse"]
    assert r["bicubic_psnr_pooled"] == pytest.approx(-10 * torch.log10(torch.tensor(mse)).item())
    with pytest.raises(ValueError, match="no images"):
        m.evaluate([])


def _tc(steps):
    return _trainer.TrainConfig(steps=steps, batch_size=1, lr=1e-3, checkpoint_every=1,
                                sample_every=3, log_every=1)


def test_resume_across_the_phase_boundary(crops, tmp_path):
    """2 + 2 + 2 steps with two resumes (in pretraining, then in the GAN phase) equal 6
    straight steps bit for bit, logs included."""
    test = [crops.test_crops(24, 24)[::20]]  # a few crops: the strips' SSIMs are the slow part
    a = _model()
    _srgan_cli.fit(a, "srgan", crops, _tc(6), str(tmp_path / "a"), progress=False, test=test)
    b = _model()
    _srgan_cli.fit(b, "srgan", crops, _tc(2), str(tmp_path / "b"), progress=False, test=test)
    for steps in (4, 6):
        b = _model()
        _srgan_cli.fit(b, "srgan", crops, _tc(steps), str(tmp_path / "b"), resume=True,
                       progress=False, test=test)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)

    def records(d):
        with open(d / "metrics.jsonl") as f:
            return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in f]

    # A run that stops early also snapshots its last step (the trainer's rule): drop those.
    rb = [r for r in records(tmp_path / "b") if r["split"] == "train" or r["step"] % 3 == 0]
    assert records(tmp_path / "a") == rb
    assert [r["step"] for r in records(tmp_path / "a") if r["split"] == "test"] == [3, 6]
    assert (tmp_path / "a" / _srgan_cli.PRETRAIN_OUT).exists()


def test_cli_train_report_and_sample(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    net = _unet_features.PhotoFeatures().eval().requires_grad_(False)
    monkeypatch.setattr(_unet_features, "cached_feature_net",
                        lambda crops: (net, {"joint": 0.5, "rotation": 0.5, "photo": 0.5}))
    from genfast.cli import main

    out = tmp_path / "run"
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v!r}")]
    assert main(["train", "srgan", "--out", str(out), "--no-progress", *sets]) == 0
    text = capsys.readouterr().out
    assert "bicubic" in text and "SRResNet" in text and "SRGAN (after the GAN phase)" in text
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["figures"]) == 3 and rep["photos"] == ["china", "flower"]
    assert rep["headline"] == "psnr_pooled"
    # The headline PSNR printed first on each row is the pooled one.
    for row, v in rep["figures"].items():
        assert f"{row:<34} PSNR {v['psnr_pooled']:6.2f} dB" in text
    assert (out / "comparison.png").exists() and (out / "samples_step000003.png").exists()
    # A resume takes the config and the feature net from the checkpoint (no retraining).
    monkeypatch.setattr(_unet_features, "cached_feature_net", None)
    assert main(["train", "srgan", "--out", str(out), "--no-progress", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["figures"] == rep["figures"]
    png = tmp_path / "s.png"
    assert main(["sample", "srgan", "--checkpoint", str(out / "checkpoint.pt"), "--out",
                 str(png), "--n", "3"]) == 0
    text = capsys.readouterr().out
    assert png.exists() and "PSNR" in text and "bicubic" in text
    with pytest.raises(SystemExit, match="sets its steps"):
        main(["train", "srgan", "--steps", "5", "--out", str(out)])
    with pytest.raises(SystemExit, match="sample-every 2 must divide"):
        main(["train", "srgan", "--out", str(out), "--sample-every", "2", *sets])
    with pytest.raises(SystemExit, match="--data is not supported"):
        main(["train", "srgan", "--data", "x.npy", "--out", str(out)])
    with pytest.raises(SystemExit, match="hr_size must be a multiple"):
        main(["train", "srgan", "--out", str(out), "--set", "hr_size=30"])
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        main(["sample", "srgan"])
    with pytest.raises(SystemExit, match="--n must be >= 1"):
        main(["sample", "srgan", "--checkpoint", str(out / "checkpoint.pt"), "--n", "0"])


@pytest.mark.parametrize("bad, match", [
    (dict(scale=3), "power of 2"),
    (dict(scale=1), "scale must be an int >= 2"),
    (dict(hr_size=26), "multiple of scale"),
    (dict(hr_size=16), "SSIM window"),
    (dict(d_stages=4), "d_stages=4"),
    (dict(blocks=-1), "blocks"),
    (dict(batch=0), "batch"),
    (dict(pretrain_steps=0), "pretrain_steps"),
    (dict(gan_lr=0.0), "gan_lr"),
    (dict(d_lr=float("nan")), "d_lr"),
    (dict(adv_weight=-1e-3), "adv_weight"),
    (dict(feature_weights=(1.0, 2.0)), "3 floats"),
    (dict(pixel_weight=0.0, feature_weights=(0.0, 0.0, 0.0)), "no content loss"),
    (dict(bicubic_skip="yes"), "bicubic_skip"),
    (dict(blur=1), "blur must be True or False"),
    (dict(photos=["lena"]), "unknown photo"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        SRGANConfig(**{**TINY, **bad})


def test_registry_and_config_round_trip():
    assert REGISTRY["srgan"] is SRGAN and SRGAN.description
    cfg = SRGANConfig(**{**TINY, "photos": ["china"]})
    assert SRGANConfig(**json.loads(json.dumps(vars(cfg)))) == cfg
    assert set(_model().configure_optimizers(1e-3)) == {"g_pre", "g", "d"}

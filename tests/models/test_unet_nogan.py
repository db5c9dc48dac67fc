"""unet-nogan: the U-Net (SN + attention), the feature loss, the NoGAN schedule with its
progressive stages, each phase training, exact resume across stage / phase boundaries, the CLI,
and PSNR / SSIM against hand values. Tiny widths and crops keep it fast; the feature net is an
untrained one (training it is what cached_feature_net's own test checks, in a few steps)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genfast.data.photos import PhotoCrops
from genfast.models import REGISTRY, _trainer, _unet_cli, _unet_features
from genfast.models import _unet_metrics as M
from genfast.models._unet_net import UNet, critic
from genfast.models.unet_nogan import UNetNoGAN, UNetNoGANConfig, one_cycle
from genfast.nn.attention2d import SelfAttention2d

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(photos="sklearn", window=(32, 96), width=4, depth=2, critic_width=4,
            critic_blocks=1, stage_sizes=(16, 24, 32), stage_steps=(2, 2, 2),
            stage_batch=(4, 3, 2), critic_steps=2, gan_steps=4, gan_batch=2)


def _model(**kw):
    torch.manual_seed(0)
    return UNetNoGAN(UNetNoGANConfig(**{**TINY, **kw}))


@pytest.fixture(scope="module")
def crops():
    return PhotoCrops("sklearn", window=(32, 96))


def _sn_layers(m: nn.Module) -> int:
    return sum(hasattr(mod, "parametrizations") for mod in m.modules())


def test_unet_shapes_sn_and_attention():
    g, plain = UNet(1, 2, 8, 3), UNet(1, 2, 8, 3, spectral=False, attention=False)
    for s in (16, 24, 32):
        y = g(torch.rand(2, 1, s, s)).detach()
        assert y.shape == (2, 2, s, s) and float(y.abs().max()) <= 0.5
        assert plain(torch.rand(2, 1, s, s)).shape == (2, 2, s, s)
    assert isinstance(g.attention, SelfAttention2d) and plain.attention is None
    assert _sn_layers(g) > 8 and _sn_layers(plain) == 0
    with pytest.raises(ValueError, match="multiple of 8"):
        g(torch.rand(1, 1, 20, 20))
    c = critic(3, 8, 2)
    assert c(torch.rand(3, 3, 32, 32)).shape == (3, 1)  # 32 -> 16 -> 8 -> 4, k4 conv -> 1x1
    assert any(isinstance(m, SelfAttention2d) for m in c)


def test_progressive_schedule_and_stage_switch(crops):
    m = _model()
    assert m.total_steps == 12 and m.pretrain_steps == 6
    got = [m.phase_at(s)[0::3] for s in range(12)]
    assert got == [("pretrain", 16)] * 2 + [("pretrain", 24)] * 2 + [("pretrain", 32)] * 2 + \
        [("critic", 32)] * 2 + [("gan", 32)] * 4
    assert [m.phase_at(s)[4] for s in (0, 2, 4, 6, 8)] == [4, 3, 2, 2, 2]
    with pytest.raises(ValueError, match="past the schedule"):
        m.phase_at(12)
    opts = m.configure_optimizers(1e-3)
    with pytest.raises(ValueError, match=r"expects \(B, 3, 24, 24\)"):
        m.train_step(crops.train_batch(3, 16, 0, 2), opts, 2)
    # One-cycle: low start, peak at 25%, near zero at the end.
    assert one_cycle(0.0, 1.0) == pytest.approx(1 / 25)
    assert one_cycle(0.25, 1.0) == pytest.approx(1.0) and one_cycle(1.0, 1.0) < 1e-3


def test_feature_loss_finite_differentiable_and_frozen():
    torch.manual_seed(0)
    fl = _unet_features.FeatureLoss(_unet_features.PhotoFeatures(), (0.2, 0.7, 0.1))
    fl.train()
    assert not fl.net.training  # BatchNorm keeps its statistics
    x, t = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
    loss = fl(x, t)
    assert torch.isfinite(loss) and float(loss.detach()) > float(F.l1_loss(x, t).detach())
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gx).all() and float(gx.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in fl.net.parameters())
    assert float(fl.distance(t, t)) == 0.0
    assert fl.distance(x, t, reduce=False).shape == (2,)
    with pytest.raises(ValueError, match="one per block"):
        _unet_features.FeatureLoss(_unet_features.PhotoFeatures(), (1.0, 2.0))


def test_each_phase_trains(crops):
    m = _model(stage_steps=(12, 1, 1), critic_steps=10, gan_steps=10)
    opts = m.configure_optimizers(3e-3)
    x16 = crops.train_batch(4, 16, 0, 0)
    first = m.train_step(x16, opts, 3)  # same batch every step: the loss must fall
    for s in range(4, 11):
        last = m.train_step(x16, opts, s)
    assert float(last["g_loss"]) < float(first["g_loss"])
    assert float(last["base_loss"]) < float(first["base_loss"])
    x32 = crops.train_batch(2, 32, 0, 0)
    g_before = [p.detach().clone() for p in m.generator.parameters()]
    first = m.train_step(x32, opts, 14)  # critic pretraining: generator frozen
    for s in range(15, 24):
        last = m.train_step(x32, opts, s)
    assert float(last["c_loss"]) < float(first["c_loss"])
    assert all(torch.equal(a, b) for a, b in zip(g_before, m.generator.parameters(), strict=False))
    # GAN phase: the switcher gives the generator a step once the critic is under threshold.
    m.config.critic_thresh = 10.0
    assert int(m.gen_mode) == 0
    m.train_step(x32, opts, 24)  # a critic step, under threshold -> generator mode
    assert int(m.gen_mode) == 1
    out = m.train_step(x32, opts, 25)
    assert int(m.gen_mode) == 0 and float(out["adv"]) > 0
    assert not all(torch.equal(a, b)
                   for a, b in zip(g_before, m.generator.parameters(), strict=True))
    m.config.critic_thresh = 1e-9  # never under: the critic keeps training
    for s in range(26, 29):
        m.train_step(x32, opts, s)
    assert int(m.gen_mode) == 0


def _tc(steps):
    return _trainer.TrainConfig(steps=steps, batch_size=1, lr=1e-3, checkpoint_every=1,
                                sample_every=6, log_every=1)


def test_resume_across_stage_and_phase_boundaries(crops, tmp_path):
    """3 + 4 + 5 steps with two resumes (mid pretraining stage 2, then in the critic phase)
    equal 12 straight steps bit for bit, logs included."""
    a = _model()
    _unet_cli.fit(a, "unet-nogan", crops, _tc(12), str(tmp_path / "a"), progress=False)
    b = _model()
    _unet_cli.fit(b, "unet-nogan", crops, _tc(3), str(tmp_path / "b"), progress=False)
    for steps in (7, 12):
        b = _model()
        _unet_cli.fit(b, "unet-nogan", crops, _tc(steps), str(tmp_path / "b"), resume=True,
                      progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)

    def records(d):
        with open(d / "metrics.jsonl") as f:
            return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in f]

    # A run that stops early also snapshots its last step (the trainer's rule): drop those.
    rb = [r for r in records(tmp_path / "b") if r["split"] == "train" or r["step"] % 6 == 0]
    assert records(tmp_path / "a") == rb
    test = [r for r in records(tmp_path / "a") if r["split"] == "test"]
    assert [r["step"] for r in test] == [6, 12]
    for k in ("psnr", "ssim", "feat", "base_psnr", "grey_ssim"):
        assert math.isfinite(test[-1][k])
    assert (tmp_path / "a" / _unet_cli.PRETRAIN_OUT).exists()


def test_cli_train_report_and_sample(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    net = _unet_features.PhotoFeatures().eval().requires_grad_(False)
    monkeypatch.setattr(_unet_features, "cached_feature_net",
                        lambda crops: (net, {"joint": 0.5, "rotation": 0.5, "photo": 0.5}))
    from genfast.cli import main

    out = tmp_path / "run"
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v!r}")]
    assert main(["train", "unet-nogan", "--out", str(out), "--no-progress", *sets]) == 0
    text = capsys.readouterr().out
    assert "(a) plain U-Net baseline" in text and "(c) NoGAN generator after the GAN" in text
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["figures"]) == 4 and rep["photos"] == ["china", "flower"]
    assert (out / "before_after.png").exists() and (out / "samples_step000006.png").exists()
    # A resume takes the config and the feature net from the checkpoint (no retraining).
    monkeypatch.setattr(_unet_features, "cached_feature_net", None)
    assert main(["train", "unet-nogan", "--out", str(out), "--no-progress", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["figures"] == rep["figures"]
    png = tmp_path / "s.png"
    assert main(["sample", "unet-nogan", "--checkpoint", str(out / "checkpoint.pt"), "--out",
                 str(png), "--n", "3"]) == 0
    assert png.exists() and "PSNR" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="sets its steps"):
        main(["train", "unet-nogan", "--steps", "5", "--out", str(out)])
    with pytest.raises(SystemExit, match="sample-every 4 must divide"):
        main(["train", "unet-nogan", "--out", str(out), "--sample-every", "4", *sets])
    with pytest.raises(SystemExit, match="--data is not supported"):
        main(["train", "unet-nogan", "--data", "x.npy", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown photo"):
        main(["train", "unet-nogan", "--out", str(out), "--set", "photos=['lena']"])
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        main(["sample", "unet-nogan"])


def test_feature_net_trains_and_caches(tmp_path, monkeypatch):
    c = PhotoCrops("sklearn", window=(48, 96))
    net, acc = _unet_features.cached_feature_net(c, str(tmp_path), steps=3)
    assert set(acc) == {"joint", "rotation", "photo"} and len(list(tmp_path.iterdir())) == 1
    assert all(0.0 <= v <= 1.0 for v in acc.values()) and acc["joint"] <= acc["photo"]

    def boom(*a, **k):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(_unet_features, "train_feature_net", boom)
    net2, acc2 = _unet_features.cached_feature_net(c, str(tmp_path), steps=3)
    assert acc2 == acc
    for p, q in zip(net.state_dict().values(), net2.state_dict().values(), strict=False):
        assert torch.equal(p, q)


def test_psnr_ssim_hand_values():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    assert M.psnr(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0])  # MSE 0.01
    assert math.isinf(M.mean_psnr(x, x))
    # Constant images: zero variances, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.7, (0.01 * 1.0) ** 2
    s = M.ssim(torch.full((1, 1, 12, 12), a, dtype=torch.float64),
               torch.full((1, 1, 12, 12), b, dtype=torch.float64))
    assert float(s) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    assert M.ssim(x, x).tolist() == pytest.approx([1.0, 1.0])


def test_ssim_against_a_window_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 13, 14, generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(1, 1, 13, 14, generator=g, dtype=torch.float64)).clamp(0, 1)
    w, c1, c2, vals = M.gaussian_window(), 0.01 ** 2, 0.03 ** 2, []
    for i in range(13 - 10):
        for j in range(14 - 10):
            px, py = x[0, 0, i:i + 11, j:j + 11], y[0, 0, i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                        / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    assert float(M.ssim(x, y)) == pytest.approx(float(torch.stack(vals).mean()), rel=1e-10)


def test_ssim_matches_scikit_image():
    sk = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 24, 20, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 24, 20, generator=g)).clamp(0, 1)
    ours = M.ssim(x, y)
    for i in range(2):
        ref = sk.structural_similarity(
            x[i].permute(1, 2, 0).double().numpy(), y[i].permute(1, 2, 0).double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=2)
        assert float(ours[i]) == pytest.approx(ref, rel=1e-9)


def test_metric_errors():
    with pytest.raises(ValueError, match="one shape"):
        M.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="smaller than"):
        M.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="win_size"):
        M.ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), win_size=4)


@pytest.mark.parametrize("bad, match", [
    (dict(stage_steps=(1, 1)), "one entry per stage"),
    (dict(stage_sizes=(32, 24, 16)), "must not decrease"),
    (dict(stage_sizes=(16, 24, 30)), "multiples of 4"),
    (dict(stage_sizes=(8, 16, 20)), "multiple of 8"),
    (dict(critic_blocks=3), "critic_blocks=3"),
    (dict(window=(96, 32)), "window"),
    (dict(gen_weights=(1.0, -1.0)), "gen_weights"),
    (dict(gan_lr=0.0), "gan_lr"),
    (dict(stage_batch=(4, 0, 2)), "stage_batch"),
    (dict(photos=["lena"]), "unknown photo"),
    (dict(baseline="yes"), "baseline"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetNoGANConfig(**{**TINY, **bad})


def test_registry_and_config_round_trip():
    assert REGISTRY["unet-nogan"] is UNetNoGAN and UNetNoGAN.description
    cfg = UNetNoGANConfig(**{**TINY, "photos": ["china"]})
    assert UNetNoGANConfig(**json.loads(json.dumps(vars(cfg)))) == cfg
    m = UNetNoGAN(cfg)
    assert set(m.configure_optimizers(1e-3)) == {"g", "base", "c_pre", "g_gan", "c_gan"}
    assert not _model(baseline=False).baseline

"""PGGAN: equalised LR, pixel norm, minibatch stddev, the stage / alpha schedule, fade-in
endpoints of both networks, a few training steps at every stage, exact resume mid-fade, bad
configurations. Tiny widths keep the file fast; the FD-digits feature net is a random one."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from _resume import assert_resume_is_exact

from genfast.data import digits_split
from genfast.models import REGISTRY, _trainer
from genfast.models._pggan_net import (
    EqualizedConv2d,
    EqualizedLinear,
    minibatch_stddev,
    pixel_norm,
    schedule,
)
from genfast.models.pggan import PGGAN, PGGANConfig

SMALL = dict(z_dim=8, fmap_base=16, fmap_max=8, fd_samples=32, stabilize_steps=2, fade_steps=2,
             n_critic=1)

pytestmark = pytest.mark.usefixtures("one_thread", "random_feature_net")


@pytest.fixture(scope="module")
def digits16():
    train, test = digits_split(16)
    return train[:128], test[:32]


def _model(**kw) -> PGGAN:
    torch.manual_seed(0)
    m = PGGAN(PGGANConfig(**{**SMALL, **kw}))
    with torch.no_grad():  # non-zero biases, so a wrong path cannot hide behind zeros
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return m


def test_registry_config_round_trip_and_bad_configs():
    assert REGISTRY["pggan"] is PGGAN and PGGAN.description
    for k in ("steps", "batch_size", "lr"):
        assert k in PGGAN.train_defaults
    cfg = PGGANConfig(**SMALL)
    assert PGGANConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    d = PGGAN().config
    assert d.betas == (0.0, 0.99) and d.gp_weight == 10.0 and d.drift == 1e-3
    assert d.last_stage == 2 and PGGANConfig(image_shape=(1, 32, 32)).last_stage == 3
    # The default run reaches the final resolution and stabilises it.
    assert PGGAN.train_defaults["steps"] > d.growth_steps
    bad = [dict(image_shape=(1, 12, 12)), dict(image_shape=(1, 4, 4)),
           dict(image_shape=(1, 16, 8)), dict(image_shape=(0, 16, 16)), dict(z_dim=0),
           dict(stabilize_steps=0), dict(fade_steps=-1), dict(fade_steps=1.5),
           dict(mbstd_group=0), dict(betas=(0.0, 1.0)), dict(gp_weight=-1.0),
           dict(drift=math.nan), dict(ema_beta=1.0), dict(reset_optimizer="yes"),
           dict(fd_samples=1)]
    for kw in bad:
        field = next(iter(kw))
        with pytest.raises(ValueError, match=field):
            PGGANConfig(**kw)
    m = _model()
    with pytest.raises(ValueError, match="stage"):
        m.sample(2, stage=3)
    with pytest.raises(ValueError, match="group size 4 must divide the batch size 6"):
        m.discriminator(torch.zeros(6, 1, 4, 4), 0)


def test_equalized_lr_runtime_scale():
    torch.manual_seed(0)
    conv = EqualizedConv2d(6, 5, 3)
    fan_in = 6 * 3 * 3
    assert conv.scale == pytest.approx(math.sqrt(2.0 / fan_in))
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.15)  # N(0, 1), not He-scaled
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 7, 7)
    w_eff = (conv.weight * math.sqrt(2.0 / fan_in)).detach().requires_grad_()
    ref = F.conv2d(x, w_eff, conv.bias.detach(), padding=1)
    out = conv(x)
    torch.testing.assert_close(out, ref)
    # The stored weight's gradient is the effective weight's times the same constant: that is
    # what equalises Adam's relative step across layers of different fan-in.
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(conv.weight.grad, w_eff.grad * math.sqrt(2.0 / fan_in))

    lin = EqualizedLinear(10, 3, gain=1.0)
    assert lin.scale == pytest.approx(1.0 / math.sqrt(10))
    x = torch.randn(4, 10)
    torch.testing.assert_close(lin(x), x @ (lin.weight * 10 ** -0.5).T + lin.bias)


def test_pixel_norm():
    x = torch.randn(3, 7, 4, 5) * 5
    y = pixel_norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.square().mean(1), torch.ones(3, 4, 5))
    torch.testing.assert_close(pixel_norm(3.0 * x), y)  # scale-free per pixel
    torch.testing.assert_close(y, x / x.square().mean(1, keepdim=True).add(1e-8).sqrt())
    assert torch.equal(pixel_norm(torch.zeros(1, 2, 1, 1)), torch.zeros(1, 2, 1, 1))


def test_minibatch_stddev_shapes_and_values():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 4, 2, 2)
    assert torch.equal(y[:, :3], x)
    m = 8 // 4
    for n in range(8):
        group = x[n % m::m]  # samples n' with n' = g * M + m: the official grouping
        assert len(group) == 4
        expect = (group.var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[n, 3], expect.expand(2, 2))
    # group larger than the batch: the whole batch is one group
    y2 = minibatch_stddev(x[:3], 4)
    torch.testing.assert_close(y2[0, 3, 0, 0], (x[:3].var(0, unbiased=False) + 1e-8).sqrt().mean())
    # identical samples have (almost) no spread
    same = minibatch_stddev(x[:1].repeat(4, 1, 1, 1), 4)
    assert same[:, 3].max() < 1e-3
    with pytest.raises(ValueError, match="divide"):
        minibatch_stddev(x[:6], 4)


def test_schedule():
    got = [schedule(s, 2, 3, 2) for s in range(14)]
    stages = [g[0] for g in got]
    alphas = [g[1] for g in got]
    starts = [g[2] for g in got]
    assert stages == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert alphas == [1, 1, 1, 0.0, 0.5, 1, 1, 1, 0.0, 0.5, 1, 1, 1, 1]
    assert starts == [0, 0, 0, 3, 3, 5, 5, 5, 8, 8, 10, 10, 10, 10]
    # no fade: each stage switches on at once
    assert [schedule(s, 1, 2, 0)[:2] for s in range(5)] == [(0, 1.0), (0, 1.0), (1, 1.0),
                                                           (1, 1.0), (1, 1.0)]
    # long fades are linear in the step
    a = [schedule(s, 1, 10, 100)[1] for s in range(10, 110)]
    assert a[0] == 0.0 and a == pytest.approx([i / 100 for i in range(100)])
    m = _model()
    assert m.stage_alpha(5) == (1, 1.0) and m.stage_alpha(6) == (2, 0.0)
    with pytest.raises(ValueError):
        m.stage_alpha(-1)


@pytest.mark.parametrize("image", [16, 32])
def test_generator_fade_endpoints(image):
    m = _model(image_shape=(1, image, image))
    g = m.generator
    z = torch.randn(4, 8)
    with torch.no_grad():
        assert g(z, 0).shape == (4, 1, 4, 4)
        for k in range(1, m.config.last_stage + 1):
            lo = g(z, k - 1, 1.0)
            hi = g(z, k, 1.0)
            assert hi.shape == (4, 1, 4 * 2 ** k, 4 * 2 ** k)
            up = F.interpolate(lo, scale_factor=2, mode="nearest")
            torch.testing.assert_close(g(z, k, 0.0), up, rtol=0, atol=0)
            # alpha = 1 is the stage-k network alone, composed by hand
            h = g.base(z)
            for block in g.blocks[:k]:
                h = block(h)
            torch.testing.assert_close(hi, g.to_rgb[k](h), rtol=0, atol=0)
            torch.testing.assert_close(g(z, k, 1.0 - 1e-9), hi, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(g(z, k, 0.25), torch.lerp(up, hi, 0.25))
            assert not torch.allclose(up, hi)  # the endpoints differ: the test can fail


@pytest.mark.parametrize("image", [16, 32])
def test_discriminator_fade_endpoints(image):
    m = _model(image_shape=(1, image, image))
    d = m.discriminator
    with torch.no_grad():
        for k in range(1, m.config.last_stage + 1):
            x = torch.randn(8, 1, 4 * 2 ** k, 4 * 2 ** k)
            lo = d(F.avg_pool2d(x, 2), k - 1, 1.0)
            torch.testing.assert_close(d(x, k, 0.0), lo, rtol=0, atol=0)
            h = F.leaky_relu(d.from_rgb[k](x), 0.2)
            for block in reversed(d.blocks[:k]):
                h = block(h)
            hi = d.head(h)
            assert hi.shape == (8,)
            torch.testing.assert_close(d(x, k, 1.0), hi, rtol=0, atol=0)
            assert not torch.allclose(lo, hi)


def test_reals_at_stage():
    m = _model()
    x = torch.rand(4, 1, 16, 16)
    r0 = m.reals_at(x, 0, 1.0)
    torch.testing.assert_close(r0, F.avg_pool2d(x, 4))
    r1 = m.reals_at(x, 1, 1.0)
    torch.testing.assert_close(r1, F.avg_pool2d(x, 2))
    torch.testing.assert_close(m.reals_at(x, 1, 0.0),
                               F.interpolate(r0, scale_factor=2, mode="nearest"))
    assert torch.equal(m.reals_at(x, 2, 1.0), x)


def test_train_steps_every_stage(digits16):
    train, test = digits16
    m = _model()
    opts = m.configure_optimizers(1e-3)
    top = [p.detach().clone() for p in m.generator.blocks[1].parameters()]
    params0 = [p.detach().clone() for p in m.parameters()]
    seen = set()
    for step in range(10):  # 4x4 (0-1), fade 8 (2-3), 8x8 (4-5), fade 16 (6-7), 16x16 (8-9)
        out = m.train_step(train[16 * (step % 8):16 * (step % 8 + 1)], opts, step)
        assert all(math.isfinite(float(v)) for v in out.values()), out
        stage, alpha = m.stage_alpha(step)
        assert out["stage"] == stage and out["alpha"] == alpha
        seen.add((stage, alpha))
        if step == 5:  # the 16x16 block is untouched before its stage
            assert all(torch.equal(a, b) for a, b in zip(
                top, m.generator.blocks[1].parameters(), strict=True))
        if step in (2, 4, 6, 8):  # Adam restarted at the phase change (step counter 1)
            for opt in opts.values():
                assert opt.state and all(int(s["step"]) == 1 for s in opt.state.values())
        assert out["gp"] >= 0 and out["grad_norm"] > 0 and out["drift"] >= 0
    assert {(0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (2, 0.0), (2, 0.5), (2, 1.0)} <= seen
    assert not all(torch.equal(a, b) for a, b in zip(
        top, m.generator.blocks[1].parameters(), strict=True))
    assert sum(not torch.equal(a, b) for a, b in zip(params0, m.parameters(), strict=True)) > 10
    assert int(m.steps_done) == 10 and m.stage_alpha() == (2, 1.0)
    m.eval()
    s = m.sample(5)
    assert s.shape == (5, 1, 16, 16) and s.min() >= 0 and s.max() <= 1
    low = m.sample(3, stage=0)  # 4x4 samples shown as 4x4 blocks
    torch.testing.assert_close(low, F.interpolate(F.avg_pool2d(low, 4), scale_factor=4))
    ev = m.evaluate(test)
    assert ev["loss"] == ev["fd"] == ev["fd_stage"] and ev["resolution"] == 16
    assert math.isfinite(ev["fd"]) and ev["fd"] >= 0


def test_n_critic_schedule(digits16):
    train, _ = digits16
    m = _model(n_critic=2)
    opts = m.configure_optimizers(1e-3)
    for step in range(4):
        g0 = [p.detach().clone() for p in m.generator.parameters()]
        e0 = [p.detach().clone() for p in m.generator_ema.parameters()]
        d0 = [p.detach().clone() for p in m.discriminator.parameters()]
        m.train_step(train[16 * step:16 * (step + 1)], opts, step)
        g_moved = any(not torch.equal(a, b) for a, b in zip(g0, m.generator.parameters(),
                                                            strict=True))
        e_moved = any(not torch.equal(a, b) for a, b in zip(e0, m.generator_ema.parameters(),
                                                            strict=True))
        assert g_moved == e_moved == (step % 2 == 1), step
        assert any(not torch.equal(a, b) for a, b in zip(d0, m.discriminator.parameters(),
                                                         strict=True))


def test_evaluate_per_stage(digits16):
    _, test = digits16
    m = _model()
    m.steps_done.fill_(4)  # last step 3: stage 1, alpha 0.5
    ev = m.evaluate(test)
    assert (ev["stage"], ev["alpha"], ev["resolution"]) == (1.0, 0.5, 8.0)
    assert ev["fd"] != ev["fd_stage"] and ev["fd_stage"] >= 0


def test_resume_mid_fade_is_exact(digits16, tmp_path):
    train, test = digits16
    # stabilise 2, fade 3: the resume at step 3 lands mid-fade (alpha 1/3 next)
    make = lambda: _model(stabilize_steps=2, fade_steps=3, n_critic=2)  # noqa: E731
    assert make().stage_alpha(3) == (1, 1 / 3)
    tc = dict(batch_size=16, lr=1e-3, checkpoint_every=3, sample_every=3, log_every=1,
              n_samples=4)
    a, b = assert_resume_is_exact(make, "pggan", train, test, tc, tmp_path)
    assert (tmp_path / "a" / "samples_step000003.png").is_file()
    ckpt = _trainer.load_checkpoint(str(tmp_path / "b" / _trainer.CHECKPOINT))
    assert ckpt["model"] == "pggan" and ckpt["step"] == 6
    c = PGGAN(PGGANConfig(**ckpt["config"]))  # what `genfast sample` does
    c.load_state_dict(ckpt["state_dict"])
    assert c.stage_alpha() == b.stage_alpha() == (1, 1.0)
    c.eval()
    b.eval()
    torch.testing.assert_close(c.sample(4, generator=torch.Generator().manual_seed(3)),
                               b.sample(4, generator=torch.Generator().manual_seed(3)))

"""DCGAN, SN-GAN, WGAN-GP: a few CPU training steps, the critic schedule, exact checkpoint
resume through the trainer, and the truncation trick. Small widths keep the file fast; the
FD-digits feature net is replaced by an untrained one (test_fid.py covers the real one)."""

import dataclasses
import json
import math

import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.data import digits_split
from genfast.models import REGISTRY, _trainer
from genfast.models._gan import truncated_normal
from genfast.models.dcgan import DCGAN
from genfast.models.sngan import SNGAN
from genfast.models.wgan_gp import WGANGP

NAMES = {"dcgan": DCGAN, "sngan": SNGAN, "wgan-gp": WGANGP}
SMALL = dict(g_width=8, d_width=8, z_dim=16, fd_samples=64)


pytestmark = pytest.mark.usefixtures("one_thread", "random_feature_net")


@pytest.fixture(scope="module")
def digits16():
    train, test = digits_split(16)
    return train[:256], test[:64]


def _model(name, **kw):
    cls = REGISTRY[name]
    torch.manual_seed(0)
    return cls(cls.config_cls(**{**SMALL, **kw}))


def test_registry_and_config_round_trip():
    for name, cls in NAMES.items():
        assert REGISTRY[name] is cls and cls.description
        cfg = cls.config_cls(**SMALL)
        as_json = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples become lists
        assert cls.config_cls(**as_json) == cfg
        for k in ("steps", "batch_size", "lr"):
            assert k in cls.train_defaults
    assert SNGAN().config.betas == (0.0, 0.9) and WGANGP().config.betas == (0.0, 0.9)
    assert WGANGP().config.n_critic == 5 and WGANGP().config.gp_weight == 10.0
    with pytest.raises(ValueError):
        DCGAN(DCGAN.config_cls(image_shape=(1, 12, 12)))


@pytest.mark.parametrize("name", list(NAMES))
def test_train_steps_finite_and_shapes(name, digits16):
    train, test = digits16
    m = _model(name, n_critic=2)
    opts = m.configure_optimizers(2e-4)
    assert set(opts) == {"d", "g"}
    g0 = [p.detach().clone() for p in m.generator.parameters()]
    out = m.train_step(train[:16], opts, 0)  # discriminator only (n_critic=2)
    assert all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters(), strict=True))
    for step in range(1, 4):
        out = m.train_step(train[16 * step:16 * (step + 1)], opts, step)
        assert all(math.isfinite(v) for v in out.values()), out
        # 0-dim tensors, read by the trainer once per log: no host sync per step
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values()), out
    assert not all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters(), strict=True))
    if name == "wgan-gp":
        assert out["gp"] >= 0 and out["grad_norm"] > 0
    raw = m.generator(m.latent(5))
    assert raw.shape == (5, 1, 16, 16) and raw.abs().max() <= 1
    m.eval()
    s = m.sample(7)
    assert s.shape == (7, 1, 16, 16) and s.min() >= 0 and s.max() <= 1
    ev = m.evaluate(test)
    assert ev["loss"] == ev["fd"] and math.isfinite(ev["fd"]) and ev["fd"] >= 0


def test_32x32_builds():
    m = _model("dcgan", image_shape=(1, 32, 32))
    assert m.sample(2).shape == (2, 1, 32, 32)
    assert m.discriminator(torch.zeros(3, 1, 32, 32)).shape == (3,)
    for d in ("dcgan", "sngan-cnn"):
        m = _model("sngan", image_shape=(1, 32, 32), discriminator=d)
        assert m.discriminator(torch.zeros(3, 1, 32, 32)).shape == (3,)
        # every discriminator weight is spectrally normalised (parametrization state keys)
        keys = m.discriminator.state_dict().keys()
        n_weights = sum(isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))
                        for x in m.discriminator.modules())
        assert sum(k.endswith("parametrizations.weight.original") for k in keys) == n_weights
    with pytest.raises(ValueError):
        _model("sngan", discriminator="resnet")


@pytest.mark.parametrize("name", list(NAMES))
def test_resume_is_exact(name, digits16, tmp_path):
    train, test = digits16
    tc = dict(batch_size=16, lr=2e-4, checkpoint_every=3, sample_every=3, log_every=1,
              n_samples=4)
    a, b = assert_resume_is_exact(lambda: _model(name, n_critic=2), name, train, test, tc,
                                  tmp_path)
    assert (tmp_path / "a" / "samples_step000006.png").is_file()
    ckpt = _trainer.load_checkpoint(str(tmp_path / "b" / _trainer.CHECKPOINT))
    assert ckpt["model"] == name and ckpt["step"] == 6 and set(ckpt["optimizers"]) == {"d", "g"}
    # What `genfast sample` does: rebuild from the stored config and load the weights.
    cls = REGISTRY[name]
    c = cls(cls.config_cls(**ckpt["config"]))
    c.load_state_dict(ckpt["state_dict"])
    c.eval()
    b.eval()
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(c.sample(4, generator=g),
                               b.sample(4, generator=torch.Generator().manual_seed(3)))


def test_truncated_normal_distribution():
    g = torch.Generator().manual_seed(0)
    for psi in (0.05, 1.0, 2.0, 9.0):
        z = truncated_normal((200_000,), psi, generator=g)
        assert z.abs().max() <= psi and torch.isfinite(z).all()
        a = math.exp(-psi ** 2 / 2) / math.sqrt(2 * math.pi)  # phi(psi)
        var = 1 - 2 * psi * a / math.erf(psi / math.sqrt(2))  # variance of N(0,1) | |z|<=psi
        assert abs(z.mean().item()) < 0.01 * max(psi, 0.1)
        assert z.var().item() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("mode", ["resample", "interpolate"])
def test_truncation_reduces_diversity(mode):
    m = _model("dcgan").eval()

    def spread(psi):
        x = m.sample(256, truncation=psi, truncation_mode=mode,
                     generator=torch.Generator().manual_seed(1))
        return x.var(0).sum().item()

    psis = [None, 2.0, 1.0, 0.5, 0.1] if mode == "resample" else [None, 0.75, 0.5, 0.25, 0.0]
    spreads = [spread(p) for p in psis]
    assert all(a > b for a, b in zip(spreads, spreads[1:], strict=False)), spreads
    assert spreads[-1] < 0.1 * spreads[0]
    z = m.latent(500, truncation=0.5, truncation_mode=mode)
    assert z.shape == (500, m.config.z_dim, 1, 1) and z.abs().max() <= (
        0.5 if mode == "resample" else 0.5 * 6)
    if mode == "interpolate":  # psi = 1 is the untruncated draw
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(m.sample(8, truncation=1.0, truncation_mode=mode, generator=g1),
                                   m.sample(8, generator=g2))
    with pytest.raises(ValueError):
        m.sample(2, truncation=0.0)  # resample threshold must be > 0
    with pytest.raises(ValueError):
        m.sample(2, truncation=0.5, truncation_mode="nope")

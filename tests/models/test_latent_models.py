"""Autoencoder, VAE, conv VAE, AAE: the loss falls, the ELBO / IWAE estimators against the exact
likelihood of a linear-Gaussian VAE, the conv output-size check against torch's layers, exact
checkpoint resume through the trainer, samples, latent maps and the CLI. The FD-digits feature
net is replaced by an untrained one (test_fid.py covers the real one)."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.cli import main
from genfast.data import digits_split
from genfast.models import REGISTRY, _trainer, fid
from genfast.models._latent import (
    LatentConfig,
    build_decoder,
    build_encoder,
    check_round_trip,
    conv_out,
    deconv_out,
    elbo_iwae,
)
from genfast.models._latent_map import digits_test_labels, project_2d, write_latent_map
from genfast.models.aae import AAE, AAEConfig
from genfast.models.autoencoder import Autoencoder, AutoencoderConfig, ConvAutoencoderConfig
from genfast.models.conv_vae import ConvVAEConfig
from genfast.models.vae import VAE, VAEConfig

NAMES = ["autoencoder", "conv-autoencoder", "vae", "conv-vae", "aae"]
SMALL = dict(hidden=(32,), channels=(8, 16), fd_samples=32, latent_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread", "random_feature_net")


@pytest.fixture(scope="module")
def digits():
    train, test = digits_split()
    return train[:400], test[:64]


def _model(name, **kw):
    cls = REGISTRY[name]
    torch.manual_seed(0)
    return cls(cls.config_cls(**{**SMALL, **kw}))


def test_registry_configs_and_bad_arguments():
    for name in NAMES:
        cls = REGISTRY[name]
        assert cls.description and {"steps", "batch_size", "lr"} <= set(cls.train_defaults)
        cfg = cls.config_cls(**SMALL)
        assert cls.config_cls(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    assert REGISTRY["conv-vae"]().config.arch == "conv"
    assert REGISTRY["conv-autoencoder"]().config.arch == "conv"
    bad = [(VAEConfig, dict(latent_dim=0), "latent_dim"), (VAEConfig, dict(beta=-1), "beta"),
           (VAEConfig, dict(iwae_samples=0), "iwae_samples"),
           (VAEConfig, dict(likelihood="poisson"), "likelihood"),
           (VAEConfig, dict(sigma=0.0), "sigma"), (VAEConfig, dict(arch="rnn"), "arch"),
           (VAEConfig, dict(image_shape=(1, 8)), "image_shape"),
           (AutoencoderConfig, dict(code="tanh"), "code"),
           (AAEConfig, dict(code="sigmoid"), "code"),
           (AAEConfig, dict(disc_hidden=()), "disc_hidden"),
           (ConvVAEConfig, dict(channels=()), "channels")]
    for cls, kw, arg in bad:
        with pytest.raises(ValueError, match=arg):
            cls(**kw)


def test_seed_autoencoder_is_sigmoid_of_a_linear_map():
    m = Autoencoder(AutoencoderConfig(hidden=(), latent_dim=5))
    x = torch.rand(3, 1, 8, 8)
    (lin,) = [mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.Linear)]
    torch.testing.assert_close(m.encode(x), torch.sigmoid(x.flatten(1) @ lin.weight.T + lin.bias))


def test_output_size_formulas_match_torch():
    x = torch.zeros(1, 1, 11, 11)
    for k, s, p in itertools.product((1, 2, 3, 4, 5), (1, 2, 3), (0, 1, 2)):
        n = conv_out(11, k, s, p)
        assert torch.nn.Conv2d(1, 1, k, s, p)(x).shape[-1] == n
        for op in range(s):
            y = torch.nn.ConvTranspose2d(1, 1, k, s, p, op)(torch.zeros(1, 1, n, n))
            assert y.shape[-1] == deconv_out(n, k, s, p, op)


def test_conv_check_accepts_exactly_what_round_trips():
    """Every small (k, s, p, output_padding) either fails the check with a ValueError, or
    builds nets whose decoder returns the image size."""
    accepted = 0
    for k, s, p in itertools.product((2, 3, 4, 5), (1, 2, 3), (0, 1, 2)):
        for op in range(s):
            kw = dict(arch="conv", channels=(2, 3), kernel_size=k, stride=s, padding=p,
                      output_padding=op, image_shape=(1, 8, 8), latent_dim=2)
            try:
                c = LatentConfig(**kw)
            except ValueError as e:
                assert "round-trip" in str(e) or "vanish" in str(e), e
                continue
            accepted += 1
            h = build_encoder(c, 2)(torch.rand(2, 1, 8, 8))
            assert build_decoder(c)(h).shape == (2, 1, 8, 8)
    assert accepted >= 5


def test_conv_check_names_the_arguments():
    with pytest.raises(ValueError, match=r"kernel_size=3.*8 -> 4 -> 2.*2 -> 3 -> 5"):
        ConvVAEConfig(kernel_size=3)
    ConvVAEConfig(kernel_size=3, output_padding=1)  # 2 -> 4 -> 8
    with pytest.raises(ValueError, match="vanish"):
        ConvAutoencoderConfig(channels=(4, 4, 4, 4))  # 8 -> 4 -> 2 -> 1 -> 0
    with pytest.raises(ValueError, match="output_padding"):
        ConvVAEConfig(output_padding=2)
    with pytest.raises(ValueError, match="stride"):
        check_round_trip(8, 2, 4, 0, 1)
    assert REGISTRY["conv-vae"](ConvVAEConfig(image_shape=(1, 16, 8), channels=(4, 8, 8))
                                ).sample(2).shape == (2, 1, 16, 8)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_and_samples_are_images(name, digits):
    train, test = digits
    m = _model(name)
    opts = m.configure_optimizers(3e-3)
    losses = [m.train_step(train[(50 * s) % 400:][:50], opts, s)["loss"] for s in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    m.eval()
    s = m.sample(7, generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, 1, 8, 8) and s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s, m.sample(7, generator=torch.Generator().manual_seed(1)))
    assert m.reconstruct(test[:5]).shape == (5, 1, 8, 8)
    ev = m.evaluate(test)
    assert 0 < ev["mse"] < 0.25 and ev["fd"] >= 0 and ev["loss"] > 0
    if "vae" in name:
        assert ev["iwae"] <= ev["loss"] + 0.05 and ev["kl"] > 0
        assert ev["loss"] == pytest.approx(ev["recon"] + ev["kl"])


def _linear_gaussian_vae(exact_posterior: bool):
    """p(z) = N(0, I_2), p(x|z) = N(Wz + b, s^2 I_4): the marginal is N(b, W W^T + s^2 I).
    W has orthogonal columns, so the true posterior is a diagonal Gaussian the encoder's
    linear (mu, logvar) head can express exactly."""
    s = 0.5
    m = VAE(VAEConfig(image_shape=(1, 2, 2), latent_dim=2, hidden=(), likelihood="gaussian",
                      sigma=s)).double()
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    w, b = q * torch.tensor([1.5, 0.7], dtype=torch.float64), torch.linspace(-1, 1, 4).double()
    dec, enc = m.decoder[0], m.encoder[1]
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        if exact_posterior:
            prec = 1 + (w * w).sum(0) / s**2  # diag of I + W^T W / s^2
            a = (w / s**2 / prec).T
            enc.weight.copy_(torch.cat([a, torch.zeros_like(a)]))
            enc.bias.copy_(torch.cat([-a @ b, -prec.log()]))
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(4))
    return m, marginal


def test_elbo_and_iwae_against_the_exact_log_likelihood():
    g = torch.Generator().manual_seed(1)
    m, marginal = _linear_gaussian_vae(exact_posterior=True)
    x = marginal.sample((50,)).view(50, 1, 2, 2)
    log_px = marginal.log_prob(x.flatten(1))
    # q is the posterior: every log weight equals log p(x), and so does the ELBO (whose
    # reconstruction term is a k-sample Monte Carlo mean, so only close).
    b = m.bounds(x, k=4000, generator=g)
    torch.testing.assert_close(b["iwae"], log_px, rtol=0, atol=1e-9)
    torch.testing.assert_close(b["elbo"], log_px, rtol=0, atol=0.05)

    m, marginal = _linear_gaussian_vae(exact_posterior=False)  # a random encoder
    x = marginal.sample((200,)).view(200, 1, 2, 2)
    log_px = marginal.log_prob(x.flatten(1)).mean()
    iw = {k: m.bounds(x, k=k, generator=g) for k in (1, 8, 64, 4096)}
    elbo = iw[1]["elbo"].mean()
    assert elbo < log_px - 1.0  # a poor q: a loose bound
    means = [iw[k]["iwae"].mean() for k in (1, 8, 64, 4096)]
    assert means[0] == pytest.approx(elbo.item(), abs=0.5)  # IWAE_1 is the ELBO in expectation
    assert all(a < c for a, c in zip(means, means[1:], strict=False)), means
    assert means[2] <= log_px and means[3] <= log_px + 0.05
    assert means[3] > log_px - 0.5


def test_iwae_is_at_least_the_mean_log_weight():
    log_w = torch.randn(16, 100, generator=torch.Generator().manual_seed(0)) * 3
    elbo, iwae = elbo_iwae(log_w)
    assert (iwae >= elbo - 1e-6).all()
    torch.testing.assert_close(elbo_iwae(log_w[:1])[1], log_w[0])


def test_adversarial_phase_moves_codes_to_the_prior(digits):
    train, test = digits
    runs = {}
    for name, cls in (("aae", AAE), ("ae", Autoencoder)):
        torch.manual_seed(0)
        m = cls(AutoencoderConfig(**{**SMALL, "code": "linear"}) if name == "ae"
                else AAEConfig(**SMALL))
        opts = m.configure_optimizers(2e-3)
        for step in range(150):
            m.train_step(train[(50 * step) % 400:][:50], opts, step)
        h = m.codes(test)
        runs[name] = fid.frechet_distance(*fid.gaussian_stats(h), torch.zeros(4), torch.eye(4))
    assert runs["aae"] < 0.5 * runs["ae"], runs


def test_aae_spectral_norm_discriminator(digits):
    m = _model("aae", spectral_norm=True)
    keys = m.discriminator.state_dict().keys()
    assert sum(k.endswith("parametrizations.weight.original") for k in keys) == 3
    out = m.train_step(digits[0][:32], m.configure_optimizers(1e-3), 0)
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_exact(name, digits, tmp_path):
    train, test = digits
    tc = dict(batch_size=32, lr=1e-3, checkpoint_every=3, sample_every=3, log_every=1,
              n_samples=4)
    a, b = assert_resume_is_exact(lambda: _model(name), name, train, test, tc, tmp_path)
    ckpt = _trainer.load_checkpoint(str(tmp_path / "b" / _trainer.CHECKPOINT))
    cls = REGISTRY[name]
    c = cls(cls.config_cls(**ckpt["config"]))
    c.load_state_dict(ckpt["state_dict"])
    c.eval()
    b.eval()
    torch.testing.assert_close(c.sample(4, generator=torch.Generator().manual_seed(3)),
                               b.sample(4, generator=torch.Generator().manual_seed(3)))


def test_latent_map(digits, tmp_path):
    _, test = digits
    z = torch.randn(100, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [5.0, 3.0, 0.1, 0.1, 0.1])
    pts, kept = project_2d(z)
    assert pts.shape == (100, 2) and 0.99 < kept <= 1.0
    assert torch.equal(project_2d(z[:, :2])[0], z[:, :2].double())
    labels = digits_test_labels()
    assert len(labels) == len(digits_split()[1]) and set(labels.tolist()) == set(range(10))
    m = _model("vae", latent_dim=2)
    path = write_latent_map(m, test, tmp_path / "map.png", labels[:len(test)])
    assert (tmp_path / "map.png").stat().st_size > 1000 and m.training
    write_latent_map(_model("aae"), test, tmp_path / "pca.png")  # no labels, 4-d codes
    with pytest.raises(ValueError, match="labels"):
        write_latent_map(m, test, path, labels[:3])


def test_cli_train_then_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "conv-vae", "--steps", "10", "--out", str(out), "--no-progress",
                 "--sample-every", "10", "--checkpoint-every", "10", "--batch-size", "50"]) == 0
    assert "iwae=" in capsys.readouterr().out
    assert (out / "samples_step000010.png").exists()
    assert (out / "latent_map.png").stat().st_size > 1000  # the held-out codes, by class
    png = tmp_path / "s.png"
    assert main(["sample", "conv-vae", "--checkpoint", str(out / "checkpoint.pt"),
                 "--out", str(png), "--n", "9"]) == 0
    assert png.stat().st_size > 100

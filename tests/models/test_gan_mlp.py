"""The MLP GAN (Goodfellow et al. 2014): config errors, architecture, both generator losses
(and why the saturating one stalls), Algorithm 1's k discriminator steps, the mode-coverage
rule on planted and real inputs, its figure, exact resume and the CLI. Tiny widths keep the
file fast; the FD-digits net is an untrained one except where the real classifier is the
point (mode coverage of real digits)."""

import dataclasses
import json
import math

import pytest
import torch
from _resume import _records

from genfast.cli import main
from genfast.data import digits_split, load_digits
from genfast.models import REGISTRY, _trainer, fid
from genfast.models.gan import (
    COVERAGE_SHARE,
    GANMLPConfig,
    VanillaGAN,
    coverage_figure,
    fit,
    g_loss_of,
    mode_coverage,
)

SMALL = dict(g_hidden=(16, 32), d_hidden=(32, 16), z_dim=8, fd_samples=64)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits16():
    train, test = digits_split(16)
    return train[:256], test[:64]


def _model(**kw):
    torch.manual_seed(0)
    return VanillaGAN(GANMLPConfig(**{**SMALL, **kw}))


def test_registry_defaults_and_config_errors():
    assert REGISTRY["gan"] is VanillaGAN and VanillaGAN.description
    d = GANMLPConfig()
    assert (d.z_dim, d.g_hidden, d.d_hidden, d.betas, d.n_critic, d.g_loss) == (
        100, (128, 256, 512, 1024), (512, 256), (0.5, 0.999), 1, "non-saturating")
    assert VanillaGAN.train_defaults["lr"] == 2e-4 and VanillaGAN.train_defaults["batch_size"] == 64
    cfg = GANMLPConfig(**SMALL, g_loss="saturating", n_critic=3)
    assert GANMLPConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    for bad in (dict(g_loss="minimax"), dict(g_hidden=()), dict(d_hidden=(8, 0)),
                dict(g_hidden=16), dict(n_critic=0), dict(image_shape=(1, 12, 12))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GANMLPConfig(**{**SMALL, **bad})


def test_architecture_is_the_reference_mlp():
    m = VanillaGAN()
    lin = [x for x in m.generator.modules() if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [
        (100, 128), (128, 256), (256, 512), (512, 1024), (1024, 256)]
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in m.generator.modules()) == 3
    lin = [x for x in m.discriminator.modules() if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(256, 512), (512, 256), (256, 1)]
    x = m.generator(m.latent(5))
    assert x.shape == (5, 1, 16, 16) and x.abs().max() <= 1
    assert m.discriminator(x).shape == (5,)
    assert _model(image_shape=(1, 8, 8)).sample(3).shape == (3, 1, 8, 8)


def test_saturating_gradient_vanishes_where_non_saturating_does_not():
    """Goodfellow 2014 section 3: when D rejects the samples (logit << 0), log(1 - D(G(z)))
    has a vanishing gradient, -log D(G(z)) a strong one; both are minimised at D -> 1."""
    for logit, sat_grad, ns_grad in ((-8.0, -3.4e-4, -1.0), (0.0, -0.5, -0.5),
                                     (8.0, -1.0, -3.4e-4)):
        grads = {}
        for kind in ("saturating", "non-saturating"):
            lg = torch.tensor([logit], requires_grad=True)
            g_loss_of(kind, lg).backward()
            grads[kind] = lg.grad.item()
        assert grads["saturating"] == pytest.approx(sat_grad, rel=0.01, abs=1e-5)
        assert grads["non-saturating"] == pytest.approx(ns_grad, rel=0.01, abs=1e-5)
    lg = torch.tensor([-2.0, 1.0])
    assert g_loss_of("saturating", lg).item() == pytest.approx(
        torch.log1p(-torch.sigmoid(lg)).mean().item())
    assert g_loss_of("non-saturating", lg).item() == pytest.approx(
        -torch.log(torch.sigmoid(lg)).mean().item())


@pytest.mark.usefixtures("random_feature_net")
@pytest.mark.parametrize("g_loss", ["non-saturating", "saturating"])
def test_losses_move_as_they_should(g_loss, digits16):
    train, test = digits16
    # Discriminator alone (G never updated within 40 steps): it learns to tell real from fake.
    m = _model(g_loss=g_loss, n_critic=1000)
    opts = m.configure_optimizers(1e-3)
    outs = [m.train_step(train[16 * (s % 16):16 * (s % 16 + 1)], opts, s) for s in range(40)]
    assert outs[0]["d_loss"] > 1.2 and outs[-1]["d_loss"] < 0.5 * outs[0]["d_loss"]
    assert outs[-1]["d_real"] > 0 > outs[-1]["d_fake"]
    # Generator alone against that fixed discriminator: its loss falls (either form).
    z = m.latent(64)
    before = m.g_loss(m.discriminator(m.generator(z))).item()
    for _ in range(15):
        loss = m.g_loss(m.discriminator(m.generator(z)))
        opts["g"].zero_grad()
        loss.backward()
        opts["g"].step()
    assert m.g_loss(m.discriminator(m.generator(z))).item() < before - 0.05
    # The alternating game runs and stays finite.
    m = _model(g_loss=g_loss)
    opts = m.configure_optimizers(2e-4)
    for s in range(4):
        out = m.train_step(train[16 * s:16 * (s + 1)], opts, s)
        assert all(isinstance(v, torch.Tensor) and math.isfinite(v) for v in out.values())
    ev = m.eval().evaluate(test)
    assert ev["loss"] == ev["fd"] >= 0 and 0 <= ev["modes"] <= 10
    assert sum(ev[f"class_{k}"] for k in range(10)) == pytest.approx(ev["confident"])


def test_k_discriminator_steps_per_generator_step(digits16):
    train, _ = digits16
    m = _model(n_critic=3)
    opts = m.configure_optimizers(1e-3)
    updated = []
    for s in range(7):
        g0 = [p.detach().clone() for p in m.generator.parameters()]
        d0 = [p.detach().clone() for p in m.discriminator.parameters()]
        m.train_step(train[16 * s:16 * (s + 1)], opts, s)
        assert not all(torch.equal(a, b) for a, b in zip(d0, m.discriminator.parameters(),
                                                         strict=True))
        if not all(torch.equal(a, b) for a, b in zip(g0, m.generator.parameters(), strict=True)):
            updated.append(s)
    assert updated == [2, 5]


def test_mode_coverage_rule_on_planted_probabilities():
    def onehot(counts, conf=0.95):
        rows = []
        for k, c in enumerate(counts):
            p = torch.full((c, 10), (1 - conf) / 9)
            p[:, k] = conf
            rows.append(p)
        return torch.cat(rows)

    # 1000 samples: the threshold is 1/4 of the uniform share, 25 samples.
    probs = onehot([600, 25, 24, 351])
    covered, frac = mode_coverage(probs)
    assert covered == 3 and COVERAGE_SHARE == 0.25  # 600, 25 and 351; not 24
    assert frac.tolist()[:4] == [0.6, 0.025, 0.024, 0.351] and frac[4:].sum() == 0
    # Unconfident samples count for no class.
    covered, frac = mode_coverage(torch.cat([onehot([100] * 5), onehot([100] * 5, conf=0.5)]))
    assert covered == 5 and frac.sum().item() == pytest.approx(0.5)
    assert mode_coverage(onehot([100] * 10))[0] == 10
    with pytest.raises(ValueError, match="share"):
        mode_coverage(probs, share=0.0)
    with pytest.raises(ValueError, match="probabilities"):
        mode_coverage(torch.zeros(5))


def test_mode_coverage_of_real_digits_counts_their_classes(tmp_path):
    """The embedded classifier (trained once and cached) on held-out digits of 3 classes."""
    x, y = load_digits(16)
    keep = (y == 1) | (y == 4) | (y == 7)
    covered, frac = mode_coverage(fid.classify(x[keep]))
    assert covered == 3 and (frac >= COVERAGE_SHARE / 10).nonzero().flatten().tolist() == [1, 4, 7]
    assert frac[[1, 4, 7]].sum() > 0.8  # the rest: below the 0.9 confidence, or another class
    assert mode_coverage(fid.classify(x))[0] == 10
    path = coverage_figure(frac, covered, str(tmp_path / "c.png"), "planted")
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 200 and im.mode == "RGB"


def _resume_check(make, name, train, test, tc, tmp_path):
    a = make()
    fit(a, name, train, test, _trainer.TrainConfig(steps=6, **tc), tmp_path / "a",
        progress=False)
    b = make()
    fit(b, name, train, test, _trainer.TrainConfig(steps=3, **tc), tmp_path / "b",
        progress=False)
    b = make()
    fit(b, name, train, test, _trainer.TrainConfig(steps=6, **tc), tmp_path / "b",
        resume=True, progress=False)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0, msg=k)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


@pytest.mark.usefixtures("random_feature_net")
def test_resume_is_exact_and_snapshots_write_figures(digits16, tmp_path):
    train, test = digits16
    tc = dict(batch_size=16, lr=2e-4, checkpoint_every=3, sample_every=3, log_every=1,
              n_samples=4)
    _resume_check(lambda: _model(n_critic=2), "gan", (train, None), (test, None), tc, tmp_path)
    for d in ("a", "b"):
        for step in (3, 6):
            assert (tmp_path / d / f"samples_step{step:06d}.png").is_file()
            assert (tmp_path / d / f"coverage_step{step:06d}.png").is_file()


@pytest.mark.usefixtures("random_feature_net")
def test_cli_train_resume_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "gan", "--out", str(out), "--batch-size", "16", "--no-progress",
              "--sample-every", "2", "--checkpoint-every", "2"]
    assert main([*common, "--steps", "2", "--set", "g_hidden=(16, 32)", "--set",
                 "d_hidden=(16,)", "--set", "z_dim=8", "--set", "fd_samples=32",
                 "--set", "g_loss=saturating"]) == 0
    # The resumed run takes its config from the checkpoint (no --set repeated).
    assert main([*common, "--steps", "4", "--resume"]) == 0
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 4 and ckpt["config"]["g_loss"] == "saturating"
    assert "modes=" in capsys.readouterr().out
    assert main(["sample", "gan", "--checkpoint", str(out / "checkpoint.pt"), "--n", "6",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit, match="g_loss"):
        main(["train", "gan", "--out", str(tmp_path / "x"), "--set", "g_loss=wasserstein"])

"""Controllable GAN (`genfast control`): the penalised step is the documented closed form, the
gradient and linear edits raise the target score monotonically for small steps, the penalty
reduces how far the other attributes move, the generator is left untouched, and the CLI
writes its strip and rejects bad input. A small DCGAN generator (BatchNorm statistics
calibrated, so its samples vary) and a fixed linear classifier stand in for trained ones."""

import dataclasses

import pytest
import torch
from torch import nn

from genfast.cli import main
from genfast.models import _control
from genfast.models._trainer import CHECKPOINT_FORMAT, save_checkpoint
from genfast.models.dcgan import DCGAN

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(g_width=8, d_width=8, z_dim=16, fd_samples=64)


@pytest.fixture(scope="module")
def gan():
    torch.manual_seed(0)
    m = DCGAN(DCGAN.config_cls(**SMALL))
    for mod in m.generator.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None  # running statistics = the batch's: outputs of unit scale
    with torch.no_grad():
        m.generator(m.latent(256))
    return m


@pytest.fixture(scope="module")
def clf():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        net[1].weight.normal_(0.0, 1.0)
    return net.eval().requires_grad_(False)


def test_penalised_direction_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 10, 16, generator=g, dtype=torch.float64)
    for penalty in (0.0, 0.5, 20.0):
        d = _control.penalised_direction(grads, 4, penalty)
        o = torch.cat([grads[:, :4], grads[:, 5:]], 1)
        m = torch.eye(16, dtype=torch.float64) + penalty * o.transpose(1, 2) @ o
        torch.testing.assert_close(d, torch.linalg.solve(m, grads[:, 4]))
        assert bool(((d * grads[:, 4]).sum(1) > 0).all())  # the target's gain is positive
    # A large penalty leaves (almost) only the part of g orthogonal to the others' gradients.
    d = _control.penalised_direction(grads, 4, 1e8)
    assert float((o @ d[:, :, None]).abs().max()) < 1e-5


@pytest.mark.parametrize("penalty", [0.0, 1.0, 10.0])
def test_gradient_edit_raises_the_target_monotonically(gan, clf, penalty):
    p = _control.control(gan, 3, method="gradient", points=6, step_size=0.05,
                         penalty=penalty, n=16, classifier=clf)
    lp = p.target_log_prob()
    assert lp.shape == (6, 16) and p.images.shape == (6, 16, 1, 16, 16)
    assert bool((lp.diff(dim=0) > 0).all())
    assert p.summary()["monotone_fraction"] == 1.0
    # The points are step_size apart in latent space.
    steps = (p.latents.diff(dim=0)).flatten(2).norm(dim=2)
    torch.testing.assert_close(steps, torch.full_like(steps, 0.05))


def test_linear_direction_raises_the_mean_target_monotonically(gan, clf):
    for penalty in (0.0, 5.0):
        p = _control.control(gan, 7, method="linear", points=6, step_size=0.05,
                             penalty=penalty, n=32, classifier=clf)
        assert bool((p.target_log_prob().mean(1).diff() > 0).all())
        # One direction for every latent.
        moves = p.latents[1] - p.latents[0]
        torch.testing.assert_close(moves, moves[:1].expand_as(moves))


@pytest.mark.parametrize("method", ["gradient", "linear"])
def test_the_penalty_reduces_the_others_movement(gan, clf, method):
    free, held = (_control.control(gan, 3, method=method, points=5, step_size=0.3,
                                   penalty=w, n=16, classifier=clf).summary()
                  for w in (0.0, 10.0))
    assert held["others_moved"] < 0.8 * free["others_moved"], (free, held)
    assert held["target_log_prob_rise"] > 0


def test_generator_untouched_and_modes_restored(gan, clf):
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    gan.train()
    _control.control(gan, 0, points=3, n=4, classifier=clf)
    assert gan.training and not clf.training
    after = gan.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in gan.parameters())
    with pytest.raises(ValueError, match="target must be a digit class 0-9"):
        _control.control(gan, 10, classifier=clf)
    with pytest.raises(ValueError, match="method must be one of"):
        _control.control(gan, 1, method="svm", classifier=clf)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        _control.control(gan, 1, step_size=-1.0, classifier=clf)
    with pytest.raises(ValueError, match="needs a GAN with a latent generator"):
        _control.control(clf, 1, classifier=clf)

    class Conditional(DCGAN):
        def generate(self, z, y=None):
            return super().generate(z)

    with pytest.raises(ValueError, match="needs an unconditional GAN"):
        _control.control(Conditional(DCGAN.config_cls(**SMALL)), 1, classifier=clf)


@pytest.mark.usefixtures("random_feature_net")
def test_cli_writes_the_strip_and_rejects_bad_input(gan, tmp_path, capsys):
    ckpt = tmp_path / "g.pt"
    save_checkpoint(str(ckpt), {"format": CHECKPOINT_FORMAT, "model": "dcgan", "step": 5,
                                "config": dataclasses.asdict(gan.config),
                                "state_dict": gan.state_dict()})
    png = tmp_path / "strip.png"
    base = ["control", "dcgan", "--checkpoint", str(ckpt)]
    for method in ("gradient", "linear"):
        assert main(base + ["--target", "3", "--steps", "4", "--n", "6", "--method", method,
                            "--out", str(png)]) == 0
        text = capsys.readouterr().out
        assert "penalty 0:" in text and "penalty 1:" in text and "other logits moved" in text
        assert png.stat().st_size > 500
    from PIL import Image

    with Image.open(png) as im:  # 4 columns of 48 px digits, 2 panels of 4 rows
        assert im.width >= 4 * 48 and im.height >= 2 * 4 * 48
    for argv, msg in ((["--target", "12"], "--target must be a digit class 0-9"),
                      (["--target", "x"], "--target must be a digit class 0-9"),
                      (["--target", "3", "--steps", "1"], "--steps must be >= 2")):
        with pytest.raises(SystemExit, match=msg):
            main(base + argv)
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        main(["control", "nope", "--checkpoint", str(ckpt), "--target", "3"])
    with pytest.raises(SystemExit, match="'gmm' is not one"):
        main(["control", "gmm", "--checkpoint", str(ckpt), "--target", "3"])
    with pytest.raises(SystemExit, match="holds a 'dcgan' model, not a trained 'sngan'"):
        main(["control", "sngan", "--checkpoint", str(ckpt), "--target", "3"])

"""SAGAN: architecture (attention and spectral norm in G and D), TTUR optimizers, a few CPU
training steps, the R1 variant's double backward through the attention, exact resume and
sampling from a checkpoint. Small widths keep the file fast; the FD-digits feature net is an
untrained one (test_fid.py covers the real one)."""

import dataclasses
import json
import math

import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.data import digits_split
from genfast.models import REGISTRY, _trainer
from genfast.models.sagan import SAGAN, SAGANConfig
from genfast.nn import SelfAttention2d
from genfast.ops.gradient_penalty import gradient_penalty

SMALL = dict(g_width=8, d_width=8, z_dim=16, fd_samples=64)

pytestmark = pytest.mark.usefixtures("one_thread", "random_feature_net")


@pytest.fixture(scope="module")
def digits16():
    train, test = digits_split(16)
    return train[:256], test[:64]


def _model(**kw):
    torch.manual_seed(0)
    return SAGAN(SAGANConfig(**{**SMALL, **kw}))


def _attention(net):
    return [m for m in net.modules() if isinstance(m, SelfAttention2d)]


def test_registry_config_and_errors():
    assert REGISTRY["sagan"] is SAGAN and SAGAN.description
    cfg = SAGANConfig(**SMALL, r1_gamma=1.0)
    assert SAGANConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    d = SAGANConfig()
    assert (d.betas, d.g_lr, d.n_critic, d.z_dim) == ((0.0, 0.9), 1e-4, 1, 128)
    assert SAGAN.train_defaults["lr"] == 4e-4
    for bad in (dict(attention_size=6), dict(attention_size=16), dict(attention_size=2),
                dict(g_lr=0.0), dict(r1_gamma=-1.0), dict(r1_every=0), dict(d_width=12)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SAGANConfig(**{**SMALL, **bad})


@pytest.mark.parametrize(("size", "attention_size", "side"), [(16, 0, 8), (32, 8, 8),
                                                                (32, 16, 16)])
def test_attention_and_spectral_norm_in_both_networks(size, attention_size, side):
    m = _model(image_shape=(1, size, size), attention_size=attention_size)
    seen = {}
    for net in (m.generator, m.discriminator):
        (attn,) = _attention(net)
        assert attn.spectral_norm and attn.pool and attn.gamma.item() == 0.0
        attn.register_forward_hook(lambda mod, a, out, n=net: seen.__setitem__(id(n), a[0]))
        convs = [x for x in net.modules() if isinstance(x, (torch.nn.Conv2d,
                                                            torch.nn.ConvTranspose2d))]
        keys = net.state_dict().keys()
        assert sum(k.endswith("parametrizations.weight.original") for k in keys) == len(convs)
    assert m.sample(2).shape == (2, 1, size, size)
    assert m.discriminator(torch.zeros(3, 1, size, size)).shape == (3,)
    assert seen[id(m.generator)].shape[2:] == seen[id(m.discriminator)].shape[2:] == (side, side)


def test_two_timescale_optimizers():
    m = _model()
    opts = m.configure_optimizers(4e-4)
    assert opts["d"].param_groups[0]["lr"] == 4e-4 and opts["g"].param_groups[0]["lr"] == 1e-4
    assert all(o.param_groups[0]["betas"] == (0.0, 0.9) for o in opts.values())
    d_params = {id(p) for p in m.discriminator.parameters()}
    assert d_params == {id(p) for p in opts["d"].param_groups[0]["params"]}
    assert not d_params & {id(p) for p in opts["g"].param_groups[0]["params"]}


def test_train_steps_move_losses_and_attention(digits16):
    train, test = digits16
    m = _model()
    opts = m.configure_optimizers(4e-4)
    first = m.train_step(train[:32], opts, 0)
    for step in range(1, 8):
        out = m.train_step(train[32 * (step % 8):32 * (step % 8 + 1)], opts, step)
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values()), out
        assert all(math.isfinite(v) for v in out.values()), out
    assert out["d_loss"] != first["d_loss"] and out["g_loss"] != first["g_loss"]
    # the hinge loss pushes the scores apart
    assert out["d_real"] - out["d_fake"] > first["d_real"] - first["d_fake"]
    for net in (m.generator, m.discriminator):  # gamma left 0: the attention is trained
        assert _attention(net)[0].gamma.item() != 0.0
    m.eval()
    s = m.sample(5)
    assert s.shape == (5, 1, 16, 16) and s.min() >= 0 and s.max() <= 1
    ev = m.evaluate(test)
    assert ev["loss"] == ev["fd"] and math.isfinite(ev["fd"]) and ev["fd"] >= 0
    assert ev["gamma_g"] == _attention(m.generator)[0].gamma.item() and "gamma_d" in ev


def test_r1_step_and_its_double_backward_through_attention(digits16):
    train, _ = digits16
    m = _model(r1_gamma=10.0)
    with torch.no_grad():  # an attention that contributes, so its second derivatives count
        _attention(m.discriminator)[0].gamma.fill_(0.5)
    attn = _attention(m.discriminator)[0]
    params = [attn.gamma, attn.theta.parametrizations.weight.original,
              attn.g.parametrizations.weight.original]
    gp = gradient_penalty(m.discriminator, train[:16] * 2 - 1, kind="r1", weight=10.0)
    grads = torch.autograd.grad(gp.penalty, params)
    assert gp.penalty > 0
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    opts = m.configure_optimizers(4e-4)
    for step in range(3):
        out = m.train_step(train[16 * step:16 * (step + 1)], opts, step)
        assert math.isfinite(out["r1"]) and out["r1"] > 0
    lazy = _model(r1_gamma=10.0, r1_every=2)
    opts = lazy.configure_optimizers(4e-4)
    r1 = [float(lazy.train_step(train[:16], opts, step)["r1"]) for step in range(2)]
    assert r1[0] > 0 and r1[1] == 0.0  # odd steps skip the penalty


@pytest.mark.parametrize("r1", [0.0, 1.0])
def test_resume_is_exact_and_samples_from_checkpoint(r1, digits16, tmp_path):
    train, test = digits16
    tc = dict(batch_size=16, lr=4e-4, checkpoint_every=3, sample_every=3, log_every=1,
              n_samples=4)
    _, b = assert_resume_is_exact(lambda: _model(r1_gamma=r1), "sagan", train, test, tc,
                                  tmp_path)
    assert (tmp_path / "a" / "samples_step000006.png").is_file()
    ckpt = _trainer.load_checkpoint(str(tmp_path / "b" / _trainer.CHECKPOINT))
    assert ckpt["model"] == "sagan" and ckpt["step"] == 6
    c = SAGAN(SAGANConfig(**ckpt["config"]))  # what `genfast sample sagan` does
    c.load_state_dict(ckpt["state_dict"])
    c.eval()
    b.eval()
    torch.testing.assert_close(c.sample(4, generator=torch.Generator().manual_seed(3)),
                               b.sample(4, generator=torch.Generator().manual_seed(3)))

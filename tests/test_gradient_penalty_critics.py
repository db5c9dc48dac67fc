"""gradient_penalty with genfast layers inside the critic (their double backward), and under DDP
(the out-of-place input gradient touches no .grad, so DDP all-reduces once)."""

import _ddp
import pytest
import torch
from _helpers import fast_backends
from test_gradient_penalty import _data, _penalty_and_grads, conv_critic
from torch import nn

import genfast
from genfast import random
from genfast.ops.gradient_penalty import gradient_penalty

FAST = fast_backends("gradient_penalty")


# ------------------------------------------------------------------ genfast layers in the critic
class GumbelCritic(nn.Module):
    def __init__(self, backend=None, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(2)
        self.inp, self.out = nn.Linear(6, 5).to(dtype), nn.Linear(5, 1).to(dtype)
        self.backend = backend

    def forward(self, x):
        h = self.inp(x)
        if self.backend == "torch":  # the same sample with torch ops and the same Philox noise
            g = random.gumbel(11, h.shape[0], h.shape[1], dtype=h.dtype)
            return self.out(torch.softmax((h + g) / 0.7, dim=-1))
        return self.out(genfast.gumbel_softmax(h, tau=0.7, seed=11, backend=self.backend))


@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST if b == "cpu"]])
def test_gumbel_softmax_inside_the_critic(backend):
    real, fake = _data((4, 6), torch.float64)
    ours, theirs = GumbelCritic(backend), GumbelCritic("torch")

    def pen(c):
        return gradient_penalty(c, real, fake, generator=torch.Generator().manual_seed(1))

    p1, g1 = _penalty_and_grads(ours, lambda: pen(ours).penalty)
    p2, g2 = _penalty_and_grads(theirs, lambda: pen(theirs).penalty)
    torch.testing.assert_close(p1, p2, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # Numerically: d penalty / d weight needs the double backward of gumbel_softmax.
    w0 = ours.inp.weight.detach().clone().requires_grad_()

    def as_fn(w):
        return pen(lambda x: torch.func.functional_call(ours, {"inp.weight": w}, (x,))).penalty

    assert torch.autograd.gradcheck(as_fn, (w0,), fast_mode=True)


def test_spectral_norm_inside_the_critic():
    sn = pytest.importorskip("genfast.nn.spectral_norm")
    real, fake = _data((4, 1, 7, 7), torch.float64)

    def build(wrap):
        c = conv_critic(torch.float64)
        torch.manual_seed(6)  # the same u, v draws for both parametrizations
        for layer in (c[0], c[2], c[5]):
            wrap(layer)
        return c

    ours = build(sn.spectral_norm)
    theirs = build(nn.utils.parametrizations.spectral_norm)

    def pen(c):
        return gradient_penalty(c, real, fake, generator=torch.Generator().manual_seed(1)).penalty

    p1, g1 = _penalty_and_grads(ours, lambda: pen(ours))  # training mode: one power iteration
    p2, g2 = _penalty_and_grads(theirs, lambda: pen(theirs))
    torch.testing.assert_close(p1, p2, rtol=1e-8, atol=1e-10)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # Numerically, with u and v frozen (eval): d penalty / d weight needs SN's double backward.
    ours.eval()
    name = "5.parametrizations.weight.original"  # the smallest weight keeps gradcheck quick
    w0 = dict(ours.named_parameters())[name].detach().clone().requires_grad_()
    fn = lambda w: pen(lambda x: torch.func.functional_call(ours, {name: w}, (x,)))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (w0,), fast_mode=True)


# ------------------------------------------------------------------ DDP
def test_out_of_place_gradient_touches_no_grad_buffers():
    critic = conv_critic()
    real, fake = _data((3, 1, 7, 7))
    r = gradient_penalty(critic, real, fake)
    assert all(p.grad is None for p in critic.parameters())
    r.penalty.backward()
    # Weights get their penalty gradient. Biases feeding a LeakyReLU get an identically zero
    # one, whose path is pruned (as StyleGAN2's bias_act): None, not a tensor of zeros.
    assert all(critic[i].weight.grad is not None for i in (0, 2, 5))
    assert critic[0].bias.grad is None


def _ddp_grads(rank, world, out):
    real, fake = _data((4, 1, 7, 7))
    plain, wrapped = conv_critic(), nn.parallel.DistributedDataParallel(conv_critic())
    for name, c in (("plain", plain), ("ddp", wrapped)):
        loss = c(fake).mean() - c(real).mean()
        loss = loss + gradient_penalty(c, real, fake,
                                       generator=torch.Generator().manual_seed(2)).penalty
        loss.backward()
        torch.save([p.grad for p in c.parameters()], f"{out}/{name}.pt")


@pytest.mark.skipif(not _ddp.AVAILABLE, reason="torch.distributed with gloo is not available")
def test_ddp_critic_matches_plain_module(tmp_path):
    _ddp.spawn(_ddp_grads, 1, str(tmp_path))
    plain, wrapped = (torch.load(tmp_path / f"{n}.pt") for n in ("plain", "ddp"))
    assert len(plain) == len(wrapped) > 0
    for a, b in zip(plain, wrapped, strict=True):
        torch.testing.assert_close(a, b)

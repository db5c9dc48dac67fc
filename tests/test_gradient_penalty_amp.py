"""gradient_penalty under mixed precision: autocast (the norm is a float32 op, as torch's norms
are) and torch.amp.GradScaler (torch's AMP recipe for gradient penalties: scale the scores before
autograd.grad, unscale the norms before the penalty)."""

import math
import warnings

import pytest
import torch
from _helpers import TOL, assert_low_precision, fast_backends
from test_gradient_penalty import _data, _penalty_and_grads, conv_critic, mlp_critic
from torch import nn

from genfast import backends
from genfast.ops import gradient_penalty as G
from genfast.ops.gradient_penalty import gradient_penalty, per_sample_grad_norm

ALL = ["reference", *fast_backends("gradient_penalty")]
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ autocast
@pytest.mark.parametrize("backend", ALL)
def test_per_sample_grad_norm_is_a_float32_op_under_autocast(backend):
    g = torch.randn(5, 3, 4, 4).to(torch.bfloat16).requires_grad_()
    with warnings.catch_warnings():
        # bfloat16 cast to float32 first: the CPU kernel serves it, no reference fallback.
        warnings.simplefilter("error", backends.BackendFallbackWarning)
        with torch.autocast(**BF16):
            norms = per_sample_grad_norm(g, backend=backend)
    assert norms.dtype == torch.float32
    want = g.detach().float().reshape(5, -1).norm(dim=1)
    torch.testing.assert_close(norms, want, **TOL[torch.float32])
    (dg,) = torch.autograd.grad(norms.sum(), g)
    assert dg.dtype == torch.bfloat16
    torch.testing.assert_close(dg, (g.detach().float() / want[:, None, None, None]).bfloat16())
    # float32 / float64 keep their dtype; outside autocast bfloat16 stays bfloat16 (contract).
    with torch.autocast(**BF16):
        assert per_sample_grad_norm(g.detach().double()).dtype == torch.float64
        assert per_sample_grad_norm(g.detach().float()).dtype == torch.float32
    assert per_sample_grad_norm(g.detach(), backend="reference").dtype == torch.bfloat16


def test_the_op_itself_has_the_autocast_rule():
    g = torch.randn(3, 7).bfloat16()
    with torch.autocast(**BF16):
        norms = G.gp_row_norms(g, "reference")
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, g.float().norm(dim=1))


def test_autocast_rule_holds_under_torch_compile():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def norms(g):
        with torch.autocast(**BF16):
            return per_sample_grad_norm(g)

    g = torch.randn(4, 3, 5).bfloat16().requires_grad_()
    out = norms(g)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, g.detach().float().reshape(4, -1).norm(dim=1))
    out.sum().backward()
    assert g.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_penalty_under_bf16_autocast_with_a_conv_critic(backend, kind):
    critic = conv_critic()
    real, fake = _data((6, 1, 7, 7))

    def pen():
        return gradient_penalty(critic, real, fake, kind=kind, generator=_gen(),
                                backend=backend).penalty

    want, want_grads = _penalty_and_grads(critic, pen)
    with torch.autocast(**BF16):
        got, got_grads = _penalty_and_grads(critic, pen)
        r = gradient_penalty(critic, real, fake, kind=kind, generator=_gen(), backend=backend)
    assert got.dtype == torch.float32 and r.grad_norm.dtype == torch.float32
    # bfloat16 convolutions (8-bit mantissa) in the forward and both backwards: a few 1e-3.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * b.abs().max().item())
    # Not vacuous: the critic did run in bfloat16 (the fp32 result is not reproduced exactly).
    assert got != want


# ------------------------------------------------------------------ GradScaler
@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("init_scale", [2.0**16, 1000.0])
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_scaler_gives_the_unscaled_penalty(backend, init_scale, kind):
    critic = conv_critic()
    real, fake = _data((5, 1, 7, 7))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    out = {}

    def pen(**kw):
        out["r"] = gradient_penalty(critic, real, fake, kind=kind, generator=_gen(),
                                    backend=backend, **kw)
        return out["r"].penalty

    want, want_grads = _penalty_and_grads(critic, pen)
    want_norms = out["r"].grad_norm
    got, got_grads = _penalty_and_grads(critic, lambda: pen(scaler=scaler))
    # A power-of-two scale is exact; 1000 rounds the scaled gradient once (a few ulps).
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(out["r"].grad_norm, want_norms, **TOL[torch.float32])
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert scaler.get_scale() == init_scale  # the penalty never changes the scaler's state


def test_fp16_scores_do_not_overflow_at_the_default_scale():
    """float16 scores under GradScaler's default 2^16: a gradient of scale x 1 per score is inf in
    float16 (max 65504) and would skip every first step; the scaled batch mean is not."""
    critic = conv_critic()
    real, fake = _data((8, 1, 7, 7))
    want = gradient_penalty(critic, real, fake, generator=_gen())
    with torch.autocast("cpu", dtype=torch.float16):
        assert critic(real).dtype == torch.float16  # the case in question
        got = gradient_penalty(critic, real, fake, generator=_gen(),
                               scaler=torch.amp.GradScaler("cpu"))
    assert got.penalty.dtype == torch.float32
    torch.testing.assert_close(got.penalty, want.penalty, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(got.grad_norm, want.grad_norm, rtol=1e-2, atol=1e-3)


def _critic_step(critic, opt, real, fake, scaler=None, autocast=False):
    """One WGAN-GP critic step as torch's AMP recipe writes it."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = critic(fake).mean() - critic(real).mean()
        gp = gradient_penalty(critic, real, fake, generator=_gen(), scaler=scaler)
        loss = loss + gp.penalty
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return gp


def _train(real, fake, scaler, autocast, steps=3):
    critic = conv_critic()
    opt = torch.optim.SGD(critic.parameters(), lr=0.02, momentum=0.9)
    for _ in range(steps):
        _critic_step(critic, opt, real, fake, scaler, autocast)
    return torch.cat([p.detach().flatten() for p in critic.parameters()])


def test_scaled_training_step_matches_the_unscaled_one():
    real, fake = _data((6, 1, 7, 7))
    fp32 = _train(real, fake, None, False)
    torch.testing.assert_close(_train(real, fake, torch.amp.GradScaler("cpu"), False), fp32,
                               **TOL[torch.float32])
    # Under bfloat16 autocast the scaled step is as close to float32 training as the unscaled
    # bfloat16 one is (scale / N is not a power of two, so the roundings differ).
    assert_low_precision(_train(real, fake, torch.amp.GradScaler("cpu"), True), fp32,
                         _train(real, fake, None, True), atol=1e-3)


def test_overflowing_scaled_gradient_is_left_to_the_scaler():
    """The scaled input gradient overflows float32: no FloatingPointError, the penalty is not
    finite, the scaler skips the step and halves its scale; without a scaler it raises."""
    real, fake = _data((4, 6))
    critic = nn.Linear(6, 1)
    with torch.no_grad():
        critic.weight.fill_(3e34)  # gradient 3e34 per entry: x 65536 > 3.4e38
        critic.bias.zero_()
    with pytest.raises(FloatingPointError, match="overflow"):
        gradient_penalty(critic, real, fake)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    before = [p.detach().clone() for p in critic.parameters()]
    gp = _critic_step(critic, opt, real, fake, scaler)
    assert not math.isfinite(gp.penalty.item())
    assert scaler.get_scale() == 2.0**15
    for p, b in zip(critic.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_scaler_still_raises_for_non_finite_input():
    real, fake = _data((4, 6))
    real[1, 2] = math.nan
    with pytest.raises(FloatingPointError, match=r"samples \[1\].*input has non-finite"):
        gradient_penalty(mlp_critic(), real, fake, scaler=torch.amp.GradScaler("cpu"))


def test_disabled_scaler_is_the_identity():
    critic = mlp_critic()
    real, fake = _data((4, 6))
    a = gradient_penalty(critic, real, fake, generator=_gen())
    b = gradient_penalty(critic, real, fake, generator=_gen(),
                         scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert torch.equal(a.penalty, b.penalty) and torch.equal(a.grad_norm, b.grad_norm)

"""gradient_penalty on a GPU: a training step makes no host sync (torch.cuda.set_sync_debug_mode
"error"), check_finite is opt-in there, autocast(float16) with a GradScaler follows torch's AMP
recipe, and the norm op exports. Marked `cuda`: skipped with a reason where no GPU is present
(tests/test_gradient_penalty_sync.py proves the no-read property on the CPU)."""

import math

import pytest
import torch
from test_gradient_penalty import conv_critic, mlp_critic
from test_gradient_penalty_export import FeatureNormCritic

from genfast import backends
from genfast.ops.gradient_penalty import gradient_penalty, per_sample_grad_norm

pytestmark = pytest.mark.cuda
BACKENDS = ["auto", "reference", "cuda", "triton"]


def _skip_unless(backend):
    if backend != "auto" and not backends.available(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on this GPU")


def _data(n=16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, 1, 7, 7, device="cuda", generator=g),
            torch.randn(n, 1, 7, 7, device="cuda", generator=g))


def _step(critic, opt, real, fake, backend, scaler=None, autocast=False, **kw):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
        loss = critic(fake).mean() - critic(real).mean()
        gp = gradient_penalty(critic, real, fake, backend=backend, scaler=scaler, **kw)
        loss = loss + gp.penalty
    (loss if scaler is None else scaler.scale(loss)).backward()
    return gp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [{}, {"drift": 1e-3}, {"kind": "r1"}])
def test_training_step_does_not_sync_the_host(backend, extra):
    _skip_unless(backend)
    critic = conv_critic().cuda()
    opt = torch.optim.SGD(critic.parameters(), lr=1e-3)
    real, fake = _data()
    name = None if backend == "auto" else backend
    _step(critic, opt, real, fake, name, **extra)  # warm-up: compiles, allocator, cuDNN plans
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gp = _step(critic, opt, real, fake, name, **extra)
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(gp.penalty.item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaled_fp16_step_does_not_sync_before_the_scaler_step(backend):
    """scaler.step reads found_inf (its own sync); everything before it must not sync."""
    _skip_unless(backend)
    critic = conv_critic().cuda()
    opt = torch.optim.SGD(critic.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    real, fake = _data()
    name = None if backend == "auto" else backend
    _step(critic, opt, real, fake, name, scaler, autocast=True)
    scaler.step(opt)
    scaler.update()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gp = _step(critic, opt, real, fake, name, scaler, autocast=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    scaler.step(opt)
    scaler.update()
    assert gp.penalty.dtype == torch.float32 and math.isfinite(gp.penalty.item())


def test_check_finite_is_opt_in_on_cuda():
    # Softplus, not LeakyReLU: a NaN input must reach the input gradient (sigmoid(NaN) = NaN).
    critic = mlp_critic().cuda()
    real, fake = (t.reshape(4, -1)[:, :6].contiguous() for t in _data(4))
    real[2, 3] = math.nan
    r = gradient_penalty(critic, real, fake)  # default on CUDA: no read-back, a NaN penalty
    assert math.isnan(r.penalty.item()) and math.isnan(r.grad_norm[2].item())
    with pytest.raises(FloatingPointError, match=r"samples \[2\].*input has non-finite"):
        gradient_penalty(critic, real, fake, check_finite=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_autocast_with_scaler_matches_fp32(backend):
    _skip_unless(backend)
    critic = conv_critic().cuda()
    real, fake = _data(32, seed=1)
    name = None if backend == "auto" else backend

    def pen(**kw):
        g = torch.Generator(device="cuda").manual_seed(5)
        return gradient_penalty(critic, real, fake, generator=g, backend=name, **kw)

    want = pen()
    with torch.autocast("cuda", dtype=torch.float16):
        got = pen(scaler=torch.amp.GradScaler("cuda"))
    assert got.penalty.dtype == torch.float32 and got.grad_norm.dtype == torch.float32
    torch.testing.assert_close(got.penalty, want.penalty, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(got.grad_norm, want.grad_norm, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norm_is_float32_under_autocast(backend, dtype):
    _skip_unless(backend)
    g = torch.randn(9, 3, 17, 19, device="cuda").to(dtype)
    with torch.autocast("cuda", dtype=dtype):
        norms = per_sample_grad_norm(g, backend=backend)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, g.float().reshape(9, -1).norm(dim=1))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_export_on_cuda(backend):
    _skip_unless(backend)
    model = FeatureNormCritic(backend).cuda()
    x = torch.randn(6, 1, 8, 8, device="cuda")
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), model(x))

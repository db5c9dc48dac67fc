"""GPU backends (cuda, triton) against the reference on a real GPU: every op family, each
dtype. Marked `cuda`: skipped with a reason where no GPU is present (conftest.py)."""

import pytest
import torch

import genfast
from genfast import backends

pytestmark = pytest.mark.cuda
GPU_BACKENDS = ["cuda", "triton"]
SHAPES = [(1, 1), (3, 7), (5, 33), (64, 1000), (8, 20000)]


def _skip_unless(backend):
    if not backends.available(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on this GPU")


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gumbel_softmax_matches_reference(backend, shape, hard, dtype):
    _skip_unless(backend)
    x32 = torch.randn(shape, device="cuda") * 3
    w = torch.randn(shape, device="cuda")
    outs = {}
    for name, b, dt in (("ref32", "reference", torch.float32), ("ref_lo", "reference", dtype),
                        ("gpu", backend, dtype)):
        x = x32.to(dt).requires_grad_()
        y = genfast.gumbel_softmax(x, tau=0.7, hard=hard, seed=5, backend=b)
        (g,) = torch.autograd.grad((y * w.to(dt)).sum(), x)
        outs[name] = (y, g)
    for i in range(2):  # flash-attention rule: at most 2x the reference's own low-precision error
        bound = 2 * _err(outs["ref_lo"][i], outs["ref32"][i]) + (1e-5 if dtype == torch.float32 else 1e-3)
        assert _err(outs["gpu"][i], outs["ref32"][i]) <= bound


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("filt", [{}, {"top_k": 5}, {"top_p": 0.7}, {"temperature": 0.0}])
def test_sample_categorical_matches_reference(backend, filt):
    _skip_unless(backend)
    x = torch.randn(257, 3001, device="cuda") * 2
    ref = genfast.sample_categorical(x, seed=3, backend="reference", **filt)
    got = genfast.sample_categorical(x, seed=3, backend=backend, **filt)
    assert (got == ref).float().mean() > 0.995  # exact but for float near-ties at thresholds


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gradient_penalty_norms_match_reference(backend):
    _skip_unless(backend)
    g = torch.randn(33, 3, 17, 19, device="cuda", dtype=torch.float64 if backend == "cuda"
                    else torch.float32).requires_grad_()
    ref = genfast.per_sample_grad_norm(g, backend="reference")
    got = genfast.per_sample_grad_norm(g, backend=backend)
    torch.testing.assert_close(got, ref)
    (gr,) = torch.autograd.grad(ref.sum(), g)
    (gg,) = torch.autograd.grad(got.sum(), g)
    torch.testing.assert_close(gg, gr)


def test_sampling_does_not_sync_the_host():
    x = torch.randn(64, 50000, device="cuda")
    genfast.sample_categorical(x)  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        genfast.sample_categorical(x, top_k=50, top_p=0.9)
        genfast.gumbel_softmax(x, hard=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""spectral_norm on a GPU: weights too big for one CTA go to torch.mv (routed by host-side
shapes) and match the reference; a group update and a module forward make no host sync, even
on a pointer-table cache miss (torch.cuda.set_sync_debug_mode("error")); CUDA autocast leaves
the power iteration alone. Marked `cuda`: skipped with a reason where no GPU is present (the
routing itself is tested on the CPU in test_spectral_norm_triton.py)."""

import pytest
import torch
import torch.nn.functional as F
from _spectral_norm_cases import critic
from torch import nn

from genfast import backends
from genfast.nn.spectral_norm import SpectralNormGroup, spectral_norm
from genfast.ops import _spectral_norm_kernels as R
from genfast.ops import spectral_norm as S

pytestmark = pytest.mark.cuda
GPU = ["triton", "cuda"]


def _skip_unless(backend):
    if backend != "auto" and not backends.available(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on this GPU")


def _weights(shapes, dtype=torch.float32):
    g = torch.Generator("cuda").manual_seed(0)
    ws = [torch.randn(s, generator=g, device="cuda").to(dtype) for s in shapes]
    us = [F.normalize(torch.randn(w.shape[0], generator=g, device="cuda"), dim=0).to(dtype)
          for w in ws]
    vs = [F.normalize(torch.randn(w[0].numel(), generator=g, device="cuda"), dim=0).to(dtype)
          for w in ws]
    return ws, us, vs


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_big_weights_take_the_mv_path_and_match_the_reference(backend, dtype, monkeypatch):
    _skip_unless(backend)
    shapes = [(64, 3, 3, 3), (2048, 4096), (4, 70_000), (33, 7)]  # the middle two route to mv
    assert R.route([torch.empty(s, device="meta") for s in shapes], [0] * 4) == ([0, 3], [1, 2])
    calls = []
    real = R._mv_power
    monkeypatch.setattr(R, "_mv_power", lambda ws, *a: calls.append(len(ws)) or real(ws, *a))
    ws, us, vs = _weights(shapes, dtype)
    out = {}
    for b in ("reference", backend):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        out[b] = [S.spectral_norm_power_iteration(ws, u2, v2, 2, backend=b), *u2, *v2]
    assert calls == [2]
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for a, r in zip(out[backend], out["reference"], strict=True):
        torch.testing.assert_close(a, r.to(a.dtype), **tol)


@pytest.mark.parametrize("backend", ["auto", *GPU])
def test_no_host_sync_on_a_table_cache_miss(backend):
    _skip_unless(backend)
    b = None if backend == "auto" else backend
    grouped = critic(lambda m: spectral_norm(m, backend=b)).cuda()
    group = SpectralNormGroup(grouped, hook=False)
    single = spectral_norm(nn.Conv2d(3, 8, 3), backend=b).cuda()
    x, x1 = torch.randn(4, 1, 8, 8, device="cuda"), torch.randn(2, 3, 9, 9, device="cuda")
    group.update()
    grouped(x).sum().backward()  # compiles and warms up everything once
    single(x1).sum().backward()
    torch.cuda.synchronize()
    R._META.clear()  # the next calls build their tables again
    single.parametrizations.weight[0]._memo[0] = None  # and its direct kernel runner
    torch.cuda.set_sync_debug_mode("error")
    try:
        group.update()
        y = grouped(x)
        y.sum().backward()
        single(x1).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert R._META  # the tables were built under the debug mode
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", ["reference", *GPU])
def test_cuda_autocast_leaves_the_power_iteration_alone(backend):
    _skip_unless(backend)
    ws, us, vs = _weights([(64, 3, 3, 3), (2048, 4096)])
    out = []
    for enabled in (False, True):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        with torch.autocast("cuda", dtype=torch.float16, enabled=enabled):
            sigma = S.spectral_norm_power_iteration(ws, u2, v2, 2, backend=backend)
        out.append([sigma, *u2, *v2])
    for a, b in zip(*out, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)

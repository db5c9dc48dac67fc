"""The Triton power iteration (kernels/spectral_norm.py) against the contract of
csrc/cpu/spectral_norm.h, on the CPU under the Triton interpreter, and the GPU shape routing of
the op around it (big weights to torch.mv, the rest in one launch).

The reference follows the contract literally in float64: normalize by max(||x||, eps) with
torch's own matrix-vector products, and sigma = u . (W v) by an explicit extra product (the
kernel takes a shortcut there, so the two are independent).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, assert_low_precision
from _spectral_norm_cases import vectors

pytest.importorskip("triton")


from _triton_helpers import triton_cast  # noqa: E402

from genfast.kernels import spectral_norm as K  # noqa: E402
from genfast.ops import _spectral_norm_kernels as R  # noqa: E402
from genfast.ops import spectral_norm as S  # noqa: E402

pytestmark = pytest.mark.triton

EPS = 1e-12
# (h, w) of the weights: odd sizes, one element, tall, wide and one spanning several tiles
# both ways (BW = 128 columns, BH = 32 rows when max_w = 130).
SHAPES = [(1, 1), (3, 17), (17, 3), (1, 130), (130, 1), (130, 130)]


class Weight:
    """W as a (h, w) view with row stride w + 3 inside a bigger buffer, and its u, v."""

    def __init__(self, h, w, dtype, seed, zero=False):
        g = torch.Generator().manual_seed(seed)
        self.base = torch.full((h, w + 3), 5.0, dtype=dtype)  # padding never read
        self.W = self.base[:, :w]
        self.W.copy_(torch.zeros(h, w) if zero else torch.randn(h, w, generator=g))
        self.u = torch.randn(h, generator=g).to(dtype)
        self.v = torch.randn(w, generator=g).to(dtype)
        self.ld = w + 3

    def row(self):
        h, w = self.W.shape
        return [self.W.data_ptr(), self.u.data_ptr(), self.v.data_ptr(), h, w, self.ld]


def reference(W, u, v, n_iter, eps=EPS):
    W, u, v = W.double(), u.double(), v.double()
    for _ in range(n_iter):
        t = W @ v
        u = t / max(t.norm().item(), eps)
        s = W.t() @ u
        v = s / max(s.norm().item(), eps)
    return u, v, (u @ (W @ v)).item()


def run(weights, dtype, n_iter, eps=EPS, max_h=None, max_w=None):
    meta = torch.tensor([wt.row() for wt in weights], dtype=torch.int64)
    sigma = torch.full((len(weights),), -1.0)
    max_h = max(wt.W.shape[0] for wt in weights) if max_h is None else max_h
    max_w = max(wt.W.shape[1] for wt in weights) if max_w is None else max_w
    out = K.power_iteration(meta, dtype, n_iter, eps, sigma, max_h, max_w)
    assert out is sigma
    return sigma


@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_many_weights_in_one_call(n_iter):
    weights = [Weight(h, w, torch.float32, seed=i) for i, (h, w) in enumerate(SHAPES)]
    refs = [reference(wt.W, wt.u, wt.v, n_iter) for wt in weights]
    before = [wt.base.clone() for wt in weights]
    sigma = run(weights, torch.float32, n_iter)
    for wt, b, (u, v, _) in zip(weights, before, refs, strict=True):
        assert torch.equal(wt.base, b)  # W and its padding are only read
        torch.testing.assert_close(wt.u, u.float(), **TOL[torch.float32])
        torch.testing.assert_close(wt.v, v.float(), **TOL[torch.float32])
    torch.testing.assert_close(sigma, torch.tensor([s for _, _, s in refs]), **TOL[torch.float32])


def test_converges_to_the_largest_singular_value():
    wt = Weight(17, 33, torch.float32, seed=3)
    sigma = run([wt], torch.float32, n_iter=60)
    top = torch.linalg.svdvals(wt.W.double())[0].item()
    assert sigma.item() == pytest.approx(top, rel=1e-4)
    assert wt.u.norm().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("n_iter", [0, 2])
def test_zero_weight_stays_finite(n_iter):
    zero = Weight(5, 7, torch.float32, seed=4, zero=True)
    other = Weight(3, 3, torch.float32, seed=5)
    u0, v0 = zero.u.clone(), zero.v.clone()
    _, _, s_other = reference(other.W, other.u, other.v, n_iter)
    sigma = run([zero, other], torch.float32, n_iter)
    assert sigma[0].item() == 0.0
    if n_iter:
        # normalize(0) = 0 / eps = 0: defined, never NaN
        assert torch.equal(zero.u, torch.zeros(5)) and torch.equal(zero.v, torch.zeros(7))
    else:
        assert torch.equal(zero.u, u0) and torch.equal(zero.v, v0)
    assert sigma[1].item() == pytest.approx(s_other, rel=1e-5)  # its neighbour is unaffected


def test_tiny_norm_is_divided_by_eps():
    wt = Weight(4, 6, torch.float32, seed=6)
    wt.W.mul_(1e-9)
    eps = 1e-3  # ||W v|| ~ 1e-8 < eps: both normalisations divide by eps
    u, v, s = reference(wt.W, wt.u, wt.v, 1, eps)
    sigma = run([wt], torch.float32, 1, eps=eps)
    torch.testing.assert_close(wt.u, u.float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(wt.v, v.float(), rtol=1e-5, atol=0)
    assert sigma.item() == pytest.approx(s, rel=1e-5)


def test_rows_breaking_the_bounds_get_nan_and_are_untouched():
    good, big = Weight(3, 4, torch.float32, seed=7), Weight(9, 4, torch.float32, seed=8)
    u0, v0 = big.u.clone(), big.v.clone()
    sigma = run([good, big], torch.float32, 1, max_h=4, max_w=4)  # big has h = 9 > max_h
    assert math.isnan(sigma[1].item()) and math.isfinite(sigma[0].item())
    assert torch.equal(big.u, u0) and torch.equal(big.v, v0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision(dtype):
    weights = [Weight(h, w, dtype, seed=10 + i) for i, (h, w) in enumerate([(3, 17), (130, 33)])]
    refs = [reference(wt.W, wt.u, wt.v, 2) for wt in weights]
    sigma = run(weights, dtype, 2)
    for wt, (u, v, s), sg in zip(weights, refs, sigma, strict=True):
        for got, ref in ((wt.u, u.float()), (wt.v, v.float())):
            # flash-attention rule: at most 2x the error of the reference stored in this dtype
            ref_err = (triton_cast(ref, dtype).float() - ref).abs().max()
            assert got.dtype == dtype
            assert (got.float() - ref).abs().max() <= 2 * ref_err + 1e-6
        # sigma stays float32 math on the (exact) upcast inputs
        assert sg.item() == pytest.approx(s, rel=1e-4)


def test_float64():
    wt = Weight(17, 130, torch.float64, seed=20)
    u, v, s = reference(wt.W, wt.u, wt.v, 3)
    sigma = run([wt], torch.float64, 3)
    torch.testing.assert_close(wt.u, u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(wt.v, v, rtol=1e-12, atol=1e-14)
    assert sigma.item() == pytest.approx(s, rel=1e-6)  # sigma is stored in float32


def test_empty_table_and_bad_arguments():
    empty = torch.empty(0, 6, dtype=torch.int64)
    assert K.power_iteration(empty, torch.float32, 1, EPS, torch.empty(0), 0, 0).numel() == 0
    meta = torch.zeros(1, 6, dtype=torch.int64)
    sigma = torch.empty(1)
    with pytest.raises(TypeError, match="dtype must be"):
        K.power_iteration(meta, torch.int32, 1, EPS, sigma, 1, 1)
    with pytest.raises(ValueError, match="meta must be"):
        K.power_iteration(meta.int(), torch.float32, 1, EPS, sigma, 1, 1)
    with pytest.raises(ValueError, match="meta must be contiguous"):
        K.power_iteration(torch.zeros(1, 5, dtype=torch.int64), torch.float32, 1, EPS, sigma, 1, 1)
    with pytest.raises(ValueError, match="sigma_out must be"):
        K.power_iteration(meta, torch.float32, 1, EPS, torch.empty(2), 1, 1)
    with pytest.raises(ValueError, match="n_iter must be"):
        K.power_iteration(meta, torch.float32, -1, EPS, sigma, 1, 1)
    with pytest.raises(ValueError, match="eps must be"):
        K.power_iteration(meta, torch.float32, 1, math.nan, sigma, 1, 1)


# ------------------------------------------------------------------ GPU shape routing
# The op routes weights too big for one program to torch.mv by host-side shapes; with the
# thresholds lowered, the interpreter walks both paths on small weights.
def _spy_launches(monkeypatch):
    launches, mv = [], []
    launch, mv_power = K.power_iteration, R._mv_power

    def spy_launch(meta, dtype, n_iter, eps, sigma, max_h, max_w):
        launches.append((meta.shape[0], max_h, max_w))
        return launch(meta, dtype, n_iter, eps, sigma, max_h, max_w)

    monkeypatch.setattr(K, "power_iteration", spy_launch)
    monkeypatch.setattr(R, "_mv_power", lambda ws, *a: mv.append(len(ws)) or mv_power(ws, *a))
    return launches, mv


@pytest.mark.parametrize("n_iter", [0, 2])
def test_routing_sends_big_weights_to_mv_and_keeps_one_launch(monkeypatch, n_iter):
    monkeypatch.setattr(R, "MV_MIN_ELEMENTS", 250)
    monkeypatch.setattr(R, "MV_MAX_VECTOR", 60)
    launches, mv = _spy_launches(monkeypatch)
    # elements / h + w: 21 / 10 (kernel), 340 / 37 (mv: size), 40 / 41 (kernel),
    # 90 / 47 (kernel: dim 1), 59 / 60 (kernel), 61 / 62 (mv: vectors)
    shapes = [(7, 3), (20, 17), (1, 40), (5, 2, 3, 3), (1, 59), (1, 61)]
    dims = [0, 0, 0, 1, 0, 0]
    ws, us, vs = vectors(shapes, dims=dims, seed=4)
    out = {}
    for b in ("reference", "triton"):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        out[b] = [S.spectral_norm_power_iteration(ws, u2, v2, n_iter, dims=dims, backend=b),
                  *u2, *v2]
    assert launches == [(4, 7, 59)] and mv == [2]
    for a, r in zip(out["triton"], out["reference"], strict=True):
        torch.testing.assert_close(a, r, **TOL[torch.float32])


def test_routing_only_mv_or_only_kernel(monkeypatch):
    launches, mv = _spy_launches(monkeypatch)
    ws, us, vs = vectors([(9, 30), (4, 4)])
    for threshold, want in ((1, ([], [2])), (10**9, ([(2, 9, 30)], []))):
        monkeypatch.setattr(R, "MV_MIN_ELEMENTS", threshold)
        launches.clear(), mv.clear()
        sig = S.spectral_norm_power_iteration(ws, [u.clone() for u in us],
                                              [v.clone() for v in vs], 1, backend="triton")
        ref = S.spectral_norm_power_iteration(ws, [u.clone() for u in us],
                                              [v.clone() for v in vs], 1, backend="reference")
        assert (launches, mv) == want
        torch.testing.assert_close(sig, ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_mv_path_low_precision(monkeypatch, dtype):
    """Half weights are read in their own dtype by the mv path; the flash-attention rule
    against float32, with torch's own low-precision iteration (vectors in the weight's dtype,
    as its parametrization keeps them) as the yardstick."""
    monkeypatch.setattr(R, "MV_MIN_ELEMENTS", 1)
    ws, us, vs = vectors([(37, 53)], torch.float32, seed=9)
    w32, u32, v32 = ws[0], us[0].clone(), vs[0].clone()
    s32 = S.spectral_norm_power_iteration([w32], [u32], [v32], 3, backend="reference")
    wl, ul, vl = w32.to(dtype), us[0].to(dtype), vs[0].to(dtype)
    for _ in range(3):  # torch's _power_method in the low dtype
        ul = F.normalize(torch.mv(wl, vl), dim=0, eps=EPS)
        vl = F.normalize(torch.mv(wl.t(), ul), dim=0, eps=EPS)
    s_low = torch.dot(ul.float(), torch.mv(wl.float(), vl.float()))
    u, v = us[0].to(dtype), vs[0].to(dtype)
    sig = S.spectral_norm_power_iteration([wl], [u], [v], 3, backend="triton")
    assert sig.dtype == torch.float32 and u.dtype == dtype
    assert_low_precision(sig, s32, s_low.reshape(1))
    assert_low_precision(u.float(), u32, ul.float())
    assert_low_precision(v.float(), v32, vl.float())

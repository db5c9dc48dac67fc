"""The Triton power iteration (kernels/spectral_norm.py) against the contract of
csrc/cpu/spectral_norm.h, on the CPU under the Triton interpreter.

The reference follows the contract literally in float64: normalize by max(||x||, eps) with
torch's own matrix-vector products, and sigma = u . (W v) by an explicit extra product (the
kernel takes a shortcut there, so the two are independent).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from genfast.kernels import spectral_norm as K  # noqa: E402

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
        torch.testing.assert_close(wt.u, u.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wt.v, v.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, torch.tensor([s for _, _, s in refs]), rtol=1e-5, atol=1e-6)


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


@triton.jit
def _cast_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < numel)
    tl.store(dst_ptr + offs, v.to(dst_ptr.dtype.element_ty), mask=offs < numel)


def triton_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t stored in dtype by Triton's own cast (the interpreter truncates fp32 -> bf16)."""
    out = torch.empty(t.shape, dtype=dtype)
    _cast_kernel[(1,)](t.contiguous(), out, t.numel(), BLOCK=triton.next_power_of_2(t.numel()))
    return out


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

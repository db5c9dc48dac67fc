"""PyTorch's own tests of F.gumbel_softmax, ported to call genfast.gumbel_softmax on every backend.

Source: pytorch/pytorch test/test_nn.py, class TestNNDeviceType (read at commit 74f2fa66):
``test_gumbel_softmax`` and its helpers ``_test_gumbel_softmax_st_shapes``,
``_test_gumbel_softmax_straight_through`` and ``_test_gumbel_softmax_grad``. Every upstream
assertion is kept as written (same shapes, dims, draws, tolerances and thresholds).

Differences, each with its reason:
* Backends and dtypes: upstream runs float and double on the CPU (half, float, double on CUDA).
  Here each runs on every backend that takes the dtype: reference and cpu take both, Triton
  (under the interpreter) takes float32 only, as its kernels compute in float32 and serve the
  GPU dtypes; the half-precision case runs where upstream runs it, on a CUDA device.
* The straight-through test draws 100 samples and applies a 99% z-test, so upstream fails about
  1 run in 100 by design. Here torch's generator is seeded first: genfast, like torch, draws its
  noise seed from torch's default generator, so the assertions and thresholds are unchanged and
  the outcome is reproducible.
* _test_gumbel_softmax_grad restores torch's RNG state between the soft and the hard call so
  both see the same noise. That holds for genfast unchanged: without seed= it draws its Philox
  seed from torch's default generator, so restoring the state restores the noise.
"""

import pytest
import torch

import genfast
from genfast import backends

BACKENDS = ["reference", *(b for b in ("cpu", "triton") if backends.available(b))]
CASES = [(b, d) for b in BACKENDS for d in (torch.float32, torch.float64)
         if d in backends.registered_ops()["gumbel"].dtypes[b]]
IDS = [f"{b}-{str(d).removeprefix('torch.')}" for b, d in CASES]


def st_shapes(device, dtype, shape, dim, count_expected, backend):
    """upstream _test_gumbel_softmax_st_shapes"""
    logits = torch.randn(shape, dtype=torch.float, device=device)
    logits = logits.to(dtype)

    y_draw = genfast.gumbel_softmax(logits, hard=True, dim=dim, backend=backend)

    # All values positive
    assert y_draw.min() >= 0
    # Shape unchanged
    assert y_draw.shape == logits.shape
    # One choice per draw
    torch.testing.assert_close(y_draw.sum(), torch.tensor(count_expected, dtype=y_draw.dtype,
                                                          device=device),
                               atol=torch.finfo(y_draw.dtype).eps, rtol=0)


def straight_through(device, dtype, backend):
    """upstream _test_gumbel_softmax_straight_through"""
    num_draws = 100

    logits = torch.tensor([[0.2, 0.8, 0.1]], device=device)
    logits = logits.reshape([1, 3])
    logits = logits.to(dtype).requires_grad_()
    probs = logits.softmax(dim=-1)

    counts = torch.zeros_like(logits)
    for _ in range(num_draws):
        y_draw = genfast.gumbel_softmax(logits, hard=True, backend=backend)
        counts = counts + y_draw

    # All values positive
    assert y_draw.min() >= 0
    # Each experiment should result in 1 draw.
    torch.testing.assert_close(counts.sum(), torch.tensor(float(num_draws), dtype=dtype,
                                                          device=device),
                               atol=torch.finfo(counts.dtype).eps, rtol=0)

    # check results is asymptotically as expected.
    expected = probs * num_draws
    # ~z is approximately N(0,1) for unbiased count
    z = (counts - expected) / (expected * (1 - probs)).sqrt()
    # A (lazy) approximate 99% two-sided test:
    # occurs with prob alpha~>=0.01 if unbiased
    assert z.abs().max().item() < 2.58


def grad(device, dtype, backend):
    """upstream _test_gumbel_softmax_grad: "hard" and "not hard" propagate the same gradient."""
    logits_soft = torch.zeros(10, 10, dtype=dtype, device=device, requires_grad=True)
    logits_hard = torch.zeros(10, 10, dtype=dtype, device=device, requires_grad=True)

    seed = torch.random.get_rng_state()
    y_soft = genfast.gumbel_softmax(logits_soft, hard=False, backend=backend)
    torch.random.set_rng_state(seed)
    y_hard = genfast.gumbel_softmax(logits_hard, hard=True, backend=backend)

    y_soft.sum().backward()
    y_hard.sum().backward()

    # 2eps = 1x addition + 1x subtraction.
    tol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(logits_soft.grad, logits_hard.grad, atol=tol, rtol=0)


def run_upstream_test_gumbel_softmax(device, dtype, backend):
    """upstream test_gumbel_softmax"""
    st_shapes(device, dtype, shape=[5], dim=0, count_expected=1, backend=backend)
    st_shapes(device, dtype, shape=[5], dim=-1, count_expected=1, backend=backend)
    st_shapes(device, dtype, shape=[5, 4], dim=1, count_expected=5, backend=backend)
    st_shapes(device, dtype, shape=[5, 4, 3], dim=1, count_expected=5 * 3, backend=backend)
    st_shapes(device, dtype, shape=[5, 4, 3], dim=-1, count_expected=5 * 4, backend=backend)
    straight_through(device, dtype, backend)
    grad(device, dtype, backend)


@pytest.mark.parametrize("backend,dtype", CASES, ids=IDS)
def test_gumbel_softmax(backend, dtype):
    torch.manual_seed(0)
    run_upstream_test_gumbel_softmax("cpu", dtype, backend)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "reference", "triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.half, torch.float, torch.double])
def test_gumbel_softmax_cuda(backend, dtype):
    spec = backends.registered_ops()["gumbel"]
    if backend != "auto" and (not backends.available(backend, "cuda")
                              or dtype not in spec.dtypes[backend]):
        pytest.skip(f"{backend} does not take {dtype} on this GPU")
    torch.manual_seed(0)
    run_upstream_test_gumbel_softmax("cuda", dtype, backend)

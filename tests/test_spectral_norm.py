"""spectral_norm op family, the op itself: every kernel against the reference (sizes, dtypes,
memory layouts, many weights per call), thread-count determinism, empty and zero weights,
torch.library.opcheck, bad input. Beside it: _layers (the drop-in layers against torch's
parametrization, fold, group, autograd, compile), _dropin (stacking, complex, the converter's
checks), _upstream (PyTorch's own tests), _func, _amp, _export, _triton (the launcher under the
interpreter, GPU shape routing), _gpu (cuda-marked), _ddp."""

import math

import pytest
import torch
from _helpers import (
    TOL,
    assert_close,
    dtypes_of,
    fast_backends,
    layouts,
    single_thread,  # noqa: F401 (a fixture, used by pytestmark)
)
from _spectral_norm_cases import vectors
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

import genfast
from genfast import backends
from genfast.nn.spectral_norm import spectral_norm
from genfast.ops import spectral_norm as S

FAST = fast_backends("spectral_norm")  # cpu, and triton under the interpreter
CPU = [b for b in FAST if b == "cpu"]


pytestmark = pytest.mark.usefixtures("single_thread")


def _run(backend, ws, us, vs, n_iter, dims=0):
    """[sigma, *u, *v] after one call, run on copies of us and vs."""
    u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
    sigma = S.spectral_norm_power_iteration(ws, u2, v2, n_iter, dims=dims, backend=backend)
    return [sigma, *u2, *v2]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_kernel_matches_reference(backend, dtype, n_iter):
    if dtype not in dtypes_of("spectral_norm", backend):
        pytest.skip(f"{backend} does not take {dtype}")
    shapes = [(1, 1), (7, 3), (33, 129), (5, 2, 3, 3), (3, 1), (1, 40), (129, 33)]
    dims = [0, 1, 0, 1, 0, 1, 0]
    ws, us, vs = vectors(shapes, dtype, dims=dims)
    got, want = (_run(b, ws, us, vs, n_iter, dims) for b in (backend, "reference"))
    assert got[0].dtype == S.sigma_dtype(dtype)
    for a, r in zip(got, want, strict=True):
        assert_close(a, r, dtype, msg=f"{backend} n_iter={n_iter}")


@pytest.mark.parametrize("backend", FAST)
def test_every_weight_layout(backend):
    """A weight in each layout _helpers.layouts gives (padded rows, transposed, misaligned,
    row stride 0) reads as its contiguous copy."""
    ws, us, vs = vectors([(9, 17)], torch.float32, seed=3)
    for name, w in layouts(ws[0]):
        got, want = _run(backend, [w], us, vs, 2), _run("reference", [w.contiguous()], us, vs, 2)
        for a, r in zip(got, want, strict=True):
            assert_close(a, r, msg=name)


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_multi_tensor_equals_one_call_per_weight_and_strides(backend):
    ws, us, vs = vectors([(9, 4, 2), (6, 13), (1, 8), (17, 17)])
    ws[1] = ws[1].t().contiguous().t()  # column stride 6: copied for the kernel
    ws[3] = ws[3][:, ::2]  # row stride 17, column stride 2
    us[0] = torch.stack([us[0], us[0]], 1)[:, 0]  # non-contiguous buffer, updated through a copy
    vs[3] = vs[3][:9]
    one_u, one_v = [u.clone() for u in us], [v.clone() for v in vs]
    sig = S.spectral_norm_power_iteration(ws, us, vs, 2, backend=backend)
    for i, w in enumerate(ws):
        s = S.spectral_norm_power_iteration([w.contiguous()], [one_u[i]], [one_v[i]], 2,
                                            backend=backend)
        torch.testing.assert_close(sig[i:i + 1], s, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(us[i], one_u[i], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(vs[i], one_v[i], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("n_iter", [0, 1])
def test_kernel_threads_give_the_same_bits(backend, n_iter):
    # Enough work to deal the weights to threads; one big weight (split into row chunks that
    # the threads share); a big one with an odd row count and padded rows beside small ones.
    padded = torch.randn(37, 7200)[:, :7085]
    for shapes in ([(700, 1000), (300, 2001), (1500, 900), (5, 7)], [(2048, 2304)],
                   [(5, 7), padded.shape, (64, 4096)]):
        ws, us, vs = vectors(shapes)
        if padded.shape in shapes:
            ws[1] = padded
        out = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out.append(_run(backend, ws, us, vs, n_iter))
        for got in out[1:]:
            for a, b in zip(out[0], got, strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU)
def test_a_big_weight_gives_the_same_bits_alone_and_in_a_group(backend):
    """Big weights are cut into row chunks by shape alone: a drop-in layer (one weight per
    call) and a SpectralNormGroup (all at once) compute the same sigma, u and v."""
    torch.set_num_threads(2)
    ws, us, vs = vectors([(9, 13), (256, 4096), (33, 129), (512, 2304)])
    grouped = _run(backend, ws, us, vs, 2)
    n = len(ws)
    for i in range(n):
        alone = _run(backend, ws[i:i + 1], us[i:i + 1], vs[i:i + 1], 2)
        for a, b in zip(alone, (grouped[0][i:i + 1], grouped[1 + i], grouped[1 + n + i]),
                        strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_big_weight_matches_reference(backend, dtype):
    ws, us, vs = vectors([(1031, 2304), (3, 5)], dtype, seed=7)
    torch.set_num_threads(2)
    got, want = _run(backend, ws, us, vs, 2), _run("reference", ws, us, vs, 2)
    for a, r in zip(got, want, strict=True):
        # float32: sums of 2304 products in another order
        tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a, r, **tol)


def test_empty_sides_and_zero_weights_are_defined():
    ws = [torch.zeros(4, 0), torch.zeros(0, 3), torch.zeros(3, 5)]
    us = [torch.ones(4) / 2, torch.ones(0), torch.ones(3)]
    vs = [torch.ones(0), torch.ones(3), torch.ones(5)]
    for b in ("reference", *FAST):
        sig = _run(b, ws, us, vs, 1)[0]
        assert torch.equal(sig, torch.zeros(3))
    lin = spectral_norm(nn.Linear(5, 3))
    with torch.no_grad():
        lin.parametrizations.weight.original.zero_()
    x = torch.randn(2, 5, requires_grad=True)
    y = lin(x)
    assert torch.equal(y, lin.bias.expand(2, 3))
    y.sum().backward()
    assert torch.isfinite(lin.parametrizations.weight.original.grad).all()
    assert torch.isfinite(x.grad).all()
    t = torch_sn(nn.Linear(5, 3))
    with torch.no_grad():
        t.parametrizations.weight.original.zero_()
    assert t(x).isnan().all()  # what genfast defines away


@pytest.mark.parametrize("backend", ["reference", *CPU])
def test_opcheck(backend):
    ws, us, vs = vectors([(5, 7), (3, 2, 2)], dims=[0, 1])
    for n_iter in (2, 0):
        torch.library.opcheck(S.power_iteration_op, (ws, us, vs, [0, 1], n_iter, 1e-12, backend))
    torch.library.opcheck(S.sigma_op, (ws, us, vs, [0, 1], 1e-12, backend))


def test_opcheck_complex_on_the_reference():
    ws, us, vs = vectors([(5, 7)], torch.complex64)
    torch.library.opcheck(S.power_iteration_op, (ws, us, vs, [0], 2, 1e-12, "reference"))
    torch.library.opcheck(S.sigma_op, (ws, us, vs, [0], 1e-12, "reference"))


def test_table_cache_is_keyed_by_content():
    from genfast.ops import _spectral_norm_kernels as K

    ws, us, vs = vectors([(5, 7), (4, 4)])
    t1 = K._operands(ws, us, vs, [0, 0])[0]
    t2 = K._operands(ws, us, vs, [0, 0])[0]
    assert t1 is t2 and t1.dtype == torch.int64 and t1.shape == (2, 6)
    assert K._operands(ws[::-1], us[::-1], vs[::-1], [0, 0])[0] is not t1
    assert t1[0, 0].item() == ws[0].data_ptr() and t1[1, 4].item() == 4


# ------------------------------------------------------------------ bad input
def _int_weight():
    m = nn.Module()
    m.register_buffer("weight", torch.ones(2, 2, dtype=torch.int64))
    return m


@pytest.mark.parametrize("call,err,match", [
    (lambda: spectral_norm(nn.Linear(2, 2), "bias2"), ValueError, "no parameter"),
    (lambda: spectral_norm(nn.Linear(2, 2), n_power_iterations=0), ValueError,
     "n_power_iterations"),
    (lambda: spectral_norm(nn.Linear(2, 2), n_power_iterations=1.5), TypeError,
     "n_power_iterations"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps=0.0), ValueError, "eps"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps=math.nan), ValueError, "eps"),
    (lambda: spectral_norm(nn.Linear(2, 2), eps="1e-3"), TypeError, "eps"),
    (lambda: spectral_norm(nn.Linear(2, 2), dim=2), IndexError, "dim"),
    (lambda: spectral_norm(nn.Linear(2, 2), dim="0"), TypeError, "dim"),
    (lambda: spectral_norm(nn.Linear(2, 2), name=0), TypeError, "name"),
    (lambda: spectral_norm("linear"), TypeError, "module"),
    (lambda: spectral_norm(nn.LSTMCell(2, 2), "weight_ih", fold=True), ValueError, "fold"),
    (lambda: spectral_norm(spectral_norm(nn.Linear(2, 2)), fold=True), ValueError,
     "already parametrized"),
    (lambda: spectral_norm(_int_weight()), TypeError, "weight must be"),
    (lambda: S.spectral_normalize(torch.ones(3, 2)), TypeError, "u must be"),
    (lambda: S.spectral_sigma(torch.ones(3, 2), torch.ones(3), torch.ones(3)), ValueError,
     "v must be"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(2)],
                                             [torch.ones(2)]), ValueError, r"us\[0\]"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2).double()]), ValueError, r"vs\[0\]"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3)], [torch.ones(3)],
                                             [torch.ones(1)]), ValueError, "2 dims"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2).long()], [torch.ones(3)],
                                             [torch.ones(2)]), TypeError, "complex"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2), torch.ones(2, 2).double()],
                                             [torch.ones(3), torch.ones(2).double()],
                                             [torch.ones(2), torch.ones(2).double()]),
     ValueError, "share one dtype"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [], []), ValueError, "length"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2)], -1), ValueError, ">= 0"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2)], backend="cuda"),
     genfast.BackendError, "cuda"),
    (lambda: S.spectral_norm_power_iteration([torch.ones(3, 2)], [torch.ones(3)],
                                             [torch.ones(2)], backend="gpu"),
     ValueError, "backend must be"),
])
def test_bad_input_gets_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_replaced_buffer_of_the_wrong_size_is_caught_before_the_kernel():
    lin = spectral_norm(nn.Linear(4, 3))
    lin.parametrizations.weight[0]._u = torch.ones(2)
    with pytest.raises(ValueError, match="do not match"):
        lin(torch.randn(1, 4))


def test_cpu_extension_rejects_out_of_bounds_tables():
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")
    from genfast.ops._boundary import cpu_module

    meta = torch.tensor([[0, 0, 0, 3, 2, 2]])
    sig = torch.empty(1)
    with pytest.raises(ValueError, match="null"):
        cpu_module().spectral_norm_power_iteration(1, meta.data_ptr(), 0, 1, 1e-12,
                                                   sig.data_ptr(), 1)
    with pytest.raises(ValueError, match="dtype"):
        cpu_module().spectral_norm_power_iteration(1, meta.data_ptr(), 2, 1, 1e-12,
                                                   sig.data_ptr(), 1)

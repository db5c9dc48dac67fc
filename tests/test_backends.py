"""Run-time fallback of `auto` (genfast.backends.call): a backend that fails on its first call
(a Triton compile error, a launch error, a missing Triton feature) is disabled for that op in
this process with one warning, the call is served by the next backend, and `genfast info`
says why. Proven here by injecting failing kernels into the op table."""

import dataclasses
import warnings

import pytest
import torch

import genfast
from genfast import backends

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _broken_kernel(x_ptr, BLOCK: tl.constexpr):
    # Calls a function triton.language does not have: fails when the kernel is compiled (on a
    # GPU) or run (under the interpreter), as a kernel using a newer Triton's feature would.
    tl.store(x_ptr + tl.arange(0, BLOCK), tl.no_such_builtin(BLOCK))


def _broken_triton_fwd(x, seed, inv_tau, hard):
    y = torch.empty_like(x)
    _broken_kernel[(1,)](y, BLOCK=16)
    return y


@pytest.fixture
def clean_failures():
    backends.reset_failures()
    yield
    backends.reset_failures()


def _with_impl(monkeypatch, op, backend, which, fn):
    table = dict(backends._IMPLS[op])
    impls = list(table[backend])
    impls[which] = fn
    table[backend] = tuple(impls)
    monkeypatch.setitem(backends._IMPLS, op, table)


@pytest.mark.triton
def test_failing_triton_kernel_falls_back_once_and_info_says_why(monkeypatch, clean_failures):
    if not backends.available("triton") or not backends.available("cpu"):
        pytest.skip("needs the Triton interpreter and genfast._C")
    spec = backends._OPS["gumbel"]
    monkeypatch.setitem(backends._OPS, "gumbel",
                        dataclasses.replace(spec, auto_cpu=("triton", "cpu", "reference")))
    _with_impl(monkeypatch, "gumbel", "triton", 0, _broken_triton_fwd)
    x = torch.randn(5, 16)
    expected = genfast.gumbel_softmax(x, seed=3, backend="cpu")
    # Named explicitly, the failing backend raises its own error: tests see real failures.
    with pytest.raises(Exception, match="no_such_builtin"):
        genfast.gumbel_softmax(x, seed=3, backend="triton")
    assert not backends.failures()
    with pytest.warns(backends.BackendFallbackWarning, match="triton.*failed at run time"):
        got = genfast.gumbel_softmax(x, seed=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert ("gumbel", "triton", "cpu") in backends.failures()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per cause, not one per call
        torch.testing.assert_close(genfast.gumbel_softmax(x, seed=3), expected, rtol=0, atol=0)
    assert backends.resolve("gumbel", x) == "auto:cpu"
    with pytest.raises(genfast.BackendError, match="failed at run time"):
        backends.resolve("gumbel", x, "triton")
    assert "triton     no: failed at run time (" in genfast.info()
    assert "no_such_builtin" in backends.failures()[("gumbel", "triton", "cpu")]
    # Other ops keep the backend.
    assert backends.failures().keys() == {("gumbel", "triton", "cpu")}


def test_failing_compiled_kernel_falls_back_to_the_reference(monkeypatch, clean_failures):
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")

    def launch_failure(backend, g):
        raise RuntimeError("CUDA error: no kernel image is available for execution")

    _with_impl(monkeypatch, "gradient_penalty", "cpu", 0,
               lambda g: launch_failure("cpu", g))
    g = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    with pytest.warns(backends.BackendFallbackWarning, match="no kernel image"):
        norms = genfast.per_sample_grad_norm(g)
    torch.testing.assert_close(norms, g.detach().norm(dim=1))
    # The backward (a second kernel of the same op) goes straight to the fallback as well.
    (gg,) = torch.autograd.grad(norms.sum(), g)
    torch.testing.assert_close(gg, g.detach() / g.detach().norm(dim=1, keepdim=True))
    assert "failed at run time (RuntimeError: CUDA error" in \
        backends.availability("cpu", torch.float64)["gradient_penalty"]["cpu"]


def test_bad_arguments_inside_a_kernel_do_not_disable_it(monkeypatch, clean_failures):
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")

    def rejects(g):
        raise ValueError("g: row stride -1 is invalid for rows of 9")

    _with_impl(monkeypatch, "gradient_penalty", "cpu", 0, rejects)
    with pytest.raises(ValueError, match="row stride"):
        genfast.per_sample_grad_norm(torch.randn(4, 9))
    assert not backends.failures()


def test_out_of_memory_is_not_a_backend_failure(monkeypatch, clean_failures):
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")

    def oom(g):
        raise torch.OutOfMemoryError("injected")

    _with_impl(monkeypatch, "gradient_penalty", "cpu", 0, oom)
    with pytest.raises(torch.OutOfMemoryError):
        genfast.per_sample_grad_norm(torch.randn(4, 9))
    assert not backends.failures()


def test_every_op_registers_every_backend():
    for op in backends.registered_ops():
        assert set(backends._IMPLS[op]) == set(backends.BACKENDS), op


def test_the_compile_constant_mark_is_what_torch_sets():
    # genfast.backends marks its resolution functions the way torch.compiler.
    # assume_constant_result does, without importing torch._dynamo at genfast's import.
    marked = torch.compiler.assume_constant_result(lambda: 0)
    assert vars(marked) == {"_dynamo_marked_constant": True}
    assert backends.requested_backend._dynamo_marked_constant is True


def test_resolution_is_constant_under_torch_compile():
    x = torch.randn(4, 8)

    @torch.compile(fullgraph=True, backend="eager")
    def f(x):
        return genfast.gumbel_softmax(x, seed=1) * 2

    torch.testing.assert_close(f(x), genfast.gumbel_softmax(x, seed=1) * 2)

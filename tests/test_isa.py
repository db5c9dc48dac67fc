"""Every SIMD copy of the CPU kernels runs in CI, not only the one the build machine would pick.

genfast._C compiles its hot loops once per ISA (csrc/common/isa.h: avx512, avx2, sse2, scalar)
and picks one at each call; GENFAST_ISA (read at load) or genfast._C.set_isa switches it. Here
each op's CPU kernel runs under every ISA this machine can execute and is compared with the
reference, on sizes that leave tails after every vector width and chunk (1, 7, 33, 257, 1031),
in every memory layout. The Philox words must be bit-identical on every copy."""

import os
import subprocess
import sys

import pytest
import torch
from _helpers import TOL, assert_close, layouts

import genfast
from genfast import backends, random
from genfast.ops import spectral_norm as S

C, _why = backends.extension("_C")
pytestmark = pytest.mark.skipif(C is None, reason=f"genfast._C is not built: {_why}")
ISAS = ["avx512", "avx2", "sse2", "scalar"]
# Columns: 1 (all tail), 7 (less than one 32-lane accumulator block), 33, 257 (past one
# 256-column noise chunk), 1031 (several chunks and a ragged tail).
SHAPES = [(1, 1), (3, 7), (5, 33), (4, 257), (2, 1031)]


@pytest.fixture(params=ISAS)
def isa(request):
    if request.param not in C.supported_isas():
        pytest.skip(f"this CPU cannot run {request.param} (runs {C.supported_isas()})")
    before = C.isa()
    C.set_isa(request.param)
    yield request.param
    C.set_isa(before)


def _logits(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 3


# ------------------------------------------------------------------ the switch itself
def test_supported_isas_and_switching():
    names = C.supported_isas()
    assert names[:2] == ["scalar", "sse2"]  # every x86-64 build has these
    assert set(names) <= set(ISAS) and C.isa() in names
    before = C.isa()
    try:
        for name in names:
            C.set_isa(name)
            assert C.isa() == name
        C.set_isa("auto")
        assert C.isa() == names[-1]  # auto is the best copy the CPU runs
    finally:
        C.set_isa(before)


def test_unknown_isa_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"isa: unknown ISA 'neon'; expected auto, avx512"):
        C.set_isa("neon")


@pytest.mark.parametrize("name", ISAS)
def test_isa_the_cpu_lacks_raises_instead_of_sigill(name):
    if name in C.supported_isas():
        pytest.skip(f"this CPU runs {name}: the refusal path needs a CPU without it")
    before = C.isa()
    with pytest.raises(RuntimeError, match=f"'{name}' cannot run here"):
        C.set_isa(name)
    assert C.isa() == before


def _load_with(env_value: str) -> subprocess.CompletedProcess:
    # The extension alone, without the genfast package (and torch): a fresh load in a second.
    env = {**os.environ, "GENFAST_ISA": env_value}
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('genfast._C', "
            "sys.argv[1]); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.isa())")
    return subprocess.run([sys.executable, "-c", code, C.__file__], env=env, capture_output=True,
                          text=True, timeout=120)


def test_env_var_is_read_at_load():
    run = _load_with("sse2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sse2"
    bad = _load_with("bogus")
    assert bad.returncode != 0
    assert "ImportError: GENFAST_ISA: unknown ISA 'bogus'" in bad.stderr


# ------------------------------------------------------------------ Philox: bit-identical
@pytest.mark.parametrize("rows,n", [(1, 1), (2, 3), (3, 5), (2, 9), (2, 33), (3, 257), (1, 1031)])
@pytest.mark.parametrize("seed,row0", [(0, 0), (123, 7), (2**40 + 17, 2**33 + 5)])
def test_philox_uniforms_are_bit_identical(isa, rows, n, seed, row0):
    got = torch.empty(rows, n)
    C.philox_uniform(seed, row0, rows, n, got.data_ptr())
    want = random.uniform(seed, rows, n, row_start=row0)
    assert torch.equal(got, want)


# ------------------------------------------------------------------ every op's CPU kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_forward_backward(isa, shape, hard):
    x0 = _logits(shape, shape[1])
    w = torch.randn(shape)
    want = {}
    for b in ("reference", "cpu"):
        for name, x in layouts(x0):
            xb = x.detach().requires_grad_()  # the same layout for both backends
            y = genfast.gumbel_softmax(xb, tau=0.8, hard=hard, seed=11, backend=b)
            (gx,) = torch.autograd.grad((y * w).sum(), xb)
            if b == "reference":
                want[name] = (y, gx)
                continue
            assert_close(y, want[name][0], msg=f"{isa} {name} forward")
            assert_close(gx, want[name][1], msg=f"{isa} {name} backward")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filt", [{}, {"top_k": 3}, {"top_p": 0.6}, {"top_k": 5, "top_p": 0.8},
                                  {"temperature": 0.0}])
def test_sample_categorical(isa, shape, filt):
    x0 = _logits(shape, 7)
    want = genfast.sample_categorical(x0, seed=99, backend="reference", **filt)
    for name, x in layouts(x0):
        if name == "row stride 0":
            continue  # rows differ in x0: that layout's values are another input
        got = genfast.sample_categorical(x, seed=99, backend="cpu", **filt)
        assert torch.equal(got, want), f"{isa} {name}"


@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_spectral_norm_power_iteration(isa, n_iter):
    shapes = [(1, 1), (7, 3), (33, 129), (5, 2, 3, 3), (3, 1031), (257, 33), (700, 900)]
    dims = [0, 1, 0, 1, 0, 1, 0]
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(s, generator=g) for s in shapes]
    ws[2] = ws[2].t().contiguous().t()  # column-major: copied for the kernel
    hw = [S.matrix_shape(w, d) for w, d in zip(ws, dims, strict=True)]
    us = [torch.nn.functional.normalize(torch.randn(h, generator=g), dim=0) for h, _ in hw]
    vs = [torch.nn.functional.normalize(torch.randn(n, generator=g), dim=0) for _, n in hw]
    out = {}
    for b in ("reference", "cpu"):
        u2, v2 = [u.clone() for u in us], [v.clone() for v in vs]
        sigma = S.spectral_norm_power_iteration(ws, u2, v2, n_iter, dims=dims, backend=b)
        out[b] = (sigma, *u2, *v2)
    for got, want in zip(out["cpu"], out["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6, msg=lambda m: f"{isa}\n{m}")


@pytest.mark.parametrize("shape", SHAPES)
def test_per_sample_grad_norm_and_its_backward(isa, shape):
    g0 = _logits(shape, 5)
    w = torch.randn(shape[0])
    want = {}
    for b in ("reference", "cpu"):
        for name, g in layouts(g0):
            gb = g.detach().requires_grad_()
            norms = genfast.per_sample_grad_norm(gb, backend=b)
            (dg,) = torch.autograd.grad((norms * w).sum(), gb)
            if b == "reference":
                want[name] = (norms, dg)
                continue
            assert_close(norms, want[name][0], msg=f"{isa} {name} norms")
            assert_close(dg, want[name][1], msg=f"{isa} {name} backward (row scaling)")


def test_float64_takes_the_same_path_on_every_isa(isa):
    # float64 loops are not multiversioned; they must not be disturbed by the switch.
    x = _logits((3, 33), 1).double()
    y = genfast.gumbel_softmax(x, seed=2, backend="cpu")
    torch.testing.assert_close(y, genfast.gumbel_softmax(x, seed=2, backend="reference"),
                               **TOL[torch.float64])

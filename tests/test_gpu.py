"""GPU backends (cuda, triton) against the reference on a real GPU, driven by one table.

Each Row (tests/_gpu_rows.py) is one public entry point of an op family: how to build its inputs
for a shape, how to run it on a backend, and the shapes that reach every code path of its
kernels. The tests below run every row on every GPU backend: each dtype (the
flash-attention rule for fp16 / bf16), every memory layout, past the grid limits, double
backward (gradgradcheck in float64 where a backend takes it), torch.compile(fullgraph=True),
no host sync on the hot path, and a second GPU. A new op family adds rows there, not tests here.

Tests marked `cuda` skip with a reason where no GPU is present (conftest.py). The table itself is
checked on every machine: every registered op family has rows, and every row runs on the CPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from _gpu_rows import ROWS, Row, Step, randn
from _helpers import LOW, assert_low_precision, layouts
from torch import Tensor

import genfast
from genfast import backends

cuda = pytest.mark.cuda
GPU_BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "row stride > n", "column stride != 1", "misaligned", "row stride 0")
# aot_eager traces every row through AOTAutograd and the ops' fake kernels; inductor, which also
# generates code around them, runs once per family (rows marked `inductor`) to stay in budget.
COMPILERS = os.environ.get("GENFAST_TEST_COMPILERS", "aot_eager,inductor").split(",")
ROW_IDS = [r.id for r in ROWS]


# ------------------------------------------------------------------ the shared machinery
def _make(row: Row, shape, device, dtype, *, upcast=False, layout: str | None = None):
    """Fresh inputs (a run may update them in place): float inputs in `dtype`, and back in
    float32 with upcast (the flash-attention rule's fp32 reference sees the rounded values)."""
    xs = [t.to(dtype).float() if upcast else t.to(dtype) for t in row.inputs(shape, device)]
    if layout is not None:
        xs[0] = dict(layouts(xs[0]))[layout]
    for i in row.diff:
        xs[i] = xs[i].detach().requires_grad_()
    return xs


def _proj(t: Tensor) -> Tensor:
    """A fixed random cotangent for t: gradients of <outputs, proj> check every entry."""
    return randn(t.shape, t.device, 17)


def _loss(outs) -> Tensor | None:
    terms = [(o.float() * _proj(o)).sum() for o in outs
             if o is not None and o.is_floating_point() and o.requires_grad]
    return sum(terms) if terms else None


def _run(row: Row, xs: list[Tensor], step: Step) -> list[Tensor | None]:
    """The outputs, then the gradients of _loss(outputs) w.r.t. the diff inputs and extras."""
    outs, extra = step()
    values: list[Tensor | None] = [o.detach() for o in outs]
    loss = _loss(outs) if row.diff else None
    if loss is not None:
        wrt = [xs[i] for i in row.diff] + list(extra)
        values += torch.autograd.grad(loss, wrt, allow_unused=True)
    return values


def _double_backward(row: Row, xs: list[Tensor], step: Step) -> list[Tensor | None]:
    outs, extra = step()
    wrt = [xs[i] for i in row.diff] + list(extra)
    grads = torch.autograd.grad(_loss(outs), wrt, create_graph=True, allow_unused=True)
    second = _loss(grads)
    return [] if second is None else list(torch.autograd.grad(second, wrt, allow_unused=True))


def _compare(row: Row, got, ref32, ref_lo, dtype, what: str, outputs: bool = True) -> None:
    """got against ref32 (float32) or by the low-precision rule against ref_lo; `outputs`:
    got starts with the outputs (else: gradients only)."""
    assert len(got) == len(ref32), f"{what}: {len(got)} values, the reference {len(ref32)}"
    for i, (g, r32, rlo) in enumerate(zip(got, ref32, ref_lo, strict=True)):
        at = f"{row.id} {what}, value {i}"
        if g is None or r32 is None:
            assert g is None and r32 is None, f"{at}: a gradient is missing on one side"
            continue
        assert g.shape == r32.shape, f"{at}: shape {tuple(g.shape)} != {tuple(r32.shape)}"
        if row.onehot and outputs and i == 0:
            assert bool(((g == 0) | (g == 1)).all()) and bool((g.sum(-1) == 1).all()), at
            g, rlo = g.argmax(-1), rlo.argmax(-1)
        if not g.is_floating_point():
            # Sampled indices: exact but for near-ties, where one ulp of the noise (another
            # log implementation) may pick the other class: over millions of rows, a few do.
            bad = int((g != rlo).sum())
            assert bad <= 0.005 * g.numel(), f"{at}: {bad} of {g.numel()} indices differ"
        elif dtype in LOW:
            assert_low_precision(g, r32, rlo)
        else:
            torch.testing.assert_close(g, r32.to(g.dtype), rtol=row.rtol, atol=row.atol,
                                       msg=lambda m, at=at: f"{at}\n{m}")


def _check(row: Row, backend: str, shape, dtype, device, layout: str | None = None) -> None:
    def run(b, **kw):
        xs = _make(row, shape, device, dtype, layout=layout, **kw)
        return _run(row, xs, row.prepare(xs, b))

    got = run(backend)
    ref32 = run("reference", upcast=True)
    ref_lo = run("reference") if dtype in LOW else ref32
    _compare(row, got, ref32, ref_lo, dtype, f"{backend} {str(dtype)[6:]} {shape} {layout}")


def _check_double_backward(row: Row, backend: str, device) -> None:
    out = {}
    for b in (backend, "reference"):
        xs = _make(row, row.probe, device, torch.float32)
        out[b] = _double_backward(row, xs, row.prepare(xs, b))
    _compare(row, out[backend], out["reference"], out["reference"], torch.float32,
             f"{backend} double backward", outputs=False)


def _need(backend: str, row: Row, dtype=torch.float32) -> None:
    if not backends.available(backend, "cuda"):
        pytest.skip(f"{backend} backend not available on this GPU")
    if dtype not in backends.registered_ops()[row.family].dtypes[backend]:
        pytest.skip(f"{backend} does not take {dtype} for {row.family}")


def _params(*axes):
    """pytest params of rows crossed with axes; ids name the row."""
    out = [[]]
    for axis in axes:
        out = [p + [v] for p in out for v in axis]
    return out


# ------------------------------------------------------------------ GPU tests
@cuda
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_matches_reference(row, backend, dtype):
    _need(backend, row, dtype)
    for shape in row.shapes:
        _check(row, backend, shape, dtype, torch.device("cuda"))


@cuda
@pytest.mark.parametrize("row", [r for r in ROWS if r.layouts], ids=lambda r: r.id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_layouts(row, backend, layout):
    # Misaligned: a storage offset of one element, so the base is not 16-byte aligned and the
    # vector loads must fall back; row stride > n: an odd row stride (n + 5).
    _need(backend, row)
    for shape in (row.shapes[2], row.shapes[-1]):  # a short-row path and the longest rows
        _check(row, backend, shape, torch.float32, torch.device("cuda"), layout)


@cuda
@pytest.mark.parametrize("row", [r for r in ROWS if r.big], ids=lambda r: r.id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_past_grid_limits(row, backend):
    _need(backend, row)
    for shape in row.big:
        _check(row, backend, shape, torch.float32, torch.device("cuda"))


@cuda
@pytest.mark.parametrize("row", [r for r in ROWS if r.diff], ids=lambda r: r.id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_double_backward(row, backend):
    _need(backend, row)
    takes64 = torch.float64 in backends.registered_ops()[row.family].dtypes[backend]
    if row.gradgradcheck and takes64:
        xs = _make(row, row.probe, torch.device("cuda"), torch.float64)

        def fn(*d):
            ys = list(xs)
            for i, t in zip(row.diff, d, strict=True):
                ys[i] = t
            outs, _ = row.prepare(ys, backend)()
            return tuple(o for o in outs if o.is_floating_point())

        assert torch.autograd.gradgradcheck(fn, tuple(xs[i] for i in row.diff))
    else:  # float32 only (Triton), or a call that updates state: against the reference
        _check_double_backward(row, backend, torch.device("cuda"))


@cuda
@pytest.mark.parametrize("row,backend,compiler", _params(
    [r for r in ROWS if r.compile], GPU_BACKENDS, COMPILERS),
    ids=lambda v: v.id if isinstance(v, Row) else v)
def test_torch_compile_fullgraph(row, backend, compiler):
    _need(backend, row)
    if compiler == "inductor" and not row.inductor:
        pytest.skip("inductor runs once per family (its row is marked inductor); aot_eager "
                    "covers this row")
    torch._dynamo.reset()
    dev = torch.device("cuda")
    xs = _make(row, row.probe, dev, torch.float32)
    eager = _run(row, xs, row.prepare(xs, backend))
    xs = _make(row, row.probe, dev, torch.float32)
    step = torch.compile(row.prepare(xs, backend), fullgraph=True, backend=compiler)
    got = _run(row, xs, step)
    _compare(row, got, eager, eager, torch.float32, f"{backend} compiled with {compiler}")


@cuda
@pytest.mark.parametrize("row", [r for r in ROWS if r.sync_free], ids=lambda r: r.id)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_no_host_sync(row, backend):
    _need(backend, row)
    xs = _make(row, row.probe, torch.device("cuda"), torch.float32)
    step = row.prepare(xs, backend)
    _run(row, xs, step)  # warm-up: kernel compiles, cached tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run(row, xs, step)  # forward and backward of a training step
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_second_device(row, backend):
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: the device guards need a second one")
    _need(backend, row)
    assert torch.cuda.current_device() == 0
    _check(row, backend, row.probe, torch.float32, torch.device("cuda:1"))
    assert torch.cuda.current_device() == 0


@cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_row_scaling_past_2_31_quads(backend):
    # gp_scale_rows switches to 64-bit indices at 2^31 quads: 8.6G fp16 values (17 GB).
    row = next(r for r in ROWS if r.name == "per_sample_grad_norm")
    _need(backend, row, torch.float16)
    rows, d = 65_536, 131_076
    if torch.cuda.mem_get_info()[0] < 3 * rows * d * 2 + (4 << 30):
        pytest.skip("needs ~56 GB of free GPU memory")
    g = torch.randn(rows, d, device="cuda", dtype=torch.float16).requires_grad_()
    norms = genfast.per_sample_grad_norm(g, backend=backend)
    (grad,) = torch.autograd.grad(norms.sum(), g)
    pick = torch.tensor([0, 1, rows // 2, rows - 2, rows - 1], device="cuda")
    gs = g.detach()[pick].float()
    want_norm = gs.norm(dim=1)
    torch.testing.assert_close(norms.detach()[pick].float(), want_norm, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(grad[pick].float(), gs / want_norm[:, None], rtol=2e-3, atol=1e-5)


# ------------------------------------------------------------------ the table, on every machine
def test_every_registered_op_family_has_rows():
    families = {r.family for r in ROWS}
    missing = set(backends.registered_ops()) - families
    assert not missing, f"op families without rows in tests/test_gpu.py: {sorted(missing)}"
    assert families <= set(backends.registered_ops()), "rows of an unregistered family"
    assert len(set(ROW_IDS)) == len(ROW_IDS)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_row_runs_on_the_cpu(row):
    # The machinery above (inputs, steps, gradients, comparisons) on the CPU backend, so a row
    # that cannot run is caught before a GPU is lent.
    if not backends.available("cpu"):
        pytest.skip("genfast._C is not built")
    _check(row, "cpu", row.probe, torch.float32, torch.device("cpu"))
    if row.layouts:
        _check(row, "cpu", row.probe, torch.float32, torch.device("cpu"), "misaligned")
    if row.diff:
        _check_double_backward(row, "cpu", torch.device("cpu"))

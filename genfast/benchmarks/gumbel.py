"""Benchmark cases for genfast/ops/gumbel.py: gumbel_softmax (sampling: benchmarks/sample.py).

Baselines: PyTorch eager (F.gumbel_softmax), torch.compile of the plain-torch formula, and a
floor that does the same memory traffic without the noise (torch.softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genfast

from .runner import COMPILED, Case, Factory, Inputs, backends_for

TARGET = (256, 32768)  # the target: 256 rows over a 32k vocabulary, float32
SMALL_VOCAB = (4096, 256)  # many short rows: per-row overhead dominates
GPU_SHAPE = (1024, 128256)  # a Llama-3 vocabulary: 0.5 GB of fp32 logits, bandwidth-bound on a GPU
QUICK = (32, 1000)  # n not a multiple of 4: exercises the Philox tail group
TAU = 1.0


def _inputs(shape, dtype, device, grad: bool):
    def make() -> Inputs:
        gen = torch.Generator(device=device).manual_seed(0)
        # Spread 2 logits: a peaked but not one-hot distribution, as from a trained model.
        x = (2 * torch.randn(shape, generator=gen, device=device)).to(dtype)
        if not grad:
            return {"x": x}
        g = torch.randn(shape, generator=gen, device=device).to(dtype)
        return {"x": x.requires_grad_(), "g": g}

    return make


def _timed(f, grad: bool) -> Factory:
    """The zero-arg callable for one mode. autograd.grad, not .backward(): nothing
    accumulates into x.grad, so repeat N does exactly the work of repeat 1."""
    if grad:
        return lambda inp: lambda: torch.autograd.grad(f(inp["x"]), inp["x"], inp["g"])
    return lambda inp: lambda: f(inp["x"])


def _compiled(f, grad: bool) -> Factory:
    # dynamic=False: kernels specialised to this shape, the best torch.compile can do here.
    # Created inside the factory so the compile happens after the runner's Dynamo reset.
    return lambda inp: _timed(torch.compile(f, dynamic=False), grad)(inp)


def gumbel_case(shape, dtype, device: str, mode: str, hard: bool, backends: tuple[str, ...],
                compile_default: bool = False) -> Case:
    grad = mode == "forward+backward"

    def eager(x):
        return F.gumbel_softmax(x, tau=TAU, hard=hard)

    providers: dict[str, Factory] = {}
    for b in backends:
        providers[f"genfast:{b}"] = _timed(
            lambda x, b=b: genfast.gumbel_softmax(x, tau=TAU, hard=hard, backend=b), grad)
    providers["torch eager"] = _timed(eager, grad)
    providers[COMPILED] = _compiled(eager, grad)
    providers["torch.softmax (floor)"] = _timed(lambda x: torch.softmax(x, -1), grad)
    n = torch.Size(shape).numel() * dtype.itemsize
    return Case(
        op="gumbel_softmax", name="hard" if hard else "soft", shape=shape, dtype=dtype,
        device=device, mode=mode, inputs=_inputs(shape, dtype, device, grad),
        providers=providers,
        # forward: read x, write y; backward: read dy and the saved y (or x), write dx.
        bytes=(5 if grad else 2) * n,
        eager="torch eager", floor="torch.softmax (floor)", compile_default=compile_default,
    )


def plan(device: str, scope: str, dtypes: list[torch.dtype] | None):
    """(dtype, full-mode shapes, short-row shapes) per dtype, shared with benchmarks/sample.py."""
    cuda = device.startswith("cuda")
    if dtypes is None:
        # Half precision is a GPU dtype for genfast (DESIGN.md section 4).
        dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    for dtype in dtypes:
        if scope == "quick":
            yield dtype, [QUICK], []
        elif scope == "full":
            yield dtype, [TARGET, SMALL_VOCAB] + ([GPU_SHAPE] if cuda else []), []
        else:
            yield dtype, ([TARGET, GPU_SHAPE] if cuda else [TARGET]), [SMALL_VOCAB]


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: one tiny shape. default: the target shape soft forward (compiled), soft and hard
    forward+backward, and many short rows forward; on a GPU the target and the Llama-3
    vocabulary in every mode, the latter compiled. full: every shape and mode, the reference
    backend, everything compiled."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    big = GPU_SHAPE if cuda else TARGET  # where the default run compiles
    out = []
    for dtype, shapes, partial in plan(device, scope, dtypes):
        for shape in shapes:
            mark = scope == "default" and shape == big
            for mode in ("forward", "forward+backward"):
                for hard in (False, True):
                    if hard and mode == "forward" and scope == "default" and not cuda:
                        continue  # CPU default: hard forward+backward covers straight-through
                    out.append(gumbel_case(shape, dtype, device, mode, hard, backends,
                                           compile_default=mark and mode == "forward"
                                           and not hard))
        for shape in partial:  # per-row overhead: the soft forward says it all
            out.append(gumbel_case(shape, dtype, device, "forward", False, backends))
    return out

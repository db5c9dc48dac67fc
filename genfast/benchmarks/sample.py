"""Benchmark cases for genfast/ops/sample.py: sample_categorical (Gumbel-max, no noise stored).

Baselines: PyTorch eager (torch.multinomial over softmax), the cheapest plain-torch Gumbel-max
(eager and torch.compile), and a floor with the same memory traffic and no noise (torch.argmax).
Shapes are gumbel's (benchmarks/gumbel.py): the same rows, sampled instead of relaxed.
"""

from __future__ import annotations

import torch

import genfast

from .gumbel import GPU_SHAPE, TARGET, _compiled, _inputs, _timed, plan
from .runner import COMPILED, Case, Factory, backends_for


def _gumbel_max(x):
    # argmax(x + Gumbel) with the Gumbel as -log(Exp(1)): the exponential race, the cheapest
    # plain-torch Gumbel-max (one random kernel, no log(-log(u))).
    return torch.argmax(x - torch.empty_like(x).exponential_().log(), dim=-1)


def sample_case(shape, dtype, device: str, backends: tuple[str, ...],
                compile_default: bool = False) -> Case:
    providers: dict[str, Factory] = {}
    for b in backends:
        providers[f"genfast:{b}"] = _timed(
            lambda x, b=b: genfast.sample_categorical(x, backend=b), grad=False)
    providers["torch.multinomial"] = _timed(
        lambda x: torch.multinomial(torch.softmax(x, -1), 1), grad=False)
    providers["torch gumbel-max"] = _timed(_gumbel_max, grad=False)
    providers[COMPILED] = _compiled(_gumbel_max, grad=False)
    providers["torch.argmax (floor)"] = _timed(lambda x: torch.argmax(x, -1), grad=False)
    rows = torch.Size(shape[:-1]).numel()
    return Case(
        op="sample_categorical", name="t=1", shape=shape, dtype=dtype, device=device,
        mode="sample", inputs=_inputs(shape, dtype, device, grad=False), providers=providers,
        bytes=torch.Size(shape).numel() * dtype.itemsize + rows * 8,  # read x, write int64 per row
        eager="torch.multinomial", floor="torch.argmax (floor)",
        compile_default=compile_default,
    )


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: one tiny shape. default: the target shape (compiled) and many short rows; on a
    GPU also the Llama-3 vocabulary. full: every shape, the reference backend, compiled."""
    backends = backends_for(device, scope)
    big = GPU_SHAPE if device.startswith("cuda") else TARGET
    out = []
    for dtype, shapes, partial in plan(device, scope, dtypes):
        for shape in [*shapes, *partial]:
            mark = scope == "default" and shape == big
            out.append(sample_case(shape, dtype, device, backends, compile_default=mark))
    return out

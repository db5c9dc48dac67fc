"""The table tests/test_gpu.py runs: one Row per public entry point of an op family, with the
shapes that reach every code path of its kernels (each comment says which path). A new op family
adds its rows here; test_gpu.py has no per-op code.

Import as ``from _gpu_rows import ROWS`` (pytest puts tests/ on sys.path for files in it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genfast
from genfast import nn as gnn
from genfast.ops import spectral_norm as S

Step = Callable[[], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]


@dataclass(frozen=True)
class Row:
    family: str  # op family, a key of genfast.backends.registered_ops()
    name: str
    inputs: Callable[[Any, torch.device], list[Tensor]]  # float32 inputs of one shape, seeded
    # Builds whatever the call needs (modules, groups), then returns the step to run: it gives
    # (outputs, extra leaves to differentiate, e.g. a module's weight).
    prepare: Callable[[list[Tensor], str], Step]
    shapes: tuple  # together they reach every code path (see each row's comment)
    probe: Any  # a small shape for gradgradcheck, compile, host-sync and second-device checks
    big: tuple = ()  # past the grid limits: float32, contiguous
    diff: tuple[int, ...] = ()  # inputs to differentiate (none: the entry point has no grad)
    layouts: bool = False  # inputs[0] is (rows, n): also run it in every layout of _helpers
    onehot: bool = False  # output 0 is one-hot: compared by its argmax, as sampled indices
    gradgradcheck: bool = False  # a call changes no state, so float64 finite differences apply
    compile: bool = True
    inductor: bool = False
    sync_free: bool = True  # a hot path: must not synchronize with the host
    rtol: float = 1e-4  # float32 against the reference: another summation order
    atol: float = 1e-5

    @property
    def id(self) -> str:
        return f"{self.family}.{self.name}"


def randn(shape, device, seed: int, scale: float = 1.0) -> Tensor:
    """Seeded normal values made on `device` (the same on every run there)."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device) * scale


def _fn(f: Callable[[list[Tensor], str], Tensor | tuple]) -> Callable[[list[Tensor], str], Step]:
    """prepare() of a row that is one function call."""
    def prepare(xs, backend):
        def step():
            out = f(xs, backend)
            return (out if isinstance(out, tuple) else (out,)), ()
        return step
    return prepare


# ------------------------------------------------------------------ gumbel and sample (the sampler)
# CUDA: n <= 16 sub-warp groups of 4 threads (32 rows a block; filtered sampling uses warp
# groups at least); <= 1024 warp groups; <= 16384 a 512-thread block with the row in registers
# (radix passes narrowed); above, uncached multi-pass (4 fixed radix passes). Triton: short rows
# packed ROWS to a program ((1000, 10): 128 rows, 32 filtered), the row in registers up to 8192
# columns (512 filtered, radix narrowed), chunks of 4096 (512 filtered) above.
ROW_SHAPES = ((1, 1), (3, 7), (1000, 10), (37, 1000), (257, 300), (5, 5000), (3, 20000))
# Grid-stride row loops: 70,000 rows of one 512-thread block each, and 2.2M rows of 32 a block.
ROW_BIG = ((70_000, 1_100), (2_200_000, 5))


def _logits(shape, device):
    return [randn(shape, device, shape[-1], 3.0)]


def _gumbel(hard: bool) -> Row:
    return Row("gumbel", "hard" if hard else "soft", _logits,
               _fn(lambda xs, b: genfast.gumbel_softmax(xs[0], 0.7, hard, seed=5, backend=b)),
               ROW_SHAPES, (3, 7), ROW_BIG, diff=(0,), layouts=True, onehot=hard,
               gradgradcheck=True, inductor=not hard)


def _sampler(name: str, **kw) -> Row:
    return Row("sample", name, _logits,
               _fn(lambda xs, b: genfast.sample_categorical(xs[0], seed=3, backend=b, **kw)),
               ROW_SHAPES, (5, 33), ROW_BIG if not kw else (), layouts=True,
               inductor=not kw)


# ------------------------------------------------------------------ gradient_penalty
def _penalty_inputs(shape, device):
    n, d = shape
    return [randn(shape, device, 1), randn(shape, device, 2),
            randn((d, 16), device, 3, d ** -0.5), randn((16, 1), device, 4, 0.25)]


def _penalty(xs, b):
    real, fake, w1, w2 = xs
    gen = torch.Generator(real.device).manual_seed(0)  # the same interpolation on every run
    return genfast.gradient_penalty(lambda x: F.leaky_relu(x @ w1, 0.2) @ w2, real, fake,
                                    generator=gen, backend=b).penalty


# ------------------------------------------------------------------ spectral_norm
def _weight_inputs(shape, device):
    h, n = shape[0], math.prod(shape[1:])
    return [randn(shape, device, 1), F.normalize(randn(h, device, 2), dim=0),
            F.normalize(randn(n, device, 3), dim=0)]


def _table_inputs(shapes, device):
    """Weights of the given shapes (the second column-major), then their u's, then their v's."""
    ws = [randn(s, device, i) for i, s in enumerate(shapes)]
    if len(ws) > 1 and ws[1].dim() == 2:
        ws[1] = ws[1].t().contiguous().t()
    us = [F.normalize(randn(w.shape[0], device, 50 + i), dim=0) for i, w in enumerate(ws)]
    vs = [F.normalize(randn(w[0].numel(), device, 90 + i), dim=0) for i, w in enumerate(ws)]
    return [*ws, *us, *vs]


def _power(xs, b):
    k = len(xs) // 3
    sigma = S.spectral_norm_power_iteration(xs[:k], xs[k:2 * k], xs[2 * k:], 2, backend=b)
    return (sigma, *xs[k:])


def _stacked_power(xs, b):
    """Many equal weights (B, h, w) in one call; "reference" is a batched oracle, because the
    reference backend's per-weight loop would take minutes for 70,000 weights."""
    w, u, v = xs
    if b != "reference":
        sigma = S.spectral_norm_power_iteration(list(w.unbind(0)), list(u.unbind(0)),
                                                list(v.unbind(0)), 2, backend=b)
        return sigma, u, v
    wf, uf, vf = w.float(), u.float(), v.float()
    for _ in range(2):
        uf = F.normalize(torch.bmm(wf, vf[..., None])[..., 0], dim=1, eps=1e-12)
        vf = F.normalize(torch.bmm(wf.transpose(1, 2), uf[..., None])[..., 0], dim=1, eps=1e-12)
    sigma = (uf * torch.bmm(wf, vf[..., None])[..., 0]).sum(1)
    u.copy_(uf), v.copy_(vf)
    return sigma, u, v


def _seeded_model(like: Tensor, build: Callable[[], nn.Module]) -> nn.Module:
    """build() on like's device and dtype, from the same draws on every run (weights, u, v)."""
    dev = like.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [],
                               device_type=dev.type):
        torch.manual_seed(0)
        with torch.device(dev):
            return build().to(like.dtype)


def _sn_module(xs, b):
    x = xs[0]
    conv = _seeded_model(x, lambda: gnn.spectral_norm(nn.Conv2d(x.shape[1], 6, 3), backend=b))
    return lambda: ((conv(x),), (conv.parametrizations.weight.original,))


def _sn_group(xs, b):
    x = xs[0]
    n, c, h, w = x.shape

    def build():
        model = nn.Sequential(nn.Conv2d(c, 8, 3), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3),
                              nn.Flatten(), nn.Linear(4 * (h - 4) * (w - 4), 1))
        for i in (0, 2, 4):
            gnn.spectral_norm(model[i], backend=b)
        return model

    model = _seeded_model(x, build)
    gnn.SpectralNormGroup(model)  # one multi-tensor update per forward, from a pre-hook
    params = tuple(model[i].parametrizations.weight.original for i in (0, 2, 4))
    return lambda: ((model(x),), params)


ROWS: list[Row] = [
    _gumbel(False),
    _gumbel(True),
    _sampler("plain"),
    _sampler("top_k", top_k=5),
    _sampler("top_p", top_p=0.7),
    _sampler("top_k_top_p", top_k=50, top_p=0.9),
    _sampler("greedy", temperature=0.0),
    # CUDA norms: d <= 16 groups of 4 threads, <= 64 of 16, <= 1024 a warp, above a block;
    # Triton: one column tile up to its width, chunks above. Big: 2.2M rows at 32 a block, and
    # a backward whose 19M quads need more than 65,535 blocks of the scaling kernel.
    Row("gradient_penalty", "per_sample_grad_norm", lambda s, d: [randn(s, d, 7)],
        _fn(lambda xs, b: genfast.per_sample_grad_norm(xs[0], backend=b)),
        ((1, 1), (3, 7), (33, 64), (37, 1000), (5, 5000), (3, 20000)), (5, 33),
        ((2_200_000, 5), (70_000, 1_100)), diff=(0,), layouts=True, gradgradcheck=True,
        inductor=True),
    # torch.autograd.grad inside: compiled as part of a training step, not on its own.
    Row("gradient_penalty", "gradient_penalty", _penalty_inputs, _fn(_penalty),
        ((1, 3), (16, 37), (64, 1000)), (8, 12), diff=(2, 3), compile=False),
    # CUDA: u, v cached in shared memory. Weights of >= 2^19 elements or u+v > 8192 entries (the
    # (512, 8192), (4, 70_000) and (70_000, 3) sets) are routed by the op to torch.mv; the kernel's
    # uncached path is reached only by calling genfast._cuda directly.
    # Triton: tiles up to 128 columns, shape-independent code.
    Row("spectral_norm", "power_iteration", _table_inputs, _fn(_power),
        (((1, 1), (7, 3), (33, 129), (5, 2, 3, 3), (129, 33)), ((64, 4608), (512, 8192)),
         ((4, 70_000),), ((70_000, 3),)),
        ((7, 3), (12, 5))),
    # One block per weight, grid-stride past 65,535 weights.
    Row("spectral_norm", "many_weights", lambda s, d: [randn(s, d, 1),
                                                      F.normalize(randn(s[:2], d, 2), dim=1),
                                                      F.normalize(randn((s[0], s[2]), d, 3),
                                                                  dim=1)],
        _fn(_stacked_power), ((1000, 3, 5),), (4, 3, 5), ((70_000, 3, 5),)),
    Row("spectral_norm", "normalize", _weight_inputs,
        _fn(lambda xs, b: (S.spectral_normalize(xs[0], xs[1], xs[2], 2, backend=b), *xs[1:])),
        ((3, 7), (64, 3, 4, 4), (512, 8192)), (5, 7), diff=(0,), inductor=True),
    Row("spectral_norm", "normalize_eval", _weight_inputs,
        _fn(lambda xs, b: S.spectral_normalize(xs[0], xs[1], xs[2], update=False, backend=b)),
        ((3, 7), (64, 3, 4, 4)), (5, 7), diff=(0,), gradgradcheck=True),
    Row("spectral_norm", "module", lambda s, d: [randn(s, d, 4)], _sn_module,
        ((2, 3, 8, 8), (4, 64, 9, 9)), (2, 3, 6, 6), diff=(0,)),
    Row("spectral_norm", "group_update", lambda s, d: [randn(s, d, 5)], _sn_group,
        ((2, 3, 12, 12), (8, 5, 9, 7)), (2, 3, 12, 12), diff=(0,)),
]

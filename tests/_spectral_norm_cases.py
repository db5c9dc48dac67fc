"""Layers, models and vectors the spectral_norm test modules share (tests/test_spectral_norm*.py).

Import as ``from _spectral_norm_cases import ...`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast.nn.spectral_norm import spectral_norm
from genfast.ops import spectral_norm as S

# (layer factory, input factory): odd sizes; ConvTranspose normalizes over dim 1.
LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), lambda: torch.randn(3, 7)),
    "linear_wide": (lambda: nn.Linear(33, 1), lambda: torch.randn(2, 33)),
    "conv1d": (lambda: nn.Conv1d(2, 6, 5), lambda: torch.randn(2, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: torch.randn(2, 3, 5, 5)),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), lambda: torch.randn(2, 3, 4, 4)),
    "embedding": (lambda: nn.Embedding(11, 6), lambda: torch.tensor([[0, 3, 10], [7, 7, 1]])),
}


def pair(kind, dtype=torch.float64, seed=0, backend=None, **kw):
    """The same layer, spectral-normalized by torch and by genfast from the same RNG state,
    and an input for it."""
    make, inp = LAYERS[kind]
    out = []
    for sn in (torch_sn, lambda m, **kw: spectral_norm(m, backend=backend, **kw)):
        torch.manual_seed(seed)
        out.append(sn(make().to(dtype), **kw))
    torch.manual_seed(seed + 1)
    x = inp()
    return *out, (x.to(dtype) if x.is_floating_point() else x)


def sn_of(m, name="weight", i=0):
    return m.parametrizations[name][i]


def vectors(shapes, dtype=torch.float32, seed=0, dims=None):
    """Weights of `shapes` and unit u, v vectors sized for output dims `dims` (default 0)."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or [0] * len(shapes)
    ws = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    sizes = [S.matrix_shape(w, d) for w, d in zip(ws, dims, strict=True)]
    us, vs = ([F.normalize(torch.randn(n, generator=g, dtype=torch.float64), dim=0).to(dtype)
               for n in ns] for ns in zip(*sizes, strict=True))
    return ws, us, vs


def critic(sn=spectral_norm, **kw):
    """A small conv critic, every layer spectral-normalized by `sn`, on (N, 1, 8, 8) input."""
    torch.manual_seed(0)
    return nn.Sequential(sn(nn.Conv2d(1, 6, 4, 2, 1), **kw), nn.LeakyReLU(0.2),
                         sn(nn.Conv2d(6, 12, 4, 2, 1), **kw), nn.LeakyReLU(0.2),
                         sn(nn.Conv2d(12, 1, 2), **kw), nn.Flatten(0))


def mixed_model(sn=torch_sn):
    """Conv, ConvTranspose and Linear layers (three spectral norms) and a plain Linear."""
    torch.manual_seed(0)
    return nn.Sequential(sn(nn.Conv2d(1, 4, 3, 2, 1)), nn.LeakyReLU(0.2),
                         sn(nn.ConvTranspose2d(4, 3, 3)), nn.Flatten(),
                         sn(nn.Linear(3 * 6 * 6, 2)), nn.Linear(2, 1)).double()

"""torch.export of models built on the gradient-penalty norm op: exported with a dynamic batch,
run, compared with eager, saved and loaded. (gradient_penalty itself needs torch.autograd.grad
inside the forward, which torch.export does not support: see its docstring.)"""

import io

import pytest
import torch
from _helpers import TOL, fast_backends
from torch import nn
from torch.export import Dim

from genfast.ops.gradient_penalty import per_sample_grad_norm

ALL = ["reference", *fast_backends("gradient_penalty")]


class PenaltyFromGradient(nn.Module):
    """The WGAN-GP term of a precomputed input gradient (N, C, H, W) -> scalar."""

    def __init__(self, backend, weight=10.0, center=1.0):
        super().__init__()
        self.backend, self.weight, self.center = backend, weight, center

    def forward(self, grad):
        norms = per_sample_grad_norm(grad, backend=self.backend)
        return self.weight * (norms - self.center).square().mean(), norms


class FeatureNormCritic(nn.Module):
    """A conv critic that normalises each sample's features by their L2 norm."""

    def __init__(self, backend):
        super().__init__()
        torch.manual_seed(0)
        self.backend = backend
        self.conv = nn.Conv2d(1, 4, 3, 2, 1)
        self.head = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        h = torch.nn.functional.leaky_relu(self.conv(x), 0.2)
        h = h / (per_sample_grad_norm(h, backend=self.backend)[:, None, None, None] + 1e-6)
        return self.head(h.flatten(1))


def _genfast_nodes(ep):
    return [n for n in ep.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("genfast.")]


def _roundtrip(ep):
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    return torch.export.load(buf)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("make,shape", [(PenaltyFromGradient, (4, 2, 3, 5)),
                                        (FeatureNormCritic, (4, 1, 8, 8))])
def test_export_run_and_compare(backend, make, shape):
    model = make(backend)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    arg = "grad" if make is PenaltyFromGradient else "x"
    ep = torch.export.export(model, (example,),
                             dynamic_shapes={arg: {0: Dim("batch", min=1, max=1024)}})
    # One opaque node for the norm: a custom op with a fake implementation, not a graph break.
    nodes = _genfast_nodes(ep)
    assert [str(n.target) for n in nodes] == ["genfast.gp_row_norms.default"]
    x = torch.randn(7, *shape[1:], generator=torch.Generator().manual_seed(2))
    want = model(x)
    for prog in (ep, _roundtrip(ep)):
        got = prog.module()(x)
        torch.testing.assert_close(got, want, **TOL[torch.float32])
    if make is PenaltyFromGradient:  # and against plain torch
        torch.testing.assert_close(got[1], x.reshape(7, -1).norm(dim=1), **TOL[torch.float32])


def test_exported_norm_is_trainable():
    """The exported graph keeps the op's autograd: gradients through it match eager's."""
    model = FeatureNormCritic(None)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ep = torch.export.export(model, (x,))
    gm = ep.module()
    out = gm(x).square().sum()
    grads = torch.autograd.grad(out, list(gm.parameters()))
    ref = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float32])

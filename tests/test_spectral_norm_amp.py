"""spectral_norm under autocast (DESIGN.md section 4): the power iteration and W / sigma run in
the weight's dtype whatever the autocast state, as torch's parametrization does, and autocast
casts the layer that consumes W / sigma; fold=True returns what the unfolded layer returns.
CPU autocast with bfloat16 here; the CUDA float16 case is in test_spectral_norm_gpu.py."""

import pytest
import torch
from _helpers import assert_low_precision, fast_backends
from _spectral_norm_cases import sn_of, vectors
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast.nn.spectral_norm import spectral_norm
from genfast.ops import spectral_norm as S

KINDS = {
    "linear": (lambda: nn.Linear(12, 7), (5, 12)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 4, 4)),
}


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_fold_returns_the_unfolded_dtype_and_values(kind, bias):
    make, shape = KINDS[kind]
    mods = []
    # torch's, genfast's, genfast's folded under autocast; torch's without: the float32 reference
    for sn in (torch_sn, spectral_norm, lambda m: spectral_norm(m, fold=True), torch_sn):
        torch.manual_seed(0)
        m = make()
        if not bias:
            m.bias = None
        mods.append(sn(m))
    x = torch.randn(shape)
    for mode in ("train", "eval"):
        outs, grads = [], []
        for i, m in enumerate(mods):
            m.train(mode == "train")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=i < 3):
                y = m(x)
            outs.append(y)
            grads.append(torch.autograd.grad(y.float().square().sum(),
                                             m.parametrizations.weight.original)[0])
        assert [y.dtype for y in outs] == [torch.bfloat16] * 3 + [torch.float32]
        # The flash-attention rule against float32: at most twice torch's own autocast error.
        for y, g in zip(outs[1:3], grads[1:3], strict=True):
            assert g.dtype == torch.float32  # the master weights' gradient
            assert_low_precision(y.float(), outs[3], outs[0].float(), atol=1e-2)
            assert_low_precision(g, grads[3], grads[0], atol=1e-2)


def test_the_weight_stays_in_its_dtype_and_the_iteration_is_not_cast():
    torch.manual_seed(0)
    plain, cast = spectral_norm(nn.Linear(9, 6)), spectral_norm(nn.Linear(9, 6))
    cast.load_state_dict(plain.state_dict())
    w = plain.weight
    with _autocast():
        w_cast = cast.weight
    assert w_cast.dtype == torch.float32  # as torch's: W / sigma is not an autocast op
    assert torch.equal(w_cast, w)
    assert torch.equal(sn_of(cast)._u, sn_of(plain)._u)
    with _autocast():
        ref = torch_sn(nn.Linear(9, 6)).weight
    assert ref.dtype == w_cast.dtype


@pytest.mark.parametrize("backend", ["reference", *fast_backends("spectral_norm")])
def test_functional_api_gives_the_same_bits_under_autocast(backend):
    ws, us, vs = vectors([(7, 5, 2)])
    w = ws[0].requires_grad_()
    out = []
    for ctx in (torch.autocast("cpu", enabled=False), _autocast()):
        u, v = us[0].clone(), vs[0].clone()
        with ctx:
            y = S.spectral_normalize(w, u, v, 2, backend=backend)
            (g,) = torch.autograd.grad(y.square().sum(), w)
        out.append((y, g, u, v))
    for a, b in zip(*out, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)

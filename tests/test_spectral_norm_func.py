"""spectral_norm under torch.func, as torch's own parametrization runs there: functional_call
with parameters and buffers passed in, torch.func.grad over it (the buffers passed are updated
in place, as torch's are), a second order through the custom backward, and a clear error
from vmap (the multi-tensor op has no batching rule)."""

import pytest
import torch
from _helpers import TOL
from _spectral_norm_cases import critic
from torch.func import functional_call, grad, vmap
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast.nn.spectral_norm import spectral_norm
from genfast.ops import spectral_norm as S

T64 = TOL[torch.float64]


def _state(model):
    return ({k: v.detach().clone() for k, v in model.named_parameters()},
            {k: v.clone() for k, v in model.named_buffers()})


def _models(fold=False):
    ref = critic(torch_sn).double()
    ours = critic(lambda m: spectral_norm(m, fold=fold)).double()
    ours.load_state_dict(ref.state_dict())  # the same weights and vectors from here on
    return ref, ours


def _close_dicts(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **T64, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_grad_of_functional_call_matches_torch(fold, mode):
    ref, ours = _models(fold)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    out = {}
    for name, model in (("torch", ref), ("genfast", ours)):
        model.train(mode == "train")
        params, buffers = _state(model)
        before = {k: v.clone() for k, v in model.named_buffers()}

        def loss(p, b, x, model=model):
            return functional_call(model, {**p, **b}, (x,)).square().mean()

        g_params, g_x = grad(loss, argnums=(0, 2))(params, buffers, x)
        out[name] = (g_params, g_x, buffers)
        _close_dicts(dict(model.named_buffers()), before)  # the module's own are untouched
    for a, b in zip(out["genfast"], out["torch"], strict=True):
        if isinstance(a, dict):
            _close_dicts(a, b)
        else:
            torch.testing.assert_close(a, b, **T64)
    if mode == "train":  # the power iteration ran on the buffers passed in
        _, buffers0 = _state(ours)
        assert not all(torch.equal(out["genfast"][2][k], buffers0[k]) for k in buffers0)


def test_second_order_through_functional_call_matches_torch():
    """A gradient penalty written with torch.func: grad over params of |grad over x|^2."""
    ref, ours = _models()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = []
    for model in (ref, ours):
        model.eval()
        params, buffers = _state(model)

        def penalty(p, model=model, buffers=buffers):
            gx = grad(lambda x: functional_call(model, {**p, **buffers}, (x,)).sum())(x)
            return gx.square().sum()

        out.append(grad(penalty)(params))
    _close_dicts(out[1], out[0])


def test_vmap_says_it_cannot_batch_the_op():
    ws = torch.randn(3, 4, 5)
    us, vs = torch.randn(3, 4), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="spectral_norm_power_iteration"):
        vmap(lambda w, u, v: S.spectral_norm_power_iteration([w], [u], [v]))(ws, us, vs)

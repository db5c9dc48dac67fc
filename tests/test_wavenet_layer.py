"""The fused WaveNet layer (genfast.wavenet_layer, op stem causal_conv_layer): every backend
against the torch composition (F.conv1d on the padded input, tanh * sigmoid, 1x1 convs) for
local / global / no conditioning, with and without a running skip sum and history; backward
against torch autograd; the create_graph path (every order) against the fused backward;
gradcheck / gradgradcheck; opcheck; compile; bad input."""

import pytest
import torch
import torch.nn.functional as F
from _helpers import TOL, fast_backends, single_thread  # noqa: F401 (a fixture, used by pytestmark)

import genfast
from genfast.ops import causal_conv_layer as L

pytestmark = pytest.mark.usefixtures("single_thread")
FAST = fast_backends("causal_conv_layer")
ALL = ["reference", *FAST]
NAMES = ("x", "w_dil", "w_res", "w_skip", "b_dil", "b_res", "b_skip", "cond", "skip", "h")


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _layer(B=2, R=4, G=6, S=5, T=13, K=2, d=2, cond="global", dtype=torch.float64, seed=0):
    P = (K - 1) * d
    t = dict(x=_randn(B, R, T, dtype=dtype, seed=seed),
             w_dil=_randn(G, R, K, dtype=dtype, seed=seed + 1) / (R * K) ** .5,
             w_res=_randn(R, G // 2, dtype=dtype, seed=seed + 2) / 2,
             w_skip=_randn(S, G // 2, dtype=dtype, seed=seed + 3) / 2,
             b_dil=_randn(G, dtype=dtype, seed=seed + 4), b_res=_randn(R, dtype=dtype, seed=5),
             b_skip=_randn(S, dtype=dtype, seed=seed + 6),
             cond=None if cond is None else _randn(B, G, 1 if cond == "global" else T,
                                                   dtype=dtype, seed=seed + 7),
             skip=_randn(B, S, T, dtype=dtype, seed=seed + 8),
             h=_randn(B, R, P, dtype=dtype, seed=seed + 9))
    return t


def torch_layer(t, d):
    """The layer as every public WaveNet writes it."""
    P = (t["w_dil"].shape[-1] - 1) * d
    h = t["h"] if t["h"] is not None else t["x"].new_zeros(*t["x"].shape[:2], P)
    a = F.conv1d(torch.cat([h, t["x"]], -1), t["w_dil"], t["b_dil"], dilation=d)
    if t["cond"] is not None:
        a = a + t["cond"]
    H = a.shape[1] // 2
    z = torch.tanh(a[:, :H]) * torch.sigmoid(a[:, H:])
    xo = t["x"] + F.conv1d(z, t["w_res"][..., None], t["b_res"])
    so = F.conv1d(z, t["w_skip"][..., None], t["b_skip"])
    return xo, so if t["skip"] is None else t["skip"] + so


def call(t, d, backend, **kw):
    return genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"], t["w_skip"], t["b_dil"],
                                 t["b_res"], t["b_skip"], dilation=d, cond=t["cond"],
                                 skip=t["skip"], initial_state=t["h"], backend=backend, **kw)


def _dtypes(backend):
    return [d for d in (torch.float32, torch.float64) if d in L.SPEC.dtypes[backend]]


VARIANTS = [dict(cond=None), dict(cond="global"), dict(cond="local"),
            dict(cond="local", K=3, d=7, T=40), dict(K=1, d=1, T=1), dict(T=1, d=5),
            dict(R=8, G=16, S=12, T=65, K=2, d=16)]


@pytest.mark.parametrize("backend", ALL)
def test_forward_and_backward_match_torch(backend):
    for dtype in _dtypes(backend):
        for i, v in enumerate(VARIANTS):
            v = dict(v)
            d = v.pop("d", 2)
            t = _layer(**v, d=d, dtype=dtype, seed=i)
            for drop in ((), ("skip",), ("h", "b_dil", "b_res", "b_skip")):
                tt = {k: (None if k in drop else val) for k, val in t.items()}
                ins = {k: val.clone().requires_grad_() for k, val in tt.items()
                       if val is not None}
                got = call({**tt, **ins}, d, backend)
                ref_ins = {k: val.double().requires_grad_() for k, val in ins.items()}
                want = torch_layer({**tt, **ref_ins}, d)
                for g, w in zip(got, want, strict=True):
                    torch.testing.assert_close(g, w.to(dtype), **TOL[dtype], msg=f"{v} {drop}")
                gx, gs = _randn(*got[0].shape, dtype=dtype, seed=11), _randn(
                    *got[1].shape, dtype=dtype, seed=12)
                keys = list(ins)
                g1 = torch.autograd.grad(got, [ins[k] for k in keys], (gx, gs))
                g2 = torch.autograd.grad(want, [ref_ins[k] for k in keys],
                                         (gx.double(), gs.double()))
                for k, a, b in zip(keys, g1, g2, strict=True):
                    torch.testing.assert_close(a, b.to(dtype), **TOL[dtype],
                                               msg=f"d{k} {v} {drop}")


@pytest.mark.parametrize("backend", [b for b in ALL if torch.float64 in L.SPEC.dtypes[b]])
@pytest.mark.parametrize("cond", [None, "global", "local"])
def test_gradcheck_gradgradcheck(backend, cond):
    t = _layer(T=7, cond=cond, K=3, d=2)
    keys = [k for k in NAMES if t[k] is not None]

    def f(*vals):
        return call({**t, **dict(zip(keys, vals, strict=True))}, 2, backend)

    args = [t[k].clone().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("backend", ALL)
def test_create_graph_path_equals_fused_backward(backend):
    """Under create_graph the backward is differentiable torch ops; without it the fused
    kernel. Both give the same first-order gradients."""
    dtype = _dtypes(backend)[-1]
    t = _layer(T=33, cond="local", dtype=dtype)
    ins = {k: v.clone().requires_grad_() for k, v in t.items()}
    out = call(ins, 2, backend)
    seeds = (_randn(*out[0].shape, dtype=dtype, seed=1), _randn(*out[1].shape, dtype=dtype,
                                                                  seed=2))
    fused = torch.autograd.grad(out, list(ins.values()), seeds, retain_graph=True)
    graph = torch.autograd.grad(out, list(ins.values()), seeds, create_graph=True)
    for k, a, b in zip(ins, fused, graph, strict=True):
        torch.testing.assert_close(a, b.detach(), **TOL[dtype], msg=k)


@pytest.mark.parametrize("backend", ALL)
def test_final_state_continues(backend):
    dtype = _dtypes(backend)[-1]
    t = _layer(T=30, cond=None, K=2, d=4, dtype=dtype)
    t["h"] = None
    full = call(t, 4, backend)
    a = {**t, "x": t["x"][..., :11], "skip": t["skip"][..., :11]}
    x1, s1, st = call(a, 4, backend, return_final_state=True)
    b = {**t, "x": t["x"][..., 11:], "skip": t["skip"][..., 11:], "h": st}
    x2, s2 = call(b, 4, backend)
    torch.testing.assert_close(torch.cat([x1, x2], -1), full[0], **TOL[dtype])
    torch.testing.assert_close(torch.cat([s1, s2], -1), full[1], **TOL[dtype])


@pytest.mark.parametrize("backend", ALL)
def test_opcheck(backend):
    t = _layer(T=9, dtype=torch.float32)
    args = [t[k] for k in ("x", "h", "cond", "skip", "w_dil", "b_dil", "w_res", "b_res",
                           "w_skip", "b_skip")]
    torch.library.opcheck(L.wavenet_layer_fwd, (*args, 2, backend))
    gx, gs = torch.randn(2, 4, 9), torch.randn(2, 5, 9)
    torch.library.opcheck(L.wavenet_layer_bwd, (t["x"], t["h"], t["cond"], t["w_dil"],
                                                t["b_dil"], t["w_res"], t["w_skip"], gx, gs, 2,
                                                backend))


def test_compile_fullgraph():
    t = _layer(T=17, dtype=torch.float32)
    ins = {k: v.clone().requires_grad_() for k, v in t.items()}

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(ins):
        xo, so = call(ins, 2, None)
        return xo.square().sum() + so.sum()

    got = f(ins)
    want = sum(o.square().sum() if i == 0 else o.sum()
               for i, o in enumerate(torch_layer(ins, 2)))
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got, list(ins.values()))
    g2 = torch.autograd.grad(want, list(ins.values()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_input_errors():
    t = _layer(dtype=torch.float32)
    with pytest.raises(ValueError, match="must be even"):
        genfast.wavenet_layer(t["x"], t["w_dil"][:5], t["w_res"], t["w_skip"])
    with pytest.raises(ValueError, match="w_res must have shape"):
        genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"][:, :2], t["w_skip"])
    with pytest.raises(ValueError, match="cond must have shape"):
        genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"], t["w_skip"],
                              cond=torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match="skip must have shape"):
        genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"], t["w_skip"],
                              skip=torch.zeros(2, 4, 13))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"], t["w_skip"], dilation=2,
                              initial_state=torch.zeros(2, 4, 1))
    with pytest.raises(TypeError, match="w_skip must have x's dtype"):
        genfast.wavenet_layer(t["x"], t["w_dil"], t["w_res"], t["w_skip"].double())

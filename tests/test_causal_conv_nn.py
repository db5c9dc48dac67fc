"""genfast.nn.CausalConv1d / WaveNetLayer / WaveNet: Conv1d checkpoints load both ways and match
the padded-and-cropped Conv1d, the step API equals the full forward, the layers match the plain
torch composition and the reference backend, the receptive field is what the outputs see, bad
arguments are named, and generation equals teacher-forced forward + genfast's sampler (fp64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import genfast
from genfast.nn.causal_conv import CausalConv1d, WaveNet, WaveNetLayer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(("c_in", "c_out", "k", "d", "groups"),
                         [(4, 6, 2, 1, 1), (4, 6, 3, 7, 1), (6, 6, 4, 2, 6), (4, 8, 5, 1, 2),
                          (3, 5, 1, 3, 1)])
def test_conv1d_checkpoint_loads_and_matches_the_cropped_conv1d(c_in, c_out, k, d, groups):
    torch.manual_seed(0)
    P = (k - 1) * d
    ref = nn.Conv1d(c_in, c_out, k, dilation=d, groups=groups, padding=P)
    ours = CausalConv1d(c_in, c_out, k, dilation=d, groups=groups)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, c_in, 33)
    torch.testing.assert_close(ours(x), ref(x)[..., :33], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x[0]), ref(x[0])[..., :33], rtol=1e-5, atol=1e-5)
    back = nn.Conv1d(c_in, c_out, k, dilation=d, groups=groups, padding=P)
    back.load_state_dict(ours.state_dict())  # and a CausalConv1d checkpoint loads into Conv1d
    torch.testing.assert_close(back(x)[..., :33], ours(x), rtol=1e-5, atol=1e-5)
    assert ours.history == P and ours.init_state(2).shape == (2, c_in, P)


def test_activation_and_state_chaining():
    torch.manual_seed(1)
    conv = CausalConv1d(4, 4, 3, dilation=2, activation="silu")
    plain = CausalConv1d(4, 4, 3, dilation=2)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 20)
    torch.testing.assert_close(conv(x), F.silu(plain(x)), rtol=1e-5, atol=1e-6)
    y1, h = conv(x[..., :9], return_final_state=True)
    y2 = conv(x[..., 9:], initial_state=h)
    torch.testing.assert_close(torch.cat([y1, y2], -1), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ring", [True, False])
def test_step_equals_forward(ring):
    torch.manual_seed(2)
    conv = CausalConv1d(5, 7, 3, dilation=3)
    x = torch.randn(2, 5, 25)
    full = conv(x)
    with torch.no_grad():
        y0, h = conv(x[..., :4], return_final_state=True)
    state = h.contiguous() if ring else conv.init_state(2)
    if not ring:  # shift mode from the zero history, one step at a time from t=0
        out = [conv.step(x[..., t], state) for t in range(25)]
        torch.testing.assert_close(torch.stack(out, -1), full, rtol=1e-5, atol=1e-6)
        return
    seqlens = torch.zeros(2, dtype=torch.int64)
    out = []
    for t0, L in ((4, 1), (5, 3), (8, 17)):
        out.append(conv.step(x[..., t0:t0 + L], state, cache_seqlens=seqlens))
        seqlens += L
    torch.testing.assert_close(torch.cat([y0, *out], -1), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"padding": 2}, "padding"), ({"padding": "same"}, "padding"), ({"stride": 2}, "stride"),
    ({"padding_mode": "reflect"}, "padding_mode"), ({"activation": "gelu"}, "activation")])
def test_bad_conv_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CausalConv1d(4, 4, 2, **kwargs)


def test_bad_wavenet_arguments_are_named():
    for kwargs, name in (({"gate": 7}, "gate"), ({"input": "mel"}, "input"),
                         ({"layers": 0}, "layers"), ({"classes": 1}, "classes")):
        with pytest.raises(ValueError, match=name):
            WaveNet(**kwargs)
    net = WaveNet(residual=4, gate=8, skip=8, head=8, layers=2, stacks=1)
    with pytest.raises(ValueError, match="gc"):
        net(torch.zeros(1, 5, dtype=torch.long), gc=0)
    with pytest.raises(ValueError, match="tokens_in"):
        net(torch.zeros(1, 5))
    net = WaveNet(residual=4, gate=8, skip=8, head=8, layers=2, stacks=1, gc_classes=2)
    with pytest.raises(ValueError, match=r"gc must be a class id in \[0, 2\)"):
        net(torch.zeros(1, 5, dtype=torch.long), gc=2)
    with pytest.raises(ValueError, match="gc must be"):
        net(torch.zeros(2, 5, dtype=torch.long), gc=torch.tensor([0.0, 1.0]))


def _composition(layer: WaveNetLayer, x, skip, cond, gc):
    """The layer written in plain torch (F.conv1d + pad), the oracle of the fused op."""
    P = layer.conv.history
    a = F.conv1d(F.pad(x, (P, 0)), layer.conv.weight, layer.conv.bias,
                 dilation=layer.conv.dilation[0])
    if cond is not None:
        a = a + layer.cond(cond)
    if gc is not None:
        a = a + layer.gc(gc)[..., None]
    f, q = a.chunk(2, 1)
    z = torch.tanh(f) * torch.sigmoid(q)
    s = layer.skip(z)
    return x + layer.res(z), s if skip is None else skip + s


@pytest.mark.parametrize(("local", "glob", "with_skip"),
                         [(False, False, False), (True, False, True), (False, True, True),
                          (True, True, False)])
def test_wavenet_layer_matches_the_torch_composition(local, glob, with_skip):
    torch.manual_seed(3)
    layer = WaveNetLayer(6, 10, 7, kernel_size=3, dilation=2, cond_channels=3 if local else 0,
                         gc_channels=4 if glob else 0).double()
    x = torch.randn(2, 6, 19, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(2, 7, 19, dtype=torch.float64) if with_skip else None
    cond = torch.randn(2, 3, 19, dtype=torch.float64) if local else None
    gc = torch.randn(2, 4, dtype=torch.float64) if glob else None
    got = layer(x, skip, cond, gc)
    want = _composition(layer, x, skip, cond, gc)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    gx, gs = torch.randn_like(got[0]), torch.randn_like(got[1])
    params = [x, *layer.parameters()]
    d_got = torch.autograd.grad(got, params, (gx, gs))
    d_want = torch.autograd.grad(want, params, (gx, gs))
    for g, w in zip(d_got, d_want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def _tiny(**kw):
    torch.manual_seed(4)
    args = dict(classes=32, residual=6, gate=8, skip=10, head=12, layers=3, stacks=2)
    return WaveNet(**{**args, **kw})


@pytest.mark.parametrize("inp", ["embedding", "scalar"])
def test_wavenet_matches_the_reference_backend(inp):
    net = _tiny(input=inp, gc_classes=3, kernel_size=3)
    tok = torch.randint(0, 32, (2, 40))
    gc = torch.tensor([2, 0])
    out = net(tok, gc=gc)
    loss = out.logsumexp(1).sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    with genfast.use_backend("reference"):
        ref = net(tok, gc=gc)
        ref_grads = torch.autograd.grad(ref.logsumexp(1).sum(), list(net.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)


def test_receptive_field_is_what_the_outputs_see():
    assert WaveNet().receptive_field == 1 + 2 * (2**10 - 1)  # the default: 2 cycles of 1..512
    net = _tiny(kernel_size=3).double()
    rf = net.receptive_field
    assert rf == 1 + 2 * 2 * (1 + 2 + 4)
    tok = torch.randint(0, 32, (1, rf + 3))
    other = tok.clone()
    other[0, 0] = (tok[0, 0] + 5) % 32
    diff = (net(tok) - net(other)).abs().amax(1)[0]
    assert bool(diff[rf - 1] > 0) and bool((diff[rf:] == 0).all())


def _teacher_forced(net, tokens, gc=None, **sampler):
    """The sampler of the exactness test: logits of [classes//2, tokens[:-1]], row n*B + b."""
    B, n = tokens.shape
    inp = torch.cat([torch.full((B, 1), net.classes // 2), tokens[:, :-1]], 1)
    logits = net(inp, gc=gc)
    rows = logits.permute(2, 0, 1).reshape(n * B, -1)
    return genfast.sample_categorical(rows, **sampler).reshape(n, B).T


@pytest.mark.parametrize(("batch", "sampler"), [
    (1, {}), (3, {"temperature": 0.7}), (2, {"top_k": 5}), (2, {"top_p": 0.9})])
def test_generate_equals_teacher_forced_forward_and_sampler_fp64(batch, sampler):
    net = _tiny(gc_classes=2).double()
    gc = torch.arange(batch) % 2
    tokens = net.generate(300, batch=batch, gc=gc, seed=11, **sampler)
    assert tokens.shape == (batch, 300) and tokens.dtype == torch.int64
    with torch.no_grad():
        want = _teacher_forced(net, tokens, gc=gc, seed=11, **sampler)
    assert torch.equal(tokens, want)


def test_forward_equals_the_packed_forward_and_pack_is_cached():
    from genfast.ops.causal_conv_generate import wavenet_forward_packed

    for inp in ("embedding", "scalar"):
        net = _tiny(input=inp, gc_classes=2).double()
        tok = torch.randint(0, 32, (2, 30))
        gc = torch.tensor([1, 0])
        gcond, lcond = net.conditioning(30, 2, gc=gc)
        with torch.no_grad():
            torch.testing.assert_close(wavenet_forward_packed(net.pack(), tok, gcond, lcond),
                                       net(tok, gc=gc), rtol=1e-12, atol=1e-12)
    pack = net.pack()
    assert net.pack() is pack
    with torch.no_grad():
        net.head2.bias.add_(1.0)  # an in-place update bumps the version: a new pack
    assert net.pack() is not pack

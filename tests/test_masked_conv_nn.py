"""genfast.nn.MaskedConv2d / GatedPixelCNNLayer / PixelCNN: the module equals conv2d(x, W * mask),
`weight * mask` checkpoints (and plain Conv2d ones) load both ways and a different mask is
refused; the gated layer equals pytorch-vqvae's shifted-conv composition written in plain
torch; the network is exactly causal with no blind spot; generate's shape, range, determinism
and equality with the teacher-forced forward + genfast's sampler."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import genfast
from genfast.nn.masked_conv import GatedPixelCNNLayer, MaskedConv2d, PixelCNN


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class WeightTimesMask(nn.Conv2d):
    """What the common PixelCNN repositories write: a Conv2d with a `mask` buffer multiplied
    into the weight on every call (the oracle)."""

    def __init__(self, cin, cout, k, mask_type, color_groups=1, mask_shape="full"):
        super().__init__(cin, cout, k, padding=k // 2)
        m = torch.ones(cout, cin, k, k)
        m[:, :, k // 2, k // 2 + 1:] = 0
        m[:, :, k // 2 + 1:] = 0
        go = torch.arange(cout) * color_groups // cout
        gi = torch.arange(cin) * color_groups // cin
        centre = gi[None, :] < go[:, None] if mask_type == "A" else gi[None, :] <= go[:, None]
        m[:, :, k // 2, k // 2] = centre.float()
        if mask_shape == "spatial":  # some repositories keep a (1, 1, k, k) mask
            m = m[:1, :1]
        self.register_buffer("mask", m)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


@pytest.mark.parametrize(("cin", "cout", "k", "mask_type", "groups"),
                         [(4, 6, 3, "A", 1), (4, 6, 5, "B", 1), (3, 6, 7, "A", 3),
                          (6, 9, 3, "B", 3), (2, 3, 1, "B", 1)])
def test_matches_weight_times_mask_and_checkpoints_load_both_ways(cin, cout, k, mask_type,
                                                                  groups):
    torch.manual_seed(0)
    ref = WeightTimesMask(cin, cout, k, mask_type, groups)
    ours = MaskedConv2d(cin, cout, k, mask_type, color_groups=groups)
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"weight", "bias", "mask"}
    torch.testing.assert_close(ours.mask, ref.mask, rtol=0, atol=0)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, cin, 7, 9, requires_grad=True)
    y = ours(x)
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    rx, rw, rb = torch.autograd.grad(ref(x), (x, ref.weight, ref.bias), g)
    for a, b in ((dx, rx), (dw, rw), (db, rb)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    back = WeightTimesMask(cin, cout, k, mask_type, groups)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back(x), y, rtol=1e-5, atol=1e-5)


def test_plain_conv2d_and_spatial_masks_load_and_stride_padding_work():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 5, padding=2)
    ours = MaskedConv2d(3, 5, 5, "B")
    ours.load_state_dict(conv.state_dict())  # no mask in the dict: ours is implied
    assert torch.equal(ours.weight, conv.weight) and ours.mask.sum() == 13 * 15
    spatial = WeightTimesMask(3, 5, 5, "B", mask_shape="spatial")
    ours.load_state_dict(spatial.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), spatial(x), rtol=1e-5, atol=1e-5)
    strided = MaskedConv2d(3, 5, 5, "A", stride=2, padding=1)
    want = F.conv2d(x, strided.weight * strided.mask, strided.bias, stride=2, padding=1)
    torch.testing.assert_close(strided(x), want, rtol=1e-5, atol=1e-5)
    conv_b = MaskedConv2d.from_conv(conv, "A")
    assert conv_b.weight is conv.weight
    torch.testing.assert_close(conv_b(x), F.conv2d(x, conv.weight * conv_b.mask, conv.bias,
                                                   padding=2), rtol=1e-5, atol=1e-5)


def test_a_different_mask_is_refused():
    a = MaskedConv2d(3, 6, 5, "A", color_groups=3)
    with pytest.raises(ValueError, match="mask_type='B'.*color_groups=3"):
        MaskedConv2d(3, 6, 5, "B", color_groups=3).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="mask"):
        MaskedConv2d(3, 6, 5, "A").load_state_dict(a.state_dict())  # no colour grouping
    bad = a.state_dict()
    bad["mask"] = torch.ones(4, 5)
    with pytest.raises(ValueError, match=r"mask \(4, 5\)"):
        a.load_state_dict(bad)


def test_deepcopy_pickle_and_bad_arguments():
    m = MaskedConv2d(4, 4, 3, "A", bias=False)
    x = torch.randn(1, 4, 5, 5)
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)
        assert other.mask_type == "A" and torch.equal(other.mask, m.mask)
    for kwargs, name in (({"kernel_size": 4}, "kernel_size"), ({"mask_type": "C"}, "mask_type"),
                         ({"dilation": 2}, "dilation"), ({"groups": 2}, "groups"),
                         ({"padding": "valid"}, "padding"), ({"color_groups": 5}, "color_groups"),
                         ({"padding_mode": "reflect"}, "padding_mode")):
        with pytest.raises(ValueError, match=name):
            MaskedConv2d(4, 4, **{"kernel_size": 3, **kwargs})


# --------------------------------------------------------------------------- gated layer
def _gate(u):
    a, b = u.chunk(2, 1)
    return torch.tanh(a) * torch.sigmoid(b)


def vqvae_layer(lay: GatedPixelCNNLayer, v, h, cond=None):
    """pytorch-vqvae's GatedMaskedConv2d math: padded convs cropped to the image, mask A by
    zeroing the last row / column of a copy of the weights."""
    H, W = v.shape[-2:]
    c = lay.kernel_size // 2
    wv, wh = lay.vert_stack.weight.clone(), lay.horiz_stack.weight.clone()
    if lay.mask_type == "A":
        wv[:, :, -1] = 0
        wh[..., -1] = 0
    V = F.conv2d(v, wv, lay.vert_stack.bias, padding=(c, c))[:, :, :H]
    Hs = F.conv2d(h, wh, lay.horiz_stack.bias, padding=(0, c))[..., :W]
    cb = 0 if cond is None else cond[:, :, None, None]
    out = lay.horiz_resid(_gate(Hs + lay.vert_to_horiz(V) + cb))
    return _gate(V + cb), out + h if lay.residual else out


def vqvae_net(net: PixelCNN, tokens, cls=None):
    v = h = net.embedding(tokens).permute(0, 3, 1, 2)
    for lay in net.layers:
        cond = None if cls is None else lay.class_cond_embedding(cls)
        v, h = vqvae_layer(lay, v, h, cond)
    return net.output_conv(h)


@pytest.mark.parametrize(("k", "mask_type", "classes"), [(3, "A", None), (5, "B", 4),
                                                         (7, "B", None)])
def test_gated_layer_matches_the_shifted_conv_composition(k, mask_type, classes):
    torch.manual_seed(2)
    lay = GatedPixelCNNLayer(4, k, mask_type, num_classes=classes).double()
    assert {n: tuple(p.shape) for n, p in lay.named_parameters() if "weight" in n} == {
        "vert_stack.weight": (8, 4, k // 2 + 1, k), "vert_to_horiz.weight": (8, 8, 1, 1),
        "horiz_stack.weight": (8, 4, 1, k // 2 + 1), "horiz_resid.weight": (4, 4, 1, 1),
        **({"class_cond_embedding.weight": (classes, 8)} if classes else {})}
    v, h = torch.randn(2, 2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    cls = torch.tensor([1, 3]) if classes else None
    cond = lay.class_cond_embedding(cls) if classes else None
    got = lay(v, h, cls)
    want = vqvae_layer(lay, v, h, cond)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    g = [torch.randn_like(t) for t in got]
    params = [v, h, *lay.parameters()]
    ga = torch.autograd.grad(got, params, g, allow_unused=True)
    gb = torch.autograd.grad(want, params, g, allow_unused=True)
    for a, b in zip(ga, gb, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _net(**kw):
    torch.manual_seed(3)
    cfg = dict(levels=5, channels=4, layers=3, kernel_size=3, hidden=8, image_size=(5, 6))
    return PixelCNN(**{**cfg, **kw}).double()


def test_pixelcnn_matches_vqvae_and_is_exactly_causal_with_no_blind_spot():
    net = _net(num_classes=3, kernel_size=5)
    tokens = torch.randint(0, 5, (1, 5, 6))
    cls = torch.tensor([2])
    logits = net(tokens, cls)
    torch.testing.assert_close(logits, vqvae_net(net, tokens, cls), rtol=1e-10, atol=1e-10)
    H, W = 5, 6
    # Gradient of the logits at raster position q w.r.t. the embedded input at p: nonzero
    # exactly when p < q (3 layers of 5x5 reach every earlier pixel of a 5x6 image).
    x0 = net.embedding(tokens).permute(0, 3, 1, 2).detach().requires_grad_(True)
    for q in range(H * W):
        v = h = x0
        for lay in net.layers:
            v, h = lay(v, h, cls)
        out = net.output_conv(h)[0, :, q // W, q % W].sum()
        (g,) = torch.autograd.grad(out, x0)
        seen = g[0].abs().sum(0).reshape(-1) > 0
        assert not seen[q:].any(), f"pixel {q} sees a later or its own pixel"
        if q == H * W - 1:
            assert seen[:q].all(), "blind spot: an earlier pixel does not reach the last one"


def test_vqvae_kernel_schedule_and_bad_arguments():
    net = _net(kernel_size=[5, 3, 3])
    tokens = torch.randint(0, 5, (2, 5, 6))
    torch.testing.assert_close(net(tokens), vqvae_net(net, tokens), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="kernel_size"):
        PixelCNN(layers=3, kernel_size=[7, 3])
    with pytest.raises(ValueError, match="tokens"):
        net(torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match="num_classes"):
        net(tokens, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cls"):
        _net(num_classes=3)(tokens, 7)


def _teacher_forced(net, tokens, seed, cls=None):
    """genfast's sampler on the teacher-forced logits, rows ordered (pixel, image)."""
    logits = net(tokens, cls)  # (B, A, H, W)
    rows = logits.permute(2, 3, 0, 1).reshape(-1, logits.shape[1])
    B, H, W = tokens.shape
    return genfast.sample_categorical(rows, seed=seed).reshape(H, W, B).permute(2, 0, 1)


@pytest.mark.parametrize("classes", [None, 3])
def test_generate_equals_teacher_forced_sampling(classes):
    net = _net(num_classes=classes, kernel_size=[5, 3, 3])
    cls = torch.tensor([0, 2, 1]) if classes else None
    a = net.generate(3, cond=cls, seed=11)
    assert a.shape == (3, 5, 6) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < 5
    assert torch.equal(a, net.generate(3, cond=cls, seed=11))
    assert not torch.equal(a, net.generate(3, cond=cls, seed=12))
    assert torch.equal(a, _teacher_forced(net, a, 11, cls))
    kept = net.generate(3, cond=cls, seed=5, tokens=a, start=7)
    assert torch.equal(kept.reshape(3, -1)[:, :7], a.reshape(3, -1)[:, :7])
    assert net.generate(2, size=(3, 4), cond=None if classes is None else 1).shape == (2, 3, 4)


def test_pixelcnn_exports_and_compiles_whole():
    """torch.export and torch.compile(fullgraph) see the gated layers and the masked conv as
    opaque genfast ops: one graph, the eager model's logits, and (compiled) its gradients."""
    torch.manual_seed(0)
    net = PixelCNN(levels=4, channels=6, layers=3, kernel_size=3, hidden=8, num_classes=2)
    conv = MaskedConv2d(1, 6, 5, mask_type="A")
    tokens = torch.randint(0, 4, (2, 5, 6))
    cls = torch.tensor([0, 1])
    want = net(tokens, cls)
    ep = torch.export.export(net, (tokens, cls))
    torch.testing.assert_close(ep.module()(tokens, cls), want)
    x = torch.randn(2, 1, 7, 7)
    torch.testing.assert_close(torch.export.export(conv, (x,)).module()(x), conv(x))

    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    got = compiled(tokens, cls)
    torch.testing.assert_close(got, want)
    (g,) = torch.autograd.grad(got.square().sum(), [net.layers[1].vert_stack.weight])
    (g_ref,) = torch.autograd.grad(net(tokens, cls).square().sum(),
                                   [net.layers[1].vert_stack.weight])
    torch.testing.assert_close(g, g_ref)
